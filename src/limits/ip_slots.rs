//! A fixed-size, lock-free table of small per-key values shared by every
//! core: per client address, how many connections are waiting to log in,
//! how many logins failed lately, when a limit hit was last logged.
//!
//! Each slot is one `AtomicU64`: a 32-bit fingerprint of the key above a
//! 32-bit payload. A key lives in one of [`PROBES`] slots after its hash
//! (open addressing); an update is a compare-and-swap on that slot, so no
//! core ever waits for another. A slot is free when it is zero or when its
//! payload is no longer live (a count back at zero, a time long past), so
//! the table never needs a sweep. When every slot a key may use is taken
//! (far more distinct keys than the table was sized for), the update
//! reports [`Update::Full`] and the caller decides (the limits fail open:
//! the process-wide bounds still hold).

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots a key may occupy, starting at its hash.
pub const PROBES: usize = 16;

/// How many times an update retries after losing a race for a slot.
const RETRIES: usize = 8;

/// Where a key's value lives, for a later [`IpSlots::update_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    index: usize,
    fingerprint: u32,
}

/// What an [`IpSlots::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The value went from `old` to `new` (0 = the slot is free again).
    Done {
        /// Where the key's value is.
        slot: SlotRef,
        /// The live value before (0 when the key had none).
        old: u32,
        /// The value now.
        new: u32,
    },
    /// The change function declined; the key's live value is `current`.
    Declined {
        /// The live value (0 when the key has none).
        current: u32,
    },
    /// No slot was free for a new key.
    Full,
}

/// The table.
pub struct IpSlots {
    slots: Box<[AtomicU64]>,
    mask: usize,
    hasher: ahash::RandomState,
}

impl IpSlots {
    /// A table of at least `capacity` slots (rounded up to a power of two,
    /// at least [`PROBES`]).
    pub fn new(capacity: usize) -> IpSlots {
        let len = capacity.max(PROBES).next_power_of_two();
        IpSlots {
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
            mask: len - 1,
            hasher: ahash::RandomState::new(),
        }
    }

    /// The first slot of `key` and its fingerprint (never zero).
    fn place<K: Hash>(&self, key: &K) -> (usize, u32) {
        let hash = self.hasher.hash_one(key);
        let fingerprint = ((hash >> 32) as u32).max(1);
        (hash as usize & self.mask, fingerprint)
    }

