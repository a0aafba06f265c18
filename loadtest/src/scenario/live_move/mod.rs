//! `live-move`: N IMAP sessions logged in, INBOX selected and in IDLE,
//! through mailpin with live moves on, against real Dovecot backends on
//! one shared maildir (a master user set up); then a backend is drained
//! (admin API `drain` + `flush`) and restarted — or, with `--rolling`,
//! every backend in turn. It reports how many sessions moved live and how
//! many were ended — from `/metrics` and from the clients' view (a BYE or
//! a closed connection) — how long each drain took, and the invariant
//! violations: a client that received a byte it should not have (any
//! byte while nothing is delivered; anything but untagged data with
//! `--deliveries`), and a user `doveadm who` saw on two backends at once.
//! At the end one message is delivered to every user, each session still
//! idling must see it (`* n EXISTS`), and `DONE` must get exactly one
//! tagged OK.

mod deliveries;
mod held;
mod splits;
mod world;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use self::deliveries::Delivered;
use self::held::{Held, State, Tally};
use self::world::{backend_name, BackendLimits, World};
use crate::real_backends::dovecot::{user_name, DEFAULT_PASSWORD};
use crate::report::Report;

/// Options of `live-move`.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveMoveArgs {
    /// Sessions to hold in IDLE.
    #[arg(long, default_value_t = 2000)]
    pub sessions: usize,
    /// Concurrent sessions of each user (users = sessions / this).
    #[arg(long, default_value_t = 2)]
    pub sessions_per_user: usize,
    /// Dovecot backends (at least 2).
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// The backend to drain and restart (1-based), without --rolling.
    #[arg(long, default_value_t = 1)]
    pub drain: usize,
    /// Drain, flush and restart every backend in turn.
    #[arg(long)]
    pub rolling: bool,
    /// LMTP deliveries per second (through the director, to random users)
    /// while the backends are drained; 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub deliveries: f64,
    /// server.cores of the director.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// IMAP clients per Dovecot `imap` process (its `client_limit`;
    /// Dovecot's default is 1).
    #[arg(long, default_value_t = 1)]
    pub clients_per_process: usize,
    /// Threads opening sessions (each one blocking set-up at a time).
    #[arg(long, default_value_t = 16)]
    pub setup_threads: usize,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

/// How long a drained backend may take to lose its last session.
const EMPTY_LIMIT: Duration = Duration::from_secs(120);
/// How long a restarted backend may take to be routable again.
const ROUTABLE_LIMIT: Duration = Duration::from_secs(30);
/// How long the idling sessions may take to see the final delivery.
const SEEN_LIMIT: Duration = Duration::from_secs(30);
/// The watcher's poll(2) wait.
const PUMP_WAIT: Duration = Duration::from_millis(50);

/// The held sessions, watched on a thread of their own.
struct Watcher {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    thread: JoinHandle<Vec<Held>>,
}

impl Watcher {
    /// Watches `sessions` until [`Watcher::finish`].
    fn start(mut sessions: Vec<Held>, data_allowed: bool) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::of(&sessions)));
        let (s, r, t) = (stop.clone(), rounds.clone(), tally.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                held::pump(&mut sessions, PUMP_WAIT, data_allowed);
                *t.lock().unwrap_or_else(|e| e.into_inner()) = Tally::of(&sessions);
                r.fetch_add(1, Ordering::Release);
            }
            sessions
        });
        Watcher {
            stop,
            rounds,
            tally,
            thread,
        }
    }

    /// The counts after two more rounds (everything that had arrived by
    /// now is judged).
    fn settled(&self) -> Tally {
        let from = self.rounds.load(Ordering::Acquire);
        let until = Instant::now() + Duration::from_secs(5);
        while self.rounds.load(Ordering::Acquire) < from + 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops watching and hands the sessions back.
    fn finish(self) -> Result<Vec<Held>, String> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| "the session watcher panicked".to_owned())
    }
}

/// What one drain-flush-restart step did.
#[derive(Debug, Clone, serde::Serialize)]
struct Step {
    backend: String,
    /// IMAP sessions `doveadm who` counted on it before the drain.
    sessions_on_it: usize,
    /// Live moves and ends during the step, from /metrics.
    moved: u64,
    ended: u64,
    ended_reasons: std::collections::BTreeMap<String, u64>,
    /// Sessions the clients saw end (BYE or closed) and violate IDLE.
    clients_ended: usize,
    clients_violated: usize,
    /// `POST drain` and `POST flush` answered, from the drain's start.
    flush_answered_ms: f64,
    /// Until `doveadm who` showed no IMAP session on it and /metrics
    /// counted each of its sessions moved or ended: the drain's length.
    empty_ms: f64,
    /// Restart of the Dovecot instance, and until the director routed to
    /// it again.
    restart_ms: f64,
    routable_ms: f64,
    /// `doveadm who` answers read and users seen on two backends at once.
    who_samples: usize,
    splits: usize,
}

