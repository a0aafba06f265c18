//! A core's mailbox: how other threads reach a core without blocking it.
//!
//! Any thread may send; only the owning core receives. A send pushes onto a
//! lock-free crossbeam channel and then wakes the core's receiving task
//! through an [`AtomicWaker`]; with monoio's `sync` feature that wake writes
//! the runtime's eventfd, so an idle core sleeps in io_uring until a message
//! arrives and never polls. The receiving side never blocks the loop: it
//! tries the channel, registers its waker, and tries once more so that no
//! wake-up falls between the two.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// The sending end; cheap to clone, usable from any thread.
pub struct MailboxSender<T> {
    tx: Sender<T>,
    wake: Arc<AtomicWaker>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// The receiving end, owned by one core.
pub struct Mailbox<T> {
    rx: Receiver<T>,
    wake: Arc<AtomicWaker>,
}

/// A new mailbox and its sender.
pub fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(AtomicWaker::new());
    (
        MailboxSender {
            tx,
            wake: wake.clone(),
        },
        Mailbox { rx, wake },
    )
}

impl<T> MailboxSender<T> {
    /// Delivers `msg` and wakes the core; gives the message back if the core
    /// has gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| e.0)?;
        self.wake.wake();
        Ok(())
    }
}

impl<T> Mailbox<T> {
    /// The next message, or `None` once every sender is gone.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            match self.rx.try_recv() {
                Ok(m) => return Poll::Ready(Some(m)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            self.wake.register(cx.waker());
            match self.rx.try_recv() {
                Ok(m) => Poll::Ready(Some(m)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    /// A message if one is waiting, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_a_core_from_another_thread() {
        let (tx, rx) = mailbox::<u32>();
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .expect("io_uring runtime");
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
        });
        let got = rt.block_on(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        sender.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn send_to_a_gone_core_returns_the_message() {
        let (tx, rx) = mailbox::<&str>();
        drop(rx);
        assert_eq!(tx.send("hi"), Err("hi"));
    }
}
