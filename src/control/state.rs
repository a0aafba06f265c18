//! The control plane's state: the authoritative backend states, and every
//! operation that changes them or asks the cores.
//!
//! Only the control thread touches this. A change builds a new
//! [`BackendSet`] with a higher version and sends it to every core in the
//! same order, so all cores apply the same changes in the same sequence.
//! Questions to the cores (statistics, a user's assignment) and the steps of
//! a safe move travel through the cores' mailboxes and come back on
//! one-shot channels, awaited here, never on a core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::Protocol;
use crate::control::events::{Event, EventKind, EventLog, EVENT_CAPACITY};
use crate::control::history::{LoadHistory, Sample, Totals};
use crate::health::tracker::{HealthTracker, Source};
use crate::route::backends::{AdminState, BackendHealth, BackendId, BackendSet, Health};
use crate::route::router::{owner_of, Reassign};
use crate::route::shard::Assignment;
use crate::runtime::core::{CoreMsg, Shared};
use crate::runtime::mailbox::MailboxSender;
use crate::runtime::sessions::KickReason;
use crate::runtime::stats::CoreStats;

/// How long a move, kick or backend down waits for the backend
/// connections of the sessions it ends to close. Each closes within
/// [`crate::relay::BACKEND_CLOSE_TIMEOUT`] (a reset after that), so this is
/// only reached when a core is stuck; a move then keeps the old assignment
/// rather than risk two backends.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// At most this many users are moved at once by a flush, so their clients
/// do not all reconnect in one storm.
pub const FLUSH_PARALLEL: usize = 32;

/// The control plane.
pub struct Control {
    /// The process-wide configuration.
    pub shared: Arc<Shared>,
    set: RefCell<Arc<BackendSet>>,
    /// Per backend, per protocol port (`None`: not checked).
    trackers: RefCell<Vec<PerProtocol<Option<HealthTracker>>>>,
    last_error: RefCell<Vec<PerProtocol<Option<String>>>>,
    cores: Vec<MailboxSender<CoreMsg>>,
    check_now: Vec<PerProtocol<Option<CheckWaker>>>,
    started: Instant,
    health_flips: Cell<u64>,
    protocol_flips: RefCell<Vec<PerProtocol<u64>>>,
    moves: Cell<u64>,
    events: RefCell<EventLog>,
    history: RefCell<LoadHistory>,
}

/// One value per protocol, indexed by [`Protocol::index`].
pub type PerProtocol<T> = [T; Protocol::COUNT];

/// Wakes one protocol checker of one backend early.
pub type CheckWaker = local_sync::mpsc::unbounded::Tx<()>;

impl Control {
    /// The control plane over `set`, talking to `cores`;
    /// `check_now[i][p]` wakes the checker of backend `i`'s protocol `p`
    /// early (one for every checked protocol port).
    pub fn new(
        shared: Arc<Shared>,
        set: Arc<BackendSet>,
        cores: Vec<MailboxSender<CoreMsg>>,
        check_now: Vec<PerProtocol<Option<CheckWaker>>>,
    ) -> Control {
        let h = &shared.config.health;
        let trackers = set
            .backends
            .iter()
            .map(|b| {
                b.protocols
                    .map(|p| p.map(|_| HealthTracker::new(h.fall, h.rise)))
            })
            .collect();
        let n = set.backends.len();
        Control {
            shared,
            set: RefCell::new(set),
            trackers: RefCell::new(trackers),
            last_error: RefCell::new(vec![Default::default(); n]),
            cores,
            check_now,
            started: Instant::now(),
            health_flips: Cell::new(0),
            protocol_flips: RefCell::new(vec![[0; Protocol::COUNT]; n]),
            moves: Cell::new(0),
            events: RefCell::new(EventLog::new(EVENT_CAPACITY)),
            history: RefCell::new(LoadHistory::default()),
        }
    }

    /// Records an event for the status page (`GET /events`).
    fn event(&self, kind: EventKind, backend: Option<&str>, user: Option<&str>, message: String) {
        self.events.borrow_mut().push(kind, backend, user, message);
    }

    /// The kept events numbered above `seq`, oldest first, and the number
    /// of the last event.
    pub fn events_since(&self, seq: u64) -> (Vec<Event>, u64) {
        let log = self.events.borrow();
        (log.since(seq), log.last_seq())
    }

