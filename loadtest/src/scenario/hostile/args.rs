//! The options of `hostile` and how its real clients connect.

use super::attack::AttackKind;
use crate::client::conn::Transport;
use crate::harness::CommonArgs;

/// How the real clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RealMode {
    /// Plaintext IMAP.
    Plain,
    /// Implicit-TLS IMAP (and raw bytes to the TLS ports among the
    /// attacks).
    Tls,
}

impl RealMode {
    /// Its transport.
    pub fn transport(self) -> Transport {
        match self {
            RealMode::Plain => Transport::Plain,
            RealMode::Tls => Transport::Tls,
        }
    }
}

/// Options of `hostile`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// Real IMAP sessions held idle and probed.
    #[arg(long, default_value_t = 100)]
    pub idle: usize,
    /// Real logins per second (LOGIN, LOGOUT), open loop, in both phases.
    #[arg(long, default_value_t = 20.0)]
    pub logins_rate: f64,
    /// Attacker connections at once (shared round-robin among --kinds).
    #[arg(long, default_value_t = 20)]
    pub attackers: usize,
    /// Seconds of attack.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of the baseline phase before it, without attackers.
    #[arg(long, default_value_t = 5.0)]
    pub baseline: f64,
    /// How the real clients connect.
    #[arg(long, value_enum, default_value = "plain")]
    pub mode: RealMode,
    /// Attacks to play, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = AttackKind::ALL)]
    pub kinds: Vec<AttackKind>,
    /// Seconds between two probes of one idle session.
    #[arg(long, default_value_t = 3.0)]
    pub probe_every: f64,
    /// A probe answer slower than this (ms) hurts the session.
    #[arg(long, default_value_t = 1000)]
    pub hurt_ms: u64,
    /// Source addresses the stream attackers spread over: 127.0.3.1 and
    /// up (0: the kernel's choice, i.e. the real clients' 127.0.0.1).
    #[arg(long, default_value_t = 1)]
    pub attacker_ips: u8,
    /// Attacker threads (own runtimes, not pinned).
    #[arg(long, default_value_t = 1)]
    pub attacker_threads: usize,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}
