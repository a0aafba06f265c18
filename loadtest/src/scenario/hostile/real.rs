//! The real clients of `hostile`, whose experience is the measurement:
//! idle IMAP sessions that must survive and stay answered, and an
//! open-loop stream of logins that must succeed.
//!
//! Each idle session logs in, selects INBOX and enters IDLE; from the
//! start of the measured phases it is probed every `probe_every` (at a
//! random offset, so probes spread): `DONE`, `NOOP`, `IDLE` again, each
//! awaiting its answer. A session is **hurt** in a phase when one of its
//! probes there had an answer slower than the hurt bound, failed, or its
//! connection closed; after the attack one last probe checks it is still
//! alive (a failure there counts for the attack phase). Logins (LOGIN,
//! then LOGOUT) are scheduled at a fixed rate over both phases; their
//! latency runs from the scheduled start, and each counts in the phase it
//! was due in.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::client::conn::Endpoint;
use crate::client::imap::ImapClient;
use crate::client::sasl::LoginMech;
use crate::client::tls::client_config;
use crate::metrics::{Counters, Latency};
use crate::scenario::logins::{login_once, LoginProtocol};
use crate::scenario::{user_name, Release, Rng, PASSWORD};

/// The baseline phase (no attackers), then the attack phase.
pub const PHASES: usize = 2;
/// Index of the attack phase.
pub const ATTACK: usize = 1;
/// A probe or login that takes longer than this is abandoned (and failed).
const GIVE_UP: Duration = Duration::from_secs(10);
/// Session set-ups in flight per client thread.
const SETUP_CONCURRENCY: usize = 64;
/// Logins in flight per client thread before new ones count as failed.
const MAX_INFLIGHT: usize = 4000;
/// Distinct users the logins cycle through.
const LOGIN_USERS: usize = 10_000;
/// Most hurt-probe times one thread keeps.
const MAX_HURT_TIMES: usize = 100_000;

/// What the real clients of a run do.
#[derive(Debug, Clone, Copy)]
pub struct RealPlan {
    /// Where they connect (IMAP, plain or implicit TLS).
    pub endpoint: Endpoint,
    /// Idle sessions over all threads.
    pub idle: usize,
    /// Logins per second over all threads.
    pub logins_rate: f64,
    /// Time between two probes of one session.
    pub probe_every: Duration,
    /// A probe answer slower than this hurts the session.
    pub hurt: Duration,
    /// Length of the baseline phase.
    pub baseline: Duration,
    /// Length of the attack phase.
    pub attack: Duration,
}

impl RealPlan {
    /// The phase an event at `at` belongs to, measured from `t0`.
    fn phase(&self, t0: Instant, at: Instant) -> usize {
        usize::from(at.saturating_duration_since(t0) >= self.baseline)
    }
}

/// What the real clients saw in one phase.
#[derive(Default)]
pub struct PhaseTally {
    /// Slowest answer of each probe.
    pub probe: Latency,
    /// Probes that completed.
    pub probes: u64,
    /// Probes with an answer over the hurt bound.
    pub slow_probes: u64,
    /// Sessions hurt in this phase.
    pub sessions_hurt: u64,
    /// Sessions closed or failed in this phase.
    pub sessions_lost: u64,
    /// Logins that succeeded: latency from their scheduled start.
    pub login: Latency,
    /// Logins that succeeded.
    pub logins_ok: u64,
    /// Logins that failed (refused, closed, timed out, over the in-flight
    /// cap).
    pub logins_failed: u64,
    /// How late the client thread started each login (its own lag: a
    /// starved load generator, not a slow director).
    pub generator_lag: Latency,
    /// When each probe over the hurt bound (or failed) started, seconds
    /// from the start of the baseline.
    pub hurt_at_s: Vec<f64>,
}

impl PhaseTally {
    /// Adds another thread's tally.
    pub fn merge(&mut self, other: &PhaseTally) {
        self.probe.merge(&other.probe);
        self.probes += other.probes;
        self.slow_probes += other.slow_probes;
        self.sessions_hurt += other.sessions_hurt;
        self.sessions_lost += other.sessions_lost;
        self.login.merge(&other.login);
        self.logins_ok += other.logins_ok;
        self.logins_failed += other.logins_failed;
        self.generator_lag.merge(&other.generator_lag);
        self.hurt_at_s.extend_from_slice(&other.hurt_at_s);
    }
}

