//! `mailpin-loadtest`: the load generator and sizing tool for mailpin.
//!
//! It starts simulated backends (the library's dev backends, one store and
//! one live-session registry) in this process, a director in front of them
//! in a child process (or loads an external one with `--target`, for the
//! peers), plays mail clients against it, and reports latency, throughput,
//! the director's memory and CPU, and the invariant violations the
//! backends saw. See `PERF.md` for the method and the figures.

mod client;
mod director;
mod harness;
mod metrics;
mod plot;
mod procstat;
mod real_backends;
mod report;
mod runner;
mod scenario;
mod size;
mod timeline;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The allocator every thread uses (see `mailpin::alloc`).
#[global_allocator]
static GLOBAL: mailpin::alloc::Allocator = mailpin::alloc::Allocator;

/// Load generator and sizing tool for mailpin.
#[derive(Parser)]
#[command(name = "mailpin-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold N idle sessions (LOGIN, SELECT, IDLE); director RSS per session.
    Idle(scenario::idle::IdleArgs),
    /// Open-loop logins at a rate; HDR latency percentiles; --find the
    /// highest rate with p99 under a bound.
    Logins(scenario::logins::LoginsArgs),
    /// Large FETCH throughput through the director against straight to a
    /// backend.
    Relay(scenario::relay::RelayArgs),
    /// LMTP deliveries through the director against straight into a
    /// backend: transactions/s, deliveries/s, latency, nothing lost.
    Lmtp(scenario::lmtp::LmtpArgs),
    /// Kill a simulated backend under login load: failed logins, time to
    /// recovery, violations.
    Failover(scenario::failover::FailoverArgs),
    /// A day in the life: IDLE sessions woken by deliveries, short
    /// sessions that log in, fetch and log out.
    Mixed(scenario::mixed::MixedArgs),
    /// Real sessions idle and log in while attackers send garbage,
    /// slowloris bytes, endless literals, TLS on plaintext ports and bad
    /// logins: sessions hurt, logins failed, the director's RSS and CPU.
    Hostile(scenario::hostile::HostileArgs),
    /// N IDLE sessions through mailpin against real Dovecot backends
    /// (master user, live moves on); drain+flush and restart a backend
    /// (--rolling: each in turn): sessions moved live and ended, drain
    /// time, invariant violations.
    LiveMove(scenario::live_move::LiveMoveArgs),
    /// Cluster mode on a local 3-member etcd: logins/s alone vs. two
    /// members, first and repeat login latency, assignments/s, move and
    /// failover times.
    Cluster(scenario::cluster::ClusterArgs),
    /// Size a director host: idle sessions per GiB, logins/s per core at
    /// a p99 bound, relay throughput.
    Size(size::SizeArgs),
    /// Run a director in front of given backends until SIGTERM (used by
    /// the harness itself, so the director's memory is its own).
    #[command(hide = true)]
    Director(director::DirectorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Director(args) => return director::run_subcommand(&args),
        Command::Idle(args) => scenario::idle::run(&args).map(|_| ()),
        Command::Logins(args) => scenario::logins::run(&args).map(|_| ()),
        Command::Relay(args) => scenario::relay::run(&args).map(|_| ()),
        Command::Lmtp(args) => scenario::lmtp::run(&args).map(|_| ()),
        Command::Mixed(args) => scenario::mixed::run(&args).map(|_| ()),
        Command::Hostile(args) => scenario::hostile::run(&args).map(|_| ()),
        Command::Size(args) => size::run(&args).map(|_| ()),
        Command::Failover(args) => scenario::failover::run(&args).map(|_| ()),
        Command::LiveMove(args) => scenario::live_move::run(&args).map(|_| ()),
        Command::Cluster(args) => scenario::cluster::run(&args).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailpin-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
