//! `failover`: open-loop logins while one simulated backend is killed
//! (`DevBackends::kill`: listener closed, every session cut, as a crash).
//! Reports the failed logins after the kill, the time until logins stop
//! failing (at the monitor's tick resolution), and the invariant
//! violations the registry saw. What the director does about a dead
//! backend is its own business: with health checks it should route the
//! dead backend's users elsewhere within a second; without, their logins
//! keep failing and the report says "not recovered".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpin::config::{Forward, Protocol};
use mailpin::route::backends::{Backend, BackendId, BackendSet};
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
    let mut harness = Harness::start(&args.common)?;
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
    let names = harness.backend_names();
    let transport = if args.tls {
        Transport::Tls
    } else {
        Transport::Plain
    };
    let (step, timeline) = run_step(
        &mut harness,
        &args.load,
        transport,
        "failover",
        events,
        true,
    )?;
    let killed_at = killed_at.lock().ok().and_then(|t| *t);
    let recovery = killed_at.map(|t| user_recovery(&step.records, &names, &args.kill, t));
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
            "users": r.users,
            "recovered": r.recovered,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
        })),
        "step": step,
    });
    crate::report::finish(report, &harness)
}

/// How the users of the killed backend fared: from the kill to each one's
/// first successful login after it.
struct UserRecovery {
    /// Users whose backend was killed and who tried to log in after it.
    users: usize,
    /// Of those, how many logged in successfully after the kill.
    recovered: usize,
    /// Kill → first successful login, over the recovered users.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl UserRecovery {
    fn line(&self) -> String {
        format!(
            "users of the killed backend: {} tried after the kill, {} logged in again; \
             kill -> first successful login p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.users, self.recovered, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Which users lived on `killed`: every director ranks backends by weighted
/// rendezvous hashing of the user key (`%Lu`, all weights equal here), and
/// with every backend healthy at the start a user's assignment is its first
/// choice. The library's own ranking answers, so the two cannot disagree.
fn user_recovery(
    records: &[LoginRecord],
    names: &[String],
    killed: &str,
    at: Instant,
) -> UserRecovery {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let set = BackendSet::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Backend::new(
                    i as BackendId,
                    n,
                    String::new(),
                    [addr; Protocol::COUNT],
                    100,
                    Forward::Id,
                    Duration::from_secs(1),
                )
            })
            .collect(),
    );
    let killed_id = set.by_name(killed).map(|b| b.id);
    let mut first_ok: std::collections::BTreeMap<&str, Option<Duration>> = Default::default();
    for (user, done, ok) in records {
        if *done < at || set.first_choice(&user.to_lowercase()) != killed_id {
            continue;
        }
        let entry = first_ok.entry(user.as_str()).or_insert(None);
        if *ok {
            let took = done.duration_since(at);
            if entry.is_none_or(|t| took < t) {
                *entry = Some(took);
            }
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
        users: first_ok.len(),
        recovered: times.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: times.last().copied().unwrap_or(0.0),
    }
}
