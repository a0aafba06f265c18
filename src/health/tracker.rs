//! The health state machine of one backend: fall and rise thresholds.
//!
//! A healthy backend turns unhealthy after `fall` consecutive failed checks,
//! an unhealthy one healthy after `rise` consecutive good ones; anything in
//! between keeps the state, so one lost packet does not move users and a
//! flapping backend does not take them back until it has been stable for
//! `rise` checks. Active checks and passive observations (a client login
//! whose backend connect failed) feed the same counter.

use crate::route::backends::Health;

/// Counts consecutive results against the thresholds.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    fall: u32,
    rise: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl HealthTracker {
    /// A tracker that starts healthy (a backend is trusted until it fails).
    pub fn new(fall: u32, rise: u32) -> HealthTracker {
        HealthTracker {
            fall: fall.max(1),
            rise: rise.max(1),
            state: Health::Healthy,
            streak: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one result; returns the new state when it flips.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let agrees = matches!(
            (self.state, ok),
            (Health::Healthy, true) | (Health::Unhealthy, false)
        );
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = match self.state {
            Health::Healthy => self.fall,
            Health::Unhealthy => self.rise,
        };
        if self.streak < threshold {
            return None;
        }
        self.streak = 0;
        self.state = match self.state {
            Health::Healthy => Health::Unhealthy,
            Health::Unhealthy => Health::Healthy,
        };
        Some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut t = HealthTracker::new(2, 2);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.state(), Health::Unhealthy);
    }

    #[test]
    fn a_success_resets_the_fall_count() {
        let mut t = HealthTracker::new(3, 2);
        for _ in 0..10 {
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(true), None);
        }
        assert_eq!(t.state(), Health::Healthy);
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut t = HealthTracker::new(1, 3);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
    }

    #[test]
    fn flapping_backend_stays_down_until_stable() {
        let mut t = HealthTracker::new(2, 3);
        t.record(false);
        t.record(false);
        for _ in 0..20 {
            assert_eq!(t.record(true), None);
            assert_eq!(t.record(true), None);
            assert_eq!(t.record(false), None);
        }
        assert_eq!(t.state(), Health::Unhealthy);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut t = HealthTracker::new(0, 0);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(true), Some(Health::Healthy));
    }
}
