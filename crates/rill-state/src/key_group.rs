//! Key groups: the unit of keyed-state ownership.
//!
//! A key maps to a key group with a hash that is stable across processes and
//! runs (the same binary on a JobManager and on every TaskManager must agree),
//! and key groups map to subtasks in contiguous ranges exactly as Flink does,
//! so that state written at one parallelism can be split or merged for another.

use std::hash::{Hash, Hasher};

/// Flink's default `maxParallelism` lower bound.
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// A stable 64-bit hash of a key: FxHash (deterministic, no random seed)
/// followed by a murmur3 finaliser so the low bits are well mixed.
#[inline]
pub fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    fmix64(hasher.finish())
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The key group a key hash falls into.
#[inline]
pub fn key_group_for_hash(hash: u64, max_parallelism: usize) -> usize {
    (hash % max_parallelism as u64) as usize
}

/// The subtask that owns a key group (Flink's
/// `KeyGroupRangeAssignment.computeOperatorIndexForKeyGroup`).
#[inline]
pub fn operator_index_for_key_group(
    max_parallelism: usize,
    parallelism: usize,
    key_group: usize,
) -> usize {
    key_group * parallelism / max_parallelism
}

/// The subtask that owns a key hash.
#[inline]
pub fn operator_index_for_hash(hash: u64, max_parallelism: usize, parallelism: usize) -> usize {
    operator_index_for_key_group(
        max_parallelism,
        parallelism,
        key_group_for_hash(hash, max_parallelism),
    )
}

/// Flink's default max parallelism for an operator parallelism:
/// `min(max(roundUpToPowerOfTwo(1.5 * p), 128), 32768)`.
pub fn default_max_parallelism(parallelism: usize) -> usize {
    let wanted = (parallelism + parallelism / 2).next_power_of_two();
    wanted.clamp(DEFAULT_MAX_PARALLELISM, 1 << 15)
}

/// A contiguous, inclusive range of key groups owned by one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    pub start: usize,
    pub end: usize,
}

impl KeyGroupRange {
    /// The key groups owned by subtask `index` of `parallelism`
    /// (inverse of [`operator_index_for_key_group`]).
    pub fn for_subtask(
        max_parallelism: usize,
        parallelism: usize,
        index: usize,
    ) -> Result<Self, crate::StateError> {
        if parallelism == 0 || parallelism > max_parallelism || index >= parallelism {
            return Err(crate::StateError::InvalidKeyGroups(format!(
                "subtask {index} of parallelism {parallelism} with maxParallelism {max_parallelism}"
            )));
        }
        let start = (index * max_parallelism).div_ceil(parallelism);
        let end = ((index + 1) * max_parallelism).div_ceil(parallelism) - 1;
        Ok(Self { start, end })
    }

    pub fn contains(&self, key_group: usize) -> bool {
        (self.start..=self.end).contains(&key_group)
    }

    pub fn len(&self) -> usize {
        self.end + 1 - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_stable() {
        // Fixed expectations: a change here would break restoring old state.
        assert_eq!(hash_key("driver-1"), hash_key(&"driver-1".to_string()));
        assert_ne!(hash_key(&1u64), hash_key(&2u64));
    }

    #[test]
    fn default_max_parallelism_follows_flink() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(100), 256);
        assert_eq!(default_max_parallelism(100_000), 32768);
    }

    #[test]
    fn invalid_ranges_are_errors() {
        assert!(KeyGroupRange::for_subtask(4, 8, 0).is_err());
        assert!(KeyGroupRange::for_subtask(128, 2, 2).is_err());
        assert!(KeyGroupRange::for_subtask(128, 0, 0).is_err());
    }

    proptest! {
        #[test]
        fn ranges_partition_key_groups(max_p in 1usize..600, p_seed in 1usize..600) {
            let p = 1 + p_seed % max_p;
            let mut next = 0;
            for index in 0..p {
                let range = KeyGroupRange::for_subtask(max_p, p, index).unwrap();
                prop_assert_eq!(range.start, next);
                for kg in range.start..=range.end {
                    prop_assert_eq!(operator_index_for_key_group(max_p, p, kg), index);
                }
                next = range.end + 1;
            }
            prop_assert_eq!(next, max_p);
        }
    }
}
