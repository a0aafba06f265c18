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
use crate::route::shard::{Assignment, NoBackend, ShardTable};
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
    },
}

/// Why a route could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No backend can take the user.
    NoBackend,
    /// The owner core is gone (the director is shutting down).
    CoreGone,
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

/// One core's router.
pub struct Router {
    core: usize,
    cores: usize,
    post: Arc<dyn CorePost>,
    backends: RefCell<Arc<BackendSet>>,
    shard: RefCell<ShardTable>,
    pending: RefCell<AHashMap<u64, oneshot::Sender<Result<BackendId, NoBackend>>>>,
    next_req: Cell<u64>,
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
        }
    }

    /// The core that owns `key`'s assignment.
    pub fn owner(&self, key: &str) -> usize {
        (hrw::key_hash(key) % self.cores as u64) as usize
    }

    /// The backend snapshot this core works with.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.backends.borrow().clone()
    }

    /// Counts a new session of `key` and returns the backend it must use.
    pub async fn acquire(&self, key: &str) -> Result<BackendId, RouteError> {
        let owner = self.owner(key);
        if owner == self.core {
            let set = self.backends();
            return self
                .shard
                .borrow_mut()
                .acquire(key, &set)
                .map_err(|_| RouteError::NoBackend);
        }
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(req, tx);
        let msg = RouterMsg::Acquire {
            key: key.into(),
            from: self.core,
            req,
        };
        if !self.post.post(owner, msg) {
            self.pending.borrow_mut().remove(&req);
            return Err(RouteError::CoreGone);
        }
        match rx.await {
            Ok(result) => result.map_err(|_| RouteError::NoBackend),
            Err(_) => Err(RouteError::CoreGone),
        }
    }

    /// Forgets one session of `key` that ran on `backend`.
    pub fn release(&self, key: &str, backend: BackendId) {
        let owner = self.owner(key);
        if owner == self.core {
            self.shard
                .borrow_mut()
                .release(key, backend, Instant::now());
        } else {
            let msg = RouterMsg::Release {
                key: key.into(),
                backend,
            };
            // A gone owner means shutdown: nothing left to count.
            let _ = self.post.post(owner, msg);
        }
    }

    /// Handles a message from another core.
    pub fn handle(&self, msg: RouterMsg) {
        match msg {
            RouterMsg::Acquire { key, from, req } => {
                let set = self.backends();
                let result = self.shard.borrow_mut().acquire(&key, &set);
                if !self.post.post(from, RouterMsg::Acquired { req, result }) {
                    // The asker is gone; do not leak its session count.
                    if let Ok(b) = result {
                        self.shard.borrow_mut().release(&key, b, Instant::now());
                    }
                }
            }
            RouterMsg::Acquired { req, result } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&req) {
                    let _ = tx.send(result);
                }
            }
            RouterMsg::Release { key, backend } => {
                self.shard
                    .borrow_mut()
                    .release(&key, backend, Instant::now());
            }
        }
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
