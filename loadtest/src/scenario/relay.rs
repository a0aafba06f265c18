//! `relay`: large FETCH throughput through the director against straight
//! to a simulated backend. Each connection's user gets one message of
//! `--size` bytes (delivered into the shared store), then the connection
//! fetches its body over and over for `--duration`; the bytes counted are
//! the message bodies received.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{message, user_name, Modes, PASSWORD};
use mailpin::config::Protocol;

use crate::client::conn::Endpoint;
use crate::client::imap::ImapClient;
use crate::client::tls::client_config;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Latency, LatencySummary};
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Progress};

/// Options of `relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Message size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
    /// Concurrent connections (all client threads together).
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Transports through the director (the direct run is always plain).
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Modes,
    /// Skip the direct-to-backend baseline.
    #[arg(long)]
    pub no_direct: bool,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// The figures of one relay measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RelayResult {
    /// "director plain", "director TLS" or "direct".
    pub path: String,
    /// Body bytes per second received.
    pub bytes_per_s: f64,
    /// Completed FETCHes.
    pub fetches: u64,
    /// Failed connections or FETCHes.
    pub errors: u64,
    /// FETCH latency (command to tagged OK).
    pub fetch_latency: LatencySummary,
    /// Director CPU over the run, in cores.
    pub director_cores_busy: f64,
    /// Client threads' CPU, in cores.
    pub client_cores_busy: f64,
}

/// Fetches `uid` of the user's INBOX until `deadline`.
async fn fetch_loop(
    endpoint: Endpoint,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    user: &str,
    uid: u32,
    deadline: Instant,
    counters: &crate::metrics::Counters,
    latency: &RefCell<Latency>,
) -> std::io::Result<()> {
    let mut client = ImapClient::connect(endpoint, tls).await?;
    client.login(user, PASSWORD).await?;
    client.expect_ok("SELECT INBOX", "SELECT").await?;
    let command = format!("UID FETCH {uid} BODY.PEEK[]");
    while Instant::now() < deadline {
        let started = Instant::now();
        let reply = client.expect_ok(&command, "FETCH").await?;
        latency.borrow_mut().record(started.elapsed());
        counters.add_bytes(reply.literal_bytes);
        counters.ok();
    }
    client.logout().await
}

/// Runs one measurement against `endpoint`.
pub fn measure(
    harness: &mut Harness,
    args: &RelayArgs,
    endpoint: Endpoint,
    path: &str,
    report: &mut Report,
) -> Result<RelayResult, String> {
    let counters = harness.fresh_counters();
    let conns = args.conns.max(1);
    let body = message(args.size);
    let mut uids = Vec::with_capacity(conns);
    for i in 0..conns {
        let user = user_name("relay", i);
        let uid = harness
            .backends()
            .store()
            .deliver(&user, "INBOX", body.clone())
            .map_err(|e| format!("delivering the test message: {e:?}"))?;
        uids.push(uid);
    }
    let threads = harness.args.client_threads.max(1);
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let before = harness.target_sample();
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            let uids = uids.clone();
            async move {
                let tls_config = client_config(false);
                let latency = Rc::new(RefCell::new(Latency::new()));
                let deadline = Instant::now() + duration;
                let mut tasks = Vec::new();
                for (i, uid) in uids.into_iter().enumerate().skip(t).step_by(threads) {
                    let (counters, latency) = (counters.clone(), latency.clone());
                    let tls_config = tls_config.clone();
                    tasks.push(monoio::spawn(async move {
                        let user = user_name("relay", i);
                        let r = fetch_loop(
                            endpoint,
                            &tls_config,
                            &user,
                            uid,
                            deadline,
                            &counters,
                            &latency,
                        )
                        .await;
                        if r.is_err() {
                            counters.error();
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                latency.take()
            }
        })
    };
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        harness,
        &format!("relay {path}"),
        Progress::Duration(duration),
        Vec::new(),
        |_| finished(),
    );
    let (latencies, client_cpu) = join(handles);
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let (ok, errors, _, bytes) = counters.snapshot();
    let result = RelayResult {
        path: path.to_owned(),
        bytes_per_s: bytes as f64 / elapsed,
        fetches: ok,
        errors,
        fetch_latency: merged(latencies.iter()).summary(),
        director_cores_busy: after.cpu.saturating_sub(before.cpu).as_secs_f64() / elapsed,
        client_cores_busy: client_cpu.as_secs_f64() / elapsed,
    };
    report.line(format!(
        "{path}: {:.2} GB/s ({} fetches of {} bytes, {} failed); FETCH {}; director {:.2} cores busy, client {:.2}",
        result.bytes_per_s / 1e9,
        ok,
        args.size,
        errors,
        result.fetch_latency,
        result.director_cores_busy,
        result.client_cores_busy
    ));
    report.timeline.append(timeline);
    report.work += ok;
    report.errors += errors;
    Ok(result)
}

/// Runs `relay`.
pub fn run(args: &RelayArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("relay", &harness);
    let mut results = Vec::new();
    for transport in args.mode.list() {
        let endpoint = harness.endpoint(Protocol::Imap, transport)?;
        let path = format!("{} {}", harness.args.target_name, transport.name());
        results.push(measure(&mut harness, args, endpoint, &path, &mut report)?);
    }
    if !args.no_direct {
        let direct = harness.direct_endpoint(Protocol::Imap)?;
        let r = measure(&mut harness, args, direct, "direct", &mut report)?;
        for d in &results {
            if r.bytes_per_s > 0.0 {
                report.line(format!(
                    "{}: {:.0} % of direct",
                    d.path,
                    100.0 * d.bytes_per_s / r.bytes_per_s
                ));
            }
        }
        results.push(r);
    }
    report.results = json!({ "size": args.size, "conns": args.conns, "paths": results });
    crate::report::finish(report, &harness)
}
