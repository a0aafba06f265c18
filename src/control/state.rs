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
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::Protocol;
use crate::config::{Config, Listen};
use crate::control::events::{Event, EventKind, EventLog, EVENT_CAPACITY};
use crate::control::history::{LoadHistory, Sample, Totals};
use crate::control::reload::{self, BoundListener, ReloadPlan};
use crate::health::checker::{check_loop, CheckHost};
use crate::health::tracker::{HealthTracker, Source};
use crate::mailbox::MailboxSender;
use crate::plane::handover::{PeerAnswer, PeerRequest};
use crate::plane::stats::CoreStats;
use crate::plane::KickReason;
use crate::plane::{CoreMsg, Shared};
use crate::route::backends::{AdminState, BackendHealth, BackendId, BackendSet, Health, Lifecycle};
use crate::route::router::{owner_of, Reassign};
use crate::route::shard::Assignment;
use crate::startup::bind_all;

pub use crate::plane::CLOSE_LIMIT;

/// At most this many users are moved at once by a flush, so their clients
/// do not all reconnect in one storm.
pub const FLUSH_PARALLEL: usize = 32;

/// The control plane.
pub struct Control {
    /// The settings in force (replaced whole by a reload).
    shared: RefCell<Arc<Shared>>,
    /// The file the configuration was read from; `None` in dev mode.
    config_path: Option<PathBuf>,
    /// The listeners as configured and where they are bound.
    listeners: RefCell<Vec<BoundListener>>,
    set: RefCell<Arc<BackendSet>>,
    /// Per backend, per protocol port (`None`: not checked).
    trackers: RefCell<Vec<PerProtocol<Option<HealthTracker>>>>,
    last_error: RefCell<Vec<PerProtocol<Option<String>>>>,
    cores: Vec<MailboxSender<CoreMsg>>,
    /// Per backend, per protocol port: wakes its running checker.
    check_now: RefCell<Vec<PerProtocol<Option<CheckWaker>>>>,
    started: Instant,
    health_flips: Cell<u64>,
    protocol_flips: RefCell<Vec<PerProtocol<u64>>>,
    moves: Cell<u64>,
    reloads: Cell<u64>,
    reload_failures: Cell<u64>,
    events: RefCell<EventLog>,
    history: RefCell<LoadHistory>,
    /// Binary upgrade: `POST /upgrade`'s way to the main thread and, in a
    /// new process, the link to the predecessor still draining.
    pub(crate) upgrade: crate::plane::handover::UpgradeHooks,
}

/// One value per protocol, indexed by [`Protocol::index`].
pub type PerProtocol<T> = [T; Protocol::COUNT];

/// Wakes one protocol checker of one backend early.
pub type CheckWaker = local_sync::mpsc::unbounded::Tx<()>;

/// Why a reload was refused: every problem found, the old configuration
/// stays in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError(pub Vec<String>);

impl Control {
    /// The control plane over `set`, talking to `cores`; `listeners` are
    /// the `[[listen]]` blocks with their bound addresses, `config_path`
    /// the file a reload re-reads. Start the health checks with
    /// [`Control::start_checks`].
    pub fn new(
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
        listeners: Vec<BoundListener>,
        set: Arc<BackendSet>,
        cores: Vec<MailboxSender<CoreMsg>>,
    ) -> Control {
        let n = set.backends.len();
        let control = Control {
            shared: RefCell::new(shared),
            config_path,
            listeners: RefCell::new(listeners),
            set: RefCell::new(set),
            trackers: RefCell::new(Vec::new()),
            last_error: RefCell::new(vec![Default::default(); n]),
            cores,
            check_now: RefCell::new(vec![Default::default(); n]),
            started: Instant::now(),
            health_flips: Cell::new(0),
            protocol_flips: RefCell::new(vec![[0; Protocol::COUNT]; n]),
            moves: Cell::new(0),
            reloads: Cell::new(0),
            reload_failures: Cell::new(0),
            events: RefCell::new(EventLog::new(EVENT_CAPACITY)),
            history: RefCell::new(LoadHistory::default()),
            upgrade: Default::default(),
        };
        control.fit_trackers();
        control
    }

