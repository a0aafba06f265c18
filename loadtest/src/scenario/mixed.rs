//! `mixed`: a day in the life. Every simulated user keeps one desktop
//! session open in IDLE on INBOX (fetching each new message as it arrives)
//! and runs a phone-like loop of short sessions: log in, SELECT, fetch the
//! newest message, log out, think. Mail arrives for random users at
//! `--deliver-rate` per second (straight into the shared store, waking the
//! IDLE sessions). A share of the sessions use implicit TLS.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{message, user_name, Rng, PASSWORD};
use mailpin::config::Protocol;

use crate::client::conn::{Endpoint, Transport};
use crate::client::imap::ImapClient;
use crate::client::tls::client_config;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Counters, Latency};
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Progress};

/// Options of `mixed`.
#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    /// Simulated users (each: one IDLE session plus a loop of short ones).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Seconds of activity.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Share of sessions over implicit TLS, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub tls_share: f64,
    /// New messages per second, for random users.
    #[arg(long, default_value_t = 50.0)]
    pub deliver_rate: f64,
    /// Size of delivered messages, bytes.
    #[arg(long, default_value_t = 20_000)]
    pub message_size: usize,
    /// Longest think time between short sessions, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub think_ms: u64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// What one client thread measured.
#[derive(Default)]
struct ThreadResult {
    login: Latency,
    fetch: Latency,
}

/// The desktop session: IDLE, and on each new message DONE, FETCH, IDLE;
/// after the deadline it leaves at its next wake-up. (A TLS read must not
/// be cancelled and the stream reused, so it never times out a wait; the
/// thread wakes it with one last delivery instead.)
async fn desktop(
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    user: String,
    deadline: Instant,
    counters: Arc<Counters>,
    active: Rc<Cell<bool>>,
) -> std::io::Result<()> {
    let session = async {
        let mut client = ImapClient::connect(endpoint, &tls).await?;
        client.login(&user, PASSWORD).await?;
        client.expect_ok("SELECT INBOX", "SELECT").await?;
        counters.opened();
        let result = async {
            while Instant::now() < deadline {
                let tag = client.idle().await?;
                client.idle_wait().await?;
                client.idle_done(&tag).await?;
                let reply = client.expect_ok("FETCH * BODY.PEEK[]", "FETCH").await?;
                counters.add_bytes(reply.literal_bytes);
                counters.ok();
            }
            Ok(())
        }
        .await;
        counters.closed();
        let _ = client.logout().await;
        result
    };
    let result = session.await;
    active.set(false);
    result
}

/// What a phone loop needs.
struct Phone {
    endpoints: (Endpoint, Endpoint),
    tls_share: f64,
    tls: Arc<rustls::ClientConfig>,
    user: String,
    deadline: Instant,
    think: Duration,
    seed: u64,
    counters: Arc<Counters>,
    result: Rc<RefCell<ThreadResult>>,
}

/// The phone loop: short sessions until the deadline.
async fn phone(p: Phone) {
    let mut rng = Rng::new(p.seed);
    while Instant::now() < p.deadline {
        let use_tls = (rng.below(1000) as f64) < p.tls_share * 1000.0;
        let endpoint = if use_tls {
            p.endpoints.1
        } else {
            p.endpoints.0
        };
        let session = async {
            let started = Instant::now();
            let mut client = ImapClient::connect(endpoint, &p.tls).await?;
            client.login(&p.user, PASSWORD).await?;
            p.result.borrow_mut().login.record(started.elapsed());
            p.counters.ok();
            client.expect_ok("SELECT INBOX", "SELECT").await?;
            let started = Instant::now();
            let reply = client.expect_ok("FETCH * BODY.PEEK[]", "FETCH").await?;
            p.result.borrow_mut().fetch.record(started.elapsed());
            p.counters.add_bytes(reply.literal_bytes);
            p.counters.ok();
            client.logout().await
        };
        if session.await.is_err() {
            p.counters.error();
        }
        monoio::time::sleep(rng.between(Duration::ZERO, p.think)).await;
    }
}

