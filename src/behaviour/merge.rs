//! Merging the cores' views, lock-free: each core publishes a summary of
//! its recently active callers into its own `ArcSwap` slot once a second,
//! and folds the other cores' latest summaries into its own profiles then.
//! The request path reads only its own core's table.

use super::profile::{Others, Profile, MAX_NETWORKS, MAX_TOOLS, WORDS};
use super::tool::Tool;
use super::{Baselines, Settings};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Callers active on a core this recently are in its summary.
const ACTIVE_SECS: i64 = 300;

/// Where the cores publish their summaries; shared by all of them.
pub struct Exchange {
    /// Tells its keys kept in principals from another exchange's (from 1).
    id: u64,
    hasher: foldhash::fast::RandomState,
    cores: Box<[ArcSwap<Summary>]>,
}

/// One core's recently active callers.
#[derive(Default)]
pub(super) struct Summary {
    entries: Vec<Entry>,
}

/// One caller as one core saw it (its own traffic only).
struct Entry {
    key: u64,
    first_seen: i64,
    requests: u64,
    recent: u32,
    baseline: f32,
    bits: [u64; WORDS],
    tools: Box<[u32]>,
    networks: Box<[u64]>,
    hours_before: u32,
    step_up_at: i64,
    /// The latest step-up a newer token settled on that core: its windows
    /// start from then.
    forgiven: i64,
}

/// The other cores' view of one caller, summed.
#[derive(Default)]
pub(super) struct Remote {
    first_seen: Option<i64>,
    counts: Others,
    bits: [u64; WORDS],
    tools: Vec<u32>,
    networks: Vec<u64>,
    hours_before: u32,
    /// The latest step-up any core demanded.
    step_up_at: i64,
    /// The latest step-up any core saw settled; `counts.recent` and `bits`
    /// are summed over the cores that saw it only (the others' windows are
    /// from before the newer token).
    forgiven: i64,
}

impl Exchange {
    /// For `cores` workers, with a new random hash seed.
    pub fn new(cores: usize) -> Exchange {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Exchange {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            hasher: foldhash::fast::RandomState::default(),
            cores: (0..cores).map(|_| ArcSwap::default()).collect(),
        }
    }

    pub(super) fn hasher(&self) -> &foldhash::fast::RandomState {
        &self.hasher
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Callers in the summaries of all cores (for tests).
    pub fn published(&self) -> usize {
        self.cores.iter().map(|c| c.load().entries.len()).sum()
    }
}

impl Remote {
    fn add(&mut self, e: &Entry) {
        self.first_seen = Some(
            self.first_seen
                .map_or(e.first_seen, |f| f.min(e.first_seen)),
        );
        if e.forgiven > self.forgiven {
            self.forgiven = e.forgiven;
            self.counts.recent = 0;
            self.bits = [0; WORDS];
        }
        let c = &mut self.counts;
        c.requests += e.requests;
        c.baseline += e.baseline;
        if e.forgiven == self.forgiven {
            c.recent = c.recent.saturating_add(e.recent);
            for (a, b) in self.bits.iter_mut().zip(e.bits) {
                *a |= b;
            }
        }
        // Sorted lists: merged, then `seed` inserts the new ones in order.
        self.tools.extend_from_slice(&e.tools);
        self.tools.sort_unstable();
        self.tools.dedup();
        for n in e.networks.iter() {
            if !self.networks.contains(n) {
                self.networks.push(*n);
            }
        }
        self.hours_before |= e.hours_before;
        self.step_up_at = self.step_up_at.max(e.step_up_at);
    }

    /// Give a profile what the other cores know of its caller.
    pub(super) fn seed(&self, p: &mut Profile) {
        if let Some(f) = self.first_seen {
            p.cold.first_seen = p.cold.first_seen.min(f);
        }
        // A step-up settled on another core is settled here too; windows
        // from before one this core saw settled are left out.
        p.forgive_to(self.forgiven);
        p.others = self.counts;
        p.cold.bits = self.bits;
        if self.forgiven < p.cold.forgiven {
            p.others.recent = 0;
            p.cold.bits = [0; WORDS];
        }
        let unknown = self
            .tools
            .iter()
            .filter(|t| p.tools.binary_search_by_key(*t, |k| k.hash).is_err())
            .count();
        if unknown > 0 && p.tools.len() < MAX_TOOLS {
            let mut tools = std::mem::take(&mut p.tools).into_vec();
            for t in &self.tools {
                if tools.len() >= MAX_TOOLS {
                    break;
                }
                if let Err(at) = tools.binary_search_by_key(t, |k| k.hash) {
                    tools.insert(at, Tool::new(*t));
                }
            }
            p.tools = tools.into_boxed_slice();
        }
        let networks = &mut p.cold.networks;
        for n in &self.networks {
            if networks.len() < MAX_NETWORKS && !networks.contains(n) {
                networks.insert(0, *n);
            }
        }
        p.hours_before |= self.hours_before;
        // A step-up demanded on another core holds here too, unless a newer
        // token already settled it here.
        p.owe(self.step_up_at);
        p.recount();
    }
}

impl Baselines {
    /// Once a second per core: publish this core's summary as `core`, then
    /// fold the other cores' latest ones into this core's profiles. Nothing
    /// to do with one core.
    pub fn exchange(&mut self, x: &Exchange, core: usize, s: &Settings, now: i64) {
        if x.cores.len() < 2 || core >= x.cores.len() {
            return;
        }
        let entries = self
            .profiles
            .iter_mut()
            .filter(|p| now - p.last_seen <= ACTIVE_SECS)
            .map(|p| {
                p.advance(s, now);
                Entry {
                    key: p.key,
                    first_seen: p.cold.first_seen,
                    requests: p.requests,
                    recent: p.recent(),
                    baseline: p.baseline,
                    bits: p.sketch(),
                    tools: p.tools.iter().map(|t| t.hash).collect(),
                    networks: p.cold.networks.as_slice().into(),
                    hours_before: p.hours_before,
                    step_up_at: p.step_up_at(),
                    forgiven: p.cold.forgiven,
                }
            })
            .collect();
        x.cores[core].store(Arc::new(Summary { entries }));
        self.remote.clear();
        for (i, slot) in x.cores.iter().enumerate() {
            if i == core {
                continue;
            }
            for e in slot.load().entries.iter() {
                self.remote.entry(e.key).or_default().add(e);
            }
        }
        for p in self.profiles.iter_mut() {
            match self.remote.get(&p.key) {
                Some(r) => r.seed(p),
                None => {
                    p.others = Others::default();
                    p.cold.bits = [0; WORDS];
                    p.recount();
                }
            }
        }
    }
}
