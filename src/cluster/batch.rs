//! Group commit: the assignment requests that go to etcd in one
//! transaction.
//!
//! Requests for users that arrive within a short window (a few ms) or up
//! to a count are sent together: one compare per user, and the puts of
//! all of them, or — if any compare fails — a get per user in the same
//! transaction, so that one round trip tells every waiter where it
//! stands. Two requests for the same user in one window share one entry
//! (and one answer). etcd caps the operations of a transaction
//! (`--max-txn-ops`, 128 by default); each user takes two puts, so a batch
//! holds at most 64 users.

use std::time::{Duration, Instant};

/// When a batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRules {
    /// How long the first request of a batch waits for company.
    pub window: Duration,
    /// At most this many users in one transaction.
    pub max_users: usize,
}

impl Default for BatchRules {
    /// 2 ms and 64 users (two puts each: etcd's default limit of 128
    /// operations per transaction).
    fn default() -> Self {
        BatchRules {
            window: Duration::from_millis(2),
            max_users: 64,
        }
    }
}

/// One user's entry in a batch, with everyone waiting for it.
#[derive(Debug)]
pub struct Entry<W> {
    /// The user key.
    pub user: String,
    /// The backend asked for, if the user turns out to be unassigned.
    pub backend: String,
    /// The waiters to answer.
    pub waiters: Vec<W>,
}

/// The requests gathered for the next transaction.
#[derive(Debug)]
pub struct Batch<W> {
    rules: BatchRules,
    opened: Option<Instant>,
    entries: Vec<Entry<W>>,
}

impl<W> Batch<W> {
    /// An empty batch.
    pub fn new(rules: BatchRules) -> Batch<W> {
        Batch {
            rules,
            opened: None,
            entries: Vec::new(),
        }
    }

    /// Adds a request at `now`; a user already in the batch gets one more
    /// waiter (the first request's backend stands).
    pub fn push(&mut self, now: Instant, user: &str, backend: &str, waiter: W) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.user == user) {
            e.waiters.push(waiter);
            return;
        }
        self.opened.get_or_insert(now);
        self.entries.push(Entry {
            user: user.to_owned(),
            backend: backend.to_owned(),
            waiters: vec![waiter],
        });
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.entries.iter().any(|e| e.user == user)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the batch is full.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.rules.max_users
    }

    /// When the batch must go at the latest (`None` when empty).
    pub fn due(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.rules.window)
    }

    /// Whether the batch must go at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.due().is_some_and(|d| now >= d)
    }

    /// Takes the entries out; the batch is empty again.
    pub fn take(&mut self) -> Vec<Entry<W>> {
        self.opened = None;
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_after_its_window_or_when_full() {
        let rules = BatchRules {
            window: Duration::from_millis(2),
            max_users: 3,
        };
        let mut b: Batch<u32> = Batch::new(rules);
        let t0 = Instant::now();
        assert!(b.is_empty() && b.due().is_none() && !b.is_due(t0));
        b.push(t0, "u1", "b1", 1);
        assert_eq!(b.due(), Some(t0 + Duration::from_millis(2)));
        assert!(!b.is_due(t0 + Duration::from_millis(1)));
        assert!(b.is_due(t0 + Duration::from_millis(2)));
        b.push(t0, "u2", "b1", 2);
        b.push(t0, "u3", "b2", 3);
        assert!(b.is_full() && b.is_due(t0));
        let taken = b.take();
        assert_eq!(taken.len(), 3);
        assert!(b.is_empty() && b.due().is_none());
    }

    #[test]
    fn requests_for_one_user_share_an_entry_and_the_first_backend() {
        let mut b: Batch<u32> = Batch::new(BatchRules::default());
        let t0 = Instant::now();
        b.push(t0, "u1", "b1", 1);
        b.push(t0 + Duration::from_millis(1), "u1", "b2", 2);
        let taken = b.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].backend, "b1");
        assert_eq!(taken[0].waiters, vec![1, 2]);
    }

    #[test]
    fn the_default_fits_etcds_operation_limit() {
        // Two puts per user must stay within --max-txn-ops = 128.
        assert!(BatchRules::default().max_users * 2 <= 128);
    }
}
