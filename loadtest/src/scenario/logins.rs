//! `logins`: open-loop login arrivals at a set rate; latency from each
//! login's *scheduled* start to the backend's `OK` (no coordinated
//! omission: a late client thread or a slow director shows up as latency,
//! not as a lower offered rate). `--find` searches the highest rate whose
//! p99 stays within `--p99-ms` with under 0.1 % failures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{user_name, Modes, PASSWORD};
use crate::client::conn::Endpoint;
use crate::client::imap::ImapClient;
use crate::client::tls::client_config;
use crate::harness::{mode_name, CommonArgs, Harness};
use crate::metrics::{merged, Latency, LatencySummary};
use crate::procstat;
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Event, Progress};
use crate::timeline::Timeline;

/// A login that takes longer than this counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of one open-loop login load.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Offered logins per second (all client threads together).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Distinct users the logins cycle through.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Resume TLS sessions (tickets) on later connections.
    #[arg(long)]
    pub resume: bool,
    /// Logins in flight per client thread before new ones count as failed.
    #[arg(long, default_value_t = 4000)]
    pub max_inflight: usize,
}

/// Options of `logins`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginsArgs {
    #[command(flatten)]
    /// The load.
    pub load: LoadArgs,
    /// Transports to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Modes,
    /// Search the highest rate with p99 <= --p99-ms, starting at --rate.
    #[arg(long)]
    pub find: bool,
    /// The latency bound of --find.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// The figures of one load step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Plain or TLS.
    pub mode: &'static str,
    /// Offered logins/s.
    pub offered: f64,
    /// Completed logins/s.
    pub achieved: f64,
    /// Completed logins.
    pub ok: u64,
    /// Failed logins (refused, timed out, or over the in-flight cap).
    pub errors: u64,
    /// Latency from scheduled start to LOGIN OK.
    pub latency: LatencySummary,
    /// Director CPU over the step, in cores.
    pub director_cores_busy: f64,
    /// Client threads' CPU, in cores.
    pub client_cores_busy: f64,
    /// Simulated backends' CPU, in cores.
    pub backend_cores_busy: f64,
    /// Every login (user, when it ended, whether it succeeded), when the
    /// step was asked to record them.
    #[serde(skip)]
    pub records: Vec<LoginRecord>,
}

/// One login as seen by the client: user, when it ended, success.
pub type LoginRecord = (String, Instant, bool);

impl StepResult {
    /// Logins/s per busy director core.
    pub fn per_director_core(&self) -> f64 {
        if self.director_cores_busy > 0.0 {
            self.achieved / self.director_cores_busy
        } else {
            0.0
        }
    }

    /// Whether the step met the bound.
    pub fn passes(&self, p99_ms: f64) -> bool {
        let total = self.ok + self.errors;
        self.latency.p99_ms <= p99_ms && total > 0 && self.errors * 1000 <= total
    }

    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "{} offered {:.0}/s: {:.0} logins/s, {} failed, {}; director {:.2} cores busy ({:.0} logins/s per core), client {:.2}, backends {:.2}",
            self.mode,
            self.offered,
            self.achieved,
            self.errors,
            self.latency,
            self.director_cores_busy,
            self.per_director_core(),
            self.client_cores_busy,
            self.backend_cores_busy
        )
    }
}

/// One login: connect, LOGIN, and LOGOUT after the measurement.
async fn login_once(
    endpoint: Endpoint,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    user: &str,
    due: Instant,
) -> std::io::Result<Duration> {
    let mut client = ImapClient::connect(endpoint, tls).await?;
    client.login(user, PASSWORD).await?;
    let latency = due.elapsed();
    let _ = client.logout().await;
    Ok(latency)
}

