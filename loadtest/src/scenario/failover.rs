//! `failover`: open-loop logins while one simulated backend is killed
//! (`DevBackends::kill`: listener closed, every session cut, as a crash).
//! Reports the failed logins after the kill, the time until logins stop
//! failing (at the monitor's tick resolution), and the invariant
//! violations the registry saw. What the director does about a dead
//! backend is its own business: with health checks it should route the
//! dead backend's users elsewhere within a second; without, their logins
//! keep failing and the report says "not recovered".
//!
//! The users of the killed backend are the ones the simulated backends saw
//! logged in on it before the kill (their connection table, sampled while
//! the load runs), so the figure means the same for mailpin and for a peer
//! that places users by its own rules. Users who first log in after the
//! kill are not among them: give `--users` no more than the logins before
//! the kill so every user is placed first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mailpin::dev::{DevBackends, SessionInfo};
use serde_json::json;

use super::logins::{run_step, LoadArgs, LoginProtocol, LoginRecord};
use crate::client::conn::Transport;
use crate::harness::{CommonArgs, Harness};
use crate::report::Report;
use crate::runner::Event;

/// Options of `failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    /// The login load.
    pub load: LoadArgs,
    /// Use implicit TLS.
    #[arg(long)]
    pub tls: bool,
    /// The backend to kill.
    #[arg(long, default_value = "sim2")]
    pub kill: String,
    /// Seconds into the load when it is killed (default: a third of it).
    #[arg(long)]
    pub kill_at: Option<f64>,
    /// Restart the killed backend this many seconds after the kill.
    #[arg(long)]
    pub restart_after: Option<f64>,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// Runs `failover`.
pub fn run(args: &FailoverArgs) -> Result<Report, String> {
    if args.load.protocol != LoginProtocol::Imap {
        // The simulated POP3 servers have no kill switch.
        return Err("failover kills simulated IMAP backends: use --protocol imap".into());
    }
    let mut harness = Harness::start_imap_only(&args.common)?;
    let mut report = Report::new("failover", &harness);
    if !harness.backend_names().contains(&args.kill) {
        return Err(format!("no simulated backend called {:?}", args.kill));
    }
    let kill_at = args.kill_at.unwrap_or(args.load.duration / 3.0).max(0.0);
    let mut events: Vec<Event<'_>> = Vec::new();
    let backends = harness.backends_handle();
    let name = args.kill.clone();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let kill_clock = killed_at.clone();
    events.push((
        Duration::from_secs_f64(kill_at),
        Box::new(move || {
            let result = backends.kill(&name);
            if let Ok(mut t) = kill_clock.lock() {
                *t = Some(Instant::now());
            }
            match result {
                Ok(()) => format!("kill {name}"),
                Err(e) => format!("kill {name} failed: {e}"),
            }
        }),
    ));
    if let Some(after) = args.restart_after {
        let backends = harness.backends_handle();
        let name = args.kill.clone();
        events.push((
            Duration::from_secs_f64(kill_at + after.max(0.0)),
            Box::new(move || match backends.restart(&name) {
                Ok(()) => format!("restart {name}"),
                Err(e) => format!("restart {name} failed: {e}"),
            }),
        ));
    }
    let transport = if args.tls {
        Transport::Tls
    } else {
        Transport::Plain
    };
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watch = watch_placements(
        harness.backends_handle(),
        killed_at.clone(),
        stop_watch.clone(),
    )?;
    let step = run_step(
        &mut harness,
        &args.load,
        transport,
        "failover",
        events,
        true,
    );
    stop_watch.store(true, Ordering::Release);
    let placements = watch
        .join()
        .map_err(|_| "the placement watcher panicked".to_owned())?;
    let (step, timeline) = step?;
    let killed_at = killed_at.lock().ok().and_then(|t| *t);
    let recovery = killed_at.map(|t| {
        user_recovery(
            &step.records,
            &placements.users_on(&args.kill),
            t,
            &placements,
        )
    });
    let kill_t = timeline.marks.first().map(|m| m.t).unwrap_or(kill_at);
    let end = timeline.last().map(|s| s.t).unwrap_or(0.0);
    let after_kill: Vec<_> = timeline.samples.iter().filter(|s| s.t > kill_t).collect();
    let failed_after_kill: u64 = after_kill.iter().map(|s| s.errors).sum();
    let failed_before_kill: u64 = timeline
        .samples
        .iter()
        .filter(|s| s.t <= kill_t)
        .map(|s| s.errors)
        .sum();
    let last_error = after_kill
        .iter()
        .filter(|s| s.errors > 0)
        .map(|s| s.t)
        .fold(None, |_, t| Some(t));
    // Recovered: no failure in the last second of the run (and at least
    // a second of run after the kill).
    let recovered = match last_error {
        None => true,
        Some(t) => end - t >= 1.0,
    };
    let recovery_s = match (recovered, last_error) {
        (true, Some(t)) => Some(t - kill_t),
        (true, None) => Some(0.0),
        (false, _) => None,
    };
    report.line(step.line());
    report.line(format!(
        "killed {} at {:.1} s: {} logins failed after the kill ({} before); {}",
        args.kill,
        kill_t,
        failed_after_kill,
        failed_before_kill,
        match recovery_s {
            Some(r) => format!("logins stopped failing {r:.2} s after the kill"),
            None => format!("not recovered: logins still failing at the end ({end:.1} s)"),
        }
    ));
    if let Some(r) = &recovery {
        report.line(r.line());
    }
    report.work = step.ok;
    report.errors = step.errors;
    report.timeline = timeline;
    report.results = json!({
        "mode": transport.name(),
        "killed": args.kill,
        "kill_at_s": kill_t,
        "failed_after_kill": failed_after_kill,
        "failed_before_kill": failed_before_kill,
        "recovered": recovered,
        "recovery_s": recovery_s,
        "affected_users": recovery.as_ref().map(|r| json!({
            "source": "simulated backends' connection table, before the kill",
            "placed": r.placed,
            "users": r.users,
            "recovered": r.recovered,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
            "users_seen_before_kill": placements.users.len(),
            "connections_unobserved": placements.unobserved(),
        })),
        "step": step,
    });
    crate::report::finish(report, &harness)
}

