//! Per-tool windows: each tool a caller has called keeps its own `burst`
//! window (four buckets on the caller's bucket clock) and its own usual
//! count, so a burst on one tool scores even when the caller's total rate
//! looks ordinary. Kept in a sorted boxed slice in the profile's hot part:
//! a tool call reads one more cache line, no allocation but for a new tool.

use super::profile::{fold, BUCKETS};
use super::Settings;

/// One tool of one caller on one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Tool {
    /// The tool name's hash (seeded, the same on every core).
    pub(super) hash: u32,
    /// The bucket `counts` were last counted in (low bits of its number).
    bucket: u32,
    counts: [u16; BUCKETS],
    /// Calls of this tool per window, usually.
    pub(super) baseline: f32,
    /// Finished active buckets folded into `baseline`.
    folded: u16,
    /// Not counted in yet, or counted only in the bucket it was learnt in
    /// (a partial bucket: not folded).
    fresh: bool,
}

impl Tool {
    pub(super) fn new(hash: u32) -> Tool {
        Tool {
            hash,
            bucket: 0,
            counts: [0; BUCKETS],
            baseline: 0.0,
            folded: 0,
            fresh: true,
        }
    }

    /// Count one call in `bucket` (the caller's bucket number, never
    /// smaller than the last) and score this tool's burst.
    pub(super) fn count(&mut self, s: &Settings, bucket: i64, warming: bool) -> f32 {
        let b = bucket as u32;
        if self.counts == [0; BUCKETS] && self.fresh {
            self.bucket = b;
        } else if b != self.bucket {
            let done = self.counts[self.bucket as usize % BUCKETS];
            if done > 0 && !self.fresh {
                let mut folded = u32::from(self.folded);
                self.baseline = fold(self.baseline, &mut folded, u32::from(done));
                self.folded = folded.min(u32::from(u16::MAX)) as u16;
            }
            self.fresh = false;
            let gap = b.wrapping_sub(self.bucket).min(BUCKETS as u32);
            for k in 1..=gap {
                self.counts[self.bucket.wrapping_add(k) as usize % BUCKETS] = 0;
            }
            self.bucket = b;
        }
        // Summed before the count: a wide load of what was just stored
        // narrowly would wait for the store.
        let recent = self.counts.iter().map(|c| u32::from(*c)).sum::<u32>() + 1;
        let c = &mut self.counts[b as usize % BUCKETS];
        *c = c.saturating_add(1);
        if warming {
            return 0.0;
        }
        if recent < s.min_requests || self.baseline == 0.0 {
            return 0.0;
        }
        let usual = self.baseline.max(1.0);
        ((recent as f32 / usual - 1.0) / (s.factor - 1.0)).clamp(0.0, 1.0)
    }

    /// The bucket size changed: the window starts over, the usual count is
    /// learnt again.
    pub(super) fn restart(&mut self) {
        *self = Tool::new(self.hash);
    }
}

/// Learn `hash` into a caller's sorted tools (up to `max`); its index, or
/// `None` when it is not kept. `new` tells whether it was not known.
pub(super) fn learn(tools: &mut Box<[Tool]>, hash: u32, max: usize) -> (Option<usize>, bool) {
    match tools.binary_search_by_key(&hash, |t| t.hash) {
        Ok(i) => (Some(i), false),
        Err(_) if tools.len() >= max => (None, true),
        Err(at) => {
            let mut v = std::mem::take(tools).into_vec();
            v.insert(at, Tool::new(hash));
            *tools = v.into_boxed_slice();
            (Some(at), true)
        }
    }
}
