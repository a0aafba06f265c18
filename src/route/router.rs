//! A core's view of routing: asks the owner core of a user for its backend.
//!
//! Every core holds a [`Router`]. `acquire` hashes the user key to its owner
//! core; if that is this core the local [`ShardTable`] answers at once,
//! otherwise the request travels to the owner's mailbox and the answer comes
//! back through this core's mailbox, a few microseconds later. Nothing
//! blocks: the asking session awaits a single-core oneshot while its core
//! goes on serving everyone else.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use local_sync::oneshot;

use crate::route::backends::{BackendId, BackendSet};
use crate::route::hrw;
use crate::route::shard::{Assignment, NoBackend, SessionOrigin, ShardTable};
use crate::runtime::mailbox::MailboxSender;

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
        /// Where a login session comes from (`None` for LMTP).
        origin: Option<SessionOrigin>,
    },
    /// The answer to an [`RouterMsg::Acquire`] (to the asking core).
    Acquired {
        /// The request number.
        req: u64,
        /// The backend, or why there is none.
        result: Result<BackendId, NoBackend>,
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
    /// The user is being moved and the move did not finish in time.
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
            NoBackend::UserSessions => RouteError::UserSessions,
            NoBackend::UserIpSessions => RouteError::UserIpSessions,
        }
    }
}

/// How long a login waits for a move of its user to finish.
pub const HOLD_WAIT: std::time::Duration = std::time::Duration::from_millis(2500);

