//! `logins`: open-loop login arrivals at a set rate; latency from each
//! login's *scheduled* start to the backend's `OK` (no coordinated
//! omission: a late client thread or a slow director shows up as latency,
//! not as a lower offered rate). `--find` searches the highest rate whose
//! p99 stays within `--p99-ms` with under 0.1 % failures. IMAP (LOGIN) or
//! POP3 (USER/PASS) — or, with `--mech`, OAUTHBEARER or SCRAM-SHA-256
//! relayed by the director — over plain, STARTTLS/STLS or implicit TLS; with
//! `--resume` each client thread keeps one ticket store, and the report
//! gives the share of TLS handshakes that resumed.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use mailpin::config::Protocol;

use super::{user_name, Modes, PASSWORD};
use crate::client::conn::{Endpoint, Transport};
use crate::client::imap::ImapClient;
use crate::client::pop3::Pop3Client;
use crate::client::sasl::{LoginMech, SaslLogin};
use crate::client::tls::client_config;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Latency, LatencySummary};
use crate::procstat;
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Event, Progress};
use crate::timeline::Timeline;

/// The name prefix of the simulated backends' threads ("dev-backends",
/// "dev-protocols").
const DEV_THREADS: &str = "dev-";

/// A login that takes longer than this counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol a login load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoginProtocol {
    /// IMAP: greeting, LOGIN, LOGOUT.
    #[default]
    Imap,
    /// POP3: greeting, USER, PASS, QUIT.
    Pop3,
}

impl LoginProtocol {
    /// The director's name for it.
    pub fn protocol(self) -> Protocol {
        match self {
            LoginProtocol::Imap => Protocol::Imap,
            LoginProtocol::Pop3 => Protocol::Pop3,
        }
    }
}

/// Options of one open-loop login load.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The protocol the clients log in with.
    #[arg(long, value_enum, default_value = "imap")]
    pub protocol: LoginProtocol,
    /// Offered logins per second (all client threads together).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Distinct users the logins cycle through.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Resume TLS sessions (tickets, one store per client thread) on later
    /// connections.
    #[arg(long)]
    pub resume: bool,
    /// Logins in flight per client thread before new ones count as failed.
    #[arg(long, default_value_t = 4000)]
    pub max_inflight: usize,
    /// How the clients authenticate: `plain` (LOGIN, USER/PASS),
    /// `oauthbearer` or `scram-sha-256` (AUTHENTICATE/AUTH with SASL-IR).
    #[arg(long, value_enum, default_value = "plain")]
    pub mech: LoginMech,
}

