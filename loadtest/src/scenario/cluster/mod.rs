//! `cluster`: what cluster mode on etcd costs and how fast it reacts.
//! It starts a local 3-member etcd on its own ports (`--etcd-port`) and
//! directors in cluster mode (one `[cluster]` section each: names d1, d2,
//! d3, one prefix, `--lease-ttl`) in front of the harness's simulated
//! backends, next to the harness's own director (no cluster), and
//! measures:
//!
//! 1. logins/s of the lone director against two cluster members under the
//!    same per-director load (each user always through the same member, so
//!    repeat logins need no etcd) — a fixed rate, or `--find`;
//! 2. the latency of a first login (a claim round trip to etcd) and of a
//!    repeat login, lone director against cluster;
//! 3. assignments/s the claim batcher sustains: distinct new users at
//!    `--claim-rate`, counted from `mailpin_cluster_claims_total`;
//! 4. the time a move across directors takes (call, and both sessions
//!    closed);
//! 5. with a third member: SIGKILL of a director holding sessions (its
//!    users back in through the others), then a backend killed (its users
//!    placed elsewhere through any director).

mod setup;
mod timing;

use std::time::{Duration, Instant};

use serde_json::json;

use super::logins::{find_rate, run_step, LoadArgs, StepResult};
use crate::client::admin;
use crate::client::conn::Transport;
use crate::director::DirectorProcess;
use crate::harness::{CommonArgs, Harness};
use crate::report::Report;

/// The user-name prefix of step 1 (the one `logins --find` uses for
/// plain IMAP, so a search's own warm-up logs in the same users).
const THROUGHPUT_PREFIX: &str = "loginp";

/// The metric the claim batcher counts.
const CLAIMS: &str = "mailpin_cluster_claims_total";

/// Options of `cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    /// The login load of step 1: `--rate` is per director.
    pub load: LoadArgs,
    /// Search the highest per-director rate with p99 <= --p99-ms (lone
    /// director, then the cluster) instead of one step at --rate.
    #[arg(long)]
    pub find: bool,
    /// The latency bound of --find.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// Total logins/s of the first/repeat login latency steps (low, so
    /// latency is not queueing).
    #[arg(long, default_value_t = 200.0)]
    pub latency_rate: f64,
    /// Total logins/s of distinct new users for the assignment count.
    #[arg(long, default_value_t = 3000.0)]
    pub claim_rate: f64,
    /// Moves timed across two directors.
    #[arg(long, default_value_t = 10)]
    pub moves: usize,
    /// Sessions held through the director that is killed (and through the
    /// others when a backend is killed).
    #[arg(long, default_value_t = 30)]
    pub held: usize,
    /// First client port of the local etcd: member i listens on
    /// PORT + 10 i (client) and PORT + 10 i + 1 (peer), all on 127.0.0.1.
    /// Keep it below the kernel's ephemeral range (usually 32768 up), where
    /// the harness's own connections may hold a port.
    #[arg(long, default_value_t = 22379)]
    pub etcd_port: u16,
    /// Seconds after a backend's kill until an operator's `POST
    /// /backends/B/down` on one director (it acts on every one); without
    /// it the directors' health checks and the majority verdict alone
    /// take the backend down.
    #[arg(long)]
    pub down_after: Option<f64>,
    /// cluster.lease_ttl of every member, seconds.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// Total claims (every result) and created ones over `directors`.
fn claims(directors: &[DirectorProcess]) -> Result<(f64, f64), String> {
    let mut total = (0.0, 0.0);
    for d in directors {
        let addr = d.addrs.admin().ok_or("a director without an admin API")?;
        total.0 += admin::metric(addr, CLAIMS, "")?;
        total.1 += admin::metric(addr, CLAIMS, "result=\"created\"")?;
    }
    Ok(total)
}

/// One fixed-rate step on whatever the harness targets now.
fn step(
    harness: &mut Harness,
    load: &LoadArgs,
    prefix: &'static str,
    report: &mut Report,
    label: &str,
) -> Result<StepResult, String> {
    let (r, _) = run_step(harness, load, Transport::Plain, prefix, Vec::new(), false)?;
    report.line(format!("{label}: {}", r.line()));
    report.work += r.ok;
    report.errors += r.errors;
    Ok(r)
}