/// Runs one open-loop step of `load` over `tls`; `events` fire during it.
pub fn run_step(
    harness: &mut Harness,
    load: &LoadArgs,
    tls: bool,
    prefix: &'static str,
    events: Vec<Event<'_>>,
    record: bool,
) -> Result<(StepResult, Timeline), String> {
    let counters = harness.fresh_counters();
    let endpoint = harness.endpoint(tls)?;
    let threads = harness.args.client_threads.max(1);
    let rate = load.rate.max(0.1) / threads as f64;
    let duration = Duration::from_secs_f64(load.duration.max(0.1));
    let per_thread = (rate * duration.as_secs_f64()).ceil() as u64;
    let (users, resume, max_inflight) = (load.users.max(1), load.resume, load.max_inflight);
    let before = harness.target_sample();
    let backend_before = procstat::own_threads_cpu("dev-backends");
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            async move {
                let tls_config = client_config(resume);
                let latency = Rc::new(RefCell::new(Latency::new()));
                let records: Rc<RefCell<Vec<LoginRecord>>> = Rc::default();
                let inflight = Rc::new(Cell::new(0usize));
                let start = Instant::now();
                let interval = Duration::from_secs_f64(1.0 / rate);
                for k in 0..per_thread {
                    let due = start + interval.mul_f64(k as f64);
                    if due > Instant::now() {
                        monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
                    }
                    if inflight.get() >= max_inflight {
                        counters.error();
                        continue;
                    }
                    inflight.set(inflight.get() + 1);
                    let user = user_name(prefix, (k as usize * threads + t) % users);
                    let (latency, inflight) = (latency.clone(), inflight.clone());
                    let (counters, tls_config) = (counters.clone(), tls_config.clone());
                    let records = records.clone();
                    monoio::spawn(async move {
                        let attempt = monoio::time::timeout(
                            LOGIN_TIMEOUT,
                            login_once(endpoint, &tls_config, &user, due),
                        )
                        .await;
                        let ok = matches!(attempt, Ok(Ok(_)));
                        match attempt {
                            Ok(Ok(l)) => {
                                latency.borrow_mut().record(l);
                                counters.ok();
                            }
                            _ => counters.error(),
                        }
                        if record {
                            records.borrow_mut().push((user, Instant::now(), ok));
                        }
                        inflight.set(inflight.get() - 1);
                    });
                }
                while inflight.get() > 0 {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
                (latency.take(), records.take())
            }
        })
    };
    let label = format!("logins {}", mode_name(tls));
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        harness,
        &label,
        Progress::Duration(duration),
        events,
        |_| finished(),
    );
    let (per_thread, client_cpu) = join(handles);
    let (latencies, records): (Vec<_>, Vec<_>) = per_thread.into_iter().unzip();
    let records: Vec<LoginRecord> = records.into_iter().flatten().collect();
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let (ok, errors, _, _) = counters.snapshot();
    let busy = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / elapsed;
    let result = StepResult {
        mode: mode_name(tls),
        offered: load.rate,
        achieved: ok as f64 / duration.as_secs_f64().min(elapsed),
        ok,
        errors,
        latency: merged(latencies.iter()).summary(),
        director_cores_busy: busy(before.cpu, after.cpu),
        client_cores_busy: client_cpu.as_secs_f64() / elapsed,
        backend_cores_busy: busy(backend_before, procstat::own_threads_cpu("dev-backends")),
        records,
    };
    Ok((result, timeline))
}

/// Searches the highest passing rate: ×1.5 steps up from `load.rate` until
/// one fails, then three bisections. Returns every step and the best.
pub fn find_rate(
    harness: &mut Harness,
    load: &LoadArgs,
    tls: bool,
    p99_ms: f64,
    report: &mut Report,
) -> Result<Option<StepResult>, String> {
    let mut best: Option<StepResult> = None;
    let mut failed: Option<f64> = None;
    let mut rate = load.rate;
    let prefix = if tls { "logint" } else { "loginp" };
    for _ in 0..12 {
        let step = LoadArgs {
            rate,
            ..load.clone()
        };
        let (r, timeline) = run_step(harness, &step, tls, prefix, Vec::new(), false)?;
        report.line(format!("step: {}", r.line()));
        report.timeline.append(timeline);
        report.work += r.ok;
        report.errors += r.errors;
        if r.passes(p99_ms) {
            best = Some(r);
        } else {
            failed = Some(rate);
        }
        let low = best.as_ref().map(|b| b.offered).unwrap_or(0.0);
        rate = match failed {
            None => rate * 1.5,
            Some(high) if high - low > high * 0.08 => (low + high) / 2.0,
            Some(_) => break,
        };
    }
    Ok(best)
}

/// Runs `logins`.
pub fn run(args: &LoginsArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("logins", &harness);
    let mut results = Vec::new();
    for tls in args.mode.list() {
        if args.find {
            let best = find_rate(&mut harness, &args.load, tls, args.p99_ms, &mut report)?;
            match &best {
                Some(b) => report.line(format!(
                    "{}: highest rate with p99 <= {} ms: {:.0} logins/s ({:.0} per busy director core)",
                    mode_name(tls),
                    args.p99_ms,
                    b.achieved,
                    b.per_director_core()
                )),
                None => report.line(format!(
                    "{}: no rate met p99 <= {} ms",
                    mode_name(tls),
                    args.p99_ms
                )),
            }
            results
                .push(json!({ "mode": mode_name(tls), "find_p99_ms": args.p99_ms, "best": best }));
        } else {
            let prefix = if tls { "logint" } else { "loginp" };
            let (r, timeline) = run_step(&mut harness, &args.load, tls, prefix, Vec::new(), false)?;
            report.line(r.line());
            report.timeline.append(timeline);
            report.work += r.ok;
            report.errors += r.errors;
            results.push(json!({ "mode": mode_name(tls), "step": r }));
        }
    }
    report.results = json!({ "resume": args.load.resume, "modes": results });
    crate::report::finish(report, &harness)
}
