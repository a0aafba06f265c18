//! A core's view of routing: asks the owner core of a user for its backend.
//!
//! Every core holds a [`Router`]. `acquire` hashes the user key to its owner
//! core; if that is this core the local [`ShardTable`] answers at once,
//! otherwise the request travels to the owner's mailbox and the answer comes
//! back through this core's mailbox, a few microseconds later. Nothing
//! blocks: the asking session awaits a single-core oneshot while its core
//! goes on serving everyone else.
//!
//! A login may have to wait: while its user is being moved (a *hold*), or
//! while the user's sessions on a backend that can no longer keep users are
//! still closing (a *retiring* assignment, see [`ShardTable`]). Local and
//! remote logins wait the same [`HOLD_WAIT`] at most. A remote login that
//! gives up (or whose future is dropped) leaks nothing: an answer that
//! finds no one waiting releases the session count it carried.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use local_sync::oneshot;

use crate::cluster_link::{ClaimAnswer, ClusterPort};
use crate::config::Protocol;
use crate::mailbox::MailboxSender;
use crate::route::backends::{BackendId, BackendSet};
use crate::route::hrw;
use crate::route::shard::{Assignment, NoBackend, SessionLimits, SessionOrigin, ShardTable};

/// Routing messages between cores.
#[derive(Debug)]
pub enum RouterMsg {
    /// Count a session of `key` and answer with its backend (to the owner).
    Acquire {
        /// The user key.
        key: Box<str>,
        /// The asking core.
        from: usize,
        /// The asking core's request number.
        req: u64,
        /// The login's protocol.
        protocol: Protocol,
        /// Backends that refused this login for load.
        avoid: Box<[BackendId]>,
        /// Where a login session comes from (`None` for LMTP).
        origin: Option<SessionOrigin>,
    },
    /// The answer to an [`RouterMsg::Acquire`] (to the asking core).
    Acquired {
        /// The user key (to release the count if the asker gave up).
        key: Box<str>,
        /// The request number.
        req: u64,
        /// The backend, or why there is none.
        result: Result<BackendId, NoBackend>,
        /// The origin the count was taken for.
        origin: Option<SessionOrigin>,
    },
    /// Cluster mode: the cluster's answer to a claim of `key` (to the
    /// owner, from its own claim task).
    Claimed {
        /// The user key.
        key: Box<str>,
        /// What the cluster agreed, or why not.
        answer: ClaimAnswer,
    },
    /// A session of `key` on `backend` closed (to the owner).
    Release {
        /// The user key.
        key: Box<str>,
        /// The backend the session ran on.
        backend: BackendId,
        /// Where the session came from, as acquired.
        origin: Option<SessionOrigin>,
    },
}

/// Why a route could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No backend can take the user.
    NoBackend,
    /// The user's backend keeps it but cannot serve this login now (its
    /// port of the protocol is down, or it refused for load while the user
    /// has sessions there): a temporary failure, the user stays.
    Unavailable,
    /// The user is being moved, or its old sessions are being closed, and
    /// that did not finish in time.
    Held,
    /// The owner core is gone (the director is shutting down).
    CoreGone,
    /// The user has `limits.sessions_per_user` sessions already.
    UserSessions,
    /// The user has `limits.sessions_per_user_ip` sessions from this
    /// address and protocol already.
    UserIpSessions,
}

impl From<NoBackend> for RouteError {
    fn from(e: NoBackend) -> Self {
        match e {
            NoBackend::NoneRoutable => RouteError::NoBackend,
            NoBackend::ProtocolDown
            | NoBackend::Busy
            | NoBackend::Unassigned { .. }
            | NoBackend::NotAgreed => RouteError::Unavailable,
            NoBackend::Closing => RouteError::Held,
            NoBackend::UserSessions => RouteError::UserSessions,
            NoBackend::UserIpSessions => RouteError::UserIpSessions,
        }
    }
}

/// What the end of a hold does with the user's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reassign {
    /// Assign the user to this backend (admin move).
    To(BackendId),
    /// Drop the assignment: the next login goes to the first-ranked
    /// routable backend (flush).
    Forget,
    /// Leave it as it is (a move that could not close the old sessions).
    Keep,
}

/// How long a login waits for a move of its user to finish.
pub const HOLD_WAIT: std::time::Duration = std::time::Duration::from_millis(2500);

/// A login waiting for a move of its user to finish.
enum Deferred {
    /// A session on the owner core itself.
    Local(oneshot::Sender<()>),
    /// An acquire from another core, answered when the wait ends.
    Remote {
        from: usize,
        req: u64,
        protocol: Protocol,
        avoid: Box<[BackendId]>,
        origin: Option<SessionOrigin>,
    },
}

/// How long a claim may take before its logins get a temporary failure:
/// well inside [`HOLD_WAIT`], and longer than etcd's own call timeout.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_millis(2000);

/// A login waiting for a claim of its user (cluster mode).
enum ClaimWaiter {
    /// A session on the owner core itself: told whether to try again.
    Local(oneshot::Sender<Result<(), NoBackend>>),
    /// An acquire from another core, acquired for (or refused) when the
    /// claim is answered.
    Remote {
        from: usize,
        req: u64,
        protocol: Protocol,
        avoid: Box<[BackendId]>,
        origin: Option<SessionOrigin>,
    },
}

