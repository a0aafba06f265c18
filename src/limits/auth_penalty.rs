//! Slowing down password guessing: `limits.auth_failure_delay`,
//! `limits.auth_penalty_max` and `limits.auth_penalty_forget`.
//!
//! Two delays, as in Dovecot:
//! - a failed login is answered no sooner than `auth_failure_delay` after
//!   the login command ([`Limits::failure_delay`]);
//! - an address with `n` recent failures waits `auth_failure_delay × 2^n`,
//!   at most `auth_penalty_max`, before its next login is even tried
//!   ([`Limits::auth_penalty`]), whatever that login's outcome — so a
//!   guesser cannot learn a success sooner than a failure.
//!
//! Failures are counted per address in a process-wide [`IpSlots`] table
//! (a login may land on any core) and forgotten `auth_penalty_forget` after
//! the last one. Trusted addresses are never delayed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::ip_slots::IpSlots;
use super::{Limit, Limits};
use crate::config::LimitsConfig;

/// Addresses with recent failures the table holds (8 bytes each).
const SLOTS: usize = 1 << 15;

/// Bits of a slot's payload holding the time of the last failure.
const TIME_BITS: u32 = 24;
const TIME_MASK: u32 = (1 << TIME_BITS) - 1;

/// Failures recorded per address at most (the penalty is capped long before).
const MAX_FAILURES: u32 = 255;

/// The process-wide count of recent failed logins per address.
pub struct AuthPenalty {
    failures: IpSlots,
    /// `auth_penalty_forget` in whole seconds.
    forget_secs: u32,
}

impl AuthPenalty {
    /// An empty table for `config`.
    pub fn new(config: &LimitsConfig) -> AuthPenalty {
        AuthPenalty {
            failures: IpSlots::new(SLOTS),
            forget_secs: u32::try_from(config.auth_penalty_forget.as_secs())
                .unwrap_or(TIME_MASK)
                .min(TIME_MASK),
        }
    }

    /// Whether a payload recorded failures that are not forgotten at `now`.
    fn live(&self, payload: u32, now: u32) -> bool {
        let age = now.wrapping_sub(payload) & TIME_MASK;
        payload >> TIME_BITS > 0 && age < self.forget_secs
    }
}

impl Limits {
    /// Seconds on the penalty table's 24-bit clock.
    fn penalty_clock(&self) -> u32 {
        self.now_secs() & TIME_MASK
    }

    /// Recent failed logins from `ip`.
    pub fn recent_failures(&self, ip: IpAddr) -> u32 {
        let now = self.penalty_clock();
        let auth = &self.auth;
        auth.failures.get(&ip, |p| auth.live(p, now)) >> TIME_BITS
    }

    /// How long a login from `ip` waits before it is tried: 0 without
    /// recent failures or for a trusted address, else
    /// `auth_failure_delay × 2^failures`, at most `auth_penalty_max`. A
    /// penalty is counted (and logged) as a limit hit.
    pub fn auth_penalty(&self, ip: IpAddr) -> Duration {
        if self.trusted(ip) {
            return Duration::ZERO;
        }
        let failures = self.recent_failures(ip);
        if failures == 0 {
            return Duration::ZERO;
        }
        let config = self.config();
        let doubled = config
            .auth_failure_delay
            .checked_mul(1 << failures.min(20))
            .unwrap_or(config.auth_penalty_max);
        let penalty = doubled.min(config.auth_penalty_max);
        if !penalty.is_zero() {
            self.hit(Limit::AuthPenalty, ip);
        }
        penalty
    }

    /// Records a failed login from `ip` and returns how much longer its
    /// answer must wait so that it comes no sooner than
    /// `auth_failure_delay` after `started` (0 for a trusted address).
    pub fn failure_delay(&self, ip: IpAddr, started: Instant) -> Duration {
        if self.trusted(ip) {
            return Duration::ZERO;
        }
        let now = self.penalty_clock();
        let auth = &self.auth;
        auth.failures.update(
            &ip,
            |p| auth.live(p, now),
            |p| {
                let failures = (p >> TIME_BITS).saturating_add(1).min(MAX_FAILURES);
                Some(failures << TIME_BITS | now)
            },
        );
        self.config()
            .auth_failure_delay
            .saturating_sub(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> Limits {
        let config = LimitsConfig {
            auth_failure_delay: Duration::from_millis(100),
            auth_penalty_max: Duration::from_millis(700),
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        };
        Limits::new(&config, 1)
    }

    #[test]
    fn the_penalty_doubles_per_failure_up_to_the_max_and_is_per_address() {
        let l = limits(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(l.auth_penalty(ip), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..4 {
            l.failure_delay(ip, Instant::now());
            seen.push(l.auth_penalty(ip).as_millis());
        }
        assert_eq!(seen, [200, 400, 700, 700]);
        assert_eq!(l.auth_penalty(other), Duration::ZERO);
        assert_eq!(l.recent_failures(ip), 4);
    }

    #[test]
    fn the_failure_answer_waits_only_what_is_left_of_the_delay() {
        let l = limits(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let long_ago = Instant::now() - Duration::from_secs(1);
        assert_eq!(l.failure_delay(ip, long_ago), Duration::ZERO);
        assert!(l.failure_delay(ip, Instant::now()) > Duration::from_millis(50));
    }

    #[test]
    fn trusted_addresses_are_never_delayed() {
        let l = limits(&["127.0.0.0/8"]);
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        assert_eq!(l.failure_delay(ip, Instant::now()), Duration::ZERO);
        assert_eq!(l.auth_penalty(ip), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_the_forget_time() {
        let l = limits(&[]);
        let auth = &l.auth;
        let recorded = 3 << TIME_BITS | 100;
        assert!(auth.live(recorded, 100 + 599));
        assert!(!auth.live(recorded, 100 + 600), "10 minutes later");
        assert!(!auth.live(0, 100));
    }
}
