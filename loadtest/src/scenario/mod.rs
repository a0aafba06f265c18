//! The scenarios, one module each, and what they share: user names, test
//! messages, a small random generator, and the release signal that ends
//! held sessions.
//!
//! A scenario is a function from its options to a [`crate::report::Report`];
//! it drives client threads through [`crate::runner`] against a
//! [`crate::harness::Harness`]. Each protocol has its client under
//! [`crate::client`].

pub mod cluster;
pub mod failover;
pub mod hostile;
pub mod idle;
pub mod live_move;
pub mod lmtp;
pub mod logins;
pub mod mixed;
pub mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailpin::dev::store::{FlagChange, INBOX};
use mailpin::dev::Store;

use crate::client::conn::Transport;

/// The password the simulated backends accept.
pub const PASSWORD: &str = mailpin::dev::DEV_PASSWORD;

/// The name of simulated user `i` of a run's `prefix`.
pub fn user_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// A message of about `size` bytes (headers, then lines of text).
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: loadtest@example.org\r\nTo: user@example.org\r\n\
Subject: load test message\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    while m.len() + 2 < size {
        m.push(b'.');
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// Counts the messages the store holds in the INBOXes of users `0..users`
/// of `prefix`, creating missing accounts first (each then holds the
/// welcome message a new account gets).
pub fn stored(store: &Store, prefix: &str, users: usize) -> u64 {
    (0..users)
        .map(|i| {
            let user = user_name(prefix, i);
            store.ensure_user(&user);
            store
                .uids(&user, INBOX)
                .map(|(_, uids)| uids.len() as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// Like [`stored`], then empties those INBOXes. Called before a
/// measurement and after it, it counts what the measurement delivered
/// (the welcome messages gone); long runs then do not hold every message
/// either.
pub fn stored_and_cleared(store: &Store, prefix: &str, users: usize) -> u64 {
    let deleted = ["\\Deleted".to_owned()];
    let total = stored(store, prefix, users);
    for i in 0..users {
        let user = user_name(prefix, i);
        if let Ok((_, uids)) = store.uids(&user, INBOX) {
            let _ = store.change_flags(&user, INBOX, &uids, FlagChange::Add, &deleted);
            let _ = store.expunge(&user, INBOX, Some(&uids));
        }
    }
    total
}

/// A tiny xorshift generator: think times and choices, reproducible per
/// thread, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 if n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `p` (0 to 1, in steps of one in a million).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.below(1_000_000) as f64) < p * 1_000_000.0
    }

    /// A duration uniformly in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span))
    }
}

/// Set once by the harness to let client threads end held sessions.
#[derive(Debug, Default)]
pub struct Release(AtomicBool);

impl Release {
    /// A release not yet given.
    pub fn new() -> Arc<Release> {
        Arc::new(Release::default())
    }

    /// Lets the waiting threads go.
    pub fn give(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it was given.
    pub fn given(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Waits (on a client runtime) until given, checking every 20 ms.
    pub async fn wait(&self) {
        while !self.given() {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Which transports a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modes {
    /// Plaintext only.
    Plain,
    /// Implicit TLS only.
    Tls,
    /// STARTTLS (IMAP) or STLS (POP3) only.
    Starttls,
    /// Plaintext, then implicit TLS.
    Both,
    /// Plaintext, STARTTLS, then implicit TLS.
    All,
}

impl Modes {
    /// The transports to run, in order.
    pub fn list(self) -> Vec<Transport> {
        match self {
            Modes::Plain => vec![Transport::Plain],
            Modes::Tls => vec![Transport::Tls],
            Modes::Starttls => vec![Transport::Starttls],
            Modes::Both => vec![Transport::Plain, Transport::Tls],
            Modes::All => vec![Transport::Plain, Transport::Starttls, Transport::Tls],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_asked_size() {
        for size in [200, 1000, 65_536] {
            let m = message(size);
            assert!(m.len() >= size - 2 && m.len() <= size + 2, "{}", m.len());
            assert!(m.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn counting_stored_mail_ignores_the_welcome_and_clears() {
        let store = Store::new();
        assert_eq!(stored(&store, "t", 2), 2, "one welcome message each");
        assert_eq!(stored_and_cleared(&store, "t", 2), 2);
        assert_eq!(stored(&store, "t", 2), 0, "cleared");
        store
            .deliver("t000001", INBOX, b"a\r\n".to_vec())
            .expect("delivered");
        store
            .deliver("t000001", INBOX, b"b\r\n".to_vec())
            .expect("delivered");
        assert_eq!(stored_and_cleared(&store, "t", 2), 2);
        assert_eq!(stored_and_cleared(&store, "t", 2), 0, "cleared");
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let d = r.between(Duration::from_millis(5), Duration::from_millis(6));
            assert!(d >= Duration::from_millis(5) && d < Duration::from_millis(6));
            assert!(!r.chance(0.0) && r.chance(1.0));
        }
    }
}