/// Refuses a login waiting for a claim.
fn refuse(waiter: ClaimWaiter, post: &dyn CorePost, key: &str, why: NoBackend) {
    match waiter {
        ClaimWaiter::Local(tx) => {
            let _ = tx.send(Err(why));
        }
        ClaimWaiter::Remote {
            from, req, origin, ..
        } => {
            let msg = RouterMsg::Acquired {
                key: key.into(),
                req,
                result: Err(why),
                origin,
            };
            let _ = post.post(from, msg);
        }
    }
}

/// Something that carries router messages to a core.
pub trait CorePost: Send + Sync {
    /// Delivers `msg` to core `core`; false if that core is gone.
    fn post(&self, core: usize, msg: RouterMsg) -> bool;
}

impl<T: From<RouterMsg> + Send> CorePost for Vec<MailboxSender<T>> {
    fn post(&self, core: usize, msg: RouterMsg) -> bool {
        self.get(core).is_some_and(|m| m.send(T::from(msg)).is_ok())
    }
}

/// The core (out of `cores`) that owns `key`'s assignment.
pub fn owner_of(key: &str, cores: usize) -> usize {
    (hrw::key_hash(key) % cores.max(1) as u64) as usize
}

/// One core's router.
pub struct Router {
    core: usize,
    cores: usize,
    post: Arc<dyn CorePost>,
    backends: RefCell<Arc<BackendSet>>,
    shard: RefCell<ShardTable>,
    pending: RefCell<AHashMap<u64, oneshot::Sender<Result<BackendId, NoBackend>>>>,
    next_req: Cell<u64>,
    /// Users being moved: their logins wait here until the move ends.
    holds: RefCell<AHashMap<Box<str>, Vec<Deferred>>>,
    /// Users whose retiring assignment still has sessions: their logins
    /// wait here until the last one is released.
    closing: RefCell<AHashMap<Box<str>, Vec<Deferred>>>,
    /// Moves waiting for a user's last session to be released.
    idle_watchers: RefCell<AHashMap<Box<str>, Vec<oneshot::Sender<()>>>>,
    /// Binary upgrade, old process: set once the routing state went to the
    /// new process. No new session is counted any more, and each counted
    /// session that ends is reported here (user key, backend name).
    handed_over: RefCell<Option<flume::Sender<HandedOverRelease>>>,
    /// Cluster mode: where claims and releases of users go.
    port: RefCell<Option<ClusterPort>>,
    /// Cluster mode: users whose claim is under way, with the logins
    /// waiting for its answer.
    claims: RefCell<AHashMap<Box<str>, Vec<ClaimWaiter>>>,
}

/// A session of the old process that ended after the hand-over: the user
/// key and the backend's name.
pub type HandedOverRelease = (Box<str>, Box<str>);

/// One assignment as handed to a new process: user key, backend name,
/// since, live sessions.
pub type HandedOverAssignment = (Box<str>, Box<str>, std::time::SystemTime, u32);

/// Removes a remote request from the pending table when the asking future
/// ends, whether it got its answer, gave up or was dropped.
struct PendingGuard<'a> {
    router: &'a Router,
    req: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.router.pending.borrow_mut().remove(&self.req);
    }
}

impl Router {
    /// The router of core `core` out of `cores`.
    pub fn new(
        core: usize,
        cores: usize,
        post: Arc<dyn CorePost>,
        backends: Arc<BackendSet>,
        shard: ShardTable,
    ) -> Router {
        Router {
            core,
            cores,
            post,
            backends: RefCell::new(backends),
            shard: RefCell::new(shard),
            pending: RefCell::new(AHashMap::new()),
            next_req: Cell::new(0),
            holds: RefCell::new(AHashMap::new()),
            closing: RefCell::new(AHashMap::new()),
            idle_watchers: RefCell::new(AHashMap::new()),
            handed_over: RefCell::new(None),
            port: RefCell::new(None),
            claims: RefCell::new(AHashMap::new()),
        }
    }

    /// Cluster mode: users are placed only by the cluster's agreement,
    /// claimed through `port`, and dropped assignments are released there.
    pub fn join_cluster(&self, port: ClusterPort) {
        self.shard.borrow_mut().place_by_agreement();
        *self.port.borrow_mut() = Some(port);
    }

    /// The core that owns `key`'s assignment.
    pub fn owner(&self, key: &str) -> usize {
        owner_of(key, self.cores)
    }