/// Options of `logins`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginsArgs {
    #[command(flatten)]
    /// The load.
    pub load: LoadArgs,
    /// Transports to measure (`both`: plain and implicit TLS; `all`:
    /// plain, STARTTLS and implicit TLS).
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
    /// imap or pop3.
    pub protocol: &'static str,
    /// plain, oauthbearer or scram-sha-256.
    pub mech: &'static str,
    /// plain, STARTTLS or TLS.
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
    /// Simulated backends' CPU (IMAP, POP3 and LMTP threads), in cores.
    pub backend_cores_busy: f64,
    /// TLS handshakes of the successful logins.
    pub tls_handshakes: u64,
    /// How many of them resumed an earlier session.
    pub tls_resumed: u64,
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
        let resumed = if self.tls_handshakes > 0 {
            format!(
                "; {:.0} % of {} TLS handshakes resumed",
                100.0 * self.tls_resumed as f64 / self.tls_handshakes as f64,
                self.tls_handshakes
            )
        } else {
            String::new()
        };
        format!(
            "{} {} {} offered {:.0}/s: {:.0} logins/s, {} failed, {}; director {:.2} cores busy ({:.0} logins/s per core), client {:.2}, backends {:.2}{resumed}",
            self.protocol,
            self.mech,
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

/// One login: connect (and STARTTLS), log in, and log out after the
/// measurement. Returns the latency from `due` and whether TLS resumed.
pub async fn login_once(
    protocol: LoginProtocol,
    mech: LoginMech,
    endpoint: Endpoint,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    user: &str,
    due: Instant,
) -> std::io::Result<(Duration, Option<bool>)> {
    match protocol {
        LoginProtocol::Imap => {
            let mut client = ImapClient::connect(endpoint, tls).await?;
            match sasl_login(mech, user, endpoint) {
                Some(mut login) => client.authenticate(&mut login).await?,
                None => client.login(user, PASSWORD).await?,
            }
            let latency = due.elapsed();
            let resumed = client.resumed();
            let _ = client.logout().await;
            Ok((latency, resumed))
        }
        LoginProtocol::Pop3 => {
            let mut client = Pop3Client::connect(endpoint, tls).await?;
            match sasl_login(mech, user, endpoint) {
                Some(mut login) => client.authenticate(&mut login).await?,
                None => client.login(user, PASSWORD).await?,
            }
            let latency = due.elapsed();
            let resumed = client.resumed();
            let _ = client.quit().await;
            Ok((latency, resumed))
        }
    }
}

/// The SASL login of `mech`, or `None` for LOGIN / USER-PASS.
fn sasl_login(mech: LoginMech, user: &str, endpoint: Endpoint) -> Option<SaslLogin> {
    if mech == LoginMech::Plain {
        return None;
    }
    let host = endpoint.addr.ip().to_string();
    Some(SaslLogin::start(
        mech,
        user,
        PASSWORD,
        &host,
        endpoint.addr.port(),
    ))
}

/// What one client thread of a step measured.
#[derive(Default)]
struct ThreadTally {
    latency: Latency,
    records: Vec<LoginRecord>,
    tls_handshakes: u64,
    tls_resumed: u64,
}

/// Runs one open-loop step of `load` over `transport`; `events` fire
/// during it.
pub fn run_step(
    harness: &mut Harness,
    load: &LoadArgs,
    transport: Transport,
    prefix: &'static str,
    events: Vec<Event<'_>>,
    record: bool,
) -> Result<(StepResult, Timeline), String> {
    let counters = harness.fresh_counters();
    let (protocol, mech) = (load.protocol, load.mech);
    // Several directors (the `cluster` scenario): login k of each thread
    // goes to director k mod n.
    let endpoints = harness.endpoints(protocol.protocol(), transport)?;
    let threads = harness.args.client_threads.max(1);
    let rate = load.rate.max(0.1) / threads as f64;
    let duration = Duration::from_secs_f64(load.duration.max(0.1));
    let per_thread = (rate * duration.as_secs_f64()).ceil() as u64;
    let (users, resume, max_inflight) = (load.users.max(1), load.resume, load.max_inflight);
    let before = harness.target_sample();
    let backend_before = procstat::own_threads_cpu(DEV_THREADS);
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            let endpoints = endpoints.clone();
            async move {
                let tls_config = client_config(resume);
                let tally: Rc<RefCell<ThreadTally>> = Rc::default();
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
                    let endpoint = endpoints[k as usize % endpoints.len()];
                    let (tally, inflight) = (tally.clone(), inflight.clone());
                    let (counters, tls_config) = (counters.clone(), tls_config.clone());
                    monoio::spawn(async move {
                        let attempt = monoio::time::timeout(
                            LOGIN_TIMEOUT,
                            login_once(protocol, mech, endpoint, &tls_config, &user, due),
                        )
                        .await;
                        let ok = matches!(attempt, Ok(Ok(_)));
                        let mut tally = tally.borrow_mut();
                        match attempt {
                            Ok(Ok((latency, resumed))) => {
                                tally.latency.record(latency);
                                if let Some(resumed) = resumed {
                                    tally.tls_handshakes += 1;
                                    tally.tls_resumed += u64::from(resumed);
                                }
                                counters.ok();
                            }
                            _ => counters.error(),
                        }
                        if record {
                            tally.records.push((user, Instant::now(), ok));
                        }
                        inflight.set(inflight.get() - 1);
                    });
                }
                while inflight.get() > 0 {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
                tally.take()
            }
        })
    };
    let label = format!(
        "logins {} {} {}",
        protocol.protocol().as_str(),
        mech.name(),
        transport.name()
    );
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        harness,
        &label,
        Progress::Duration(duration),
        events,
        |_| finished(),
    );
    let (tallies, client_cpu) = join(handles);
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let (ok, errors, _, _) = counters.snapshot();
    let busy = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / elapsed;
    let result = StepResult {
        protocol: protocol.protocol().as_str(),
        mech: mech.name(),
        mode: transport.name(),
        offered: load.rate,
        achieved: ok as f64 / duration.as_secs_f64().min(elapsed),
        ok,
        errors,
        latency: merged(tallies.iter().map(|t| &t.latency)).summary(),
        director_cores_busy: busy(before.cpu, after.cpu),
        client_cores_busy: client_cpu.as_secs_f64() / elapsed,
        backend_cores_busy: busy(backend_before, procstat::own_threads_cpu(DEV_THREADS)),
        tls_handshakes: tallies.iter().map(|t| t.tls_handshakes).sum(),
        tls_resumed: tallies.iter().map(|t| t.tls_resumed).sum(),
        records: tallies.into_iter().flat_map(|t| t.records).collect(),
    };
    Ok((result, timeline))
}

