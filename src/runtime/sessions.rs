//! The logged-in sessions of one core, so they can be ended from outside.
//!
//! Every session that reaches the relay registers here with its user key
//! and backend and receives a [`KickSignal`], the future its relay stops
//! on. A kick (admin kick or move, a backend going down) fires the signals
//! of the sessions concerned and hands back, per session, a [`Closed`]
//! future that completes once that session has really ended — its relay
//! returned and both its sockets were dropped — so a move can wait for
//! "closed" before it assigns the user elsewhere.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use ahash::AHashMap;

use crate::config::Protocol;
use crate::route::backends::BackendId;

/// Why a session was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// An administrator kicked or moved the user.
    Admin,
    /// The session's backend went down (health or admin).
    BackendDown,
    /// The director is shutting down.
    Shutdown,
}

/// What a session and its registry entry share: the kick, and whether the
/// session has ended. One small allocation per session (it lives as long
/// as the session, so it counts in the memory of every idle one).
#[derive(Default)]
struct Signals {
    kick: Cell<Option<KickReason>>,
    kick_waiter: Cell<Option<Waker>>,
    ended: Cell<bool>,
    end_waiter: Cell<Option<Waker>>,
}

impl Signals {
    fn kick(&self, reason: KickReason) {
        if self.kick.get().is_none() {
            self.kick.set(Some(reason));
            if let Some(w) = self.kick_waiter.take() {
                w.wake();
            }
        }
    }

    fn end(&self) {
        self.ended.set(true);
        if let Some(w) = self.end_waiter.take() {
            w.wake();
        }
    }
}

/// Completes when the session is kicked; the relay's stop future.
pub struct KickSignal(Rc<Signals>);