    /// The backend snapshot this core works with.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.backends.borrow().clone()
    }

    /// Counts a new session of `key` for a login of `protocol` and returns
    /// the backend it must use; `avoid` lists backends that refused this
    /// login for load (see [`ShardTable::acquire`]). Waits (at most
    /// [`HOLD_WAIT`] in all) while the user is held by a move or its old
    /// sessions are still closing. A login session names its `origin`, for
    /// the per-user session limits; LMTP deliveries name none.
    pub async fn acquire(
        &self,
        key: &str,
        protocol: Protocol,
        avoid: &[BackendId],
        origin: Option<SessionOrigin>,
    ) -> Result<BackendId, RouteError> {
        let deadline = monoio::time::Instant::now() + HOLD_WAIT;
        let owner = self.owner(key);
        if owner != self.core {
            return self
                .acquire_remote(key, owner, protocol, avoid, origin, deadline)
                .await;
        }
        loop {
            let held = self.holds.borrow_mut().get_mut(key).map(|waiters| {
                let (tx, rx) = oneshot::channel();
                waiters.push(Deferred::Local(tx));
                rx
            });
            if let Some(rx) = held {
                if monoio::time::timeout_at(deadline, rx).await.is_err()
                    || self.holds.borrow().contains_key(key)
                {
                    return Err(RouteError::Held);
                }
            }
            if self.claims.borrow().contains_key(key) {
                // A claim of the user is under way: its answer decides.
                self.await_claim(key, None, avoid, deadline).await?;
                continue;
            }
            let result = self.shard_acquire(key, protocol, avoid, origin);
            match result {
                Ok(b) => return Ok(b),
                Err(NoBackend::Unassigned { candidate }) => {
                    self.await_claim(key, Some(candidate), avoid, deadline)
                        .await?;
                }
                Err(NoBackend::Closing) => {
                    let (tx, rx) = oneshot::channel();
                    self.closing
                        .borrow_mut()
                        .entry(key.into())
                        .or_default()
                        .push(Deferred::Local(tx));
                    if monoio::time::timeout_at(deadline, rx).await.is_err() {
                        return Err(RouteError::Held);
                    }
                }
                Err(other) => return Err(RouteError::from(other)),
            }
        }
    }

    /// [`Router::acquire`] through the owner core.
    async fn acquire_remote(
        &self,
        key: &str,
        owner: usize,
        protocol: Protocol,
        avoid: &[BackendId],
        origin: Option<SessionOrigin>,
        deadline: monoio::time::Instant,
    ) -> Result<BackendId, RouteError> {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(req, tx);
        let _pending = PendingGuard { router: self, req };
        let msg = RouterMsg::Acquire {
            key: key.into(),
            from: self.core,
            req,
            protocol,
            avoid: avoid.into(),
            origin,
        };
        if !self.post.post(owner, msg) {
            return Err(RouteError::CoreGone);
        }
        match monoio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result.map_err(RouteError::from),
            Ok(Err(_)) => Err(RouteError::CoreGone),
            Err(_) => Err(RouteError::Held),
        }
    }

    /// Forgets one session of `key` (from `origin`, as acquired) that ran
    /// on `backend`.
    pub fn release(&self, key: &str, backend: BackendId, origin: Option<SessionOrigin>) {
        let owner = self.owner(key);
        if owner == self.core {
            self.release_local(key, backend, origin);
        } else {
            let msg = RouterMsg::Release {
                key: key.into(),
                backend,
                origin,
            };
            // A gone owner means shutdown: nothing left to count.
            let _ = self.post.post(owner, msg);
        }
    }

    /// Releases on this core's shard; when that was the user's last
    /// session, wakes the moves and logins that wait for it.
    fn release_local(&self, key: &str, backend: BackendId, origin: Option<SessionOrigin>) {
        let counted = self.handed_over.borrow().is_some()
            && self
                .shard
                .borrow()
                .get(key)
                .is_some_and(|a| a.backend == backend && a.sessions > 0);
        let idle = self
            .shard
            .borrow_mut()
            .release(key, backend, origin, Instant::now());
        if counted {
            self.report_handed_over_release(key, backend);
        }
        if !idle {
            return;
        }
        // The last session of an assignment to a backend that can no
        // longer keep users: the assignment goes now (not at user_expire),
        // so in cluster mode the others may place the user elsewhere.
        let retired = {
            let set = self.backends();
            self.shard
                .borrow()
                .get(key)
                .is_some_and(|a| set.get(a.backend).is_none_or(|b| !b.keeps_users()))
        };
        if retired && self.shard.borrow_mut().remove(key).is_some() {
            self.release_presence(&[key.into()]);
        }
        let watchers = self.idle_watchers.borrow_mut().remove(key);
        for tx in watchers.into_iter().flatten() {
            let _ = tx.send(());
        }
        let waiting = self.closing.borrow_mut().remove(key);
        for w in waiting.into_iter().flatten() {
            self.resume(key, w);
        }
    }

    /// Lets a deferred login go on: a local one retries its acquire, a
    /// remote one is acquired for and answered.
    fn resume(&self, key: &str, waiting: Deferred) {
        match waiting {
            Deferred::Local(tx) => {
                let _ = tx.send(());
            }
            Deferred::Remote {
                from,
                req,
                protocol,
                avoid,
                origin,
            } => self.answer_acquire(key, from, req, protocol, avoid, origin),
        }
    }

    /// Waits until `key` (owned by this core) has no session left, at most
    /// `limit`; true if it has none.
    pub async fn wait_idle(&self, key: &str, limit: std::time::Duration) -> bool {
        if self.shard.borrow().sessions(key) == 0 {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        self.idle_watchers
            .borrow_mut()
            .entry(key.into())
            .or_default()
            .push(tx);
        monoio::time::timeout(limit, rx).await.is_ok() || self.shard.borrow().sessions(key) == 0
    }

    /// Cluster mode: waits for the claim of `key` (starting it for
    /// `candidate` if none is under way); `Ok` when the login may try
    /// again, else why not.
    async fn await_claim(
        &self,
        key: &str,
        candidate: Option<BackendId>,
        avoid: &[BackendId],
        deadline: monoio::time::Instant,
    ) -> Result<(), RouteError> {
        let (tx, rx) = oneshot::channel();
        self.claim(key, candidate, avoid, ClaimWaiter::Local(tx));
        match monoio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(RouteError::from(e)),
            Ok(Err(_)) => Err(RouteError::CoreGone),
            Err(_) => Err(RouteError::Unavailable),
        }
    }

    /// Cluster mode: adds `waiter` to the claim of `key`, starting one for
    /// `candidate` when none is under way. The claim runs in a task of its
    /// own whose answer comes back as [`RouterMsg::Claimed`]; after
    /// [`CLAIM_WAIT`] it is refused, and the presence a late agreement may
    /// still record is released (the port keeps the order).
    fn claim(
        &self,
        key: &str,
        candidate: Option<BackendId>,
        avoid: &[BackendId],
        waiter: ClaimWaiter,
    ) {
        if let Some(waiters) = self.claims.borrow_mut().get_mut(key) {
            waiters.push(waiter);
            return;
        }
        let port = self.port.borrow().clone();
        let set = self.backends();
        let (Some(port), Some(candidate)) = (port, candidate.and_then(|c| set.get(c))) else {
            refuse(waiter, &*self.post, key, NoBackend::NotAgreed);
            return;
        };
        let unusable: Box<[Box<str>]> = set
            .backends
            .iter()
            .filter(|b| !b.keeps_users() || avoid.contains(&b.id))
            .map(|b| (*b.name).into())
            .collect();
        let known: Box<[Box<str>]> = set.configured().map(|b| (*b.name).into()).collect();
        let answer = port.claim(key, &candidate.name, unusable, known);
        self.claims.borrow_mut().insert(key.into(), vec![waiter]);
        let post = self.post.clone();
        let core = self.core;
        let key: Box<str> = key.into();
        monoio::spawn(async move {
            let answer = match monoio::time::timeout(CLAIM_WAIT, answer.recv_async()).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => ClaimAnswer::Refused("the cluster thread has stopped".into()),
                Err(_) => {
                    port.release(&key);
                    ClaimAnswer::Refused("no agreement in time".into())
                }
            };
            post.post(core, RouterMsg::Claimed { key, answer });
        });
    }

    /// Cluster mode: the answer to a claim of `key`. An agreed backend
    /// usable here becomes the user's assignment and the waiting logins
    /// try again; anything else refuses them (and releases a presence
    /// that was recorded for nothing).
    fn claimed(&self, key: &str, answer: ClaimAnswer) {
        let Some(waiters) = self.claims.borrow_mut().remove(key) else {
            return;
        };
        let set = self.backends();
        let agreed = match &answer {
            ClaimAnswer::Agreed(name) => {
                set.by_name(name).filter(|b| b.keeps_users()).map(|b| b.id)
            }
            ClaimAnswer::Refused(_) => None,
        };
        let result = match agreed {
            Some(backend) => {
                let mut shard = self.shard.borrow_mut();
                if shard.get(key).is_none_or(|a| a.backend != backend) {
                    shard.assign(key, backend, Instant::now());
                }
                Ok(())
            }
            None => {
                if let ClaimAnswer::Agreed(name) = &answer {
                    tracing::info!(
                        user = key,
                        backend = &**name,
                        "the cluster's backend for the user is unusable here: temporary failure"
                    );
                    if let Some(port) = &*self.port.borrow() {
                        port.release(key);
                    }
                    self.shard.borrow_mut().remove(key);
                }
                Err(NoBackend::NotAgreed)
            }
        };
        for w in waiters {
            match (w, result) {
                (ClaimWaiter::Local(tx), r) => {
                    let _ = tx.send(r);
                }
                (
                    ClaimWaiter::Remote {
                        from,
                        req,
                        protocol,
                        avoid,
                        origin,
                    },
                    Ok(()),
                ) => self.answer_acquire(key, from, req, protocol, avoid, origin),
                (w, Err(e)) => refuse(w, &*self.post, key, e),
            }
        }
    }

    /// Cluster mode: tells the cluster thread that `keys` are no longer
    /// routed by this director.
    fn release_presence(&self, keys: &[Box<str>]) {
        if let Some(port) = &*self.port.borrow() {
            for key in keys {
                port.release(key);
            }
        }
    }

    /// Cluster mode, fenced: forgets every assignment (this director's
    /// presence goes with its lease) and refuses the logins waiting for a
    /// claim.
    pub fn forget_all(&self) {
        self.shard.borrow_mut().clear();
        let held: Vec<Box<str>> = self.holds.borrow().keys().cloned().collect();
        for key in held {
            // Their logins try again, and are refused while fenced.
            self.unhold(&key, Reassign::Keep);
        }
        let claims: Vec<_> = self.claims.borrow_mut().drain().collect();
        for (key, waiters) in claims {
            for w in waiters {
                refuse(w, &*self.post, &key, NoBackend::NotAgreed);
            }
        }
    }

    /// Handles a message from another core.
    pub fn handle(&self, msg: RouterMsg) {
        match msg {
            RouterMsg::Acquire {
                key,
                from,
                req,
                protocol,
                avoid,
                origin,
            } => {
                if let Some(waiters) = self.holds.borrow_mut().get_mut(&key) {
                    waiters.push(Deferred::Remote {
                        from,
                        req,
                        protocol,
                        avoid,
                        origin,
                    });
                    return;
                }
                self.answer_acquire(&key, from, req, protocol, avoid, origin);
            }
            RouterMsg::Acquired {
                key,
                req,
                result,
                origin,
            } => {
                let asker = self.pending.borrow_mut().remove(&req);
                let delivered = match asker {
                    Some(tx) => tx.send(result).is_ok(),
                    None => false,
                };
                if !delivered {
                    // The login gave up or was dropped: it will never
                    // release the count this answer took for it.
                    if let Ok(b) = result {
                        self.release(&key, b, origin);
                    }
                }
            }
            RouterMsg::Claimed { key, answer } => self.claimed(&key, answer),
            RouterMsg::Release {
                key,
                backend,
                origin,
            } => self.release_local(&key, backend, origin),
        }
    }

    /// Acquires for a remote core and posts the answer; a user whose old
    /// sessions are still closing is answered once they are.
    fn answer_acquire(
        &self,
        key: &str,
        from: usize,
        req: u64,
        protocol: Protocol,
        avoid: Box<[BackendId]>,
        origin: Option<SessionOrigin>,
    ) {
        let under_way = self.claims.borrow().contains_key(key);
        let result = match under_way {
            true => None,
            false => Some(self.shard_acquire(key, protocol, &avoid, origin)),
        };
        let candidate = match result {
            None => Some(None),
            Some(Err(NoBackend::Unassigned { candidate })) => Some(Some(candidate)),
            Some(_) => None,
        };
        if let Some(candidate) = candidate {
            let waiter = ClaimWaiter::Remote {
                from,
                req,
                protocol,
                avoid: avoid.clone(),
                origin,
            };
            self.claim(key, candidate, &avoid, waiter);
            return;
        }
        let Some(result) = result else { return };
        if result == Err(NoBackend::Closing) {
            self.closing
                .borrow_mut()
                .entry(key.into())
                .or_default()
                .push(Deferred::Remote {
                    from,
                    req,
                    protocol,
                    avoid,
                    origin,
                });
            return;
        }
        let msg = RouterMsg::Acquired {
            key: key.into(),
            req,
            result,
            origin,
        };
        if !self.post.post(from, msg) {
            // The asker is gone; do not leak its session count.
            if let Ok(b) = result {
                self.release_local(key, b, origin);
            }
        }
    }

    /// Starts holding new logins of `key` (this core must own it): they wait
    /// until [`Router::unhold`], at most [`HOLD_WAIT`].
    pub fn hold(&self, key: &str) {
        self.holds.borrow_mut().entry(key.into()).or_default();
    }

    /// Ends a hold of `key`: changes its assignment as `change` says, then
    /// lets the waiting logins through.
    pub fn unhold(&self, key: &str, change: Reassign) {
        match change {
            Reassign::To(b) => self.shard.borrow_mut().assign(key, b, Instant::now()),
            Reassign::Forget => {
                if self.shard.borrow_mut().remove(key).is_some() {
                    self.release_presence(&[key.into()]);
                }
            }
            Reassign::Keep => {}
        }
        let waiters = self.holds.borrow_mut().remove(key).unwrap_or_default();
        for w in waiters {
            self.resume(key, w);
        }
    }

    /// Cluster mode: ends the hold of a user moved across the cluster;
    /// `to` is the backend etcd now names (`None`: dropped). The user keeps
    /// an assignment already on `to`; one this director cannot use is
    /// dropped (its next login claims again).
    pub fn settle_move(&self, key: &str, to: Option<&str>) {
        let set = self.backends();
        let current = self.shard.borrow().get(key).map(|a| a.backend);
        let change = match to.map(|name| set.by_name(name)) {
            // Only an assignment this director still holds (and so is
            // present for) is re-pointed; without one, the next login
            // claims.
            _ if current.is_none() => Reassign::Forget,
            None | Some(None) => Reassign::Forget,
            Some(Some(b)) if current == Some(b.id) => Reassign::Keep,
            Some(Some(b)) if b.keeps_users() => Reassign::To(b.id),
            Some(Some(_)) => Reassign::Forget,
        };
        self.unhold(key, change);
    }

    /// Keys assigned on this core's shard to `backend`.
    pub fn users_on(&self, backend: BackendId) -> Vec<Box<str>> {
        self.shard
            .borrow()
            .iter()
            .filter(|(_, a)| a.backend == backend)
            .map(|(k, _)| k.into())
            .collect()
    }

    /// Assignments on this core's shard per backend id.
    pub fn users_per_backend(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.backends.borrow().backends.len()];
        for (_, a) in self.shard.borrow().iter() {
            if let Some(n) = out.get_mut(usize::from(a.backend)) {
                *n += 1;
            }
        }
        out
    }

    /// Installs a newer backend snapshot (older ones are ignored) and drops
    /// the assignments whose backend can no longer keep users; returns them.
    pub fn apply_backends(&self, set: Arc<BackendSet>) -> Vec<Box<str>> {
        if set.version <= self.backends.borrow().version {
            return Vec::new();
        }
        let dropped = self.shard.borrow_mut().drop_unkept(&set);
        *self.backends.borrow_mut() = set;
        self.release_presence(&dropped);
        dropped
    }

    /// Changes `user_expire` and the session limits (a reload).
    pub fn set_settings(&self, expire: std::time::Duration, limits: SessionLimits) {
        self.shard.borrow_mut().set_settings(expire, limits);
    }

    /// Removes idle assignments past `user_expire`; returns how many.
    pub fn expire(&self) -> usize {
        let gone = self.shard.borrow_mut().expire(Instant::now());
        self.release_presence(&gone);
        gone.len()
    }

    /// The assignment of `key` if this core owns it.
    pub fn local_assignment(&self, key: &str) -> Option<Assignment> {
        self.shard.borrow().get(key).cloned()
    }

    /// Users assigned on this core's shard.
    pub fn local_users(&self) -> usize {
        self.shard.borrow().len()
    }

    /// Counts a session in the shard, unless the routing state was
    /// handed to a new process: then no new session opens here (a
    /// temporary failure; the client's retry reaches the new process).
    fn shard_acquire(
        &self,
        key: &str,
        protocol: Protocol,
        avoid: &[BackendId],
        origin: Option<SessionOrigin>,
    ) -> Result<BackendId, NoBackend> {
        if self.handed_over.borrow().is_some() {
            return Err(NoBackend::Busy);
        }
        let set = self.backends();
        self.shard
            .borrow_mut()
            .acquire(key, &set, protocol, avoid, origin)
    }
}

