//! One core's callers: a bounded map from key to profile.

use super::merge::Remote;

use super::profile::Profile;
use super::{Event, Exchange, Outcome, Scores, Settings};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Keys are already seeded hashes: the map uses them as they are.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type Keyed<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// One core's baselines (in its `Worker`; never shared). The profiles are
/// in a slab of two cache lines each, found through a small index (key →
/// slot, 16 bytes an entry, cache-resident for tens of thousands of
/// callers): a request for a known caller reads the index, its profile's
/// two lines, and one more line for a tool call.
#[derive(Default)]
pub struct Baselines {
    index: Keyed<u32>,
    pub(super) profiles: Vec<Profile>,
    /// The other cores' view of each caller, from their last summaries.
    pub(super) remote: Keyed<Remote>,
    /// The window sizes and UTC offset of the last settings seen: when they
    /// change, every profile's windows are moved on its next request.
    shape: (i64, i64, i64),
    /// Reused by eviction.
    ages: Vec<(i64, u32)>,
}

impl Baselines {
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn get(&self, key: u64) -> Option<&Profile> {
        let i = *self.index.get(&key)?;
        self.profiles.get(i as usize)
    }

    /// Count one request of `ev.key` and score it.
    pub fn observe(&mut self, x: &Exchange, s: &Settings, ev: &Event<'_>) -> Scores {
        let h = x.hasher();
        let tool = ev.tool.map(|t| h.hash_one(t) as u32);
        let item = ev.item.map(|i| h.hash_one(i) as u32);
        self.reshape(s);
        let i = self.slot(s, ev.key, ev.now);
        self.profiles[i].observe(s, ev, tool, item)
    }

    /// How a request of `key` ended (a caller not in the table is not
    /// counted).
    pub fn settle(&mut self, key: u64, outcome: Outcome, now: i64) {
        if let Some(&i) = self.index.get(&key) {
            self.profiles[i as usize].settle(outcome, now);
        }
    }

    /// A token of `key` (or from its address) was refused: counted even
    /// for a caller not yet in the table.
    pub fn refused(&mut self, s: &Settings, key: u64, now: i64) {
        let i = self.slot(s, key, now);
        self.profiles[i].settle(Outcome::AuthFailed, now);
    }

    /// The slot of `key`'s profile, made (and seeded from the other cores)
    /// when it has none.
    fn slot(&mut self, s: &Settings, key: u64, now: i64) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i as usize;
        }
        if self.profiles.len() >= s.max_principals {
            self.evict(s.max_principals);
        }
        let mut p = Profile::new(key, now);
        if let Some(r) = self.remote.get(&key) {
            r.seed(&mut p);
        }
        let i = self.profiles.len();
        self.profiles.push(p);
        self.index.insert(key, i as u32);
        i
    }

    /// New window sizes or offset: every profile moves its windows on its
    /// next request (once per change, not a test on every request).
    fn reshape(&mut self, s: &Settings) {
        let shape = (
            s.bucket_secs,
            s.half_secs,
            s.hours.map_or(0, |h| h.offset_secs),
        );
        if shape != self.shape {
            self.shape = shape;
            self.profiles.iter_mut().for_each(|p| p.next = i64::MIN);
        }
    }

    /// Forget the least recently active eighth of the table (at least one,
    /// and enough to take one more below `max`).
    fn evict(&mut self, max: usize) {
        let len = self.profiles.len();
        let n = (len / 8).max(1).max((len + 1).saturating_sub(max)).min(len);
        self.ages.clear();
        self.ages.extend(
            self.profiles
                .iter()
                .enumerate()
                .map(|(i, p)| (p.last_seen, i as u32)),
        );
        self.ages.select_nth_unstable(n - 1);
        let victims = &mut self.ages[..n];
        // From the last slot down: the profile moved into a freed slot is
        // never one still to be removed.
        victims.sort_unstable_by_key(|v| std::cmp::Reverse(v.1));
        for &(_, i) in victims.iter() {
            let gone = self.profiles.swap_remove(i as usize);
            self.index.remove(&gone.key);
            if let Some(moved) = self.profiles.get(i as usize) {
                self.index.insert(moved.key, i);
            }
        }
    }
}