    /// Takes a load sample from every core's counters (`GET /history`).
    pub async fn sample_load(&self) {
        let totals = Totals::from_stats(&self.stats().await);
        self.history
            .borrow_mut()
            .record(Instant::now(), std::time::SystemTime::now(), totals);
    }

    /// The load samples of the last minutes, oldest first.
    pub fn load_history(&self) -> Vec<Sample> {
        self.history.borrow().samples()
    }

    fn backend_name(&self, id: BackendId) -> String {
        self.backends()
            .get(id)
            .map(|b| b.name.to_string())
            .unwrap_or_default()
    }

    /// The current backend snapshot.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.set.borrow().clone()
    }

    /// Seconds since the control plane started.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// How many cores serve.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Health state flips of protocol ports since start, all backends.
    pub fn health_flips(&self) -> u64 {
        self.health_flips.get()
    }

    /// Health state flips of one protocol port of a backend since start.
    pub fn protocol_flips(&self, id: BackendId, protocol: Protocol) -> u64 {
        self.protocol_flips
            .borrow()
            .get(usize::from(id))
            .map_or(0, |f| f[protocol.index()])
    }

    /// Users moved (admin move and flush) since start.
    pub fn moves(&self) -> u64 {
        self.moves.get()
    }

    /// The last failures of a backend's checks, one per protocol port
    /// whose last check failed (`"pop3: connect ..."`), if any.
    pub fn last_error(&self, id: BackendId) -> Option<String> {
        let errors = self.last_error.borrow();
        let per_protocol = errors.get(usize::from(id))?;
        let failed: Vec<String> = Protocol::ALL
            .iter()
            .filter_map(|p| {
                per_protocol[p.index()]
                    .as_ref()
                    .map(|e| format!("{}: {e}", p.as_str()))
            })
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    fn publish(&self, next: BackendSet) {
        let next = Arc::new(next);
        *self.set.borrow_mut() = next.clone();
        for core in &self.cores {
            let _ = core.send(CoreMsg::Backends(next.clone()));
        }
    }

    /// Feeds one check result of a backend's `protocol` port into its
    /// state. A flip of one port changes only that protocol's routing; the
    /// backend goes down (its sessions end, its users move) only when the
    /// last of its checked ports fails.
    pub fn health_result(
        &self,
        id: BackendId,
        protocol: Protocol,
        result: Result<(), String>,
        source: Source,
    ) {
        let i = usize::from(id);
        let ok = result.is_ok();
        if let Some(slot) = self.last_error.borrow_mut().get_mut(i) {
            slot[protocol.index()] = result.err();
        }
        let flip = self
            .trackers
            .borrow_mut()
            .get_mut(i)
            .and_then(|t| t[protocol.index()].as_mut())
            .and_then(|t| t.record(ok, source));
        let Some(health) = flip else { return };
        self.health_flips.set(self.health_flips.get() + 1);
        if let Some(f) = self.protocol_flips.borrow_mut().get_mut(i) {
            f[protocol.index()] += 1;
        }
        let set = self.backends();
        let Some(before) = set.get(id).map(|b| b.health()) else {
            return;
        };
        let next = set.with_change(id, |b| b.set_protocol_health(protocol, health));
        let Some(backend) = next.get(id) else { return };
        let name = &*backend.name;
        let after = backend.health();
        match health {
            Health::Unhealthy => warn!(
                backend = name,
                protocol = protocol.as_str(),
                error = self.last_error(id).unwrap_or_default(),
                "protocol port down: its logins get a temporary failure"
            ),
            Health::Healthy => info!(
                backend = name,
                protocol = protocol.as_str(),
                "protocol port up"
            ),
        }
        let mut message = format!("{} {}", protocol.as_str(), health.as_str());
        if health == Health::Unhealthy {
            if let Some(e) = self.last_error(id) {
                message.push_str(&format!(" ({e})"));
            }
        }
        if after != before {
            message.push_str(&format!("; backend {}", after.as_str()));
        }
        self.event(EventKind::Health, Some(name), None, message);
        if after == BackendHealth::Unhealthy {
            warn!(
                backend = name,
                error = self.last_error(id).unwrap_or_default(),
                "backend down: moving its users"
            );
        } else if before == BackendHealth::Unhealthy {
            info!(backend = name, "backend up");
        }
        self.publish(next);
    }

    /// A client login could not reach `protocol`'s port of `id`: count it
    /// now (once until the next active check) and check the backend's
    /// ports again at once instead of at the next interval.
    pub fn unreachable(&self, id: BackendId, protocol: Protocol, error: String) {
        let counts = self
            .trackers
            .borrow()
            .get(usize::from(id))
            .and_then(|t| t[protocol.index()].as_ref())
            .is_some_and(|t| t.state() == Health::Healthy && !t.awaits_check());
        if !counts {
            return;
        }
        self.health_result(
            id,
            protocol,
            Err(format!("client login: {error}")),
            Source::Passive,
        );
        if let Some(wakers) = self.check_now.get(usize::from(id)) {
            for tx in wakers.iter().flatten() {
                let _ = tx.send(());
            }
        }
    }

    /// Sets a backend's admin state. Down ends its sessions (every core
    /// does so on applying the new snapshot) and frees its users; it
    /// returns once every core has closed its backend connections there
    /// (false if that took longer than [`CLOSE_LIMIT`]).
    pub async fn set_admin(&self, id: BackendId, state: AdminState) -> bool {
        let set = self.backends();
        if let Some(before) = set.get(id).map(|b| b.admin).filter(|a| *a != state) {
            let name = self.backend_name(id);
            info!(backend = name, ?state, "admin state");
            self.event(
                EventKind::Admin,
                Some(&name),
                None,
                format!("admin {} -> {}", before.as_str(), state.as_str()),
            );
            self.publish(set.with_change(id, |b| b.admin = state));
        }
        if state != AdminState::Down {
            return true;
        }
        let closed = self.ask_all(|done| CoreMsg::WaitBackendClosed {
            backend: id,
            limit: CLOSE_LIMIT,
            done,
        });
        closed.await.iter().all(|c| *c)
    }

    /// Sends a request to every core and gathers the answers.
    async fn ask_all<T>(&self, make: impl Fn(flume::Sender<T>) -> CoreMsg) -> Vec<T> {
        let mut waits = Vec::with_capacity(self.cores.len());
        for core in &self.cores {
            let (tx, rx) = flume::bounded(1);
            if core.send(make(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            if let Ok(v) = rx.recv_async().await {
                out.push(v);
            }
        }
        out
    }

    /// Sends a request to one core and awaits its answer.
    async fn ask<T>(
        &self,
        core: usize,
        make: impl FnOnce(flume::Sender<T>) -> CoreMsg,
    ) -> Option<T> {
        let (tx, rx) = flume::bounded(1);
        self.cores.get(core)?.send(make(tx)).ok()?;
        rx.recv_async().await.ok()
    }

    fn owner(&self, key: &str) -> usize {
        owner_of(key, self.cores.len())
    }

    /// Every core's counters.
    pub async fn stats(&self) -> Vec<CoreStats> {
        self.ask_all(|reply| CoreMsg::Stats { reply }).await
    }

    /// The assignment of a user key, from its owner core.
    pub async fn lookup(&self, key: &str) -> Option<Assignment> {
        self.ask(self.owner(key), |reply| CoreMsg::Lookup {
            key: key.into(),
            reply,
        })
        .await
        .flatten()
    }

    /// Ends every session of `key` on every core, backend side first;
    /// returns how many once their backend connections are all closed
    /// (the kick covers logins of the user still on their way, too).
    pub async fn kick_user(&self, key: &str) -> usize {
        let closed = self.kick_sessions(key).await;
        self.end_kick(key);
        self.event(
            EventKind::Kick,
            None,
            Some(key),
            format!("{closed} sessions closed"),
        );
        closed
    }

    /// Kicks `key`'s sessions on every core and waits, at most
    /// [`CLOSE_LIMIT`], until their backend connections are closed.
    async fn kick_sessions(&self, key: &str) -> usize {
        let kicks = self.ask_all(|done| CoreMsg::KickUser {
            key: key.into(),
            reason: KickReason::Admin,
            done,
        });
        bounded(CLOSE_LIMIT, kicks)
            .await
            .map_or(0, |v| v.iter().sum())
    }

    /// Ends the kick of `key` on every core.
    fn end_kick(&self, key: &str) {
        for core in &self.cores {
            let _ = core.send(CoreMsg::EndKick { key: key.into() });
        }
    }

    /// A safe move ([`Control::safe_move`]) asked for by an admin,
    /// recorded as an event.
    pub async fn move_user(&self, key: &str, to: Reassign) -> Result<usize, MoveError> {
        let target = match to {
            Reassign::To(id) => self.backend_name(id),
            _ => "its first-ranked backend".to_string(),
        };
        let result = self.safe_move(key, to).await;
        let message = match &result {
            Ok(closed) => format!("moved to {target}, {closed} sessions closed"),
            Err(e) => format!("not moved to {target}: {e}"),
        };
        let backend = matches!(to, Reassign::To(_)).then_some(target.as_str());
        self.event(EventKind::Move, backend, Some(key), message);
        result
    }

    /// A safe move: hold the user's new logins, close its sessions
    /// everywhere and wait until the owner core counts none left — every
    /// backend connection of the user closed, including logins that were
    /// on their way — then change the assignment (`Reassign::To` a backend,
    /// or `Forget` it so the next login goes to the first-ranked routable
    /// backend), then let the held logins through. Returns the sessions
    /// closed, or an error (and the assignment unchanged) when the old
    /// sessions did not close within [`CLOSE_LIMIT`].
    async fn safe_move(&self, key: &str, to: Reassign) -> Result<usize, MoveError> {
        let owner = self.owner(key);
        self.ask(owner, |done| CoreMsg::Hold {
            key: key.into(),
            done,
        })
        .await;
        let closed = self.kick_sessions(key).await;
        let idle = self
            .ask(owner, |done| CoreMsg::WaitIdle {
                key: key.into(),
                limit: CLOSE_LIMIT,
                done,
            })
            .await
            .unwrap_or(false);
        let assign = if idle { to } else { Reassign::Keep };
        self.ask(owner, |done| CoreMsg::Unhold {
            key: key.into(),
            assign,
            done,
        })
        .await;
        self.end_kick(key);
        if !idle {
            warn!(
                user = key,
                "move abandoned: the user's sessions did not close in time"
            );
            return Err(MoveError::NotClosed);
        }
        self.moves.set(self.moves.get() + 1);
        Ok(closed)
    }

    /// Drops every assignment to `backend` safely, a bounded number of
    /// users at a time; returns (users moved, sessions closed).
    pub async fn flush(&self, backend: BackendId) -> (usize, usize) {
        let users: Vec<Box<str>> = self
            .ask_all(|reply| CoreMsg::UsersOn { backend, reply })
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut closed = 0;
        let mut moved = 0;
        for batch in users.chunks(FLUSH_PARALLEL) {
            let moves = batch.iter().map(|k| self.safe_move(k, Reassign::Forget));
            for n in join_all(moves).await.into_iter().flatten() {
                closed += n;
                moved += 1;
            }
        }
        info!(backend, users = moved, sessions = closed, "flushed");
        self.event(
            EventKind::Flush,
            Some(&self.backend_name(backend)),
            None,
            format!("{moved} users flushed, {closed} sessions closed"),
        );
        (moved, closed)
    }

    /// Sessions logged in, over all cores.
    pub async fn session_count(&self) -> u64 {
        self.stats()
            .await
            .iter()
            .flat_map(|s| s.sessions.iter())
            .map(|per_proto| per_proto.iter().map(|n| u64::from(*n)).sum::<u64>())
            .sum()
    }
}

/// Why a move did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// The user's sessions did not close within [`CLOSE_LIMIT`]; the user
    /// stays where it was.
    NotClosed,
}

impl std::fmt::Display for MoveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoveError::NotClosed => write!(
                f,
                "the user's sessions did not close within {CLOSE_LIMIT:?}; it stays on its backend"
            ),
        }
    }
}

/// Runs `f` with a time limit; `None` if it did not finish.
async fn bounded<F: Future>(limit: Duration, f: F) -> Option<F::Output> {
    monoio::time::timeout(limit, f).await.ok()
}

/// Awaits all futures concurrently (they run on this one thread).
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(|f| Box::pin(f)).collect();
    let mut out = Vec::with_capacity(handles.len());
    // Poll all of them together: each gets its turn whenever it is woken.
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> =
        handles.into_iter().enumerate().collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                results[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}
