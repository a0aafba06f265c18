//! Backend logins in flight per backend: `limits.logins_per_backend` and
//! `limits.login_queue_timeout`.
//!
//! A login holds one of its backend's slots from connect until the backend
//! answers, so a backend that slows down (a stuck authentication service, a
//! storm of reconnects after a failover) sees at most that many logins at
//! once instead of an ever-growing pile. A login that finds every slot
//! taken waits, bounded by `login_queue_timeout`, then gets a temporary
//! failure. The counts are one atomic per backend (backend ids are stable
//! for the life of the process); a waiting login re-checks on a short,
//! growing timer, since a slot may be freed on any core.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{Limit, Limits};
use crate::config::LimitsConfig;
use crate::route::backends::BackendId;

/// The first and the longest pause between two looks at a full backend.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(20);

/// Logins in flight per backend.
pub struct BackendLogins {
    in_flight: Box<[AtomicU32]>,
    limit: u32,
}

impl BackendLogins {
    /// No logins in flight on any of `backends` backends.
    pub fn new(config: &LimitsConfig, backends: usize) -> BackendLogins {
        BackendLogins {
            in_flight: (0..backends).map(|_| AtomicU32::new(0)).collect(),
            limit: config.logins_per_backend,
        }
    }

    /// Takes a slot of `backend` if one is free.
    fn try_enter(&self, backend: BackendId) -> Option<BackendLoginSlot<'_>> {
        let Some(count) = self.in_flight.get(usize::from(backend)) else {
            // A backend the limit was not sized for: not limited.
            return Some(BackendLoginSlot { count: None });
        };
        let limit = self.limit;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| BackendLoginSlot { count: Some(count) })
    }

    /// Logins in flight on `backend` now.
    pub fn in_flight(&self, backend: BackendId) -> u32 {
        self.in_flight
            .get(usize::from(backend))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One backend login in flight; dropping it frees the slot.
pub struct BackendLoginSlot<'a> {
    count: Option<&'a AtomicU32>,
}

impl Drop for BackendLoginSlot<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.count {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limits {
    /// A login slot of `backend` for a client at `client`, waiting at most
    /// `limits.login_queue_timeout` for one; `None` (a counted hit) when
    /// the wait was in vain.
    pub async fn backend_login(
        &self,
        backend: BackendId,
        client: std::net::IpAddr,
    ) -> Option<BackendLoginSlot<'_>> {
        let logins = &self.backend_logins;
        if let Some(slot) = logins.try_enter(backend) {
            return Some(slot);
        }
        let deadline = monoio::time::Instant::now() + self.config().login_queue_timeout;
        let mut pause = FIRST_PAUSE;
        while monoio::time::Instant::now() < deadline {
            monoio::time::sleep(pause).await;
            if let Some(slot) = logins.try_enter(backend) {
                return Some(slot);
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
        self.hit(Limit::LoginsPerBackend, client);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::block_on;

    #[test]
    fn a_full_backend_makes_the_login_wait_then_fail_and_a_freed_slot_is_reused() {
        let config = LimitsConfig {
            logins_per_backend: 2,
            login_queue_timeout: Duration::from_millis(50),
            ..LimitsConfig::default()
        };
        let limits = Limits::new(&config, 2);
        let ip = "192.0.2.1".parse().unwrap();
        block_on(async {
            let a = limits.backend_login(0, ip).await.expect("first slot");
            let _b = limits.backend_login(0, ip).await.expect("second slot");
            let started = std::time::Instant::now();
            assert!(limits.backend_login(0, ip).await.is_none());
            assert!(started.elapsed() >= Duration::from_millis(50));
            assert!(limits.backend_login(1, ip).await.is_some(), "other backend");
            assert_eq!(limits.backend_logins.in_flight(0), 2);
            drop(a);
            assert!(limits.backend_login(0, ip).await.is_some());
        });
    }
}