impl KickSignal {
    /// Waits for a kick; never completes for a session nobody kicks.
    pub async fn kicked(self) -> KickReason {
        poll_fn(|cx| match self.0.kick.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                self.0.kick_waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Completes when a kicked session has ended.
pub struct Closed(Rc<Signals>);

impl Closed {
    /// Waits until the session's registration is dropped.
    pub async fn wait(self) {
        poll_fn(|cx| {
            if self.0.ended.get() {
                Poll::Ready(())
            } else {
                self.0.end_waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

struct Entry {
    key: Rc<str>,
    backend: BackendId,
    protocol: Protocol,
    signals: Rc<Signals>,
    /// Already kicked: a second kick hands out no second [`Closed`].
    kicked: bool,
}

/// A registered session; dropping it unregisters (the session ended).
pub struct Registration<'a> {
    sessions: &'a Sessions,
    id: u64,
    signals: Rc<Signals>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.remove(self.id);
        self.signals.end();
    }
}

/// One core's logged-in sessions.
#[derive(Default)]
pub struct Sessions {
    inner: RefCell<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_id: AHashMap<u64, Entry>,
    by_key: AHashMap<Rc<str>, Vec<u64>>,
    per_backend: Vec<[u32; Protocol::COUNT]>,
}

impl Sessions {
    /// An empty registry.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// Registers a `protocol` session of `key` on `backend`.
    pub fn register(
        &self,
        key: &str,
        backend: BackendId,
        protocol: Protocol,
    ) -> (Registration<'_>, KickSignal) {
        let signals = Rc::new(Signals::default());
        let mut inner = self.inner.borrow_mut();
        let id = inner.next_id;
        inner.next_id += 1;
        let key: Rc<str> = match inner.by_key.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => key.into(),
        };
        inner.by_id.insert(
            id,
            Entry {
                key: key.clone(),
                backend,
                protocol,
                signals: signals.clone(),
                kicked: false,
            },
        );
        inner.by_key.entry(key).or_default().push(id);
        let b = usize::from(backend);
        if inner.per_backend.len() <= b {
            inner.per_backend.resize(b + 1, [0; Protocol::COUNT]);
        }
        inner.per_backend[b][protocol.index()] += 1;
        (
            Registration {
                sessions: self,
                id,
                signals: signals.clone(),
            },
            KickSignal(signals),
        )
    }

    fn remove(&self, id: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entry) = inner.by_id.remove(&id) else {
            return;
        };
        if let Some(ids) = inner.by_key.get_mut(&entry.key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                inner.by_key.remove(&entry.key);
            }
        }
        if let Some(n) = inner.per_backend.get_mut(usize::from(entry.backend)) {
            let n = &mut n[entry.protocol.index()];
            *n = n.saturating_sub(1);
        }
    }

    fn kick_ids(&self, ids: Vec<u64>, reason: KickReason) -> Vec<Closed> {
        let mut inner = self.inner.borrow_mut();
        let mut closed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = inner.by_id.get_mut(&id) {
                if !e.kicked {
                    e.kicked = true;
                    e.signals.kick(reason);
                    closed.push(Closed(e.signals.clone()));
                }
            }
        }
        closed
    }

    /// Kicks every session of `key` on this core.
    pub fn kick_user(&self, key: &str, reason: KickReason) -> Vec<Closed> {
        let ids = self
            .inner
            .borrow()
            .by_key
            .get(key)
            .cloned()
            .unwrap_or_default();
        self.kick_ids(ids, reason)
    }

    /// Kicks every session whose backend fails `keep`.
    pub fn kick_where(&self, reason: KickReason, keep: impl Fn(BackendId) -> bool) -> Vec<Closed> {
        let ids: Vec<u64> = self
            .inner
            .borrow()
            .by_id
            .iter()
            .filter(|(_, e)| !keep(e.backend))
            .map(|(id, _)| *id)
            .collect();
        self.kick_ids(ids, reason)
    }

    /// Sessions per backend id and protocol index on this core.
    pub fn per_backend(&self) -> Vec<[u32; Protocol::COUNT]> {
        self.inner.borrow().per_backend.clone()
    }

    /// Logged-in sessions on this core.
    pub fn len(&self) -> usize {
        self.inner.borrow().by_id.len()
    }

    /// Whether no session is logged in on this core.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions of `key` on this core.
    pub fn of_user(&self, key: &str) -> usize {
        self.inner.borrow().by_key.get(key).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::block_on;

    #[test]
    fn kick_user_signals_only_that_user_and_closed_waits_for_the_end() {
        block_on(async {
            let s = Sessions::new();
            let (alice1, k1) = s.register("alice", 0, Protocol::Imap);
            let (_alice2, k2) = s.register("alice", 1, Protocol::Pop3);
            let (_bob, _kb) = s.register("bob", 0, Protocol::Imap);
            assert_eq!(s.of_user("alice"), 2);
            assert_eq!(s.per_backend(), vec![[2, 0, 0, 0], [0, 1, 0, 0]]);
            let closed = s.kick_user("alice", KickReason::Admin);
            assert_eq!(closed.len(), 2);
            assert_eq!(k1.kicked().await, KickReason::Admin);
            assert_eq!(k2.kicked().await, KickReason::Admin);
            drop(alice1);
            let mut closed = closed.into_iter();
            closed.next().unwrap().wait().await;
            assert_eq!(s.of_user("alice"), 1);
            assert_eq!(s.len(), 2);
        });
    }

    #[test]
    fn kick_where_selects_by_backend_and_counts_stay_right() {
        let s = Sessions::new();
        let regs: Vec<_> = (0..6)
            .map(|i| s.register(&format!("u{i}"), (i % 3) as BackendId, Protocol::Imap))
            .collect();
        let closed = s.kick_where(KickReason::BackendDown, |b| b != 1);
        assert_eq!(closed.len(), 2);
        // A second kick of the same sessions finds nothing new to signal.
        assert!(s.kick_where(KickReason::BackendDown, |b| b != 1).is_empty());
        drop(regs);
        assert!(s.is_empty());
        assert_eq!(s.per_backend(), vec![[0; 4]; 3]);
    }
}
