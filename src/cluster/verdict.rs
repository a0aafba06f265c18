//! The cluster's health verdict on a backend, from every director's own.
//!
//! Each director publishes what its own checks say of each backend
//! (`health/{B}/{D}`, up or down). A backend is down for the cluster only
//! when a strict majority of the live directors (those registered under
//! `directors/`) report it down, and up when a strict majority report it
//! up; otherwise there is no verdict (too few reports, or a split). So one
//! director that alone cannot reach a backend moves nobody: it is
//! *degraded* — its own view says down while the cluster's says up.
//!
//! Pure functions over plain maps, so the rules are tested here without
//! etcd.

use std::collections::{BTreeMap, BTreeSet};

use crate::route::backends::Health;

/// How the live directors see one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Live directors that report it up.
    pub up: usize,
    /// Live directors that report it down.
    pub down: usize,
    /// Live directors in all (reporting or not).
    pub live: usize,
}

impl Tally {
    /// Counts the reports of the `live` directors (reports of directors
    /// no longer registered do not count).
    pub fn of(live: &BTreeSet<String>, reports: &BTreeMap<String, bool>) -> Tally {
        let mut t = Tally {
            live: live.len(),
            ..Tally::default()
        };
        for (director, up) in reports {
            if !live.contains(director) {
                continue;
            }
            if *up {
                t.up += 1;
            } else {
                t.down += 1;
            }
        }
        t
    }

    /// The verdict: down on a strict majority of the live directors
    /// reporting down, up on a strict majority reporting up, else none.
    pub fn verdict(&self) -> Option<Health> {
        if self.down * 2 > self.live {
            Some(Health::Unhealthy)
        } else if self.up * 2 > self.live {
            Some(Health::Healthy)
        } else {
            None
        }
    }
}

/// The backends this director sees down (`own`: backend → up) while the
/// cluster's verdict says up: where this director is degraded.
pub fn degraded(own: &BTreeMap<String, bool>, verdicts: &BTreeMap<String, Health>) -> Vec<String> {
    own.iter()
        .filter(|(b, up)| !**up && verdicts.get(*b) == Some(&Health::Healthy))
        .map(|(b, _)| b.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn reports(r: &[(&str, bool)]) -> BTreeMap<String, bool> {
        r.iter().map(|(d, up)| (d.to_string(), *up)).collect()
    }

    #[test]
    fn one_director_of_three_seeing_a_backend_down_does_not_bring_it_down() {
        let t = Tally::of(
            &live(&["d1", "d2", "d3"]),
            &reports(&[("d1", true), ("d2", true), ("d3", false)]),
        );
        assert_eq!(
            t,
            Tally {
                up: 2,
                down: 1,
                live: 3
            }
        );
        assert_eq!(t.verdict(), Some(Health::Healthy));
    }

    #[test]
    fn a_strict_majority_down_brings_it_down() {
        let l = live(&["d1", "d2", "d3"]);
        let t = Tally::of(&l, &reports(&[("d1", false), ("d2", false), ("d3", true)]));
        assert_eq!(t.verdict(), Some(Health::Unhealthy));
        // Half is not a majority: two directors split one each.
        let t = Tally::of(
            &live(&["d1", "d2"]),
            &reports(&[("d1", false), ("d2", true)]),
        );
        assert_eq!(t.verdict(), None);
        // A director alone is its own majority.
        let t = Tally::of(&live(&["d1"]), &reports(&[("d1", false)]));
        assert_eq!(t.verdict(), Some(Health::Unhealthy));
    }

    #[test]
    fn directors_that_left_or_have_not_reported_do_not_vote() {
        // d4 is gone (its lease expired): its report is stale.
        let l = live(&["d1", "d2", "d3"]);
        let t = Tally::of(&l, &reports(&[("d1", false), ("d4", false)]));
        assert_eq!(t.down, 1);
        assert_eq!(t.verdict(), None, "1 of 3 is no majority");
        // Silent directors count in the whole: 1 report of 3 decides nothing.
        let t = Tally::of(&l, &reports(&[("d2", true)]));
        assert_eq!(t.verdict(), None);
        assert_eq!(Tally::of(&live(&[]), &reports(&[])).verdict(), None);
    }

    #[test]
    fn degraded_means_down_here_but_up_for_the_cluster() {
        let own = reports(&[("b1", false), ("b2", false), ("b3", true)]);
        let verdicts: BTreeMap<String, Health> = [
            ("b1".to_string(), Health::Healthy),
            ("b2".to_string(), Health::Unhealthy),
            ("b3".to_string(), Health::Healthy),
        ]
        .into_iter()
        .collect();
        assert_eq!(degraded(&own, &verdicts), vec!["b1".to_string()]);
        assert!(degraded(&own, &BTreeMap::new()).is_empty());
    }
}
