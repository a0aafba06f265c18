//! The invariant seen from the backends: a user is never logged in on two
//! backends at once. A sampler thread asks `doveadm who` of every backend
//! in turn, round after round, while a step moves users off one backend;
//! [`SplitDetector`] finds a user seen on backend X, later on Y, and later
//! again on X. Within one step users only leave the drained backend, so
//! that sequence means the user was open on X and Y at the same moment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::world::WhoReader;

/// Per user, the backends it was seen on, in sampling order (repeats of
/// the last one folded).
#[derive(Debug, Default)]
pub struct SplitDetector {
    seen: BTreeMap<String, Vec<usize>>,
    split: BTreeSet<String>,
    /// `doveadm who` answers taken in.
    pub samples: usize,
}

impl SplitDetector {
    /// Takes in one backend's answer: the users logged in on `backend`.
    pub fn absorb<'a>(&mut self, backend: usize, users: impl IntoIterator<Item = &'a String>) {
        self.samples += 1;
        for user in users {
            let trail = self.seen.entry(user.clone()).or_default();
            if trail.last() == Some(&backend) {
                continue;
            }
            if trail.contains(&backend) {
                self.split.insert(user.clone());
            }
            trail.push(backend);
        }
    }

    /// Users seen open on two backends at once.
    pub fn splits(&self) -> &BTreeSet<String> {
        &self.split
    }
}

/// Starts sampling `readers` round-robin until `stop`.
pub fn sample(readers: Vec<WhoReader>, stop: Arc<AtomicBool>) -> JoinHandle<SplitDetector> {
    std::thread::spawn(move || {
        let mut detector = SplitDetector::default();
        while !stop.load(Ordering::Acquire) {
            for (i, reader) in readers.iter().enumerate() {
                if let Some(users) = reader.imap_users() {
                    detector.absorb(i, users.keys());
                }
            }
        }
        detector
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_move_is_not_a_split_but_coming_back_is() {
        let mut d = SplitDetector::default();
        d.absorb(0, &users(&["alice", "bob"]));
        d.absorb(1, &users(&["carol"]));
        d.absorb(0, &users(&["alice"]));
        // bob moved 0 -> 1: fine.
        d.absorb(1, &users(&["bob", "carol"]));
        d.absorb(0, &users(&[]));
        assert!(d.splits().is_empty());
        // alice seen on 0, then 1, then 0 again: open on both.
        d.absorb(1, &users(&["alice"]));
        d.absorb(0, &users(&["alice"]));
        assert_eq!(d.splits().iter().collect::<Vec<_>>(), vec!["alice"]);
        assert_eq!(d.samples, 7);
    }
}