/// How often the placement watcher reads the backends' connection table.
/// The table keeps the last 1,024 closed connections, so this loses none
/// below ~20,000 connections/s (any loss is reported).
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Which backends each user was seen logged in on before the kill, as the
/// simulated backends recorded it.
#[derive(Debug, Default)]
struct Placements {
    /// User (lower-cased) → the backends it was seen on.
    users: HashMap<String, Vec<String>>,
    /// Connection ids read from the table.
    seen: HashSet<u64>,
    /// The highest connection id read (ids count from 1 per table).
    highest: u64,
}

impl Placements {
    /// Takes in one snapshot of the connection table.
    fn absorb(&mut self, sessions: &[SessionInfo]) {
        for s in sessions {
            self.highest = self.highest.max(s.id);
            if !self.seen.insert(s.id) {
                continue;
            }
            if let Some(user) = &s.user {
                let on = self.users.entry(user.to_lowercase()).or_default();
                if !on.contains(&s.backend) {
                    on.push(s.backend.clone());
                }
            }
        }
    }

    /// Users seen on `backend`.
    fn users_on(&self, backend: &str) -> HashSet<String> {
        self.users
            .iter()
            .filter(|(_, on)| on.iter().any(|b| b == backend))
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Connections accepted before the last read that no read caught (they
    /// opened and closed between two reads while over 1,024 others closed).
    fn unobserved(&self) -> u64 {
        self.highest.saturating_sub(self.seen.len() as u64)
    }
}

/// Reads the backends' connection table every [`WATCH_INTERVAL`] until the
/// first read after the kill (every connection the killed backend ever
/// accepted is then in it) or until `stop`.
fn watch_placements(
    backends: Arc<DevBackends>,
    killed_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Placements>, String> {
    std::thread::Builder::new()
        .name("lt-placements".into())
        .spawn(move || {
            let mut placements = Placements::default();
            loop {
                let killed = killed_at.lock().map(|t| t.is_some()).unwrap_or(true);
                let stopping = stop.load(Ordering::Acquire);
                placements.absorb(&backends.sessions());
                if killed || stopping {
                    return placements;
                }
                std::thread::sleep(WATCH_INTERVAL);
            }
        })
        .map_err(|e| format!("cannot start the placement watcher: {e}"))
}

/// How the users of the killed backend fared: from the kill to each one's
/// first successful login after it.
#[derive(Debug, PartialEq)]
struct UserRecovery {
    /// Users seen on the killed backend before the kill.
    placed: usize,
    /// Of those, how many tried to log in after the kill.
    users: usize,
    /// Of those, how many logged in successfully after the kill.
    recovered: usize,
    /// Kill → first successful login, over the recovered users.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Connections the watcher missed (the affected set may lack users).
    unobserved: u64,
}

impl UserRecovery {
    fn line(&self) -> String {
        let mut line = format!(
            "users of the killed backend: {} seen on it before the kill, {} tried after it, \
             {} logged in again",
            self.placed, self.users, self.recovered
        );
        if self.recovered > 0 {
            line += &format!(
                "; kill -> first successful login p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.p50_ms, self.p99_ms, self.max_ms
            );
        }
        if self.unobserved > 0 {
            line += &format!(
                " ({} connections went unobserved: some users may be missing)",
                self.unobserved
            );
        }
        line
    }
}

/// The recovery of the users in `affected` (lower-cased), from the client's
/// login records and the moment of the kill.
fn user_recovery(
    records: &[LoginRecord],
    affected: &HashSet<String>,
    at: Instant,
    placements: &Placements,
) -> UserRecovery {
    let mut first_ok: BTreeMap<String, Option<Duration>> = BTreeMap::new();
    for (user, done, ok) in records {
        if *done < at {
            continue;
        }
        let user = user.to_lowercase();
        if !affected.contains(&user) {
            continue;
        }
        let took = done.duration_since(at);
        let entry = first_ok.entry(user).or_insert(None);
        if *ok && entry.is_none_or(|t| took < t) {
            *entry = Some(took);
        }
    }
    let mut times: Vec<f64> = first_ok
        .values()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if times.is_empty() {
            0.0
        } else {
            times[((times.len() - 1) as f64 * q).round() as usize]
        }
    };
    UserRecovery {
        placed: affected.len(),
        users: first_ok.len(),
        recovered: times.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: times.last().copied().unwrap_or(0.0),
        unobserved: placements.unobserved(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, backend: &str, user: Option<&str>) -> SessionInfo {
        SessionInfo {
            id,
            backend: backend.to_owned(),
            peer: ([127, 0, 0, 1], 1).into(),
            user: user.map(str::to_owned),
            id_fields: Vec::new(),
            open: false,
        }
    }

    #[test]
    fn placements_come_from_the_connection_table_and_count_gaps() {
        let mut p = Placements::default();
        p.absorb(&[session(1, "sim1", Some("Alice")), session(2, "sim2", None)]);
        // Ids 3 and 4 were never read; 5 repeats an id already taken in.
        p.absorb(&[session(2, "sim2", None), session(5, "sim2", Some("bob"))]);
        p.absorb(&[session(6, "sim2", Some("ALICE"))]);
        let on_sim2 = p.users_on("sim2");
        assert_eq!(on_sim2.len(), 2);
        assert!(on_sim2.contains("alice") && on_sim2.contains("bob"));
        assert_eq!(p.users_on("sim1").len(), 1);
        assert_eq!(p.unobserved(), 2);
    }

    #[test]
    fn recovery_counts_only_affected_users_after_the_kill() {
        let at = Instant::now();
        let after = |ms| at + Duration::from_millis(ms);
        let before = at.checked_sub(Duration::from_millis(5)).unwrap_or(at);
        let affected: HashSet<String> = ["alice", "bob", "carol"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let records: Vec<LoginRecord> = vec![
            ("alice".into(), before, true),
            ("Alice".into(), after(10), false),
            ("alice".into(), after(300), true),
            ("alice".into(), after(200), true),
            ("bob".into(), after(20), false),
            ("dave".into(), after(1), true),
        ];
        let r = user_recovery(&records, &affected, at, &Placements::default());
        assert_eq!((r.placed, r.users, r.recovered), (3, 2, 1));
        assert_eq!(r.max_ms, 200.0);
        assert_eq!(r.p50_ms, 200.0);
    }
}
