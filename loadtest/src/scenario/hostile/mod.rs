//! `hostile`: real clients while hostile ones attack. N real IMAP sessions
//! idle (probed with DONE/NOOP/IDLE every few seconds) and M real logins a
//! second arrive, first for a baseline phase with no attacker, then for
//! the attack phase while K attacker connections send garbage, slowloris
//! bytes, endless literals, TLS on plaintext ports and floods of bad
//! logins at the director's listeners.
//!
//! The report says what the real clients suffered (sessions hurt, logins
//! failed, login latency baseline against attack — see [`real`] for what
//! "hurt" means), what the director did to the attackers (connections
//! closed, how soon, bytes taken in — [`attack`]), the penalty bad logins
//! met over time, from the flooding address against others
//! ([`badlogin`]), and the director's RSS (start, peak, end) and CPU.
//! Nothing here makes the run fail: an attack the director does not stop
//! is a figure, reported as such.

mod attack;
mod badlogin;
mod real;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

use mailpin::config::Protocol;

use self::attack::{stream_attacker, Dialect, KindTally, Target, Targets};
use self::badlogin::{bad_logins, penalty_over_time, BadTally, Group};
use self::real::{real_clients, RealPlan, RealTally};
use super::Release;
use crate::client::conn::{Endpoint, Transport};
use crate::harness::{CommonArgs, Harness};
use crate::procstat::ProcSample;
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, spawn_runtimes, Event, Progress};

pub use self::attack::AttackKind;

/// Name prefix of the attacker threads (their CPU is read by name).
const ATTACKER_THREAD_PREFIX: &str = "lt-attack";
/// Slices of the attack phase in the penalty table.
const PENALTY_SLICES: usize = 10;

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
    fn transport(self) -> Transport {
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

/// Attacker `index` of its kind's roster: the source address of a stream
/// attacker.
fn stream_source(attacker_ips: u8, index: usize) -> Option<IpAddr> {
    (attacker_ips > 0).then(|| {
        let i = (index % usize::from(attacker_ips)) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + i.min(253)))
    })
}

/// The attackers: `attackers` shared round-robin among `kinds`, each with
/// its index among those of its kind.
fn roster(kinds: &[AttackKind], attackers: usize) -> Vec<(AttackKind, usize)> {
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    (0..attackers)
        .filter_map(|i| {
            let kind = *kinds.get(i % kinds.len().max(1))?;
            let n = seen.entry(kind.name()).or_default();
            *n += 1;
            Some((kind, *n - 1))
        })
        .collect()
}

/// The director's listeners the stream attackers aim at.
fn targets(harness: &Harness, transport: Transport) -> Targets {
    let find = |protocol, transport, dialect| {
        harness.endpoint(protocol, transport).ok().map(|e| Target {
            addr: e.addr,
            dialect,
        })
    };
    let plain = [
        (Protocol::Imap, Dialect::Imap),
        (Protocol::Pop3, Dialect::Pop3),
        (Protocol::Lmtp, Dialect::Lmtp),
        (Protocol::Sieve, Dialect::Sieve),
    ]
    .into_iter()
    .filter_map(|(p, d)| find(p, Transport::Plain, d))
    .collect();
    let tls = if transport == Transport::Tls {
        [Protocol::Imap, Protocol::Pop3]
            .into_iter()
            .filter_map(|p| find(p, Transport::Tls, Dialect::Tls))
            .collect()
    } else {
        Vec::new()
    };
    Targets { plain, tls }
}

/// What one attacker thread's attackers did.
#[derive(Default)]
struct AttackTally {
    /// Stream attacks by kind, then by listener.
    kinds: BTreeMap<&'static str, BTreeMap<&'static str, KindTally>>,
    bad: BadTally,
}

impl AttackTally {
    /// Adds one attacker's tally by listener.
    fn add(&mut self, kind: &'static str, by_listener: &BTreeMap<&'static str, KindTally>) {
        let mine = self.kinds.entry(kind).or_default();
        for (listener, t) in by_listener {
            mine.entry(listener).or_default().merge(t);
        }
    }
}

