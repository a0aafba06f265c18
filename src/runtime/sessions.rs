//! The logged-in sessions of one core, so they can be ended from outside.
//!
//! Every session that reaches the relay registers here with its user key
//! and backend and receives a [`KickSignal`], the future its relay stops
//! on. A kick (admin kick or move, a backend going down) fires the signals
//! of the sessions concerned and hands back, per session, a [`Closed`]
//! future that completes once that session's *backend connection* is
//! closed ([`Registration::backend_closed`], or the end of the session) —
//! the event a move waits for before it assigns the user elsewhere; the
//! client's goodbye comes after it and is nobody's business but the
//! client's.
//!
//! A kick of a user also covers its logins still on their way: until the
//! kick is over ([`Sessions::end_kick`]) a session of that user that
//! registers is kicked at once, so a login that was routed just before
//! the kick cannot slip past it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use ahash::AHashMap;

use crate::config::Protocol;
use crate::plane::KickReason;
use crate::route::backends::BackendId;

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

impl KickSignal {
    /// Waits for a kick without consuming the signal (live moves, issue
    /// 12: the relay waits on it again and again, allocating nothing).
    pub async fn wait(&self) -> KickReason {
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
    /// Live moves (issue 12): a kick for another reason that came while a
    /// [`KickReason::Move`] was being handled; it reaches the session when
    /// it goes on on its new backend ([`Registration::moved_to`]).
    later: Option<KickReason>,
    /// The backend connection is still open.
    backend_open: bool,
}

/// A registered session; dropping it unregisters (the session ended).
pub struct Registration<'a> {
    sessions: &'a Sessions,
    id: u64,
    signals: Rc<Signals>,
}

impl Registration<'_> {
    /// The session's backend connection is closed: whoever waits for this
    /// session to close ([`Closed`], [`Sessions::wait_backend_closed`]) may
    /// go on, even while the client still gets its goodbye.
    pub fn backend_closed(&self) {
        self.sessions.backend_closed(self.id);
        self.signals.end();
    }

    /// Kicks this session at once (it registered on a backend that can no
    /// longer keep users, say).
    pub fn kick(&self, reason: KickReason) {
        self.sessions.kick_ids(vec![self.id], reason);
    }
}

// Live IMAP moves (issue 12).
impl Registration<'_> {
    /// The session goes on, live, on `backend`: its old backend connection
    /// was closed ([`Registration::backend_closed`]) and a new one is about
    /// to open. It counts on `backend` from now on and gets a fresh
    /// [`KickSignal`]. A kick of its user that is under way for another
    /// reason than [`KickReason::Move`] (the move it follows) kicks it at
    /// once, as it would a login on its way.
    pub fn moved_to(&mut self, backend: BackendId) -> KickSignal {
        self.signals = Rc::new(Signals::default());
        self.sessions.rebind(self.id, backend, self.signals.clone());
        KickSignal(self.signals.clone())
    }
}