/// Step 1 on the current target: one step at `rate` total, or a search
/// from it. Returns the step (the best one with --find).
fn throughput(
    harness: &mut Harness,
    args: &ClusterArgs,
    rate: f64,
    report: &mut Report,
    label: &str,
) -> Result<Option<StepResult>, String> {
    let load = LoadArgs {
        rate,
        ..args.load.clone()
    };
    if args.find {
        let best = find_rate(harness, &load, Transport::Plain, args.p99_ms, report)?;
        if let Some(b) = &best {
            report.line(format!("{label}: best {}", b.line()));
        }
        Ok(best)
    } else {
        step(harness, &load, THROUGHPUT_PREFIX, report, label).map(Some)
    }
}

/// Logs every user of step 1 in once (not counted), at `--claim-rate`, so
/// step 1 measures repeat logins: the steady state of a director, whose
/// users are mostly known. The lone director gets the same warm-up.
fn warm_up(harness: &mut Harness, args: &ClusterArgs, report: &mut Report) -> Result<(), String> {
    let rate = args.claim_rate.max(1.0);
    let load = LoadArgs {
        rate,
        duration: (args.load.users as f64 / rate).max(0.1),
        ..args.load.clone()
    };
    let (r, _) = run_step(
        harness,
        &load,
        Transport::Plain,
        THROUGHPUT_PREFIX,
        Vec::new(),
        false,
    )?;
    report.line(format!(
        "warm-up, every user once (not counted): {}",
        r.line()
    ));
    Ok(())
}

/// First logins (every user new) at `--latency-rate`, then the same users
/// again (repeat logins), on the current target.
fn first_and_repeat(
    harness: &mut Harness,
    args: &ClusterArgs,
    prefix: &'static str,
    report: &mut Report,
    label: &str,
) -> Result<(StepResult, StepResult), String> {
    let load = LoadArgs {
        rate: args.latency_rate,
        users: (args.latency_rate * args.load.duration).ceil() as usize + 1,
        ..args.load.clone()
    };
    let first = step(harness, &load, prefix, report, &format!("{label} first"))?;
    let repeat = step(harness, &load, prefix, report, &format!("{label} repeat"))?;
    Ok((first, repeat))
}