/// What every attacker needs to know.
#[derive(Clone)]
struct AttackPlan {
    roster: Vec<(AttackKind, usize)>,
    targets: Targets,
    /// Where the bad logins go.
    login: Endpoint,
    attacker_ips: u8,
    start: Instant,
    end: Instant,
}

/// The body of attacker thread `thread` of `threads`: its share of the
/// roster (and, on thread 0, the bad-login probe), all at once.
async fn attacker_thread(thread: usize, threads: usize, plan: Arc<AttackPlan>) -> AttackTally {
    let mut streams = Vec::new();
    let mut logins = Vec::new();
    let badlogins = plan
        .roster
        .iter()
        .filter(|(k, _)| *k == AttackKind::Badlogin)
        .count();
    for (i, &(kind, index)) in plan.roster.iter().enumerate() {
        if i % threads != thread {
            continue;
        }
        let plan = plan.clone();
        if kind == AttackKind::Badlogin {
            // The first half floods from one address.
            let group = if index < badlogins.div_ceil(2) {
                Group::Flood
            } else {
                Group::Spread
            };
            logins.push(monoio::spawn(async move {
                bad_logins(plan.login, group, index, plan.start, plan.end).await
            }));
        } else {
            streams.push(monoio::spawn(async move {
                let source = stream_source(plan.attacker_ips, index);
                let t =
                    stream_attacker(kind, index, &plan.targets, source, plan.start, plan.end).await;
                (kind, t)
            }));
        }
    }
    if thread == 0 && badlogins > 0 {
        let plan = plan.clone();
        logins.push(monoio::spawn(async move {
            bad_logins(plan.login, Group::Probe, 0, plan.start, plan.end).await
        }));
    }
    let mut tally = AttackTally::default();
    for s in streams {
        let (kind, t) = s.await;
        tally.add(kind.name(), &t);
    }
    for l in logins {
        tally.bad.merge(l.await);
    }
    tally
}

/// The director's memory and CPU at the moments that matter.
struct DirectorFigures {
    start: ProcSample,
    at_attack: ProcSample,
    end: ProcSample,
    after: ProcSample,
    peak_rss: u64,
    baseline_s: f64,
    attack_s: f64,
}

impl DirectorFigures {
    /// CPU between two samples over `seconds`, in % of one core.
    fn cpu_percent(a: ProcSample, b: ProcSample, seconds: f64) -> f64 {
        100.0 * b.cpu.saturating_sub(a.cpu).as_secs_f64() / seconds.max(1e-3)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "rss_start_bytes": self.start.rss_bytes,
            "rss_peak_bytes": self.peak_rss,
            "rss_end_bytes": self.end.rss_bytes,
            "rss_after_attackers_bytes": self.after.rss_bytes,
            "cpu_percent_baseline": Self::cpu_percent(self.start, self.at_attack, self.baseline_s),
            "cpu_percent_attack": Self::cpu_percent(self.at_attack, self.end, self.attack_s),
        })
    }

    fn line(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        format!(
            "director: RSS {:.1} MiB at start, {:.1} peak, {:.1} at the attack's end, {:.1} once the attackers left; CPU {:.0} % of a core in the baseline, {:.0} % under attack",
            mib(self.start.rss_bytes),
            mib(self.peak_rss),
            mib(self.end.rss_bytes),
            mib(self.after.rss_bytes),
            Self::cpu_percent(self.start, self.at_attack, self.baseline_s),
            Self::cpu_percent(self.at_attack, self.end, self.attack_s),
        )
    }
}

