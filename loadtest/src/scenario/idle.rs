//! `idle`: hold N sessions logged in, INBOX selected and in IDLE — most of
//! a mail client's life — and measure what each costs the director in
//! resident memory.
//!
//! For each transport the harness starts a fresh director (glibc keeps
//! freed memory, so a second run in the same process would start from a
//! high baseline), reads its RSS, opens the sessions with a bounded number
//! of set-ups in flight, holds them, reads the RSS again, and divides.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{user_name, Modes, Release, PASSWORD};
use crate::client::imap::ImapClient;
use crate::client::tls::client_config;
use mailpin::config::Protocol;

use crate::client::conn::Transport;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Latency};
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Progress};

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Sessions to hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Concurrent sessions of each simulated user.
    #[arg(long, default_value_t = 4)]
    pub sessions_per_user: usize,
    /// Transports to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Modes,
    /// Session set-ups in flight per client thread.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to hold the sessions once all are open.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// The figures of one transport.
#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    /// Sessions established and held.
    pub established: u64,
    /// Set-ups that failed.
    pub failed: u64,
    /// Director RSS before, bytes.
    pub rss_before: u64,
    /// Director RSS with all sessions held, bytes.
    pub rss_held: u64,
    /// Sessions the backends counted as live while held.
    pub backend_sessions: usize,
}

impl IdleResult {
    /// RSS growth per held session, bytes.
    pub fn bytes_per_session(&self) -> f64 {
        if self.established == 0 {
            return 0.0;
        }
        self.rss_held.saturating_sub(self.rss_before) as f64 / self.established as f64
    }
}

/// Opens one session: connect, LOGIN, SELECT INBOX, IDLE.
async fn open_session(
    endpoint: crate::client::conn::Endpoint,
    tls: &Arc<rustls::ClientConfig>,
    user: &str,
) -> std::io::Result<ImapClient> {
    let mut client = ImapClient::connect(endpoint, tls).await?;
    client.login(user, PASSWORD).await?;
    client.expect_ok("SELECT INBOX", "SELECT").await?;
    client.idle().await?;
    Ok(client)
}

/// Holds `args.sessions` sessions over `transport` and measures the
/// director.
pub fn measure(
    harness: &mut Harness,
    args: &IdleArgs,
    transport: Transport,
    report: &mut Report,
) -> Result<IdleResult, String> {
    harness.restart_director()?;
    let counters = harness.fresh_counters();
    let endpoint = harness.endpoint(Protocol::Imap, transport)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = harness.target_sample();
    let release = Release::new();
    let threads = harness.args.client_threads.max(1);
    let total = args.sessions;
    let per_user = args.sessions_per_user.max(1);
    let concurrency = args.concurrency.max(1);
    let prefix = match transport {
        Transport::Plain => "idlep",
        Transport::Starttls => "idles",
        Transport::Tls => "idlet",
    };
    let handles = {
        let release = release.clone();
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let release = release.clone();
            let counters = counters.clone();
            async move {
                let tls_config = client_config(false);
                let next = Rc::new(Cell::new(t));
                let held = Rc::new(RefCell::new(Vec::new()));
                let latency = Rc::new(RefCell::new(Latency::new()));
                let mut workers = Vec::new();
                for _ in 0..concurrency {
                    let (next, held, latency) = (next.clone(), held.clone(), latency.clone());
                    let (counters, tls_config) = (counters.clone(), tls_config.clone());
                    workers.push(monoio::spawn(async move {
                        loop {
                            let i = next.get();
                            if i >= total {
                                break;
                            }
                            next.set(i + threads);
                            let user = user_name(prefix, i / per_user);
                            let started = Instant::now();
                            match open_session(endpoint, &tls_config, &user).await {
                                Ok(client) => {
                                    latency.borrow_mut().record(started.elapsed());
                                    held.borrow_mut().push(client);
                                    counters.ok();
                                    counters.opened();
                                }
                                Err(_) => counters.error(),
                            }
                        }
                    }));
                }
                for w in workers {
                    w.await;
                }
                release.wait().await;
                let n = held.borrow().len() as u64;
                held.borrow_mut().clear();
                for _ in 0..n {
                    counters.closed();
                }
                latency.take()
            }
        })
    };
    let mut all_open: Option<Instant> = None;
    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    let label = format!("idle {}", transport.name());
    let timeline = monitor(
        harness,
        &label,
        Progress::Count(total as u64),
        Vec::new(),
        |_| {
            let (ok, errors, _, _) = counters.snapshot();
            if ok + errors >= total as u64 && all_open.is_none() {
                all_open = Some(Instant::now());
            }
            all_open.is_some_and(|t| t.elapsed() >= hold)
        },
    );
    let held = harness.target_sample();
    let backend_sessions = harness.backends().registry().total_sessions();
    release.give();
    let (latencies, _) = join(handles);
    let setup = merged(latencies.iter()).summary();
    let (ok, errors, _, _) = counters.snapshot();
    let result = IdleResult {
        established: ok,
        failed: errors,
        rss_before: before.rss_bytes,
        rss_held: held.rss_bytes,
        backend_sessions,
    };
    report.line(format!(
        "{}: {} sessions held ({} failed, backends saw {}), RSS {:.1} -> {:.1} MiB: {:.2} KiB per session; set-up {}",
        transport.name(),
        ok,
        errors,
        backend_sessions,
        before.rss_bytes as f64 / 1048576.0,
        held.rss_bytes as f64 / 1048576.0,
        result.bytes_per_session() / 1024.0,
        setup
    ));
    report.timeline.append(timeline);
    report.work += ok;
    report.errors += errors;
    Ok(result)
}

/// Runs `idle` for every transport asked.
pub fn run(args: &IdleArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("idle", &harness);
    let mut results = Vec::new();
    for transport in args.mode.list() {
        let r = measure(&mut harness, args, transport, &mut report)?;
        results.push(json!({
            "mode": transport.name(),
            "sessions": r.established,
            "failed": r.failed,
            "backend_sessions": r.backend_sessions,
            "rss_before_bytes": r.rss_before,
            "rss_held_bytes": r.rss_held,
            "bytes_per_session": r.bytes_per_session(),
        }));
    }
    report.results = json!({ "sessions_per_user": args.sessions_per_user, "modes": results });
    crate::report::finish(report, &harness)
}
