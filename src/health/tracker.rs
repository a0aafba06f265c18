//! The health state machine of one protocol port of a backend: fall and
//! rise thresholds.
//!
//! A healthy port turns unhealthy after `fall` consecutive failed checks,
//! an unhealthy one healthy after `rise` consecutive good ones; anything in
//! between keeps the state, so one lost packet does not move users and a
//! flapping port does not take them back until it has been stable for
//! `rise` checks.
//!
//! Three sources feed it, and they must not fight each other:
//! - a *passive* failure (a client login could not reach the port) counts
//!   toward `fall` at most once until the next active check — a burst of
//!   failed logins is one observation, which an active check must confirm;
//! - a *woken* check (run at once after a passive failure) counts fully
//!   when it fails, and its success resets a healthy port's fall count,
//!   but it never counts toward `rise`;
//! - only *scheduled* checks, `health.interval` apart, bring a down port
//!   back up, so two results a millisecond apart can never flip it twice.

use crate::route::backends::Health;

/// Where a result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An active check at its interval.
    Scheduled,
    /// An active check run early, woken by a passive failure.
    Woken,
    /// A client login that could not reach the port (always a failure).
    Passive,
}

/// Counts consecutive results against the thresholds.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    fall: u32,
    rise: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
    /// A passive failure was counted since the last active check.
    passive_counted: bool,
}

impl HealthTracker {
    /// A tracker that starts healthy (a backend is trusted until it fails).
    pub fn new(fall: u32, rise: u32) -> HealthTracker {
        HealthTracker {
            fall: fall.max(1),
            rise: rise.max(1),
            state: Health::Healthy,
            streak: 0,
            passive_counted: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Whether a passive failure was counted and no active check has run
    /// since (another passive failure would not count).
    pub fn awaits_check(&self) -> bool {
        self.passive_counted
    }

    /// Records one result from `source`; returns the new state when it
    /// flips.
    pub fn record(&mut self, ok: bool, source: Source) -> Option<Health> {
        match source {
            Source::Passive => {
                if ok || self.state == Health::Unhealthy || self.passive_counted {
                    return None;
                }
                self.passive_counted = true;
            }
            Source::Woken | Source::Scheduled => {
                self.passive_counted = false;
                if ok && source == Source::Woken && self.state == Health::Unhealthy {
                    return None;
                }
            }
        }
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
        assert_eq!(t.record(false, Source::Scheduled), None);
        assert_eq!(t.record(false, Source::Scheduled), Some(Health::Unhealthy));
        assert_eq!(t.state(), Health::Unhealthy);
    }

    #[test]
    fn a_success_resets_the_fall_count() {
        let mut t = HealthTracker::new(3, 2);
        for _ in 0..10 {
            assert_eq!(t.record(false, Source::Scheduled), None);
            assert_eq!(t.record(false, Source::Scheduled), None);
            assert_eq!(t.record(true, Source::Scheduled), None);
        }
        assert_eq!(t.state(), Health::Healthy);
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut t = HealthTracker::new(1, 3);
        assert_eq!(t.record(false, Source::Scheduled), Some(Health::Unhealthy));
        assert_eq!(t.record(true, Source::Scheduled), None);
        assert_eq!(t.record(true, Source::Scheduled), None);
        assert_eq!(t.record(true, Source::Scheduled), Some(Health::Healthy));
    }

    #[test]
    fn flapping_backend_stays_down_until_stable() {
        let mut t = HealthTracker::new(2, 3);
        t.record(false, Source::Scheduled);
        t.record(false, Source::Scheduled);
        for _ in 0..20 {
            assert_eq!(t.record(true, Source::Scheduled), None);
            assert_eq!(t.record(true, Source::Scheduled), None);
            assert_eq!(t.record(false, Source::Scheduled), None);
        }
        assert_eq!(t.state(), Health::Unhealthy);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut t = HealthTracker::new(0, 0);
        assert_eq!(t.record(false, Source::Scheduled), Some(Health::Unhealthy));
        assert_eq!(t.record(true, Source::Scheduled), Some(Health::Healthy));
    }

    #[test]
    fn a_burst_of_passive_failures_counts_once_until_a_check_confirms() {
        let mut t = HealthTracker::new(2, 2);
        for _ in 0..50 {
            assert_eq!(t.record(false, Source::Passive), None);
        }
        assert_eq!(t.state(), Health::Healthy);
        assert_eq!(t.record(false, Source::Woken), Some(Health::Unhealthy));
    }

    #[test]
    fn a_good_woken_check_clears_a_passive_failure() {
        let mut t = HealthTracker::new(2, 2);
        for _ in 0..20 {
            assert_eq!(t.record(false, Source::Passive), None);
            assert_eq!(t.record(true, Source::Woken), None);
        }
        assert_eq!(t.state(), Health::Healthy);
    }

    #[test]
    fn only_scheduled_checks_bring_a_port_back() {
        let mut t = HealthTracker::new(1, 2);
        assert_eq!(t.record(false, Source::Scheduled), Some(Health::Unhealthy));
        for _ in 0..10 {
            assert_eq!(t.record(true, Source::Woken), None);
            assert_eq!(t.record(false, Source::Passive), None, "ignored while down");
        }
        assert_eq!(t.record(true, Source::Scheduled), None);
        assert_eq!(t.record(true, Source::Woken), None);
        assert_eq!(t.record(true, Source::Scheduled), Some(Health::Healthy));
    }
}