/// Binary upgrade: handing this core's shard to a new process, and taking
/// one over from an old one.
impl Router {
    /// Old process: stops counting new sessions, reports each counted
    /// session that ends to `releases` from now on, and returns every
    /// assignment of this core's shard (the new process follows them).
    pub fn hand_over(
        &self,
        releases: flume::Sender<HandedOverRelease>,
    ) -> Vec<HandedOverAssignment> {
        *self.handed_over.borrow_mut() = Some(releases);
        let set = self.backends();
        self.shard
            .borrow()
            .iter()
            .filter_map(|(key, a)| {
                let name: Box<str> = (*set.get(a.backend)?.name).into();
                Some((key.into(), name, a.since, a.sessions))
            })
            .collect()
    }

    /// Old process: stops reporting ended sessions and routes new ones
    /// again — after the new process failed, or once this core drained
    /// (the reports end there: the new process learns so).
    pub fn end_hand_over(&self) {
        *self.handed_over.borrow_mut() = None;
    }

    /// New process: takes over assignments this core owns (user key,
    /// backend, since, sessions still open in the old process, which the
    /// old process's reports release one by one).
    pub fn take_over(&self, assignments: Vec<(Box<str>, BackendId, std::time::SystemTime, u32)>) {
        let now = Instant::now();
        let mut shard = self.shard.borrow_mut();
        for (key, backend, since, sessions) in assignments {
            shard.import(&key, backend, since, sessions, now);
        }
    }

