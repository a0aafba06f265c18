//! The active checker of one protocol port of a backend: a loop on the
//! control thread.
//!
//! Checks run on the control plane's own thread and runtime, never on a
//! core: a slow or black-holed backend then costs the data path nothing,
//! and every result goes through the one place that owns backend state.
//! Every protocol mailpin serves is checked on its own port, by its own
//! loop. The interval gets ±10 % jitter so the checks of many directors and
//! backends do not synchronise; a passive failure wakes the loop at once,
//! and the result of such a woken check is marked so (see
//! [`crate::health::tracker`]).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Protocol;
use crate::health::check::{run_check, CheckLogin};
use crate::health::tracker::Source;
use crate::plane::Shared;
use crate::route::backends::{BackendId, BackendSet};

/// What a check loop needs from the one owner of backend state (the
/// control plane), which implements it: the backends and settings in force
/// at each round, and where each result goes.
pub trait CheckHost {
    /// The backends in force now.
    fn backends(&self) -> Arc<BackendSet>;
    /// The settings in force now.
    fn shared(&self) -> Arc<Shared>;
    /// Takes one check result of `protocol`'s port of backend `id`.
    fn health_result(
        &self,
        id: BackendId,
        protocol: Protocol,
        result: Result<(), String>,
        source: Source,
    );
}

/// A small xorshift generator for jitter (no need for a crypto RNG).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `base` ±10 %.
    fn around(&mut self, base: Duration) -> Duration {
        let spread = base.as_micros() as u64 / 5;
        if spread == 0 {
            return base;
        }
        let offset = self.next() % spread;
        base - Duration::from_micros(spread / 2) + Duration::from_micros(offset)
    }
}

/// Checks `protocol`'s port of backend `id` until a reload retires it,
/// feeding results to `control`.
pub async fn check_loop<H: CheckHost + ?Sized>(
    control: Rc<H>,
    id: BackendId,
    protocol: Protocol,
    mut wake: local_sync::mpsc::unbounded::Rx<()>,
) {
    let seed = (u64::from(id) * Protocol::COUNT as u64 + protocol.index() as u64 + 1)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15 ^ seed);
    let mut source = Source::Scheduled;
    loop {
        // The settings and the address in force now: a reload may have
        // changed them, retired the backend or stopped serving the protocol.
        let addr = match control.backends().get(id) {
            Some(b) if b.configured() && b.protocol_health(protocol).is_some() => b.addr(protocol),
            _ => return,
        };
        let shared = control.shared();
        let health = &shared.config.health;
        let login = match (&health.login_user, &health.login_password) {
            (Some(user), Some(password)) => Some(CheckLogin {
                user: user.clone(),
                password: password.expose().to_string(),
            }),
            _ => None,
        };
        let result = match monoio::time::timeout(
            health.timeout,
            run_check(health.check, protocol, addr, login.as_ref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", health.timeout)),
        };
        control.health_result(id, protocol, result, source);
        let pause = jitter.around(health.interval);
        drop(login);
        source = monoio::select! {
            _ = monoio::time::sleep(pause) => Source::Scheduled,
            _ = wake.recv() => Source::Woken,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut j = Jitter(42);
        let base = Duration::from_millis(500);
        for _ in 0..10_000 {
            let d = j.around(base);
            assert!(
                d >= Duration::from_millis(450) && d <= Duration::from_millis(550),
                "{d:?}"
            );
        }
    }
}