/// What one client thread's real clients saw.
#[derive(Default)]
pub struct RealTally {
    /// Per phase: baseline, attack.
    pub phases: [PhaseTally; PHASES],
    /// Idle sessions established.
    pub established: u64,
    /// Idle sessions that could not be set up.
    pub setup_failed: u64,
    /// Idle sessions alive and answering after the attack.
    pub survived: u64,
}

impl RealTally {
    /// Adds another thread's tally.
    pub fn merge(&mut self, other: &RealTally) {
        for (mine, theirs) in self.phases.iter_mut().zip(&other.phases) {
            mine.merge(theirs);
        }
        self.established += other.established;
        self.setup_failed += other.setup_failed;
        self.survived += other.survived;
    }
}

/// Waits (on a client runtime) until the run's start is set, or `release`.
pub async fn await_start(clock: &OnceLock<Instant>, release: &Release) -> Option<Instant> {
    loop {
        if let Some(t0) = clock.get() {
            return Some(*t0);
        }
        if release.given() {
            return None;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens one idle session: connect, LOGIN, SELECT INBOX, IDLE; returns it
/// with the IDLE command's tag.
async fn open_session(
    endpoint: Endpoint,
    tls: &Arc<rustls::ClientConfig>,
    user: &str,
) -> std::io::Result<(ImapClient, String)> {
    let mut client = ImapClient::connect(endpoint, tls).await?;
    client.login(user, PASSWORD).await?;
    client.expect_ok("SELECT INBOX", "SELECT").await?;
    let tag = client.idle().await?;
    Ok((client, tag))
}

/// One probe: `DONE`, `NOOP`, `IDLE`; returns the new IDLE tag and the
/// slowest of the three answers.
async fn probe(client: &mut ImapClient, tag: &str) -> std::io::Result<(String, Duration)> {
    let started = Instant::now();
    client.idle_done(tag).await?;
    let mut slowest = started.elapsed();
    let started = Instant::now();
    client.expect_ok("NOOP", "NOOP").await?;
    slowest = slowest.max(started.elapsed());
    let started = Instant::now();
    let tag = client.idle().await?;
    Ok((tag, slowest.max(started.elapsed())))
}

/// Holds one idle session through both phases and a last check.
async fn hold(
    mut client: ImapClient,
    mut tag: String,
    plan: RealPlan,
    t0: Instant,
    seed: u64,
    tally: Rc<RefCell<RealTally>>,
    counters: Arc<Counters>,
) {
    let end = t0 + plan.baseline + plan.attack;
    let mut rng = Rng::new(seed);
    let mut next = t0 + rng.between(Duration::ZERO, plan.probe_every);
    let mut hurt = [false; PHASES];
    let mut last_check = false;
    loop {
        if next >= end {
            // One more probe after the attack: still there?
            next = end;
            last_check = true;
        }
        monoio::time::sleep_until(monoio::time::Instant::from_std(next)).await;
        next += plan.probe_every;
        let phase = if last_check {
            ATTACK
        } else {
            plan.phase(t0, Instant::now())
        };
        let started = Instant::now();
        let outcome = monoio::time::timeout(GIVE_UP, probe(&mut client, &tag)).await;
        let mut t = tally.borrow_mut();
        let p = &mut t.phases[phase];
        let bad = !matches!(&outcome, Ok(Ok((_, slowest))) if *slowest <= plan.hurt);
        if bad && p.hurt_at_s.len() < MAX_HURT_TIMES {
            p.hurt_at_s
                .push(started.saturating_duration_since(t0).as_secs_f64());
        }
        match outcome {
            Ok(Ok((new_tag, slowest))) => {
                tag = new_tag;
                p.probes += 1;
                p.probe.record(slowest);
                if slowest > plan.hurt {
                    p.slow_probes += 1;
                    if !hurt[phase] {
                        hurt[phase] = true;
                        p.sessions_hurt += 1;
                    }
                }
            }
            // Closed, failed or stalled: the session is lost (a timed-out
            // TLS stream is never read again).
            _ => {
                p.sessions_lost += 1;
                if !hurt[phase] {
                    p.sessions_hurt += 1;
                }
                counters.closed();
                return;
            }
        }
        if last_check {
            t.survived += 1;
            break;
        }
    }
    drop(client);
    counters.closed();
}

/// The body of one real-client thread (`thread` of `threads`): set up its
/// share of the idle sessions, wait for the start, then hold them and run
/// its share of the logins until the end.
pub async fn real_clients(
    thread: usize,
    threads: usize,
    plan: RealPlan,
    clock: Arc<OnceLock<Instant>>,
    release: Arc<Release>,
    counters: Arc<Counters>,
) -> RealTally {
    let tls = client_config(false);
    let tally: Rc<RefCell<RealTally>> = Rc::default();
    let held = Rc::new(RefCell::new(Vec::new()));
    let next = Rc::new(Cell::new(thread));
    let mut workers = Vec::new();
    for _ in 0..SETUP_CONCURRENCY {
        let (next, held, tally) = (next.clone(), held.clone(), tally.clone());
        let (tls, counters) = (tls.clone(), counters.clone());
        workers.push(monoio::spawn(async move {
            while next.get() < plan.idle {
                let i = next.get();
                next.set(i + threads);
                let user = user_name("hidle", i);
                let opened =
                    monoio::time::timeout(GIVE_UP, open_session(plan.endpoint, &tls, &user)).await;
                match opened {
                    Ok(Ok(session)) => {
                        held.borrow_mut().push((session, i as u64));
                        tally.borrow_mut().established += 1;
                        counters.ok();
                        counters.opened();
                    }
                    _ => {
                        tally.borrow_mut().setup_failed += 1;
                        counters.error();
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    let Some(t0) = await_start(&clock, &release).await else {
        return tally.take();
    };
    let mut tasks = Vec::new();
    for ((client, tag), seed) in held.take() {
        let (tally, counters) = (tally.clone(), counters.clone());
        tasks.push(monoio::spawn(hold(
            client, tag, plan, t0, seed, tally, counters,
        )));
    }
    logins(thread, threads, plan, t0, &tally, &counters).await;
    for t in tasks {
        t.await;
    }
    tally.take()
}

/// This thread's share of the open-loop logins over both phases.
async fn logins(
    thread: usize,
    threads: usize,
    plan: RealPlan,
    t0: Instant,
    tally: &Rc<RefCell<RealTally>>,
    counters: &Arc<Counters>,
) {
    let rate = plan.logins_rate / threads as f64;
    if rate <= 0.0 {
        return;
    }
    let span = plan.baseline + plan.attack;
    let count = (rate * span.as_secs_f64()).floor() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // The threads' schedules interleave.
    let offset = interval.mul_f64(thread as f64 / threads as f64);
    let tls = client_config(false);
    let inflight = Rc::new(Cell::new(0usize));
    for k in 0..count {
        let due = t0 + offset + interval.mul_f64(k as f64);
        monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
        let phase = plan.phase(t0, due);
        tally.borrow_mut().phases[phase]
            .generator_lag
            .record(due.elapsed());
        if inflight.get() >= MAX_INFLIGHT {
            tally.borrow_mut().phases[phase].logins_failed += 1;
            counters.error();
            continue;
        }
        inflight.set(inflight.get() + 1);
        let user = user_name("hlogin", (k as usize * threads + thread) % LOGIN_USERS);
        let (tally, counters, inflight, tls) = (
            tally.clone(),
            counters.clone(),
            inflight.clone(),
            tls.clone(),
        );
        let endpoint = plan.endpoint;
        monoio::spawn(async move {
            let attempt = monoio::time::timeout(
                GIVE_UP,
                login_once(
                    LoginProtocol::Imap,
                    LoginMech::Plain,
                    endpoint,
                    &tls,
                    &user,
                    due,
                ),
            )
            .await;
            let mut t = tally.borrow_mut();
            let p = &mut t.phases[phase];
            match attempt {
                Ok(Ok((latency, _))) => {
                    p.login.record(latency);
                    p.logins_ok += 1;
                    counters.ok();
                }
                _ => {
                    p.logins_failed += 1;
                    counters.error();
                }
            }
            inflight.set(inflight.get() - 1);
        });
    }
    // Bounded: every login gives up after GIVE_UP.
    while inflight.get() > 0 {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fall_in_the_phase_they_happen_in() {
        let plan = RealPlan {
            endpoint: Endpoint {
                addr: "127.0.0.1:1".parse().expect("address"),
                transport: crate::client::conn::Transport::Plain,
            },
            idle: 0,
            logins_rate: 0.0,
            probe_every: Duration::from_secs(3),
            hurt: Duration::from_secs(1),
            baseline: Duration::from_secs(5),
            attack: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        assert_eq!(plan.phase(t0, t0), 0);
        assert_eq!(plan.phase(t0, t0 + Duration::from_millis(4999)), 0);
        assert_eq!(plan.phase(t0, t0 + Duration::from_secs(5)), ATTACK);
        assert_eq!(plan.phase(t0, t0 + Duration::from_secs(30)), ATTACK);
    }
}