/// Runs `hostile`.
pub fn run(args: &HostileArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("hostile", &harness);
    let transport = args.mode.transport();
    let login = harness.endpoint(Protocol::Imap, transport)?;
    let plan = RealPlan {
        endpoint: login,
        idle: args.idle,
        logins_rate: args.logins_rate.max(0.0),
        probe_every: Duration::from_secs_f64(args.probe_every.max(0.05)),
        hurt: Duration::from_millis(args.hurt_ms),
        baseline: Duration::from_secs_f64(args.baseline.max(0.0)),
        attack: Duration::from_secs_f64(args.duration.max(0.1)),
    };
    let counters = harness.fresh_counters();
    let clock: Arc<OnceLock<Instant>> = Arc::default();
    let release = Release::new();
    let threads = harness.args.client_threads.max(1);
    let real = {
        let (clock, release, counters) = (clock.clone(), release.clone(), counters.clone());
        spawn_clients(threads, move |t| {
            real_clients(
                t,
                threads,
                plan,
                clock.clone(),
                release.clone(),
                counters.clone(),
            )
        })
    };
    // Set-up: every idle session opened (or failed), within a bound.
    let setup_limit = Duration::from_secs(30) + Duration::from_millis(20 * args.idle as u64);
    let setup_started = Instant::now();
    let setup = monitor(
        &harness,
        "set-up",
        Progress::Count(args.idle as u64),
        Vec::new(),
        |_| {
            let (ok, errors, _, _) = counters.snapshot();
            ok + errors >= args.idle as u64
                || setup_started.elapsed() > setup_limit
                || real.iter().all(|h| h.is_finished())
        },
    );
    report.timeline.append(setup);
    let start = harness.target_sample();
    let t0 = Instant::now();
    let _ = clock.set(t0);
    let attack_plan = Arc::new(AttackPlan {
        roster: roster(&args.kinds, args.attackers),
        targets: targets(&harness, transport),
        login,
        attacker_ips: args.attacker_ips,
        start: t0 + plan.baseline,
        end: t0 + plan.baseline + plan.attack,
    });
    let attacker_threads = args.attacker_threads.max(1);
    let attackers = {
        let plan = attack_plan.clone();
        spawn_runtimes(ATTACKER_THREAD_PREFIX, attacker_threads, false, move |t| {
            attacker_thread(t, attacker_threads, plan.clone())
        })
    };
    let at_attack = Cell::new((start, t0));
    let events: Vec<Event<'_>> = vec![(
        plan.baseline,
        Box::new(|| {
            at_attack.set((harness.target_sample(), Instant::now()));
            "attack starts".to_owned()
        }),
    )];
    let end_at = attack_plan.end;
    let timeline = monitor(
        &harness,
        "hostile",
        Progress::Duration(plan.baseline + plan.attack),
        events,
        |_| Instant::now() >= end_at,
    );
    let end = harness.target_sample();
    let ended = Instant::now();
    let (attack_tallies, attacker_cpu) = join(attackers);
    let after = harness.target_sample();
    release.give();
    let (real_tallies, client_cpu) = join(real);
    let peak_rss = timeline
        .samples
        .iter()
        .map(|s| s.rss_bytes)
        .chain([start.rss_bytes, end.rss_bytes, after.rss_bytes])
        .max()
        .unwrap_or(0);
    report.timeline.append(timeline);
    let (at_attack, attack_started) = at_attack.get();
    let director = DirectorFigures {
        start,
        at_attack,
        end,
        after,
        peak_rss,
        baseline_s: attack_started.saturating_duration_since(t0).as_secs_f64(),
        attack_s: ended
            .saturating_duration_since(attack_started)
            .as_secs_f64(),
    };
    let mut realt = RealTally::default();
    for t in &real_tallies {
        realt.merge(t);
    }
    let mut attacks = AttackTally::default();
    for t in attack_tallies {
        for (kind, by_listener) in &t.kinds {
            attacks.add(kind, by_listener);
        }
        attacks.bad.merge(t.bad);
    }
    let elapsed = ended.saturating_duration_since(t0).as_secs_f64().max(1e-3);
    write_report(
        &mut report,
        args,
        &realt,
        &attacks,
        &director,
        attacker_cpu.as_secs_f64() / elapsed,
        client_cpu.as_secs_f64() / elapsed,
    );
    crate::report::finish(report, &harness)
}