/// Runs `cluster`.
pub fn run(args: &ClusterArgs) -> Result<Report, String> {
    if args.common.target.is_some() {
        return Err("cluster starts its own directors: --target is not for it".into());
    }
    // The directors know the backends' IMAP ports only: a simulated
    // backend's kill is then the whole backend's crash (see
    // `Harness::start_imap_only`).
    let mut harness = Harness::start_imap_only(&args.common)?;
    let mut report = Report::new("cluster", &harness);
    let ports = setup::etcd_ports(args.etcd_port)?;
    let etcd = setup::start_etcd(ports)?;
    report.line(format!(
        "local etcd: 3 members on 127.0.0.1:{:?}, pids {:?}",
        ports.client,
        etcd.pids()
    ));
    let urls = ports.urls();
    let ttl = Duration::from_secs(args.lease_ttl.max(1));
    // The users of a step are split over the members by parity: keep
    // their number even so each user always comes through one member.
    let users = args.load.users.max(2) & !1;
    let args = &ClusterArgs {
        load: LoadArgs {
            users,
            ..args.load.clone()
        },
        ..args.clone()
    };

    // 1 and 2 on the lone director (no cluster).
    warm_up(&mut harness, args, &mut report)?;
    let alone = throughput(&mut harness, args, args.load.rate, &mut report, "alone")?;
    let (alone_first, alone_repeat) =
        first_and_repeat(&mut harness, args, "clfirsta", &mut report, "alone")?;

    // 1, 2 and 3 on two members.
    harness.set_cluster(setup::start_members(&harness, 1, 2, &urls, ttl)?);
    warm_up(&mut harness, args, &mut report)?;
    let pair = throughput(
        &mut harness,
        args,
        2.0 * args.load.rate,
        &mut report,
        "cluster of 2",
    )?;
    let (cluster_first, cluster_repeat) =
        first_and_repeat(&mut harness, args, "clfirstc", &mut report, "cluster of 2")?;
    let claim_load = LoadArgs {
        rate: args.claim_rate,
        users: (args.claim_rate * args.load.duration).ceil() as usize + 2,
        ..args.load.clone()
    };
    let before = claims(harness.cluster())?;
    let started = Instant::now();
    let claim_step = step(
        &mut harness,
        &claim_load,
        "clclaim",
        &mut report,
        "new users",
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = claims(harness.cluster())?;
    let claimed = after.0 - before.0;
    let claims_per_s = claimed / elapsed;
    report.line(format!(
        "assignments: {claimed:.0} claims ({:.0} created) in {elapsed:.1} s = {claims_per_s:.0}/s",
        after.1 - before.1
    ));

    // 4: moves across the two members.
    let mut members = harness.take_cluster();
    let backends = harness.backend_names();
    let moves = timing::moves(&members[0], &members[1], &backends, args.moves)?;
    report.line(format!(
        "move across directors: call {}, both sessions closed {}, {} failed; \
the other director named the new backend {} after the answer ({} of {} read the old one first)",
        moves.call, moves.closed, moves.failed, moves.other_agrees, moves.stale_reads, args.moves
    ));

    if let Some(e) = &moves.error {
        report.line(format!("a move failed: {e}"));
    }

    // 5: a third member; kill d1, then a backend.
    members.extend(setup::start_members(&harness, 3, 1, &urls, ttl)?);
    let (victim, others) = members.split_at_mut(1);
    let director_death = timing::director_death(&mut victim[0], others, args.held)?;
    report.line(format!(
        "director d1 SIGKILLed with {} sessions: users back in through d2/d3 {}, {} failed, {} moved",
        args.held, director_death.back_in, director_death.failed, director_death.moved
    ));
    let down_after = args.down_after.map(|s| Duration::from_secs_f64(s.max(0.0)));
    let backend_death = timing::backend_death(&harness, others, args.held, down_after)?;
    for (what, times) in [
        ("director d1", &director_death),
        ("backend (same director)", &backend_death.same_director),
        ("backend (other director)", &backend_death.other_director),
    ] {
        if let Some(e) = &times.error {
            report.line(format!(
                "after the {what}'s death a user did not get in: {e}"
            ));
        }
    }
    for (how, times) in [
        (
            "through the director it held its session through",
            &backend_death.same_director,
        ),
        ("through the other director", &backend_death.other_director),
    ] {
        let cause = match backend_death.down_after_ms {
            Some(ms) => format!("`down` posted after {ms:.0} ms"),
            None => "health checks and majority verdict".to_owned(),
        };
        report.line(format!(
            "backend {} killed ({cause}): its users placed elsewhere {how}: {}, {} failed, {} still on it",
            backend_death.backend,
            times.back_in,
            times.failed,
            times.back_in.count + times.failed - times.moved
        ));
    }
    report.errors += (moves.failed
        + director_death.failed
        + backend_death.same_director.failed
        + backend_death.other_director.failed) as u64;

    let ratio = match (&alone, &pair) {
        (Some(a), Some(p)) if a.achieved > 0.0 => {
            let r = p.achieved / 2.0 / a.achieved;
            report.line(format!(
                "per director: {:.0} logins/s in the cluster vs {:.0} alone = {:.0} %",
                p.achieved / 2.0,
                a.achieved,
                100.0 * r
            ));
            Some(r)
        }
        _ => None,
    };
    report.results = json!({
        "alone": alone,
        "cluster_of_2": pair,
        "per_director_ratio": ratio,
        "alone_first": alone_first,
        "alone_repeat": alone_repeat,
        "cluster_first": cluster_first,
        "cluster_repeat": cluster_repeat,
        "claims": { "step": claim_step, "claims": claimed, "created": after.1 - before.1,
                    "per_s": claims_per_s },
        "moves": moves,
        "director_death": director_death,
        "backend_death": backend_death,
        "lease_ttl_s": ttl.as_secs(),
    });
    drop(members);
    let report = crate::report::finish(report, &harness);
    drop(etcd);
    report
}
