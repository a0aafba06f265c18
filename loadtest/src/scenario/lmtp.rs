//! `lmtp`: mail delivery throughput through the director's LMTP listener
//! against straight into a simulated backend's LMTP server.
//!
//! `--conns` connections each run transactions of `--recipients`
//! recipients carrying a `--size` message. Recipients cycle through
//! `--users` users, so one transaction's recipients live on different
//! backends and the director splits it. Closed loop by default (each
//! connection sends its next transaction as soon as the last one ended);
//! `--rate` makes it open loop: transactions are scheduled at that rate
//! and each one's latency runs from its *scheduled* start, so a backlog
//! shows as latency (no coordinated omission).
//!
//! Nothing lost: afterwards the messages the shared store holds for the
//! run's users are counted and compared with the recipients that got a
//! `250` after the message. Both are reported; a mismatch is an error.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::config::Protocol;
use serde::Serialize;
use serde_json::json;

use super::{message, stored_and_cleared, user_name};
use crate::client::conn::{Endpoint, Transport};
use crate::client::lmtp::{DataBody, LmtpClient};
use crate::client::tls::client_config;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Counters, Latency, LatencySummary};
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Progress};

/// A transaction that takes longer than this fails (and so does its
/// connection).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// An open-loop transaction still unsent this long after its scheduled
/// start is given up and counted as failed, so an overloaded target ends
/// the run instead of queueing without bound.
const MAX_LATENESS: Duration = Duration::from_secs(10);
/// The envelope sender of every transaction.
const SENDER: &str = "loadtest@example.org";

/// Options of `lmtp`.
#[derive(Debug, Clone, clap::Args)]
pub struct LmtpArgs {
    /// Concurrent LMTP connections (all client threads together).
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Recipients per transaction.
    #[arg(long, default_value_t = 3)]
    pub recipients: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10_000)]
    pub size: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Offered transactions per second (open loop); without it, each
    /// connection runs transactions back to back (closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Distinct users the recipients cycle through.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Skip the direct-to-backend baseline.
    #[arg(long)]
    pub no_direct: bool,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// The figures of one LMTP measurement.
#[derive(Debug, Clone, Serialize)]
pub struct LmtpResult {
    /// "mailpin" (or the peer's name) or "direct".
    pub path: String,
    /// Offered transactions/s (open loop), or null (closed loop).
    pub offered: Option<f64>,
    /// Whether the server offered PIPELINING (and it was used).
    pub pipelining: bool,
    /// Transactions whose every recipient was delivered.
    pub transactions: u64,
    /// Transactions with a failed recipient, a broken connection, or given
    /// up unsent.
    pub failed_transactions: u64,
    /// Completed transactions per second.
    pub transactions_per_s: f64,
    /// Recipients that got `250` after the message.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Recipients refused or not acknowledged.
    pub failed_recipients: u64,
    /// Transaction latency (open loop: from its scheduled start; closed
    /// loop: from MAIL FROM) to the last recipient's reply.
    pub latency: LatencySummary,
    /// Messages the store holds for the run's users afterwards.
    pub stored: u64,
    /// Acknowledged deliveries missing from the store.
    pub lost: u64,
    /// Stored messages never acknowledged (a connection broke after the
    /// message went through).
    pub unacknowledged: u64,
    /// Director CPU over the run, in cores.
    pub director_cores_busy: f64,
    /// Client threads' CPU, in cores.
    pub client_cores_busy: f64,
}

/// What one client thread counted.
#[derive(Default)]
struct Tally {
    latency: Latency,
    deliveries: u64,
    failed_recipients: u64,
    pipelining: bool,
}

/// What every connection of a measurement shares.
struct Plan {
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    prefix: &'static str,
    users: usize,
    recipients: usize,
    body: DataBody,
    counters: Arc<Counters>,
    tally: Rc<RefCell<Tally>>,
    /// Open loop: the schedule's start and interval.
    schedule: Option<(Instant, Duration)>,
    deadline: Instant,
    /// The next transaction index of this thread (shared by its
    /// connections: a free connection takes the oldest unsent one).
    next: Rc<Cell<u64>>,
    /// Global index = thread + k * threads.
    thread: usize,
    threads: usize,
}