    /// Applies `change` to the live value of `key` (0 when it has none):
    /// `Some(new)` stores `new` (0 frees the slot), `None` leaves it.
    /// `live(payload)` says whether a stored payload still counts; a slot
    /// whose payload does not is free for any key.
    pub fn update<K: Hash>(
        &self,
        key: &K,
        live: impl Fn(u32) -> bool,
        change: impl Fn(u32) -> Option<u32>,
    ) -> Update {
        let (start, fingerprint) = self.place(key);
        for _ in 0..RETRIES {
            let mut mine = None;
            let mut free = None;
            for i in 0..PROBES {
                let index = (start + i) & self.mask;
                let seen = self.slots[index].load(Ordering::Acquire);
                let payload = seen as u32;
                let is_live = seen != 0 && live(payload);
                if is_live && (seen >> 32) as u32 == fingerprint {
                    mine = Some((index, seen, payload));
                    break;
                }
                if !is_live && free.is_none() {
                    free = Some((index, seen, 0));
                }
            }
            let Some((index, seen, old)) = mine.or(free) else {
                return Update::Full;
            };
            let Some(new) = change(old) else {
                return Update::Declined { current: old };
            };
            let stored = if new == 0 {
                0
            } else {
                u64::from(fingerprint) << 32 | u64::from(new)
            };
            let swapped = self.slots[index]
                .compare_exchange(seen, stored, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if swapped {
                let slot = SlotRef { index, fingerprint };
                return Update::Done { slot, old, new };
            }
        }
        Update::Full
    }

    /// Applies `change` to the value at `slot` if it still belongs to the
    /// same key; returns the new value, or `None` if the slot was reused.
    pub fn update_at(&self, slot: SlotRef, change: impl Fn(u32) -> u32) -> Option<u32> {
        let cell = &self.slots[slot.index];
        let mut seen = cell.load(Ordering::Acquire);
        loop {
            if seen == 0 || (seen >> 32) as u32 != slot.fingerprint {
                return None;
            }
            let new = change(seen as u32);
            let stored = if new == 0 {
                0
            } else {
                u64::from(slot.fingerprint) << 32 | u64::from(new)
            };
            match cell.compare_exchange_weak(seen, stored, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(new),
                Err(now) => seen = now,
            }
        }
    }

    /// The live value of `key`, 0 when it has none.
    pub fn get<K: Hash>(&self, key: &K, live: impl Fn(u32) -> bool) -> u32 {
        let (start, fingerprint) = self.place(key);
        (0..PROBES)
            .map(|i| self.slots[(start + i) & self.mask].load(Ordering::Acquire))
            .find(|&v| v != 0 && (v >> 32) as u32 == fingerprint && live(v as u32))
            .map_or(0, |v| v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn count(c: u32) -> bool {
        c > 0
    }

    #[test]
    fn counts_per_key_and_frees_at_zero() {
        let t = IpSlots::new(64);
        let add = |c: u32| Some(c + 1);
        let Update::Done {
            slot,
            old: 0,
            new: 1,
        } = t.update(&ip(1), count, add)
        else {
            panic!("first insert")
        };
        assert!(matches!(
            t.update(&ip(1), count, add),
            Update::Done { old: 1, new: 2, .. }
        ));
        assert_eq!(t.get(&ip(1), count), 2);
        assert_eq!(t.get(&ip(2), count), 0);
        assert_eq!(t.update_at(slot, |c| c - 1), Some(1));
        assert_eq!(t.update_at(slot, |c| c - 1), Some(0));
        assert_eq!(t.get(&ip(1), count), 0);
        assert!(t.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn a_declined_change_leaves_the_value() {
        let t = IpSlots::new(64);
        let capped = |c: u32| (c < 2).then_some(c + 1);
        t.update(&ip(1), count, capped);
        t.update(&ip(1), count, capped);
        assert_eq!(
            t.update(&ip(1), count, capped),
            Update::Declined { current: 2 }
        );
    }

    #[test]
    fn a_full_neighbourhood_is_reported_not_overwritten() {
        let t = IpSlots::new(PROBES);
        for n in 0..PROBES as u32 {
            assert!(matches!(
                t.update(&ip(n), count, |c| Some(c + 1)),
                Update::Done { .. }
            ));
        }
        assert_eq!(t.update(&ip(999), count, |c| Some(c + 1)), Update::Full);
        for n in 0..PROBES as u32 {
            assert_eq!(t.get(&ip(n), count), 1, "key {n} kept its value");
        }
    }

    #[test]
    fn slots_whose_payload_is_stale_are_reused() {
        let t = IpSlots::new(PROBES);
        for n in 0..PROBES as u32 {
            t.update(&ip(n), |_| true, |_| Some(5));
        }
        let fresh = |p: u32| p > 5;
        assert!(matches!(
            t.update(&ip(999), fresh, |c| Some(c + 10)),
            Update::Done {
                old: 0,
                new: 10,
                ..
            }
        ));
    }

    #[test]
    fn concurrent_counting_loses_nothing() {
        let t = Arc::new(IpSlots::new(1024));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        let key = ip(i % 7);
                        let Update::Done { slot, .. } = t.update(&key, count, |c| Some(c + 1))
                        else {
                            panic!("table has room")
                        };
                        if i % 2 == 0 {
                            t.update_at(slot, |c| c - 1);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let total: u32 = (0..7).map(|n| t.get(&ip(n), count)).sum();
        assert_eq!(total, 4 * 5_000);
    }
}
