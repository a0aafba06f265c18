//! Weighted rendezvous (highest random weight) ranking.
//!
//! Every backend gets a score for every user key; the user goes to the
//! routable backend with the highest score. Scores depend only on the key,
//! the backend's name and its weight, so every director computes the same
//! ranking with no coordination, and adding or removing a backend moves
//! only the keys whose first choice it is (about 1/n of them).
//!
//! The score is the logarithmic method of weighted rendezvous hashing:
//! `weight / -ln(u)` with `u` a uniform number in (0, 1) drawn from the hash
//! of key and backend. A backend of weight 2w then wins twice as many keys
//! as one of weight w. The hash is XXH3-64, whose output is specified and
//! the same on every platform and version, so directors built at different
//! times still agree.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The per-backend part of the hash, computed once from the backend's name.
pub fn backend_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// The rendezvous score of `key` on a backend with this seed and weight;
/// higher wins.
pub fn score(key: &str, seed: u64, weight: u32) -> f64 {
    let h = xxh3_64_with_seed(key.as_bytes(), seed);
    // The top 53 bits as a number strictly inside (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// A hash of the key alone, for choosing the shard (owner core) of a user.
pub fn key_hash(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn winner(key: &str, backends: &[(&str, u32)]) -> usize {
        let mut best = 0;
        let mut best_score = f64::MIN;
        for (i, (name, weight)) in backends.iter().enumerate() {
            let s = score(key, backend_seed(name), *weight);
            if s > best_score {
                best_score = s;
                best = i;
            }
        }
        best
    }

    #[test]
    fn spread_follows_weights_within_five_percent() {
        let backends = [
            ("mail1", 100),
            ("mail2", 100),
            ("mail3", 200),
            ("mail4", 50),
        ];
        let total_weight: u32 = backends.iter().map(|b| b.1).sum();
        let mut counts = [0usize; 4];
        let keys = 100_000;
        for i in 0..keys {
            counts[winner(&format!("user{i}@example.com"), &backends)] += 1;
        }
        for (i, (name, weight)) in backends.iter().enumerate() {
            let expected = keys as f64 * f64::from(*weight) / f64::from(total_weight);
            let off = (counts[i] as f64 - expected).abs() / expected;
            assert!(
                off < 0.05,
                "{name}: {} keys, expected {expected:.0} ({:.1}% off)",
                counts[i],
                off * 100.0
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_nth() {
        let before = [("a", 100), ("b", 100), ("c", 100), ("d", 100)];
        let after = [("a", 100), ("b", 100), ("c", 100), ("d", 100), ("e", 100)];
        let keys = 100_000;
        let mut moved = 0;
        for i in 0..keys {
            let key = format!("u{i}");
            let old = winner(&key, &before);
            let new = winner(&key, &after);
            if old != new {
                // A key may only move to the new backend, never between old ones.
                assert_eq!(new, 4, "{key} moved between old backends");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!(
            (share - 0.2).abs() < 0.01,
            "moved {share:.3} of the keys, expected 0.2"
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let all = [("a", 100), ("b", 100), ("c", 100)];
        let without_b = [("a", 100), ("c", 100)];
        for i in 0..20_000 {
            let key = format!("k{i}");
            let w = winner(&key, &all);
            if w != 1 {
                let expected = if w == 0 { 0 } else { 1 };
                assert_eq!(winner(&key, &without_b), expected, "{key} moved needlessly");
            }
        }
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned values: if any changes, directors of different versions
        // would disagree about where users live.
        assert_eq!(backend_seed("mail1"), 0x195b_dbfb_214a_f29a);
        assert_eq!(key_hash("alice@example.com"), 0x76eb_8955_12bf_35ff);
        let backends = [("mail1", 100), ("mail2", 100), ("mail3", 100)];
        let keys = [
            "alice@example.com",
            "bob@example.com",
            "carol@example.org",
            "dave",
            "eve@x",
            "user1",
            "user2",
            "user3",
            "user4",
            "user5",
            "user6",
            "user7",
        ];
        let winners: Vec<usize> = keys.iter().map(|k| winner(k, &backends)).collect();
        assert_eq!(winners, [1, 1, 1, 1, 1, 2, 0, 2, 0, 1, 2, 2]);
    }
}
