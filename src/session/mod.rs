//! Client sessions: what every protocol's session shares.
//!
//! A session starts at accept, may go through TLS and a protocol's
//! pre-login phase, and ends in the relay. This module holds the facts about
//! the client that every phase needs (addresses, session id, TLS state) and
//! the session-id generator; each protocol's pre-login lives in its own
//! submodule.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod failover;
pub mod goodbye;
pub mod imap;
pub mod limits;
pub mod live_move;
pub mod lmtp;
pub mod outcome;
pub mod pop3;
pub mod proxy_header;
pub mod relayed_auth;
pub mod sasl_input;
pub mod serve;
pub mod sieve;

thread_local! {
    static NEXT_SESSION: Cell<u64> = const { Cell::new(0) };
}

/// A new session id, unique within the director process and, with high
/// likelihood, across restarts: start time (base 36), core (two hex
/// digits), counter (base 36).
pub fn new_session_id(core: usize) -> String {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let n = NEXT_SESSION.with(|c| {
        let n = c.get();
        c.set(n + 1);
        n
    });
    format!("{}{core:02x}{}", base36(start), base36(n))
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique_per_core() {
        let a = new_session_id(0);
        let b = new_session_id(0);
        let c = new_session_id(1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