    fn report_handed_over_release(&self, key: &str, backend: BackendId) {
        let name: Option<Box<str>> = self.backends().get(backend).map(|b| (*b.name).into());
        if let (Some(tx), Some(name)) = (&*self.handed_over.borrow(), name) {
            let _ = tx.send((key.into(), name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::block_on;
    use crate::route::backends::tests::set_of;
    use crate::route::backends::Health;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Polls `fut` once (it must then be waiting) without a runtime turn.
    fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fut.poll(&mut cx).is_pending(), "the future waits");
    }

    /// Collects posted messages instead of delivering them.
    #[derive(Default)]
    struct Outbox(Mutex<Vec<(usize, RouterMsg)>>);

    impl CorePost for Outbox {
        fn post(&self, core: usize, msg: RouterMsg) -> bool {
            self.0.lock().unwrap().push((core, msg));
            true
        }
    }

    fn router(core: usize, cores: usize, post: Arc<dyn CorePost>) -> Router {
        Router::new(
            core,
            cores,
            post,
            Arc::new(set_of(3)),
            ShardTable::new(Duration::from_secs(60)),
        )
    }

    #[test]
    fn older_snapshots_are_ignored_so_every_core_ends_in_the_same_state() {
        let r = router(0, 1, Arc::new(Outbox::default()));
        let v1 = set_of(3);
        let v2 = v1.with_change(0, |b| b.set_every_protocol(Health::Unhealthy));
        let v3 = v2.with_change(0, |b| b.set_every_protocol(Health::Healthy));
        r.apply_backends(Arc::new(v3.clone()));
        r.apply_backends(Arc::new(v2));
        assert_eq!(r.backends().version, v3.version);
        assert!(r.backends().get(0).unwrap().routable());
    }

    #[test]
    fn a_held_user_waits_for_the_move_and_gets_the_new_backend() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            let key = "mover";
            let first = r.acquire(key, Protocol::Imap, &[], None).await.unwrap();
            r.release(key, first, None);
            let target = (first + 1) % 3;
            r.hold(key);
            let mut waiting = std::pin::pin!(r.acquire(key, Protocol::Imap, &[], None));
            poll_once(waiting.as_mut());
            assert_eq!(
                r.holds.borrow()[key].len(),
                1,
                "the login waits on the hold"
            );
            r.unhold(key, Reassign::To(target));
            assert_eq!(waiting.await, Ok(target));
        });
    }

    #[test]
    fn in_a_cluster_the_last_session_on_a_dead_backend_releases_the_user_at_once() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            let (port, receivers) = crate::cluster_link::ClusterPort::new();
            r.join_cluster(port);
            let key = "u";
            r.shard.borrow_mut().assign(key, 0, Instant::now());
            assert_eq!(r.acquire(key, Protocol::Imap, &[], None).await, Ok(0));
            // Backend 0 dies while the session is open: the assignment
            // stays (retiring) until the session ends...
            let down = set_of(3).with_change(0, |b| b.set_every_protocol(Health::Unhealthy));
            assert!(r.apply_backends(Arc::new(down)).is_empty());
            assert!(receivers.cores.try_recv().is_err());
            // ...and goes with it, its presence released, rather than at
            // user_expire (another director may then place the user).
            r.release(key, 0, None);
            assert!(r.local_assignment(key).is_none());
            match receivers.cores.try_recv() {
                Ok(crate::cluster_link::PortRequest::Release { user }) => assert_eq!(&*user, key),
                other => panic!("a release of the user, got {other:?}"),
            }
        });
    }

    #[test]
    fn a_hold_that_never_ends_times_out() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            r.hold("stuck");
            assert_eq!(
                r.acquire("stuck", Protocol::Imap, &[], None).await,
                Err(RouteError::Held)
            );
        });
    }

    #[test]
    fn remote_acquires_of_a_held_user_are_answered_when_the_hold_ends() {
        let outbox = Arc::new(Outbox::default());
        let owner = router(0, 2, outbox.clone());
        owner.hold("bob");
        owner.handle(RouterMsg::Acquire {
            key: "bob".into(),
            from: 1,
            req: 7,
            protocol: Protocol::Imap,
            avoid: Box::new([]),
            origin: None,
        });
        assert!(outbox.0.lock().unwrap().is_empty(), "no answer while held");
        owner.unhold("bob", Reassign::To(2));
        let sent = std::mem::take(&mut *outbox.0.lock().unwrap());
        assert!(
            matches!(
                sent.as_slice(),
                [(
                    1,
                    RouterMsg::Acquired {
                        req: 7,
                        result: Ok(2),
                        ..
                    }
                )]
            ),
            "{sent:?}"
        );
        assert_eq!(owner.local_assignment("bob").unwrap().sessions, 1);
    }

    #[test]
    fn acquire_on_another_core_goes_through_the_owner() {
        block_on(async {
            let outbox = Arc::new(Outbox::default());
            let key = (0..100)
                .map(|i| format!("k{i}"))
                .find(|k| owner_of(k, 2) == 1)
                .unwrap();
            let asker = router(0, 2, outbox.clone());
            let owner = router(1, 2, Arc::new(Outbox::default()));
            let mut pending = std::pin::pin!(asker.acquire(&key, Protocol::Imap, &[], None));
            poll_once(pending.as_mut());
            let (to, msg) = outbox.0.lock().unwrap().remove(0);
            assert_eq!(to, 1);
            // The owner answers into its own outbox; hand the answer back.
            let owner_out = Arc::new(Outbox::default());
            let owner = Router {
                post: owner_out.clone(),
                ..owner
            };
            owner.handle(msg);
            let (back, answer) = owner_out.0.lock().unwrap().remove(0);
            assert_eq!(back, 0);
            asker.handle(answer);
            let got = pending.await.unwrap();
            assert_eq!(
                Some(got),
                owner.backends().first_choice(&key, Protocol::Imap, &[])
            );
            assert_eq!(owner.local_assignment(&key).unwrap().sessions, 1);
        });
    }

    /// A key owned by core 1 of 2.
    fn key_of_core_1() -> String {
        (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| owner_of(k, 2) == 1)
            .unwrap()
    }

    #[test]
    fn a_remote_login_that_gives_up_leaks_no_session_count() {
        block_on(async {
            let outbox = Arc::new(Outbox::default());
            let key = key_of_core_1();
            let asker = router(0, 2, outbox.clone());
            let owner_out = Arc::new(Outbox::default());
            let owner = router(1, 2, owner_out.clone());
            // The owner holds the user (a move), so no answer comes in time.
            owner.hold(&key);
            let started = std::time::Instant::now();
            assert_eq!(
                asker.acquire(&key, Protocol::Imap, &[], None).await,
                Err(RouteError::Held)
            );
            assert!(
                started.elapsed() >= HOLD_WAIT,
                "a remote login waits as long as a local one"
            );
            assert!(asker.pending.borrow().is_empty());
            let (_, msg) = outbox.0.lock().unwrap().remove(0);
            owner.handle(msg);
            // The move ends; the owner counts the session and answers late.
            owner.unhold(&key, Reassign::Forget);
            assert_eq!(owner.local_assignment(&key).unwrap().sessions, 1);
            let (_, answer) = owner_out.0.lock().unwrap().remove(0);
            asker.handle(answer);
            // Nobody waits for the answer: the asker sends the count back.
            let (to, release) = outbox.0.lock().unwrap().remove(0);
            assert_eq!(to, 1);
            assert!(matches!(release, RouterMsg::Release { .. }), "{release:?}");
            owner.handle(release);
            assert_eq!(owner.local_assignment(&key).unwrap().sessions, 0);
        });
    }

    #[test]
    fn a_dropped_remote_login_leaks_no_session_count() {
        block_on(async {
            let outbox = Arc::new(Outbox::default());
            let key = key_of_core_1();
            let asker = router(0, 2, outbox.clone());
            let owner_out = Arc::new(Outbox::default());
            let owner = router(1, 2, owner_out.clone());
            {
                let mut pending = std::pin::pin!(asker.acquire(&key, Protocol::Imap, &[], None));
                poll_once(pending.as_mut());
            } // the login is dropped in the middle of routing
            assert!(asker.pending.borrow().is_empty());
            let (_, msg) = outbox.0.lock().unwrap().remove(0);
            owner.handle(msg);
            let (_, answer) = owner_out.0.lock().unwrap().remove(0);
            asker.handle(answer);
            let (_, release) = outbox.0.lock().unwrap().remove(0);
            owner.handle(release);
            assert_eq!(owner.local_assignment(&key).unwrap().sessions, 0);
        });
    }

    #[test]
    fn a_login_waits_for_the_old_sessions_of_a_retiring_assignment() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            let key = "eve";
            let old = r.acquire(key, Protocol::Imap, &[], None).await.unwrap();
            let down = r
                .backends()
                .with_change(old, |b| b.set_every_protocol(Health::Unhealthy));
            assert!(
                r.apply_backends(Arc::new(down)).is_empty(),
                "kept: it has a session"
            );
            let mut waiting = std::pin::pin!(r.acquire(key, Protocol::Imap, &[], None));
            poll_once(waiting.as_mut());
            assert_eq!(r.local_assignment(key).unwrap().backend, old);
            r.release(key, old, None);
            let new = waiting.await.unwrap();
            assert_ne!(new, old);
            assert_eq!(r.local_assignment(key).unwrap().sessions, 1);
        });
    }

    #[test]
    fn wait_idle_completes_on_the_last_release() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            let b = r.acquire("fay", Protocol::Imap, &[], None).await.unwrap();
            r.acquire("fay", Protocol::Imap, &[], None).await.unwrap();
            assert!(!r.wait_idle("fay", Duration::from_millis(20)).await);
            let mut idle = std::pin::pin!(r.wait_idle("fay", Duration::from_secs(5)));
            poll_once(idle.as_mut());
            r.release("fay", b, None);
            poll_once(idle.as_mut());
            r.release("fay", b, None);
            assert!(idle.await);
        });
    }

    /// Binary upgrade: the old process's router hands its shard over,
    /// opens no session after that and reports each counted one that
    /// ends; the new process's router counts them until reported.
    #[test]
    fn a_handed_over_shard_reports_its_sessions_and_opens_none() {
        block_on(async {
            let old = router(0, 1, Arc::new(Outbox::default()));
            let b = old
                .acquire("alice", Protocol::Imap, &[], None)
                .await
                .unwrap();
            old.acquire("alice", Protocol::Imap, &[], None)
                .await
                .unwrap();
            let (tx, reports) = flume::unbounded();
            let handed = old.hand_over(tx);
            assert_eq!(handed.len(), 1);
            assert_eq!((handed[0].0.as_ref(), handed[0].3), ("alice", 2));
            assert_eq!(
                old.acquire("bob", Protocol::Imap, &[], None).await,
                Err(RouteError::Unavailable),
                "no new session in the old process"
            );
            old.release("alice", b, None);
            let name = old.backends().get(b).unwrap().name.to_string();
            let (key, backend) = reports.try_recv().unwrap();
            assert_eq!((key.as_ref(), backend.as_ref()), ("alice", name.as_str()));

            let new = router(0, 1, Arc::new(Outbox::default()));
            let since = handed[0].2;
            new.take_over(vec![("alice".into(), b, since, 1)]);
            new.apply_backends(Arc::new(
                new.backends()
                    .with_change(b, |x| x.set_every_protocol(Health::Unhealthy)),
            ));
            assert_eq!(
                new.acquire("alice", Protocol::Imap, &[], None).await,
                Err(RouteError::Held),
                "not elsewhere while the old process's session is open"
            );
            new.release("alice", b, None);
            let now = new
                .acquire("alice", Protocol::Imap, &[], None)
                .await
                .unwrap();
            assert_ne!(now, b);
            old.end_hand_over();
            assert!(old.acquire("bob", Protocol::Imap, &[], None).await.is_ok());
        });
    }
}
