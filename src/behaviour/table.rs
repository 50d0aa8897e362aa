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

type Keyed<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// One core's baselines (in its `Worker`; never shared).
#[derive(Default)]
pub struct Baselines {
    pub(super) profiles: Keyed<Profile>,
    /// The other cores' view of each caller, from their last summaries.
    pub(super) remote: Keyed<Remote>,
    /// Reused by eviction.
    ages: Vec<(i64, u64)>,
}

impl Baselines {
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn get(&self, key: u64) -> Option<&Profile> {
        self.profiles.get(&key)
    }

    /// Count one request of `ev.key` and score it.
    pub fn observe(&mut self, x: &Exchange, s: &Settings, ev: &Event<'_>) -> Scores {
        let h = x.hasher();
        let tool = ev.tool.map_or(0, |t| h.hash_one(t) as u32);
        let item = ev.item.map(|i| h.hash_one(i) as u32);
        if let Some(p) = self.profiles.get_mut(&ev.key) {
            return p.observe(s, ev, tool, item);
        }
        if self.profiles.len() >= s.max_principals {
            self.evict(s.max_principals);
        }
        let mut p = Profile::new(ev.now);
        if let Some(r) = self.remote.get(&ev.key) {
            r.seed(&mut p);
        }
        self.profiles
            .entry(ev.key)
            .or_insert(p)
            .observe(s, ev, tool, item)
    }

    /// How a request of `key` ended.
    pub fn settle(&mut self, key: u64, outcome: Outcome, now: i64) {
        if let Some(p) = self.profiles.get_mut(&key) {
            p.settle(outcome, now);
        }
    }

    /// Forget the least recently active eighth of the table (at least one,
    /// and enough to take one more below `max`).
    fn evict(&mut self, max: usize) {
        let len = self.profiles.len();
        let n = (len / 8).max(1).max((len + 1).saturating_sub(max)).min(len);
        self.ages.clear();
        self.ages
            .extend(self.profiles.iter().map(|(k, p)| (p.last_seen, *k)));
        self.ages.select_nth_unstable(n - 1);
        for (_, k) in self.ages.drain(..n) {
            self.profiles.remove(&k);
        }
    }
}
