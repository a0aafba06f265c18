//! Weighted rendezvous (highest random weight) ranking.
//!
//! Every backend gets a score for every user key; the user goes to the
//! routable backend with the highest score. Scores depend only on the key,
//! the backend's name and its weight, so every director computes the same
//! ranking with no coordination, and adding or removing a backend moves
//! only the keys whose first choice it is (about 1/n of them).
//!
//! The score is the logarithmic method of weighted rendezvous hashing:
//! `weight / -log2(u)` with `u` a uniform number in (0, 1) drawn from the
//! hash of key and backend. A backend of weight 2w then wins twice as many
//! keys as one of weight w. The hash is XXH3-64, whose output is specified
//! and the same on every platform and version.
//!
//! **Integer arithmetic only.** `-log2(u)` is computed in 32.32 fixed point
//! by the binary logarithm's square-and-compare loop on 128-bit integers,
//! and two scores are compared by cross-multiplying, so there is no
//! floating-point logarithm whose last bit could differ between libm
//! versions, compilers or CPUs: two directors built anywhere place every
//! user on the same backend.

use std::cmp::Ordering;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The per-backend part of the hash, computed once from the backend's name.
pub fn backend_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// Fractional bits of [`neg_log2`].
pub const FRACTION_BITS: u32 = 32;

/// `-log2(v / 2^64)` in 32.32 fixed point, for `v` the hash seen as a
/// number in (0, 1) (the lowest bit is set so it is never 0). The result is
/// in `(0, 64 << 32]`: at least 1, and larger for smaller `v`.
pub fn neg_log2(v: u64) -> u64 {
    let v = v | 1;
    let lz = u64::from(v.leading_zeros());
    // y / 2^63 is v's mantissa, in [1, 2).
    let mut y = u128::from(v << lz);
    let mut fraction = 0u64;
    for bit in (0..FRACTION_BITS).rev() {
        // Square the mantissa; if it reaches 2, this bit of log2 is 1.
        y = (y * y) >> 63;
        if y >> 64 != 0 {
            y >>= 1;
            fraction |= 1 << bit;
        }
    }
    // log2(v) = (63 - lz) + fraction / 2^32, so
    // -log2(v / 2^64) = (1 + lz) - fraction / 2^32.
    ((1 + lz) << FRACTION_BITS) - fraction
}

/// A backend's rendezvous score for one key: `weight / -log2(u)`, kept as
/// the two integers and compared exactly by cross-multiplying.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    weight: u32,
    neg_log2: u64,
}

impl Score {
    /// The weight and `-log2(u)` (32.32 fixed point) behind the score.
    pub fn parts(&self) -> (u32, u64) {
        (self.weight, self.neg_log2)
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        // w1 / n1 against w2 / n2, both denominators positive: at most
        // 2^32 * 2^39 per product, exact in 128 bits.
        let left = u128::from(self.weight) * u128::from(other.neg_log2);
        let right = u128::from(other.weight) * u128::from(self.neg_log2);
        left.cmp(&right)
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

/// The rendezvous score of `key` on a backend with this seed and weight;
/// higher wins.
pub fn score(key: &str, seed: u64, weight: u32) -> Score {
    Score {
        weight,
        neg_log2: neg_log2(xxh3_64_with_seed(key.as_bytes(), seed)),
    }
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
        let mut best_score = None;
        for (i, (name, weight)) in backends.iter().enumerate() {
            let s = score(key, backend_seed(name), *weight);
            if best_score.is_none_or(|b| s > b) {
                best_score = Some(s);
                best = i;
            }
        }
        best
    }

    #[test]
    fn fixed_point_log_matches_the_real_logarithm() {
        // Only the test uses floating point, to check the integer result.
        let mut v = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let exact = -((v | 1) as f64 / 2f64.powi(64)).log2();
            let fixed = neg_log2(v) as f64 / 2f64.powi(32);
            assert!((fixed - exact).abs() < 1e-8, "{v:#x}: {fixed} vs {exact}");
        }
        assert_eq!(neg_log2(u64::MAX), 1, "u just below 1");
        assert_eq!(neg_log2(0), 64 << 32, "the smallest u");
        assert_eq!(neg_log2(1 << 63), 1 << 32, "u = 1/2");
    }

    #[test]
    fn scores_compare_exactly() {
        let a = Score {
            weight: 100,
            neg_log2: 3 << 32,
        };
        let b = Score {
            weight: 200,
            neg_log2: 6 << 32,
        };
        assert_eq!(a, b, "100/3 == 200/6");
        let c = Score {
            weight: 200,
            neg_log2: (6 << 32) - 1,
        };
        assert!(c > a);
        assert!(
            Score {
                weight: 1,
                neg_log2: 1
            } > Score {
                weight: u32::MAX,
                neg_log2: 64 << 32
            }
        );
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

    const PINNED: [[u64; 3]; 3] = [
        [10_162_461_168, 4_274_354_456, 4_907_289_484],
        [15_579_868_187, 10_109_543_222, 10_857_200_021],
        [5_899_635_223, 3_538_458_204, 80_682_497],
    ];

    #[test]
    fn score_vectors_are_pinned() {
        // The exact integers behind the scores of three keys on three
        // backends: any change of hash, seed or fixed-point logarithm
        // fails here, because directors of different builds would then
        // disagree about where users live.
        let backends = ["mail1", "mail2", "mail3"];
        let got: Vec<Vec<u64>> = ["alice@example.com", "bob@example.com", "user7"]
            .iter()
            .map(|k| {
                backends
                    .iter()
                    .map(|b| score(k, backend_seed(b), 100).parts().1)
                    .collect()
            })
            .collect();
        assert_eq!(got, PINNED);
    }
}
