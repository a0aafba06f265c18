//! The moment a core stops serving clients that have not logged in.
//!
//! When a core stops accepting for a drain (SIGTERM, or the old process
//! after a binary upgrade), its clients still before login get their
//! protocol's goodbye at once instead of waiting for the end of the drain.
//! Each pre-login dialogue waits for its client's next command through
//! [`PreloginDrain::unless_started`], which gives up that wait the moment
//! [`PreloginDrain::start`] is called; the protocol then says goodbye
//! (IMAP `* BYE`, ManageSieve `BYE`, LMTP `421`, POP3 `-ERR [SYS/TEMP]` to
//! its next command) and closes. A session in the middle of a login is not
//! interrupted: it logs in, and drains like every logged-in session.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};

use ahash::AHashMap;

/// One core's pre-login drain signal.
#[derive(Default)]
pub struct PreloginDrain {
    started: Cell<bool>,
    next_waiter: Cell<u64>,
    /// Wakers of the dialogues waiting for input now (one per dialogue;
    /// removed when its wait ends).
    waiters: RefCell<AHashMap<u64, Waker>>,
}

/// Removes a waiter's entry when its wait ends, however it ends.
struct WaiterSlot<'a> {
    drain: &'a PreloginDrain,
    id: u64,
}

impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.drain.waiters.borrow_mut().remove(&self.id);
    }
}

impl PreloginDrain {
    /// Whether the drain has started.
    pub fn started(&self) -> bool {
        self.started.get()
    }

    /// Starts the drain: every waiting pre-login dialogue is woken and
    /// gives up its wait; later waits give up at once.
    pub fn start(&self) {
        if self.started.replace(true) {
            return;
        }
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in waiters {
            w.wake();
        }
    }

    /// Runs `wait` (a read of the client's next command) unless the drain
    /// starts first: `None` then, and `wait` is dropped (the client is
    /// about to get its goodbye, so a half-read command does not matter).
    pub async fn unless_started<F: Future>(&self, wait: F) -> Option<F::Output> {
        if self.started.get() {
            return None;
        }
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        let _slot = WaiterSlot { drain: self, id };
        let mut wait = std::pin::pin!(wait);
        poll_fn(|cx| {
            if self.started.get() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(v) = wait.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.waiters.borrow_mut().insert(id, cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::block_on;

    #[test]
    fn a_wait_ends_when_the_drain_starts_and_later_waits_end_at_once() {
        block_on(async {
            let drain = PreloginDrain::default();
            assert_eq!(drain.unless_started(async { 7 }).await, Some(7));
            let mut waiting = std::pin::pin!(drain.unless_started(std::future::pending::<()>()));
            let mut cx = std::task::Context::from_waker(Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert_eq!(drain.waiters.borrow().len(), 1);
            drain.start();
            assert_eq!(waiting.await, None);
            assert!(drain.waiters.borrow().is_empty(), "no waker is left behind");
            assert_eq!(drain.unless_started(async { 7 }).await, None);
        });
    }
}
