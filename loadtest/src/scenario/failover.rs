//! `failover`: open-loop logins while one simulated backend is killed
//! (`DevBackends::kill`: listener closed, every session cut, as a crash).
//! Reports the failed logins after the kill, the time until logins stop
//! failing (at the monitor's tick resolution), and the invariant
//! violations the registry saw. What the director does about a dead
//! backend is its own business: with health checks it should route the
//! dead backend's users elsewhere within a second; without, their logins
//! keep failing and the report says "not recovered".

use std::time::Duration;

use serde_json::json;

use super::logins::{run_step, LoadArgs};
use crate::harness::{mode_name, CommonArgs, Harness};
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
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("failover", &harness);
    if !harness.backend_names().contains(&args.kill) {
        return Err(format!("no simulated backend called {:?}", args.kill));
    }
    let kill_at = args.kill_at.unwrap_or(args.load.duration / 3.0).max(0.0);
    let mut events: Vec<Event<'_>> = Vec::new();
    let backends = harness.backends_handle();
    let name = args.kill.clone();
    events.push((
        Duration::from_secs_f64(kill_at),
        Box::new(move || match backends.kill(&name) {
            Ok(()) => format!("kill {name}"),
            Err(e) => format!("kill {name} failed: {e}"),
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
    let (step, timeline) = run_step(&mut harness, &args.load, args.tls, "failover", events)?;
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
    report.work = step.ok;
    report.errors = step.errors;
    report.timeline = timeline;
    report.results = json!({
        "mode": mode_name(args.tls),
        "killed": args.kill,
        "kill_at_s": kill_t,
        "failed_after_kill": failed_after_kill,
        "failed_before_kill": failed_before_kill,
        "recovered": recovered,
        "recovery_s": recovery_s,
        "step": step,
    });
    crate::report::finish(report, &harness)
}