impl Plan {
    /// The recipients of global transaction `g`: consecutive users, so
    /// they hash to different backends.
    fn recipients_of(&self, g: u64) -> Vec<String> {
        (0..self.recipients)
            .map(|r| {
                let i = (g as usize).wrapping_mul(self.recipients).wrapping_add(r) % self.users;
                user_name(self.prefix, i)
            })
            .collect()
    }
}

/// One transaction on `client`; true if every recipient was delivered.
async fn transaction(
    client: &mut LmtpClient,
    plan: &Plan,
    recipients: &[String],
) -> std::io::Result<bool> {
    let outcomes = client.send(SENDER, recipients, &plan.body).await?;
    let delivered = outcomes.iter().filter(|o| o.delivered()).count() as u64;
    let mut tally = plan.tally.borrow_mut();
    tally.deliveries += delivered;
    tally.failed_recipients += outcomes.len() as u64 - delivered;
    plan.counters
        .add_bytes(delivered * plan.body.bytes().len() as u64);
    Ok(delivered == outcomes.len() as u64)
}

/// One connection's loop: takes transactions until the schedule or the
/// duration ends, reconnecting after a failure.
async fn connection(plan: Rc<Plan>) {
    let mut client: Option<LmtpClient> = None;
    loop {
        let k = plan.next.get();
        let g = k * plan.threads as u64 + plan.thread as u64;
        let due = match plan.schedule {
            Some((start, interval)) => start + interval.mul_f64(k as f64),
            None => Instant::now(),
        };
        if due >= plan.deadline {
            break;
        }
        plan.next.set(k + 1);
        if due > Instant::now() {
            monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
        } else if due.elapsed() > MAX_LATENESS {
            plan.counters.error();
            continue;
        }
        let recipients = plan.recipients_of(g);
        let attempt = monoio::time::timeout(TRANSACTION_TIMEOUT, async {
            if client.is_none() {
                let c = LmtpClient::connect(plan.endpoint, &plan.tls).await?;
                plan.tally.borrow_mut().pipelining |= c.pipelining();
                client = Some(c);
            }
            match client.as_mut() {
                Some(c) => transaction(c, &plan, &recipients).await,
                None => Err(std::io::Error::other("no connection")),
            }
        })
        .await;
        match attempt {
            Ok(Ok(all_delivered)) => {
                plan.tally.borrow_mut().latency.record(due.elapsed());
                if all_delivered {
                    plan.counters.ok();
                } else {
                    plan.counters.error();
                }
            }
            Ok(Err(_)) | Err(_) => {
                // The connection is in an unknown state: drop it. Its
                // recipients were not acknowledged.
                client = None;
                plan.tally.borrow_mut().failed_recipients += recipients.len() as u64;
                plan.counters.error();
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if let Some(c) = client {
        let _ = c.quit().await;
    }
}

/// Runs one measurement against `endpoint`; `prefix` names its users.
pub fn measure(
    harness: &mut Harness,
    args: &LmtpArgs,
    endpoint: Endpoint,
    path: &str,
    prefix: &'static str,
    report: &mut Report,
) -> Result<LmtpResult, String> {
    let counters = harness.fresh_counters();
    let threads = harness.args.client_threads.max(1);
    let conns = args.conns.max(1);
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let users = args.users.max(1);
    let recipients = args.recipients.max(1);
    let body = DataBody::new(&message(args.size));
    let rate = args.rate.filter(|r| *r > 0.0);
    stored_and_cleared(harness.backends().store(), prefix, users);
    let before = harness.target_sample();
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            let body = body.clone();
            async move {
                let start = Instant::now();
                let tally: Rc<RefCell<Tally>> = Rc::default();
                let plan = Rc::new(Plan {
                    endpoint,
                    tls: client_config(false),
                    prefix,
                    users,
                    recipients,
                    body,
                    counters,
                    tally: tally.clone(),
                    schedule: rate.map(|r| (start, Duration::from_secs_f64(threads as f64 / r))),
                    deadline: start + duration,
                    next: Rc::new(Cell::new(0)),
                    thread: t,
                    threads,
                });
                let mine = (t..conns).step_by(threads).count();
                let tasks: Vec<_> = (0..mine)
                    .map(|_| monoio::spawn(connection(plan.clone())))
                    .collect();
                for task in tasks {
                    task.await;
                }
                tally.take()
            }
        })
    };
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        harness,
        &format!("lmtp {path}"),
        Progress::Duration(duration),
        Vec::new(),
        |_| finished(),
    );
    let (tallies, client_cpu) = join(handles);
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let (ok, errors, _, _) = counters.snapshot();
    let deliveries: u64 = tallies.iter().map(|t| t.deliveries).sum();
    let stored = stored_and_cleared(harness.backends().store(), prefix, users);
    let measured = duration.as_secs_f64().min(elapsed);
    let result = LmtpResult {
        path: path.to_owned(),
        offered: rate,
        pipelining: tallies.iter().any(|t| t.pipelining),
        transactions: ok,
        failed_transactions: errors,
        transactions_per_s: ok as f64 / measured,
        deliveries,
        deliveries_per_s: deliveries as f64 / measured,
        failed_recipients: tallies.iter().map(|t| t.failed_recipients).sum(),
        latency: merged(tallies.iter().map(|t| &t.latency)).summary(),
        stored,
        lost: deliveries.saturating_sub(stored),
        unacknowledged: stored.saturating_sub(deliveries),
        director_cores_busy: after.cpu.saturating_sub(before.cpu).as_secs_f64() / elapsed,
        client_cores_busy: client_cpu.as_secs_f64() / elapsed,
    };
    let offered = match rate {
        Some(r) => format!("offered {r:.0}/s"),
        None => "closed loop".to_owned(),
    };
    report.line(format!(
        "{path} ({offered}, {conns} conns, {recipients} rcpt of {} bytes{}): {:.0} transactions/s, {:.0} deliveries/s, {} failed transactions, {} failed recipients; transaction {}; director {:.2} cores busy, client {:.2}",
        args.size,
        if result.pipelining { ", pipelined" } else { "" },
        result.transactions_per_s,
        result.deliveries_per_s,
        errors,
        result.failed_recipients,
        result.latency,
        result.director_cores_busy,
        result.client_cores_busy
    ));
    if result.lost == 0 && result.unacknowledged == 0 {
        report.line(format!(
            "{path}: nothing lost: {deliveries} acknowledged, {stored} stored"
        ));
    } else {
        report.line(format!(
            "{path}: MISMATCH: {deliveries} acknowledged, {stored} stored ({} lost, {} unacknowledged)",
            result.lost, result.unacknowledged
        ));
    }
    report.timeline.append(timeline);
    report.work += ok;
    report.errors += errors + result.lost + result.unacknowledged;
    Ok(result)
}

/// Runs `lmtp`.
pub fn run(args: &LmtpArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("lmtp", &harness);
    let endpoint = harness.endpoint(Protocol::Lmtp, Transport::Plain)?;
    let name = harness.args.target_name.clone();
    let mut results = vec![measure(
        &mut harness,
        args,
        endpoint,
        &name,
        "lmtpm",
        &mut report,
    )?];
    if !args.no_direct {
        let direct = harness.direct_endpoint(Protocol::Lmtp)?;
        let d = measure(&mut harness, args, direct, "direct", "lmtpd", &mut report)?;
        if d.deliveries_per_s > 0.0 {
            report.line(format!(
                "{name}: {:.0} % of direct deliveries/s",
                100.0 * results[0].deliveries_per_s / d.deliveries_per_s
            ));
        }
        results.push(d);
    }
    let lost: u64 = results.iter().map(|r| r.lost).sum();
    let unacknowledged: u64 = results.iter().map(|r| r.unacknowledged).sum();
    report.results = json!({
        "size": args.size,
        "conns": args.conns,
        "recipients": args.recipients,
        "rate": args.rate,
        "lost": lost,
        "unacknowledged": unacknowledged,
        "paths": results,
    });
    crate::report::finish(report, &harness)
}