    /// The settings in force.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.borrow().clone()
    }

    /// Successful and refused reloads since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reloads.get(), self.reload_failures.get())
    }

    /// One tracker per checked protocol port of every backend, with the
    /// thresholds in force; existing trackers keep their state.
    fn fit_trackers(&self) {
        let shared = self.shared();
        let h = &shared.config.health;
        let set = self.backends();
        let mut trackers = self.trackers.borrow_mut();
        trackers.resize_with(set.backends.len(), Default::default);
        for (b, per_protocol) in set.backends.iter().zip(trackers.iter_mut()) {
            for p in Protocol::ALL {
                let slot = &mut per_protocol[p.index()];
                match (b.protocol_health(p), slot.as_mut()) {
                    (Some(_), Some(t)) => t.set_thresholds(h.fall, h.rise),
                    (Some(_), None) => *slot = Some(HealthTracker::new(h.fall, h.rise)),
                    (None, _) => *slot = None,
                }
            }
        }
        let n = set.backends.len();
        self.last_error
            .borrow_mut()
            .resize_with(n, Default::default);
        self.protocol_flips
            .borrow_mut()
            .resize(n, [0; Protocol::COUNT]);
        self.check_now.borrow_mut().resize_with(n, Default::default);
    }

    /// Starts a checker for every checked protocol port of every
    /// configured backend that has none running yet. A checker ends by
    /// itself when its backend retires or its protocol is no longer served.
    pub fn start_checks(self: &Rc<Self>) {
        let set = self.backends();
        for b in set.configured() {
            for p in Protocol::ALL {
                if b.protocol_health(p).is_none() {
                    continue;
                }
                let mut check_now = self.check_now.borrow_mut();
                let Some(slot) = check_now
                    .get_mut(usize::from(b.id))
                    .map(|s| &mut s[p.index()])
                else {
                    continue;
                };
                if slot.as_ref().is_some_and(|tx| !tx.is_closed()) {
                    continue;
                }
                let (tx, rx) = local_sync::mpsc::unbounded::channel();
                *slot = Some(tx);
                monoio::spawn(check_loop(self.clone(), b.id, p, rx));
            }
        }
    }

    /// Re-reads the configuration file and puts it in force: new
    /// connections, checks and routing use it; established sessions go on
    /// untouched. Backends are added, reweighted, re-addressed or removed
    /// (a removed one takes no new users and its sessions run until they
    /// end or `server.drain_timeout` passes); listeners are added, changed
    /// in place or closed; the certificate is re-read. Returns what
    /// changed, or every error, with the old configuration still in force.
    pub async fn reload(self: &Rc<Self>) -> Result<Vec<String>, ReloadError> {
        let result = self.try_reload();
        if result.is_ok() {
            // In force on every core before the caller hears of it.
            self.ask_all(|done| CoreMsg::Sync { done }).await;
        }
        match &result {
            Ok(changes) => {
                self.reloads.set(self.reloads.get() + 1);
                if changes.is_empty() {
                    info!("configuration reloaded: nothing changed");
                }
                for change in changes {
                    info!(change = change.as_str(), "configuration reloaded");
                }
            }
            Err(ReloadError(errors)) => {
                self.reload_failures.set(self.reload_failures.get() + 1);
                for e in errors {
                    warn!(
                        error = e.as_str(),
                        "reload refused, the old configuration stays"
                    );
                }
            }
        }
        result
    }

    fn try_reload(self: &Rc<Self>) -> Result<Vec<String>, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError(vec![
                "started without a configuration file (run --dev): nothing to re-read".into(),
            ]));
        };
        let config = Config::load(path)
            .map_err(|e| ReloadError(e.errors().iter().map(|e| e.to_string()).collect()))?;
        let old = self.shared();
        let plan = reload::plan(&old, &self.backends(), &self.listeners.borrow(), config)
            .map_err(ReloadError)?;
        // Bind the new listeners first: a busy address refuses the whole
        // reload before anything changed.
        let cores = self.cores.len();
        let mut added = Vec::new();
        for listen in &plan.listeners.add {
            let (bound, sockets) = bind_all(listen.addr, cores)
                .map_err(|e| ReloadError(vec![format!("listen: {e}")]))?;
            added.push((listen.clone(), bound, sockets));
        }
        for (listen, bound, _) in &added {
            info!(protocol = listen.protocol.as_str(), tls = listen.tls.as_str(), addr = %bound, "listening");
        }
        let ReloadPlan {
            shared,
            backends,
            removed,
            listeners,
            changes,
        } = plan;
        *self.shared.borrow_mut() = shared.clone();
        for core in &self.cores {
            let _ = core.send(CoreMsg::Reload(shared.clone()));
        }
        // Listeners: changed ones in place, then new ones, then the gone.
        {
            let mut bound = self.listeners.borrow_mut();
            for updated in &listeners.update {
                if let Some(b) = bound.iter_mut().find(|b| b.bound == updated.addr) {
                    let mut configured = updated.clone();
                    configured.addr = b.configured.addr;
                    b.configured = configured;
                }
            }
            bound.retain(|b| !listeners.remove.contains(&b.bound));
            for (configured, addr, _) in &added {
                bound.push(BoundListener {
                    configured: configured.clone(),
                    bound: *addr,
                });
            }
        }
        let mut per_core: Vec<Vec<(Listen, std::net::TcpListener)>> =
            (0..cores).map(|_| Vec::new()).collect();
        for (configured, addr, sockets) in added {
            for (i, socket) in sockets.into_iter().enumerate() {
                let mut l = configured.clone();
                l.addr = addr;
                per_core[i].push((l, socket));
            }
        }
        for (core, add) in self.cores.iter().zip(per_core) {
            let _ = core.send(CoreMsg::Listeners {
                add,
                update: listeners.update.clone(),
                remove: listeners.remove.clone(),
            });
        }
        // Backends, then their checks.
        let version = self.backends().version + 1;
        self.publish(BackendSet { version, backends });
        self.fit_trackers();
        self.start_checks();
        for id in removed {
            self.retire_after_drain(id);
        }
        Ok(changes)
    }

    /// After `server.drain_timeout`, a backend still removed retires: the
    /// cores close its remaining sessions (backend side first) and its
    /// users' assignments go.
    fn retire_after_drain(self: &Rc<Self>, id: BackendId) {
        let control = self.clone();
        let drain = self.shared().config.server.drain_timeout;
        monoio::spawn(async move {
            monoio::time::sleep(drain).await;
            let set = control.backends();
            if set
                .get(id)
                .is_some_and(|b| b.lifecycle == Lifecycle::Removed)
            {
                info!(
                    backend = set.get(id).map(|b| &*b.name).unwrap_or(""),
                    "removed backend retires: closing its remaining sessions"
                );
                control.publish(set.with_change(id, |b| b.lifecycle = Lifecycle::Retired));
            }
        });
    }

    /// Records an event for the status page (`GET /events`).
    pub(crate) fn event(
        &self,
        kind: EventKind,
        backend: Option<&str>,
        user: Option<&str>,
        message: String,
    ) {
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

    pub(crate) fn backend_name(&self, id: BackendId) -> String {
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
        // Cluster mode: this director's health verdicts for the others.
        self.report_health_to_cluster(&next);
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
        if let Some(wakers) = self.check_now.borrow().get(usize::from(id)) {
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
        // Binary upgrade: the predecessor's sessions on it count too.
        let predecessor_closed = match self.upgrade.predecessor() {
            Some(link) => {
                let request = PeerRequest::set_admin(&self.backend_name(id), state);
                !matches!(
                    link.ask(request, CLOSE_LIMIT).await,
                    Some(PeerAnswer::AdminSet(false))
                )
            }
            None => true,
        };
        if state != AdminState::Down {
            return true;
        }
        let closed = self.ask_all(|done| CoreMsg::WaitBackendClosed {
            backend: id,
            limit: CLOSE_LIMIT,
            done,
        });
        closed.await.iter().all(|c| *c) && predecessor_closed
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
        let closed = self.kick_sessions(key, KickReason::Admin).await;
        self.end_kick(key);
        self.event(
            EventKind::Kick,
            None,
            Some(key),
            format!("{closed} sessions closed"),
        );
        closed
    }

    /// Kicks `key`'s sessions on every core for `reason` and waits, at
    /// most [`CLOSE_LIMIT`], until their backend connections are closed.
    async fn kick_sessions(&self, key: &str, reason: KickReason) -> usize {
        let kicks = self.ask_all(|done| CoreMsg::KickUser {
            key: key.into(),
            reason,
            done,
        });
        let here = bounded(CLOSE_LIMIT, kicks)
            .await
            .map_or(0, |v| v.iter().sum());
        // Binary upgrade: the user's sessions still open in the
        // predecessor are closed too before this returns.
        let there = match self.upgrade.predecessor() {
            Some(link) => match link.ask(PeerRequest::Kick(key.into()), CLOSE_LIMIT).await {
                Some(PeerAnswer::Kicked(n)) => n,
                _ => 0,
            },
            None => 0,
        };
        here + there
    }

    /// Ends the kick of `key` on every core.
    fn end_kick(&self, key: &str) {
        for core in &self.cores {
            let _ = core.send(CoreMsg::EndKick { key: key.into() });
        }
    }

    /// A safe move: hold the user's new logins, close its sessions
    /// everywhere and wait until the owner core counts none left — every
    /// backend connection of the user closed, including logins that were
    /// on their way — then change the assignment (`Reassign::To` a backend,
    /// or `Forget` it so the next login goes to the first-ranked routable
    /// backend), then let the held logins through. Returns the sessions
    /// closed, or an error (and the assignment unchanged) when the old
    /// sessions did not close within [`CLOSE_LIMIT`].
    pub(crate) async fn safe_move(&self, key: &str, to: Reassign) -> Result<usize, MoveError> {
        let owner = self.owner(key);
        self.ask(owner, |done| CoreMsg::Hold {
            key: key.into(),
            done,
        })
        .await;
        // A move, not a kick: IMAP sessions in a safe state follow the user
        // live (issue 12); their old backend connection counts as closed
        // like any other, and they wait on the hold like a new login.
        let closed = self.kick_sessions(key, KickReason::Move).await;
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

    /// The users this director's cores assign to `backend`.
    pub(crate) async fn local_users_on(&self, backend: BackendId) -> Vec<Box<str>> {
        self.ask_all(|reply| CoreMsg::UsersOn { backend, reply })
            .await
            .into_iter()
            .flatten()
            .collect()
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveError {
    /// The user's sessions did not close within [`CLOSE_LIMIT`]; the user
    /// stays where it was.
    NotClosed,
    /// Cluster mode: the move across the directors did not happen (why);
    /// the user stays where it was.
    Cluster(String),
}

impl std::fmt::Display for MoveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoveError::NotClosed => write!(
                f,
                "the user's sessions did not close within {CLOSE_LIMIT:?}; it stays on its backend"
            ),
            MoveError::Cluster(why) => write!(f, "{why}"),
        }
    }
}

/// Runs `f` with a time limit; `None` if it did not finish.
async fn bounded<F: Future>(limit: Duration, f: F) -> Option<F::Output> {
    monoio::time::timeout(limit, f).await.ok()
}

/// Awaits all futures concurrently (they run on this one thread).
pub(crate) async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
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

/// The health checkers read the backends and settings in force through
/// the control plane and report every result to it.
impl CheckHost for Control {
    fn backends(&self) -> Arc<BackendSet> {
        Control::backends(self)
    }

    fn shared(&self) -> Arc<Shared> {
        Control::shared(self)
    }

    fn health_result(
        &self,
        id: BackendId,
        protocol: Protocol,
        result: Result<(), String>,
        source: Source,
    ) {
        Control::health_result(self, id, protocol, result, source)
    }
}