impl Step {
    fn line(&self) -> String {
        let reasons: Vec<String> = self
            .ended_reasons
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        format!(
            "drain+flush {}: {} sessions on it; {} moved live, {} ended{} (metrics); \
             clients: {} ended (BYE/closed), {} violations; flush answered {:.0} ms, \
             all moved or ended {:.0} ms; restart {:.0} ms, routable {:.0} ms later; \
             doveadm who: {} samples, {} users on two backends",
            self.backend,
            self.sessions_on_it,
            self.moved,
            self.ended,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" [{}]", reasons.join(", "))
            },
            self.clients_ended,
            self.clients_violated,
            self.flush_answered_ms,
            self.empty_ms,
            self.restart_ms,
            self.routable_ms,
            self.who_samples,
            self.splits
        )
    }
}

/// Drains, flushes and restarts backend `i` while `watcher` watches.
fn step(world: &mut World, i: usize, watcher: &Watcher) -> Result<Step, String> {
    let name = backend_name(i);
    let readers = world.who_readers();
    let sessions_on_it = readers[i].imap_sessions();
    let moves_before = world.moves()?;
    let clients_before = watcher.settled();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = splits::sample(readers.clone(), stop.clone());
    let start = Instant::now();
    let drained = world
        .post_ok(&format!("/backends/{name}/drain"))
        .and_then(|()| world.post_ok(&format!("/backends/{name}/flush")));
    let flush_answered = start.elapsed();
    // Done when the backend has no session left and every session it had
    // is accounted for (moved or ended): a move closes the old side first
    // and logs in on the new one after.
    let emptied = drained.and_then(|()| loop {
        let accounted = world.moves()?.since(&moves_before);
        let accounted = accounted.moved + accounted.ended_total();
        if accounted >= sessions_on_it as u64 && readers[i].imap_sessions() == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > EMPTY_LIMIT {
            return Err(format!(
                "{name}: {accounted} of {sessions_on_it} sessions moved or ended after {EMPTY_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    stop.store(true, Ordering::Release);
    let detector = sampler
        .join()
        .map_err(|_| "the doveadm who sampler panicked".to_owned())?;
    let empty = emptied?;
    let moves = world.moves()?.since(&moves_before);
    let clients = watcher.settled();
    let restart = Instant::now();
    world.cluster.instance_mut(i).restart();
    let restart_took = restart.elapsed();
    world.post_ok(&format!("/backends/{name}/up"))?;
    let routable = world.wait_routable(i, ROUTABLE_LIMIT)?;
    Ok(Step {
        backend: name,
        sessions_on_it,
        moved: moves.moved,
        ended: moves.ended_total(),
        ended_reasons: moves.ended,
        clients_ended: clients.ended().saturating_sub(clients_before.ended()),
        clients_violated: clients.violated.saturating_sub(clients_before.violated),
        flush_answered_ms: flush_answered.as_secs_f64() * 1e3,
        empty_ms: empty.as_secs_f64() * 1e3,
        restart_ms: restart_took.as_secs_f64() * 1e3,
        routable_ms: routable.as_secs_f64() * 1e3,
        who_samples: detector.samples,
        splits: detector.splits().len(),
    })
}

/// The end of the run: one message to every user of a session still
/// idling, which each such session must see; then `DONE` on each.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Final {
    idling: usize,
    delivered: Delivered,
    saw_delivery: usize,
    done_ok: usize,
    done_failed: usize,
    first_done_failure: Option<String>,
}

fn final_check(world: &World, sessions: &mut [Held]) -> Final {
    let idling = |s: &Held| s.state == State::Idling;
    let mut users: Vec<String> = sessions
        .iter()
        .filter(|s| idling(s))
        .map(|s| s.user.clone())
        .collect();
    users.sort();
    users.dedup();
    let before: Vec<u64> = sessions.iter().map(|s| s.exists).collect();
    let delivered = deliveries::deliver_to_each(world.lmtp, users);
    let saw = |sessions: &[Held]| {
        sessions
            .iter()
            .zip(&before)
            .filter(|(s, b)| idling(s) && s.exists > **b)
            .count()
    };
    let until = Instant::now() + SEEN_LIMIT;
    while saw(sessions) < sessions.iter().filter(|s| idling(s)).count() && Instant::now() < until {
        held::pump(sessions, PUMP_WAIT, true);
    }
    let mut result = Final {
        idling: sessions.iter().filter(|s| idling(s)).count(),
        delivered,
        saw_delivery: saw(sessions),
        ..Final::default()
    };
    for s in sessions.iter_mut().filter(|s| s.state == State::Idling) {
        match s.done() {
            Ok(()) => result.done_ok += 1,
            Err(e) => {
                result.done_failed += 1;
                result.first_done_failure.get_or_insert(e);
            }
        }
    }
    result
}

/// Runs `live-move`.
pub fn run(args: &LiveMoveArgs) -> Result<Report, String> {
    crate::procstat::raise_fd_limit();
    let per_user = args.sessions_per_user.max(1);
    let users: Vec<String> = (0..args.sessions)
        .map(|i| user_name(i / per_user + 1))
        .collect();
    let user_count = args.sessions.div_ceil(per_user);
    let limits = BackendLimits {
        sessions: args.sessions,
        clients_per_process: args.clients_per_process,
    };
    let mut world = World::start(args.backends, user_count, limits, args.cores)?;
    let backends = world.cluster.instances().len();
    if !(1..=backends).contains(&args.drain) {
        return Err(format!(
            "--drain {}: there are {backends} backends",
            args.drain
        ));
    }
    let mut report = Report::standalone("live-move", args.cores);
    let setup = Instant::now();
    let (sessions, failed) =
        held::open_all(world.imap, &users, DEFAULT_PASSWORD, args.setup_threads);
    let setup_s = setup.elapsed().as_secs_f64();
    let per_backend: Vec<usize> = world
        .who_readers()
        .iter()
        .map(|r| r.imap_sessions())
        .collect();
    report.line(format!(
        "{} sessions in IDLE ({} users, {} failed{}) in {setup_s:.1} s; \
         on the backends (doveadm who): {per_backend:?}",
        sessions.len(),
        user_count,
        failed.len(),
        failed
            .first()
            .map(|f| format!(", first: {f}"))
            .unwrap_or_default()
    ));
    let opened = sessions.len();
    let data_allowed = args.deliveries > 0.0;
    let watcher = Watcher::start(sessions, data_allowed);
    let stop_stream = Arc::new(AtomicBool::new(false));
    let stream = data_allowed.then(|| {
        let mut distinct = users.clone();
        distinct.dedup();
        deliveries::stream(world.lmtp, distinct, args.deliveries, stop_stream.clone())
    });
    let order: Vec<usize> = if args.rolling {
        (0..backends).collect()
    } else {
        vec![args.drain - 1]
    };
    let mut steps = Vec::new();
    let mut failure = None;
    for i in order {
        match step(&mut world, i, &watcher) {
            Ok(s) => {
                report.line(s.line());
                steps.push(s);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    stop_stream.store(true, Ordering::Release);
    let streamed = stream.and_then(|h| h.join().ok().flatten()).map(|(d, _)| d);
    let during = watcher.settled();
    let mut sessions = watcher.finish()?;
    if let Some(e) = failure {
        return Err(e);
    }
    let fin = final_check(&world, &mut sessions);
    let moved: u64 = steps.iter().map(|s| s.moved).sum();
    let ended: u64 = steps.iter().map(|s| s.ended).sum();
    let splits: usize = steps.iter().map(|s| s.splits).sum();
    if let Some(d) = streamed {
        report.line(format!(
            "deliveries during the moves: {} delivered, {} failed ({}/s asked); \
             the idling clients saw {} `* n EXISTS`",
            d.ok, d.failed, args.deliveries, during.exists
        ));
    }
    report.line(format!(
        "{}: {moved} sessions moved live, {ended} ended (metrics); clients: {} BYE, {} closed, \
         {} IDLE violations, {} keepalives{}; doveadm who: {splits} users seen on two backends",
        if args.rolling {
            "rolling restart of every backend"
        } else {
            "in all"
        },
        during.bye,
        during.closed,
        during.violated,
        during.keepalives,
        during
            .keepalive_text
            .as_ref()
            .map(|k| format!(" ({k:?})"))
            .unwrap_or_default()
    ));
    report.line(format!(
        "afterwards: {} sessions idling; a message to each of their users: {} delivered, \
         seen by {}/{}; DONE answered by one tagged OK: {}/{}{}",
        fin.idling,
        fin.delivered.ok,
        fin.saw_delivery,
        fin.idling,
        fin.done_ok,
        fin.idling,
        fin.first_done_failure
            .as_ref()
            .map(|f| format!(" (first failure: {f})"))
            .unwrap_or_default()
    ));
    let violations = during.violated + splits;
    report.violations = violations;
    report.work = moved;
    report.errors = ended
        + failed.len() as u64
        + (fin.idling - fin.saw_delivery) as u64
        + fin.done_failed as u64;
    let first_violation = sessions.iter().find_map(|s| match &s.state {
        State::Violated(v) => Some(format!("{}: {v}", s.user)),
        _ => None,
    });
    if let Some(v) = &first_violation {
        report.line(format!("first IDLE violation: {v}"));
    }
    report.results = json!({
        "sessions": args.sessions,
        "opened": opened,
        "failed_setups": failed.len(),
        "setup_s": setup_s,
        "users": user_count,
        "backends": backends,
        "rolling": args.rolling,
        "deliveries_per_s": args.deliveries,
        "clients_per_process": args.clients_per_process,
        "per_backend_before": per_backend,
        "steps": steps,
        "moved": moved,
        "ended": ended,
        "clients": during,
        "streamed_deliveries": streamed,
        "final": fin,
        "splits": splits,
        "first_violation": first_violation,
        "director_pid": world.director_pid(),
    });
    crate::report::publish(report, args.json.as_deref(), None)
}
