//! Rate-limit counters shared by all cores: a fixed table of slots, each two
//! `AtomicU64`s, updated with compare-and-swap (no locks).
//!
//! A key (rule, principal, maybe tool) hashes, with a per-table random seed,
//! to a bucket of `WAYS` slots and to a 64-bit fingerprint. A slot holds the
//! fingerprint of its key and a state word: the fixed window's number
//! (`now / per`, 32 bits) and the count in it (32 bits). A slot whose window
//! has passed may be taken over by another key.
//!
//! Collisions: two keys share a count only if their 64-bit fingerprints are
//! equal (odds about n²/2⁶⁵ for n live keys), so in practice never. When all
//! `WAYS` slots of a bucket hold other keys live in the current window, the
//! request is refused as over the limit (fail closed); with `SLOTS` slots
//! that needs thousands of keys active in one window and an unlucky bucket.
//! Fixed windows allow up to twice the limit across a window boundary.
//! Counters live in the compiled policy: a config reload starts them afresh.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use super::matchers::Hasher;

/// Slots in a table (16 bytes each: 1 MiB per policy with rate limits).
pub(crate) const SLOTS: usize = 1 << 16;
/// Slots per bucket.
const WAYS: usize = 8;
/// A slot's state while it changes hands.
const LOCKED: u64 = u64::MAX;

#[derive(Default)]
struct Slot {
    key: AtomicU64,
    state: AtomicU64,
}

pub(crate) struct RateTable {
    slots: Box<[Slot]>,
    seed: Hasher,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateTable")
    }
}

impl Default for RateTable {
    fn default() -> Self {
        RateTable {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            seed: Hasher::default(),
        }
    }
}

fn pack(window: u32, count: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(count)
}

impl RateTable {
    /// The hash of a key, with this table's seed.
    pub(super) fn hash<K: Hash>(&self, key: K) -> u64 {
        self.seed.hash_one(key)
    }

    /// Count one request for `key` in the window of `per` seconds holding
    /// `now`. `Err(retry_after_secs)` when `limit` requests were already
    /// counted in this window (the refused request is not counted).
    pub(super) fn hit(&self, hash: u64, now: i64, per: u64, limit: u32) -> Result<(), u64> {
        let per_i = i64::try_from(per.max(1)).unwrap_or(i64::MAX);
        let window = now.div_euclid(per_i) as u32;
        let retry = (per_i - now.rem_euclid(per_i)).max(1) as u64;
        let fp = hash.rotate_left(32) | 1; // never 0 (0 is an empty slot)
        let start = (hash as usize % (SLOTS / WAYS)) * WAYS;
        let bucket = &self.slots[start..start + WAYS];
        // Bounded: every retry means another thread made progress.
        for _ in 0..64 {
            match self.try_hit(bucket, fp, window, limit) {
                Some(true) => return Ok(()),
                Some(false) => return Err(retry),
                None => std::hint::spin_loop(),
            }
        }
        Err(retry)
    }

    /// `Some(allowed)`, or `None` to retry after a lost race.
    fn try_hit(&self, bucket: &[Slot], fp: u64, window: u32, limit: u32) -> Option<bool> {
        // Our key's slot, if it has one. State is read before key: the key
        // only changes while the state is LOCKED, so a CAS from the state read
        // here fails if the slot changed hands since.
        for slot in bucket {
            let state = slot.state.load(Ordering::Acquire);
            if state == LOCKED || slot.key.load(Ordering::Acquire) != fp {
                continue;
            }
            let next = if (state >> 32) as u32 == window {
                let count = state as u32;
                if count >= limit {
                    return Some(false);
                }
                pack(window, count + 1)
            } else {
                pack(window, 1)
            };
            let ok = slot
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            return if ok { Some(true) } else { None };
        }
        if limit == 0 {
            return Some(false);
        }
        // Take the first free or stale slot. A slot being handed over, or
        // one that took our key since the scan above, sends us round again:
        // taking another slot would count this key in two (and let it past
        // its limit).
        for slot in bucket {
            let state = slot.state.load(Ordering::Acquire);
            if state == LOCKED {
                return None;
            }
            let key = slot.key.load(Ordering::Acquire);
            if key == fp {
                return None;
            }
            if key != 0 && (state >> 32) as u32 == window {
                continue;
            }
            if slot
                .state
                .compare_exchange(state, LOCKED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return None;
            }
            slot.key.store(fp, Ordering::Release);
            slot.state.store(pack(window, 1), Ordering::Release);
            return Some(true);
        }
        // The bucket is full of live keys: fail closed.
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_per_window_and_key() {
        let t = RateTable::default();
        let a = t.hash("a");
        let b = t.hash("b");
        assert_eq!(t.hit(a, 120, 60, 2), Ok(()));
        assert_eq!(t.hit(a, 130, 60, 2), Ok(()));
        assert_eq!(t.hit(a, 170, 60, 2), Err(10));
        assert_eq!(t.hit(b, 170, 60, 2), Ok(()));
        assert_eq!(t.hit(a, 180, 60, 2), Ok(()));
        assert_eq!(t.hit(a, 180, 60, 0), Err(60));
    }

    #[test]
    fn full_bucket_fails_closed_and_stale_slots_are_reused() {
        let t = RateTable::default();
        // Keys with the same bucket: hashes equal modulo the bucket count.
        let n = (SLOTS / WAYS) as u64;
        for i in 0..WAYS as u64 {
            assert_eq!(t.hit(5 + i * n, 100, 10, 5), Ok(()));
        }
        assert_eq!(t.hit(5 + WAYS as u64 * n, 100, 10, 5), Err(10));
        // Next window: the stale slots are taken over.
        assert_eq!(t.hit(5 + WAYS as u64 * n, 110, 10, 5), Ok(()));
    }

    #[test]
    fn one_limit_across_threads() {
        let t = Arc::new(RateTable::default());
        let key = t.hash(("rule", "issuer", "sub"));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter(|_| t.hit(key, 1000, 3600, 1234).is_ok())
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1234);
    }
}
