//! Connection and login limits (`[limits]`), shared by every core.
//!
//! Connections from one address land on any core (SO_REUSEPORT spreads
//! them), so the per-address counts live in process-wide lock-free tables
//! ([`ip_slots`]); every check is a few atomic operations and never waits
//! for another core. The per-user session limits are not here: the owner
//! core of a user counts its sessions ([`crate::route::shard`]).
//!
//! - [`prelogin`]: connections not yet logged in, per address and in total.
//! - [`auth_penalty`]: the delay of failed logins and the growing penalty
//!   of an address that keeps failing.
//! - [`backend_logins`]: backend logins in flight per backend.
//!
//! Every refusal is a [`Limit`] hit: counted for `/metrics` and logged at
//! most once per address and limit per `limits.log_interval`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::warn;

use crate::config::LimitsConfig;

pub mod auth_penalty;
pub mod backend_logins;
pub mod ip_slots;
pub mod prelogin;

use auth_penalty::AuthPenalty;
use backend_logins::BackendLogins;
use ip_slots::{IpSlots, Update};
use prelogin::PreloginCounts;

/// Slots of the table that throttles the log lines of limit hits.
const LOG_SLOTS: usize = 8192;

/// A limit that refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.prelogin_per_ip`.
    PreloginPerIp,
    /// `limits.prelogin_total`.
    PreloginTotal,
    /// `limits.sessions_per_user`.
    SessionsPerUser,
    /// `limits.sessions_per_user_ip`.
    SessionsPerUserIp,
    /// `limits.logins_per_backend` (the login waited in vain).
    LoginsPerBackend,
    /// A login from an address under an authentication-failure penalty
    /// was delayed.
    AuthPenalty,
}

impl Limit {
    /// Every limit, in the order of [`Limits::hits`].
    pub const ALL: [Limit; 6] = [
        Limit::PreloginPerIp,
        Limit::PreloginTotal,
        Limit::SessionsPerUser,
        Limit::SessionsPerUserIp,
        Limit::LoginsPerBackend,
        Limit::AuthPenalty,
    ];

    /// The config key's name, also the `limit` label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PreloginPerIp => "prelogin_per_ip",
            Limit::PreloginTotal => "prelogin_total",
            Limit::SessionsPerUser => "sessions_per_user",
            Limit::SessionsPerUserIp => "sessions_per_user_ip",
            Limit::LoginsPerBackend => "logins_per_backend",
            Limit::AuthPenalty => "auth_penalty",
        }
    }

    fn index(self) -> usize {
        Limit::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }
}

/// The process-wide state of every address- and backend-based limit.
pub struct Limits {
    config: LimitsConfig,
    /// The clock the tables' one-second timestamps count from.
    epoch: Instant,
    /// Pre-login connections.
    pub prelogin: PreloginCounts,
    /// Failed logins per address.
    pub auth: AuthPenalty,
    /// Backend logins in flight.
    pub backend_logins: BackendLogins,
    hits: [AtomicU64; Limit::ALL.len()],
    /// When each (address, limit) was last logged, seconds since `epoch` + 1.
    logged: IpSlots,
}

impl Limits {
    /// The limits of `config`, for a pool of `backends` backends.
    pub fn new(config: &LimitsConfig, backends: usize) -> Limits {
        Limits {
            config: config.clone(),
            epoch: Instant::now(),
            prelogin: PreloginCounts::new(config),
            auth: AuthPenalty::new(config),
            backend_logins: BackendLogins::new(config, backends),
            hits: Default::default(),
            logged: IpSlots::new(LOG_SLOTS),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Whether `ip` is exempt from the per-address limits.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        self.config.is_trusted(ip)
    }

    /// Whole seconds since the limits were made.
    fn now_secs(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX - 1)
    }

    /// Counts a hit of `limit` by a client at `ip`, and logs it unless this
    /// address hit this limit within `limits.log_interval` already.
    pub fn hit(&self, limit: Limit, ip: IpAddr) {
        self.hits[limit.index()].fetch_add(1, Ordering::Relaxed);
        let now = self.now_secs().saturating_add(1);
        let interval = u32::try_from(self.config.log_interval.as_secs()).unwrap_or(u32::MAX);
        let recent = |logged: u32| now.saturating_sub(logged) < interval;
        let log = matches!(
            self.logged
                .update(&(ip, limit.index()), recent, |_| Some(now)),
            Update::Done { old: 0, .. }
        );
        if log {
            warn!(
                limit = limit.as_str(),
                client = %ip,
                interval_s = interval,
                "limit reached; further hits of this address are counted, not logged, for the interval"
            );
        }
    }

    /// Hits of every limit since start, in [`Limit::ALL`] order.
    pub fn hits(&self) -> [u64; Limit::ALL.len()] {
        std::array::from_fn(|i| self.hits[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hit_is_counted_per_limit() {
        let limits = Limits::new(&LimitsConfig::default(), 1);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            limits.hit(Limit::PreloginPerIp, ip);
        }
        limits.hit(Limit::AuthPenalty, ip);
        let hits = limits.hits();
        assert_eq!(hits[Limit::PreloginPerIp.index()], 3);
        assert_eq!(hits[Limit::AuthPenalty.index()], 1);
        assert_eq!(hits[Limit::PreloginTotal.index()], 0);
    }

    #[test]
    fn limit_names_are_their_config_keys() {
        let keys = [
            "prelogin_per_ip",
            "prelogin_total",
            "sessions_per_user",
            "sessions_per_user_ip",
            "logins_per_backend",
        ];
        for key in keys {
            assert!(Limit::ALL.iter().any(|l| l.as_str() == key), "{key}");
        }
    }
}