/// A login waiting for a move of its user to finish.
enum Deferred {
    /// A session on the owner core itself.
    Local(oneshot::Sender<()>),
    /// An acquire from another core, answered when the hold ends.
    Remote {
        from: usize,
        req: u64,
        origin: Option<SessionOrigin>,
    },
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
        }
    }

    /// The core that owns `key`'s assignment.
    pub fn owner(&self, key: &str) -> usize {
        owner_of(key, self.cores)
    }

    /// The backend snapshot this core works with.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.backends.borrow().clone()
    }

    /// Counts a new session of `key` (a login session names its `origin`,
    /// for the per-user limits) and returns the backend it must use.
    pub async fn acquire(
        &self,
        key: &str,
        origin: Option<SessionOrigin>,
    ) -> Result<BackendId, RouteError> {
        let owner = self.owner(key);
        if owner == self.core {
            let held = self.holds.borrow_mut().get_mut(key).map(|waiters| {
                let (tx, rx) = oneshot::channel();
                waiters.push(Deferred::Local(tx));
                rx
            });
            if let Some(rx) = held {
                if monoio::time::timeout(HOLD_WAIT, rx).await.is_err()
                    || self.holds.borrow().contains_key(key)
                {
                    return Err(RouteError::Held);
                }
            }
            let set = self.backends();
            return self
                .shard
                .borrow_mut()
                .acquire(key, &set, origin)
                .map_err(RouteError::from);
        }
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(req, tx);
        let msg = RouterMsg::Acquire {
            key: key.into(),
            from: self.core,
            req,
            origin,
        };
        if !self.post.post(owner, msg) {
            self.pending.borrow_mut().remove(&req);
            return Err(RouteError::CoreGone);
        }
        match rx.await {
            Ok(result) => result.map_err(RouteError::from),
            Err(_) => Err(RouteError::CoreGone),
        }
    }

    /// Forgets one session of `key` (from `origin`, as acquired) that ran
    /// on `backend`.
    pub fn release(&self, key: &str, backend: BackendId, origin: Option<SessionOrigin>) {
        let owner = self.owner(key);
        if owner == self.core {
            self.shard
                .borrow_mut()
                .release(key, backend, origin, Instant::now());
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

    /// Handles a message from another core.
    pub fn handle(&self, msg: RouterMsg) {
        match msg {
            RouterMsg::Acquire {
                key,
                from,
                req,
                origin,
            } => {
                if let Some(waiters) = self.holds.borrow_mut().get_mut(&key) {
                    waiters.push(Deferred::Remote { from, req, origin });
                    return;
                }
                self.answer_acquire(&key, from, req, origin);
            }
            RouterMsg::Acquired { req, result } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&req) {
                    let _ = tx.send(result);
                }
            }
            RouterMsg::Release {
                key,
                backend,
                origin,
            } => {
                self.shard
                    .borrow_mut()
                    .release(&key, backend, origin, Instant::now());
            }
        }
    }

    /// Acquires for a remote core and posts the answer.
    fn answer_acquire(&self, key: &str, from: usize, req: u64, origin: Option<SessionOrigin>) {
        let set = self.backends();
        let result = self.shard.borrow_mut().acquire(key, &set, origin);
        if !self.post.post(from, RouterMsg::Acquired { req, result }) {
            // The asker is gone; do not leak its session count.
            if let Ok(b) = result {
                self.shard
                    .borrow_mut()
                    .release(key, b, origin, Instant::now());
            }
        }
    }

    /// Starts holding new logins of `key` (this core must own it): they wait
    /// until [`Router::unhold`], at most [`HOLD_WAIT`].
    pub fn hold(&self, key: &str) {
        self.holds.borrow_mut().entry(key.into()).or_default();
    }

    /// Ends a hold of `key`: assigns it to `assign` (or drops its
    /// assignment when `None`), then lets the waiting logins through.
    pub fn unhold(&self, key: &str, assign: Option<BackendId>) {
        match assign {
            Some(b) => self.shard.borrow_mut().assign(key, b, Instant::now()),
            None => {
                self.shard.borrow_mut().remove(key);
            }
        }
        let waiters = self.holds.borrow_mut().remove(key).unwrap_or_default();
        for w in waiters {
            match w {
                Deferred::Local(tx) => {
                    let _ = tx.send(());
                }
                Deferred::Remote { from, req, origin } => {
                    self.answer_acquire(key, from, req, origin)
                }
            }
        }
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
        dropped
    }

    /// Removes idle assignments past `user_expire`; returns how many.
    pub fn expire(&self) -> usize {
        self.shard.borrow_mut().expire(Instant::now())
    }

    /// The assignment of `key` if this core owns it.
    pub fn local_assignment(&self, key: &str) -> Option<Assignment> {
        self.shard.borrow().get(key).cloned()
    }

    /// Users assigned on this core's shard.
    pub fn local_users(&self) -> usize {
        self.shard.borrow().len()
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
        let v2 = v1.with_change(0, |b| b.health = Health::Unhealthy);
        let v3 = v2.with_change(0, |b| b.health = Health::Healthy);
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
            let first = r.acquire(key, None).await.unwrap();
            r.release(key, first, None);
            let target = (first + 1) % 3;
            r.hold(key);
            let mut waiting = std::pin::pin!(r.acquire(key, None));
            poll_once(waiting.as_mut());
            assert_eq!(
                r.holds.borrow()[key].len(),
                1,
                "the login waits on the hold"
            );
            r.unhold(key, Some(target));
            assert_eq!(waiting.await, Ok(target));
        });
    }

    #[test]
    fn a_hold_that_never_ends_times_out() {
        block_on(async {
            let r = router(0, 1, Arc::new(Outbox::default()));
            r.hold("stuck");
            assert_eq!(r.acquire("stuck", None).await, Err(RouteError::Held));
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
            origin: None,
        });
        assert!(outbox.0.lock().unwrap().is_empty(), "no answer while held");
        owner.unhold("bob", Some(2));
        let sent = std::mem::take(&mut *outbox.0.lock().unwrap());
        assert!(
            matches!(
                sent.as_slice(),
                [(
                    1,
                    RouterMsg::Acquired {
                        req: 7,
                        result: Ok(2)
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
            let mut pending = std::pin::pin!(asker.acquire(&key, None));
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
            assert_eq!(Some(got), owner.backends().first_choice(&key));
            assert_eq!(owner.local_assignment(&key).unwrap().sessions, 1);
        });
    }
}