/// Fills the report's lines and results.
fn write_report(
    report: &mut Report,
    args: &HostileArgs,
    real: &RealTally,
    attacks: &AttackTally,
    director: &DirectorFigures,
    attacker_cores: f64,
    client_cores: f64,
) {
    let [base, attack] = &real.phases;
    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.name()).collect();
    report.line(format!(
        "{} idle IMAP sessions ({}), {} logins/s; baseline {} s, then {} s with {} attackers ({})",
        real.established,
        args.mode.transport().name(),
        args.logins_rate,
        args.baseline,
        args.duration,
        args.attackers,
        kinds.join(", ")
    ));
    report.line(format!(
        "real sessions hurt (an answer > {} ms, or closed): {} under attack (goal 0), {} in the baseline; {} of {} alive after the attack ({} set-ups failed)",
        args.hurt_ms,
        attack.sessions_hurt,
        base.sessions_hurt,
        real.survived,
        real.established,
        real.setup_failed
    ));
    report.line(format!(
        "probe (slowest of DONE/NOOP/IDLE): baseline {}; attack {}",
        base.probe.summary(),
        attack.probe.summary()
    ));
    if !attack.hurt_at_s.is_empty() {
        report.line(format!(
            "slow or failed probes under attack, by second from the start: {}",
            per_second(&attack.hurt_at_s)
        ));
    }
    for (name, p) in [("baseline", base), ("attack", attack)] {
        let lag = p.generator_lag.summary();
        report.line(format!(
            "logins {name}: {} ok, {} failed; {}; the load generator started them late by p99 {:.1} ms, max {:.1} ms",
            p.logins_ok,
            p.logins_failed,
            p.login.summary(),
            lag.p99_ms,
            lag.max_ms
        ));
    }
    let mut kinds_json = serde_json::Map::new();
    for (kind, by_listener) in &attacks.kinds {
        let mut t = KindTally::default();
        for l in by_listener.values() {
            t.merge(l);
        }
        let s = t.summary();
        let listeners: Vec<String> = by_listener
            .iter()
            .map(|(l, t)| format!("{l} {}/{}", t.closed_by_director, t.attempted))
            .collect();
        let after = if s.closed_by_director > 0 {
            format!(
                " after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                s.time_to_close.p50_ms, s.time_to_close.p99_ms, s.time_to_close.max_ms
            )
        } else {
            String::new()
        };
        report.line(format!(
            "{kind}: {} connections ({} not opened); director closed {}{after} (by listener, closed/opened: {}), {} still open at the end ({} with writes blocked); {:.1} MB sent in, {:.1} KB answered",
            s.attempted,
            s.connect_failed,
            s.closed_by_director,
            listeners.join(", "),
            s.open_at_end,
            s.write_stalled,
            s.bytes_sent as f64 / 1e6,
            s.bytes_received as f64 / 1e3
        ));
        let by: serde_json::Map<String, serde_json::Value> = by_listener
            .iter()
            .map(|(l, t)| ((*l).to_owned(), json!(t.summary())))
            .collect();
        let mut entry = json!(s);
        entry["by_listener"] = serde_json::Value::Object(by);
        kinds_json.insert((*kind).to_owned(), entry);
    }
    let bad = &attacks.bad;
    let penalty = penalty_over_time(&bad.answers, args.duration, PENALTY_SLICES);
    if args.kinds.contains(&AttackKind::Badlogin) {
        let all = |g: Group| -> Vec<f64> {
            bad.answers
                .iter()
                .filter(|a| a.group == g)
                .map(|a| a.delay.as_secs_f64() * 1000.0)
                .collect()
        };
        let p50 = |mut v: Vec<f64>| -> String {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2)
                .map(|m| format!("{m:.1} ms ({} answers)", v.len()))
                .unwrap_or_else(|| "no answer".to_owned())
        };
        report.line(format!(
            "badlogin: {} connections ({} not opened), {} answered NO, {} otherwise, {} closed by the director, {} answers over 15 s; median delay from the flooding address {}, from the spread ones {}, the probe's {}",
            bad.connections,
            bad.connect_failed,
            bad.refused,
            bad.other,
            bad.closed_by_director,
            bad.timed_out,
            p50(all(Group::Flood)),
            p50(all(Group::Spread)),
            p50(all(Group::Probe)),
        ));
        let cell = |v: Option<f64>| v.map(|m| format!("{m:.1}")).unwrap_or("-".into());
        let slices: Vec<String> = penalty
            .iter()
            .map(|s| {
                format!(
                    "{:.1}s {}/{}",
                    s.from_s,
                    cell(s.flood_p50_ms),
                    cell(s.probe_p50_ms)
                )
            })
            .collect();
        report.line(format!(
            "penalty over time (median ms, flooding address / probe): {}",
            slices.join(", ")
        ));
    }
    report.line(director.line());
    report.line(format!(
        "load generator: real clients {client_cores:.2} cores, attackers {attacker_cores:.2} cores"
    ));
    let phase = |p: &real::PhaseTally| {
        json!({
            "sessions_hurt": p.sessions_hurt,
            "sessions_lost": p.sessions_lost,
            "probes": p.probes,
            "slow_probes": p.slow_probes,
            "probe": p.probe.summary(),
            "logins_ok": p.logins_ok,
            "logins_failed": p.logins_failed,
            "login": p.login.summary(),
            "generator_lag": p.generator_lag.summary(),
            "hurt_probes_by_second": per_second_counts(&p.hurt_at_s),
        })
    };
    let config = report_config(args);
    report.work = base.logins_ok + attack.logins_ok + base.probes + attack.probes;
    report.errors = base.logins_failed + attack.logins_failed + attack.sessions_lost;
    report.results = json!({
        "mode": args.mode.transport().name(),
        "idle": args.idle,
        "logins_rate": args.logins_rate,
        "attackers": args.attackers,
        "kinds": kinds,
        "baseline_s": args.baseline,
        "duration_s": args.duration,
        "hurt_ms": args.hurt_ms,
        "established": real.established,
        "setup_failed": real.setup_failed,
        "survived": real.survived,
        "sessions_hurt": attack.sessions_hurt,
        "baseline": phase(base),
        "attack": phase(attack),
        "attacks": kinds_json,
        "badlogin": {
            "connections": bad.connections,
            "connect_failed": bad.connect_failed,
            "refused": bad.refused,
            "other": bad.other,
            "closed_by_director": bad.closed_by_director,
            "timed_out": bad.timed_out,
            "penalty": penalty,
        },
        "director": director.json(),
        "attacker_cores": attacker_cores,
        "client_cores": client_cores,
        "director_config": config,
    });
}

