//! Per-core counters, summed only when someone asks (a /metrics scrape).
//!
//! Each core counts in plain `Cell`s that only it touches, so counting costs
//! an add and never contends; the control plane asks every core for a
//! [`CoreStats`] snapshot through its mailbox and adds them up.

use std::cell::Cell;
use std::time::Duration;

use crate::config::Protocol;

/// Upper bounds of the login-latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// How a login ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The backend said OK.
    Ok,
    /// The backend refused the credentials.
    Refused,
    /// No backend could take the user.
    Unavailable,
}

impl LoginOutcome {
    /// All outcomes, in the order of [`CoreStats::logins`].
    pub const ALL: [LoginOutcome; 3] = [
        LoginOutcome::Ok,
        LoginOutcome::Refused,
        LoginOutcome::Unavailable,
    ];

    /// The label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Refused => "refused",
            LoginOutcome::Unavailable => "unavailable",
        }
    }
}

/// A pre-login bound a client ran into (`server.max_line` and `[limits]`),
/// as counted in `mailpin_prelogin_limit_total{protocol,limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreloginLimit {
    /// A command line longer than `server.max_line`.
    Line,
    /// A literal larger than `limits.literal_max`.
    Literal,
    /// A SASL response larger than `limits.sasl_max`.
    Sasl,
    /// More than `limits.prelogin_bytes` before login.
    Bytes,
    /// More than `limits.prelogin_commands` before login.
    Commands,
}

impl PreloginLimit {
    /// All limits, in the order of [`CoreStats::prelogin_limits`].
    pub const ALL: [PreloginLimit; 5] = [
        PreloginLimit::Line,
        PreloginLimit::Literal,
        PreloginLimit::Sasl,
        PreloginLimit::Bytes,
        PreloginLimit::Commands,
    ];

    /// This limit's position in [`PreloginLimit::ALL`].
    pub fn index(self) -> usize {
        match self {
            PreloginLimit::Line => 0,
            PreloginLimit::Literal => 1,
            PreloginLimit::Sasl => 2,
            PreloginLimit::Bytes => 3,
            PreloginLimit::Commands => 4,
        }
    }

    /// The label value in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PreloginLimit::Line => "line",
            PreloginLimit::Literal => "literal",
            PreloginLimit::Sasl => "sasl",
            PreloginLimit::Bytes => "bytes",
            PreloginLimit::Commands => "commands",
        }
    }
}

/// Pre-login limit hits, per protocol ([`Protocol::index`]) and limit
/// ([`PreloginLimit::index`]).
pub type PreloginLimitCounts = [[u64; PreloginLimit::ALL.len()]; Protocol::COUNT];

// Live IMAP moves (issue 12).
/// What became of an IMAP session whose user moved, as counted in
/// `mailpin_live_moves_total{result,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMoveOutcome {
    /// Moved to the new backend live.
    Moved,
    /// Ended: not in a safe state (not idling, a command or literal in
    /// flight, a blocker such as COMPRESS or NOTIFY).
    NotMovable,
    /// Ended: live moves are off or no master user is configured.
    Disabled,
    /// Ended: the old backend failed during the snapshot or close.
    OldBackend,
    /// Ended: no backend could take the user after the move.
    NoRoute,
    /// Ended: the new backend was unreachable, refused the master login or
    /// a replayed command.
    NewBackend,
    /// Ended: the mailbox changed between the two backends' views in a way
    /// the move cannot reconcile (UIDVALIDITY, a cap exceeded, a change
    /// during the new side's listing).
    Changed,
}

impl LiveMoveOutcome {
    /// All outcomes, in the order of [`CoreStats::live_moves`].
    pub const ALL: [LiveMoveOutcome; 7] = [
        LiveMoveOutcome::Moved,
        LiveMoveOutcome::NotMovable,
        LiveMoveOutcome::Disabled,
        LiveMoveOutcome::OldBackend,
        LiveMoveOutcome::NoRoute,
        LiveMoveOutcome::NewBackend,
        LiveMoveOutcome::Changed,
    ];

    /// The `result` label: `moved` or `ended`.
    pub fn result(self) -> &'static str {
        if self == LiveMoveOutcome::Moved {
            "moved"
        } else {
            "ended"
        }
    }

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            LiveMoveOutcome::Moved => "ok",
            LiveMoveOutcome::NotMovable => "not_movable",
            LiveMoveOutcome::Disabled => "disabled",
            LiveMoveOutcome::OldBackend => "old_backend",
            LiveMoveOutcome::NoRoute => "no_route",
            LiveMoveOutcome::NewBackend => "new_backend",
            LiveMoveOutcome::Changed => "mailbox_changed",
        }
    }

    fn index(self) -> usize {
        LiveMoveOutcome::ALL
            .iter()
            .position(|o| *o == self)
            .unwrap_or(0)
    }
}