impl Sessions {
    fn rebind(&self, id: u64, backend: BackendId, signals: Rc<Signals>) {
        let mut inner = self.inner.borrow_mut();
        let Some(entry) = inner.by_id.get_mut(&id) else {
            return;
        };
        let (old, protocol, was_open) = (entry.backend, entry.protocol, entry.backend_open);
        entry.backend = backend;
        entry.signals = signals.clone();
        entry.kicked = false;
        entry.backend_open = true;
        let key = entry.key.clone();
        let later = entry.later.take();
        let b = usize::from(backend);
        if inner.per_backend.len() <= b {
            inner.per_backend.resize(b + 1, [0; Protocol::COUNT]);
        }
        if inner.open_per_backend.len() <= b {
            inner.open_per_backend.resize(b + 1, 0);
        }
        if let Some(n) = inner.per_backend.get_mut(usize::from(old)) {
            n[protocol.index()] = n[protocol.index()].saturating_sub(1);
        }
        inner.per_backend[b][protocol.index()] += 1;
        if was_open {
            let n = &mut inner.open_per_backend[usize::from(old)];
            *n = n.saturating_sub(1);
        }
        inner.open_per_backend[b] += 1;
        let other_kick = later.or_else(|| {
            inner
                .kicking
                .get(&*key)
                .map(|(reason, _)| *reason)
                .filter(|r| *r != KickReason::Move)
        });
        if let Some(reason) = other_kick {
            if let Some(e) = inner.by_id.get_mut(&id) {
                e.kicked = true;
            }
            signals.kick(reason);
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.backend_closed(self.id);
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
    /// Users whose kick is under way, with how many kicks: a session of
    /// theirs that registers meanwhile is kicked at once.
    kicking: AHashMap<Box<str>, (KickReason, u32)>,
    /// Sessions per backend id whose backend connection is still open.
    open_per_backend: Vec<u32>,
    /// Waiting for a backend's last open connection to close.
    backend_waiters: Vec<(BackendId, local_sync::oneshot::Sender<()>)>,
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
                later: None,
                backend_open: true,
            },
        );
        inner.by_key.entry(key.clone()).or_default().push(id);
        let b = usize::from(backend);
        if inner.per_backend.len() <= b {
            inner.per_backend.resize(b + 1, [0; Protocol::COUNT]);
        }
        inner.per_backend[b][protocol.index()] += 1;
        if inner.open_per_backend.len() <= b {
            inner.open_per_backend.resize(b + 1, 0);
        }
        inner.open_per_backend[b] += 1;
        if let Some((reason, _)) = inner.kicking.get(&*key).copied() {
            if let Some(e) = inner.by_id.get_mut(&id) {
                e.kicked = true;
            }
            signals.kick(reason);
        }
        (
            Registration {
                sessions: self,
                id,
                signals: signals.clone(),
            },
            KickSignal(signals),
        )
    }

    /// Counts the backend connection of session `id` as closed (once).
    fn backend_closed(&self, id: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entry) = inner.by_id.get_mut(&id) else {
            return;
        };
        if !std::mem::replace(&mut entry.backend_open, false) {
            return;
        }
        let b = entry.backend;
        let open = &mut inner.open_per_backend[usize::from(b)];
        *open = open.saturating_sub(1);
        if *open == 0 {
            let waiters = std::mem::take(&mut inner.backend_waiters);
            let (done, waiting): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|(wb, _)| *wb == b);
            inner.backend_waiters = waiting;
            drop(inner);
            for (_, tx) in done {
                let _ = tx.send(());
            }
        }
    }

    /// Waits until no session on this core has an open connection to
    /// `backend`, at most `limit`; true if none has.
    pub async fn wait_backend_closed(
        &self,
        backend: BackendId,
        limit: std::time::Duration,
    ) -> bool {
        let rx = {
            let mut inner = self.inner.borrow_mut();
            let open = inner
                .open_per_backend
                .get(usize::from(backend))
                .copied()
                .unwrap_or(0);
            if open == 0 {
                return true;
            }
            let (tx, rx) = local_sync::oneshot::channel();
            inner.backend_waiters.push((backend, tx));
            rx
        };
        matches!(monoio::time::timeout(limit, rx).await, Ok(Ok(())))
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
                } else if reason != KickReason::Move
                    && e.signals.kick.get() == Some(KickReason::Move)
                {
                    e.later = Some(reason);
                }
            }
        }
        closed
    }

    /// Kicks every session of `key` on this core, and every session of it
    /// that registers until the matching [`Sessions::end_kick`].
    pub fn kick_user(&self, key: &str, reason: KickReason) -> Vec<Closed> {
        let ids = {
            let mut inner = self.inner.borrow_mut();
            let entry = inner.kicking.entry(key.into()).or_insert((reason, 0));
            entry.1 += 1;
            inner.by_key.get(key).cloned().unwrap_or_default()
        };
        self.kick_ids(ids, reason)
    }

    /// Ends one kick of `key` begun by [`Sessions::kick_user`]: its new
    /// sessions are left alone again once every kick of it has ended.
    pub fn end_kick(&self, key: &str) {
        let mut inner = self.inner.borrow_mut();
        if let Some(entry) = inner.kicking.get_mut(key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                inner.kicking.remove(key);
            }
        }
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
    use std::future::Future;
    use std::time::Duration;

    #[test]
    fn a_session_registering_during_a_kick_is_kicked_at_once() {
        block_on(async {
            let s = Sessions::new();
            assert!(s.kick_user("carol", KickReason::Admin).is_empty());
            let (late, kick) = s.register("carol", 2, Protocol::Imap);
            assert_eq!(kick.kicked().await, KickReason::Admin);
            drop(late);
            s.end_kick("carol");
            let (_after, kick) = s.register("carol", 2, Protocol::Imap);
            let mut waiting = std::pin::pin!(kick.kicked());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                waiting.as_mut().poll(&mut cx).is_pending(),
                "a session after the kick is left alone"
            );
        });
    }

    #[test]
    fn wait_backend_closed_counts_open_backend_connections() {
        block_on(async {
            let s = Sessions::new();
            let (a, _ka) = s.register("a", 1, Protocol::Imap);
            let (b, _kb) = s.register("b", 1, Protocol::Pop3);
            let (_c, _kc) = s.register("c", 0, Protocol::Imap);
            assert!(s.wait_backend_closed(2, Duration::ZERO).await);
            assert!(!s.wait_backend_closed(1, Duration::from_millis(10)).await);
            let mut waiting = std::pin::pin!(s.wait_backend_closed(1, Duration::from_secs(5)));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            a.backend_closed();
            a.backend_closed();
            assert!(
                waiting.as_mut().poll(&mut cx).is_pending(),
                "b is still open"
            );
            drop(b);
            assert!(waiting.await);
            drop(a);
        });
    }

    #[test]
    fn closed_completes_when_the_backend_side_is_closed() {
        block_on(async {
            let s = Sessions::new();
            let (reg, _kick) = s.register("dave", 0, Protocol::Imap);
            let closed = s.kick_user("dave", KickReason::Admin);
            reg.backend_closed();
            for c in closed {
                c.wait().await;
            }
            assert_eq!(s.of_user("dave"), 1, "still registered: the client is told");
            drop(reg);
            assert_eq!(s.of_user("dave"), 0);
        });
    }

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
    fn a_live_moved_session_counts_on_its_new_backend_and_only_other_kicks_reach_it() {
        block_on(async {
            let s = Sessions::new();
            let (mut reg, kick) = s.register("erin", 0, Protocol::Imap);
            let closed = s.kick_user("erin", KickReason::Move);
            assert_eq!(kick.kicked().await, KickReason::Move);
            reg.backend_closed();
            for c in closed {
                c.wait().await;
            }
            assert!(s.wait_backend_closed(0, Duration::ZERO).await);
            // The move it follows is still under way: no kick.
            let kick = reg.moved_to(1);
            let mut waiting = std::pin::pin!(kick.kicked());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert_eq!(s.per_backend(), vec![[0; 4], [1, 0, 0, 0]]);
            assert!(!s.wait_backend_closed(1, Duration::from_millis(5)).await);
            s.end_kick("erin");
            // Another kick of the user, under way while it moves, reaches it.
            let _ = s.kick_user("erin", KickReason::Admin);
            reg.backend_closed();
            let kick = reg.moved_to(0);
            assert_eq!(kick.kicked().await, KickReason::Admin);
            s.end_kick("erin");
            // So does a shutdown that came during the handover.
            let (mut other, kick) = s.register("finn", 0, Protocol::Imap);
            let _ = s.kick_user("finn", KickReason::Move);
            assert_eq!(kick.kicked().await, KickReason::Move);
            let _ = s.kick_where(KickReason::Shutdown, |_| false);
            other.backend_closed();
            s.end_kick("finn");
            assert_eq!(other.moved_to(1).kicked().await, KickReason::Shutdown);
            drop(other);
            drop(reg);
            assert!(s.is_empty());
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