/// The user-name prefix of a login load over `transport`.
fn prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Plain => "loginp",
        Transport::Starttls => "logins",
        Transport::Tls => "logint",
    }
}

/// How long the warm-up before a search runs (not counted).
const WARM_UP_S: f64 = 1.0;

/// Searches the highest passing rate: ×1.5 steps up from `load.rate` until
/// one fails, then three bisections. Returns every step and the best.
///
/// A fresh target's first second is slower than the rest (lazy
/// allocations, the first TLS key set-up, health checks settling), and a
/// search whose first step fails only goes down: so a short warm-up at
/// the starting rate runs first and is not counted, and a failing step is
/// run once more before it counts as failed (both are in the report).
pub fn find_rate(
    harness: &mut Harness,
    load: &LoadArgs,
    transport: Transport,
    p99_ms: f64,
    report: &mut Report,
) -> Result<Option<StepResult>, String> {
    let mut best: Option<StepResult> = None;
    let mut failed: Option<f64> = None;
    let mut rate = load.rate;
    let warm_up = LoadArgs {
        duration: WARM_UP_S,
        ..load.clone()
    };
    let (w, _) = run_step(
        harness,
        &warm_up,
        transport,
        prefix(transport),
        Vec::new(),
        false,
    )?;
    report.line(format!("warm-up (not counted): {}", w.line()));
    for _ in 0..12 {
        let step = LoadArgs {
            rate,
            ..load.clone()
        };
        let mut run = || {
            run_step(
                harness,
                &step,
                transport,
                prefix(transport),
                Vec::new(),
                false,
            )
        };
        let (mut r, mut timeline) = run()?;
        if !r.passes(p99_ms) {
            report.line(format!("step failed, run again: {}", r.line()));
            (r, timeline) = run()?;
        }
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
    for transport in args.mode.list() {
        let mode = transport.name();
        if args.find {
            let best = find_rate(
                &mut harness,
                &args.load,
                transport,
                args.p99_ms,
                &mut report,
            )?;
            match &best {
                Some(b) => report.line(format!(
                    "{mode}: highest rate with p99 <= {} ms: {:.0} logins/s ({:.0} per busy director core)",
                    args.p99_ms,
                    b.achieved,
                    b.per_director_core()
                )),
                None => report.line(format!(
                    "{mode}: no rate met p99 <= {} ms",
                    args.p99_ms
                )),
            }
            results.push(json!({ "mode": mode, "find_p99_ms": args.p99_ms, "best": best }));
        } else {
            let (r, timeline) = run_step(
                &mut harness,
                &args.load,
                transport,
                prefix(transport),
                Vec::new(),
                false,
            )?;
            report.line(r.line());
            report.timeline.append(timeline);
            report.work += r.ok;
            report.errors += r.errors;
            results.push(json!({ "mode": mode, "step": r }));
        }
    }
    report.results = json!({
        "protocol": args.load.protocol.protocol().as_str(),
        "resume": args.load.resume,
        "modes": results,
    });
    crate::report::finish(report, &harness)
}