/// A core's live counters.
#[derive(Default)]
pub struct Counters {
    accepted: Cell<u64>,
    logins: [Cell<u64>; 3],
    latency: [Cell<u64>; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: Cell<u64>,
    kicks: Cell<u64>,
    tls_ok: Cell<u64>,
    tls_failed: Cell<u64>,
    prelogin_limits: [[Cell<u64>; PreloginLimit::ALL.len()]; Protocol::COUNT],
    live_moves: [Cell<u64>; LiveMoveOutcome::ALL.len()],
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

impl Counters {
    /// A connection was accepted.
    pub fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    /// A login ended after `took` (from the login command to the answer).
    pub fn login(&self, outcome: LoginOutcome, took: Duration) {
        let i = LoginOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        bump(&self.logins[i], 1);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.latency[bucket], 1);
        bump(&self.latency_sum_us, took.as_micros() as u64);
    }

    /// Sessions were kicked.
    pub fn kicked(&self, n: usize) {
        bump(&self.kicks, n as u64);
    }

    /// A TLS handshake ended.
    pub fn tls_handshake(&self, ok: bool) {
        bump(if ok { &self.tls_ok } else { &self.tls_failed }, 1);
    }

    /// A client of `protocol` ran into a pre-login `limit`.
    pub fn prelogin_limit(&self, protocol: Protocol, limit: PreloginLimit) {
        bump(&self.prelogin_limits[protocol.index()][limit.index()], 1);
    }

    /// An IMAP session whose user moved was moved live or ended.
    pub fn live_move(&self, outcome: LiveMoveOutcome) {
        bump(&self.live_moves[outcome.index()], 1);
    }

    /// A snapshot to send to the control plane.
    pub fn snapshot(&self) -> CoreStats {
        CoreStats {
            accepted: self.accepted.get(),
            logins: [
                self.logins[0].get(),
                self.logins[1].get(),
                self.logins[2].get(),
            ],
            latency: self.latency.iter().map(Cell::get).collect(),
            latency_sum_us: self.latency_sum_us.get(),
            kicks: self.kicks.get(),
            tls_ok: self.tls_ok.get(),
            tls_failed: self.tls_failed.get(),
            prelogin_limits: self
                .prelogin_limits
                .each_ref()
                .map(|per| per.each_ref().map(Cell::get)),
            live_moves: self.live_moves.each_ref().map(Cell::get),
            ..CoreStats::default()
        }
    }
}

/// One core's numbers at one instant.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    /// Which core.
    pub core: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now (pre-login and logged in).
    pub connections: u64,
    /// Logins by [`LoginOutcome::ALL`] order.
    pub logins: [u64; 3],
    /// Login latency: counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    pub latency: Vec<u64>,
    /// Sum of login latencies, microseconds.
    pub latency_sum_us: u64,
    /// Sessions kicked.
    pub kicks: u64,
    /// TLS handshakes that succeeded.
    pub tls_ok: u64,
    /// TLS handshakes that failed.
    pub tls_failed: u64,
    /// Pre-login limit hits per protocol and limit.
    pub prelogin_limits: PreloginLimitCounts,
    /// Logged-in sessions per backend id, per protocol index.
    pub sessions: Vec<[u32; 4]>,
    /// Assignments owned by this core's shard, per backend id.
    pub users: Vec<u32>,
    /// IMAP sessions of moving users, by [`LiveMoveOutcome::ALL`] order.
    pub live_moves: [u64; LiveMoveOutcome::ALL.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_latency_lands_in_the_right_bucket() {
        let c = Counters::default();
        c.login(LoginOutcome::Ok, Duration::from_micros(1500));
        c.login(LoginOutcome::Refused, Duration::from_secs(10));
        let s = c.snapshot();
        assert_eq!(s.logins, [1, 1, 0]);
        assert_eq!(s.latency[1], 1, "1.5 ms is in the 2 ms bucket");
        assert_eq!(s.latency[LATENCY_BUCKETS.len()], 1, "10 s is in +Inf");
        assert_eq!(s.latency_sum_us, 10_001_500);
    }

    #[test]
    fn prelogin_limits_count_per_protocol_and_limit() {
        let c = Counters::default();
        c.prelogin_limit(Protocol::Sieve, PreloginLimit::Bytes);
        c.prelogin_limit(Protocol::Sieve, PreloginLimit::Bytes);
        c.prelogin_limit(Protocol::Lmtp, PreloginLimit::Commands);
        let s = c.snapshot();
        assert_eq!(s.prelogin_limits[Protocol::Sieve.index()][3], 2);
        assert_eq!(s.prelogin_limits[Protocol::Lmtp.index()][4], 1);
        let total: u64 = s.prelogin_limits.iter().flatten().sum();
        assert_eq!(total, 3);
    }
}