/// Runs `mixed`.
pub fn run(args: &MixedArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("mixed", &harness);
    let counters = harness.fresh_counters();
    let endpoints = (
        harness.endpoint(Protocol::Imap, Transport::Plain)?,
        harness.endpoint(Protocol::Imap, Transport::Tls)?,
    );
    let threads = harness.args.client_threads.max(1);
    let duration = Duration::from_secs_f64(args.duration.max(0.5));
    let store = harness.backends().store().clone();
    let body = message(args.message_size);
    let cfg = args.clone();
    let before = harness.target_sample();
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            let store = store.clone();
            let body = body.clone();
            let cfg = cfg.clone();
            async move {
                let tls = client_config(true);
                let deadline = Instant::now() + duration;
                let result = Rc::new(RefCell::new(ThreadResult::default()));
                let think = Duration::from_millis(cfg.think_ms.max(1));
                let mut tasks = Vec::new();
                let mut desktops = Vec::new();
                for u in (t..cfg.users).step_by(threads) {
                    let user = user_name("mixed", u);
                    let ep = if (u % 100) as f64 / 100.0 < cfg.tls_share {
                        endpoints.1
                    } else {
                        endpoints.0
                    };
                    let active = Rc::new(Cell::new(true));
                    desktops.push((user.clone(), active.clone()));
                    let (c, tls2, user2) = (counters.clone(), tls.clone(), user.clone());
                    tasks.push(monoio::spawn(async move {
                        if desktop(ep, tls2, user2, deadline, c.clone(), active)
                            .await
                            .is_err()
                        {
                            c.error();
                        }
                    }));
                    let (c, tls2, r) = (counters.clone(), tls.clone(), result.clone());
                    let share = cfg.tls_share;
                    tasks.push(monoio::spawn(async move {
                        phone(Phone {
                            endpoints,
                            tls_share: share,
                            tls: tls2,
                            user,
                            deadline,
                            think,
                            seed: u as u64,
                            counters: c,
                            result: r,
                        })
                        .await
                    }));
                }
                let mut rng = Rng::new(42 + t as u64);
                let gap = Duration::from_secs_f64(threads as f64 / cfg.deliver_rate.max(0.01));
                while Instant::now() < deadline {
                    if cfg.deliver_rate > 0.0 && !desktops.is_empty() {
                        let (user, _) = &desktops[rng.below(desktops.len() as u64) as usize];
                        let _ = store.deliver(user, "INBOX", body.clone());
                    }
                    monoio::time::sleep(
                        gap.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                // Wake the desktop sessions still in IDLE so they leave.
                let give_up = Instant::now() + Duration::from_secs(10);
                while desktops.iter().any(|(_, a)| a.get()) && Instant::now() < give_up {
                    for (user, _) in desktops.iter().filter(|(_, a)| a.get()) {
                        let _ =
                            store.deliver(user, "INBOX", b"Subject: bye\r\n\r\nbye\r\n".to_vec());
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
                for task in tasks {
                    task.await;
                }
                result.take()
            }
        })
    };
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        &harness,
        "mixed",
        Progress::Duration(duration),
        Vec::new(),
        |_| finished(),
    );
    let (results, client_cpu) = join(handles);
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let login = merged(results.iter().map(|r| &r.login)).summary();
    let fetch = merged(results.iter().map(|r| &r.fetch)).summary();
    let (ok, errors, _, bytes) = counters.snapshot();
    let director_busy = after.cpu.saturating_sub(before.cpu).as_secs_f64() / elapsed;
    report.line(format!(
        "{} users over {:.0} s: {} operations ({:.0}/s), {} failed sessions, {:.1} MB of mail fetched",
        args.users,
        elapsed,
        ok,
        ok as f64 / elapsed,
        errors,
        bytes as f64 / 1e6
    ));
    report.line(format!("login {login}"));
    report.line(format!("fetch {fetch}"));
    report.line(format!(
        "director {:.2} cores busy, RSS {:.1} MiB; client {:.2} cores",
        director_busy,
        after.rss_bytes as f64 / 1048576.0,
        client_cpu.as_secs_f64() / elapsed
    ));
    report.work = ok;
    report.errors = errors;
    report.timeline = timeline;
    report.results = json!({
        "users": args.users,
        "operations": ok,
        "failed_sessions": errors,
        "bytes": bytes,
        "login": login,
        "fetch": fetch,
        "director_cores_busy": director_busy,
    });
    crate::report::finish(report, &harness)
}