/// How many of `times` (seconds) fall in each whole second, in order.
fn per_second_counts(times: &[f64]) -> BTreeMap<u64, u64> {
    let mut counts = BTreeMap::new();
    for t in times {
        *counts.entry(t.max(0.0) as u64).or_default() += 1;
    }
    counts
}

/// [`per_second_counts`] for people: `21 s: 60, 22 s: 9`.
fn per_second(times: &[f64]) -> String {
    per_second_counts(times)
        .iter()
        .map(|(s, n)| format!("{s} s: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `--director-config` file the director ran with, for the record.
fn report_config(args: &HostileArgs) -> serde_json::Value {
    match &args.common.director_config {
        Some(path) => json!({
            "path": path.display().to_string(),
            "text": std::fs::read_to_string(path).unwrap_or_default(),
        }),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roster_shares_attackers_round_robin() {
        let r = roster(&AttackKind::ALL, 12);
        assert_eq!(r.len(), 12);
        assert_eq!(r[0], (AttackKind::Garbage, 0));
        assert_eq!(r[5], (AttackKind::Garbage, 1));
        assert_eq!(r[4], (AttackKind::Badlogin, 0));
        assert_eq!(r[9], (AttackKind::Badlogin, 1));
        assert!(roster(&[], 5).is_empty());
    }

    #[test]
    fn stream_attackers_spread_over_their_addresses() {
        assert_eq!(stream_source(0, 3), None);
        assert_eq!(
            stream_source(2, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 3, 2)))
        );
        assert_eq!(stream_source(2, 4), stream_source(1, 0));
    }
}
