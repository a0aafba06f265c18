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
//! is a figure, reported as such. This file runs the phases; the options
//! are in [`args`], who attacks from where in [`roster`], the report in
//! [`summary`].

mod args;
mod attack;
mod badlogin;
mod real;
mod roster;
mod summary;

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailpin::config::Protocol;

pub use self::args::HostileArgs;
use self::real::{real_clients, RealPlan, RealTally};
use self::roster::{
    attacker_thread, roster, targets, AttackPlan, AttackTally, ATTACKER_THREAD_PREFIX,
};
use self::summary::{write_report, DirectorFigures};
use super::Release;
use crate::harness::Harness;
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, spawn_runtimes, Event, Progress};

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
