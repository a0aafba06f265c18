//! The report of a `hostile` run: summary lines for people and the JSON
//! results, from what the real clients, the attackers and the director's
//! process samples showed.

use std::collections::BTreeMap;

use serde_json::json;

use super::args::HostileArgs;
use super::attack::{AttackKind, KindTally};
use super::badlogin::{penalty_over_time, Group};
use super::real::{PhaseTally, RealTally};
use super::roster::AttackTally;
use crate::procstat::ProcSample;
use crate::report::Report;

/// Slices of the attack phase in the penalty table.
const PENALTY_SLICES: usize = 10;

/// The director's memory and CPU at the moments that matter.
pub struct DirectorFigures {
    /// When the baseline started (all idle sessions open).
    pub start: ProcSample,
    /// When the attack started.
    pub at_attack: ProcSample,
    /// When the attack ended.
    pub end: ProcSample,
    /// Once every attacker had left.
    pub after: ProcSample,
    /// The highest RSS sampled, bytes.
    pub peak_rss: u64,
    /// Length of the baseline as sampled, seconds.
    pub baseline_s: f64,
    /// Length of the attack as sampled, seconds.
    pub attack_s: f64,
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

/// Fills the report's lines and results.
pub fn write_report(
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
    let phase = |p: &PhaseTally| {
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
    use std::time::Duration;

    #[test]
    fn slow_probes_are_counted_by_whole_second() {
        let counts = per_second_counts(&[21.3, 21.9, 22.0, 0.2]);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [(0, 1), (21, 2), (22, 1)]
        );
        assert_eq!(per_second(&[21.3, 21.9]), "21 s: 2");
    }

    #[test]
    fn director_cpu_is_a_share_of_one_core() {
        let at = |ms| ProcSample {
            rss_bytes: 0,
            cpu: Duration::from_millis(ms),
        };
        let pct = DirectorFigures::cpu_percent(at(1000), at(1500), 2.0);
        assert!((pct - 25.0).abs() < 1e-9, "{pct}");
    }
}
