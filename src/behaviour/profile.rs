//! One caller's baseline and the signals scored from it.

use super::{Event, Outcome, Scores, Settings, Signal};
use std::net::IpAddr;

/// Buckets of the `burst` window.
const BUCKETS: usize = 4;
/// Words of one resource sketch (512 bits).
pub(super) const WORDS: usize = 8;
const BITS: u32 = (WORDS * 64) as u32;
/// Weight of a finished bucket in the usual rate.
const ALPHA: f32 = 0.1;
/// Tools and networks remembered per caller; beyond, a tool is still new
/// each time (and scored), a network replaces the oldest.
pub(super) const MAX_TOOLS: usize = 256;
pub(super) const MAX_NETWORKS: usize = 16;

/// What other cores reported of this caller (see `merge`).
#[derive(Debug, Default, Clone)]
pub(super) struct Others {
    pub requests: u64,
    pub recent: u32,
    pub baseline: f32,
    pub bits: [u64; WORDS],
}

/// One caller's baseline on one core.
#[derive(Debug, Clone)]
pub struct Profile {
    pub(super) first_seen: i64,
    pub(super) last_seen: i64,
    pub(super) requests: u64,
    /// `burst`: requests per bucket, the current bucket's number, the bucket
    /// size they were counted in, and the usual requests per window.
    buckets: [u32; BUCKETS],
    bucket: i64,
    bucket_secs: i64,
    pub(super) baseline: f32,
    /// `enumeration`: one sketch per half window (`half % 2` is current).
    halves: [[u64; WORDS]; 2],
    half: i64,
    half_secs: i64,
    /// Until this time (and with these settings) `advance` has nothing to do.
    next: i64,
    offset: i64,
    /// Distinct items estimated from the sketches (-1: to be counted again).
    distinct: f32,
    /// Learnt tools' name hashes, sorted.
    pub(super) tools: Vec<u32>,
    pub(super) networks: Vec<u64>,
    /// Local hours of the day active on earlier days, and today.
    pub(super) hours_before: u32,
    hours_today: u32,
    day: i64,
    streak: u32,
    /// When a `step_up` rule refused this caller (0: it owes none), and the
    /// last such time a newer token settled.
    pub(super) step_up_at: i64,
    pub(super) forgiven: i64,
    /// Finished active buckets folded into `baseline` (its first ones are
    /// averaged plainly).
    folded: u32,
    pub(super) others: Others,
}

impl Profile {
    pub fn new(now: i64) -> Profile {
        Profile {
            first_seen: now,
            last_seen: now,
            requests: 0,
            buckets: [0; BUCKETS],
            bucket: 0,
            bucket_secs: 0,
            baseline: 0.0,
            halves: [[0; WORDS]; 2],
            half: 0,
            half_secs: 0,
            next: i64::MIN,
            offset: 0,
            distinct: 0.0,
            tools: Vec::new(),
            networks: Vec::new(),
            hours_before: 0,
            hours_today: 0,
            day: i64::MIN,
            streak: 0,
            step_up_at: 0,
            forgiven: 0,
            folded: 0,
            others: Others::default(),
        }
    }

    /// Requests counted on this core.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Count one request and score it.
    pub fn observe(
        &mut self,
        s: &Settings,
        ev: &Event<'_>,
        tool: u32,
        item: Option<u32>,
    ) -> Scores {
        let now = ev.now.max(self.last_seen);
        self.last_seen = now;
        let mut pending = false;
        if self.step_up_at != 0 {
            let issued = ev.principal.and_then(super::token_time);
            if issued.is_some_and(|t| t > self.step_up_at) {
                self.forgive();
            } else {
                pending = true;
            }
        }
        let warming = self.requests + self.others.requests < s.warmup_requests
            || now - self.first_seen < s.warmup_secs;
        self.requests += 1;
        self.advance(s, now);
        let b = self.bucket as usize % BUCKETS;
        self.buckets[b] = self.buckets[b].saturating_add(1);
        if let Some(bit) = item {
            let (w, m) = ((bit % BITS) as usize / 64, 1u64 << (bit % 64));
            let cur = &mut self.halves[(self.half % 2) as usize];
            if cur[w] & m == 0 {
                cur[w] |= m;
                self.distinct = -1.0;
            }
        }
        let mut v = [0f32; 6];
        v[Signal::Burst.index()] = if warming { 0.0 } else { self.burst(s) };
        v[Signal::NewTool.index()] = match ev.tool {
            Some(_) => self.learn_tool(tool, warming),
            None => 0.0,
        };
        v[Signal::Enumeration.index()] = (self.distinct() / s.distinct as f32).min(1.0);
        v[Signal::OffHours.index()] = self.hours(s, now);
        v[Signal::NewNetwork.index()] = self.learn_network(network(ev.ip), warming);
        v[Signal::DenialStreak.index()] = (self.streak as f32 / s.denial_streak as f32).min(1.0);
        Scores {
            values: v,
            step_up_pending: pending,
        }
    }

    /// How the request ended.
    pub fn settle(&mut self, outcome: Outcome, now: i64) {
        match outcome {
            Outcome::Allowed => self.streak = 0,
            Outcome::Denied => self.streak = self.streak.saturating_add(1),
            Outcome::SteppedUp => {
                self.streak = self.streak.saturating_add(1);
                if self.step_up_at == 0 {
                    self.step_up_at = now;
                }
            }
        }
    }

    /// A fresh token after a step-up: the windows that raised it start over.
    fn forgive(&mut self) {
        self.forgiven = self.step_up_at;
        self.step_up_at = 0;
        self.streak = 0;
        self.buckets = [0; BUCKETS];
        self.halves = [[0; WORDS]; 2];
        self.others.recent = 0;
        self.others.bits = [0; WORDS];
        self.distinct = 0.0;
    }

    /// Move the windows to `now`: finished buckets feed the usual rate,
    /// buckets and halves out of the window are emptied.
    pub(super) fn advance(&mut self, s: &Settings, now: i64) {
        let offset = s.hours.map_or(0, |h| h.offset_secs);
        if now < self.next
            && (self.bucket_secs, self.half_secs, self.offset)
                == (s.bucket_secs, s.half_secs, offset)
        {
            return;
        }
        let bucket = now.div_euclid(s.bucket_secs);
        if self.bucket_secs != s.bucket_secs {
            (self.bucket_secs, self.bucket, self.buckets) = (s.bucket_secs, bucket, [0; BUCKETS]);
            self.baseline = 0.0;
        }
        if bucket > self.bucket {
            let done = self.buckets[(self.bucket as usize) % BUCKETS];
            // Only active buckets (the usual rate while working), and not
            // the caller's first (it began part way through).
            if done > 0 && self.requests > u64::from(done) {
                let mut rate = (done as usize * BUCKETS) as f32;
                if self.folded > 0 {
                    // A burst must not teach the usual rate at once.
                    rate = rate.min(2.0 * self.baseline);
                }
                // A plain mean of the first ones, then a moving average.
                self.folded = self.folded.saturating_add(1);
                let alpha = (1.0 / self.folded as f32).max(ALPHA);
                self.baseline += alpha * (rate - self.baseline);
            }
            let gap = (bucket - self.bucket).min(BUCKETS as i64);
            for k in 1..=gap {
                self.buckets[((self.bucket + k) as usize) % BUCKETS] = 0;
            }
            self.bucket = bucket;
        }
        let half = now.div_euclid(s.half_secs);
        if self.half_secs != s.half_secs || half > self.half + 1 {
            (self.half_secs, self.half, self.halves) = (s.half_secs, half, [[0; WORDS]; 2]);
            self.distinct = -1.0;
        } else if half == self.half + 1 {
            self.halves[(half % 2) as usize] = [0; WORDS];
            self.half = half;
            self.distinct = -1.0;
        }
        let day = (now + offset).div_euclid(86_400);
        if day != self.day {
            self.hours_before |= self.hours_today;
            (self.hours_today, self.day) = (0, day);
        }
        self.offset = offset;
        self.next = ((self.bucket + 1) * s.bucket_secs)
            .min((self.half + 1) * s.half_secs)
            .min((day + 1) * 86_400 - offset);
    }

    /// Requests in the window (all cores) against the usual count.
    fn burst(&self, s: &Settings) -> f32 {
        let recent = self.recent() + self.others.recent;
        if recent < s.min_requests || self.baseline + self.others.baseline == 0.0 {
            // Too few to tell, or no finished bucket to compare with yet.
            return 0.0;
        }
        let usual = (self.baseline + self.others.baseline).max(1.0);
        ((recent as f32 / usual - 1.0) / (s.factor - 1.0)).clamp(0.0, 1.0)
    }

    pub(super) fn recent(&self) -> u32 {
        self.buckets.iter().sum()
    }

    /// The local sketch of the window (both halves).
    pub(super) fn sketch(&self) -> [u64; WORDS] {
        std::array::from_fn(|i| self.halves[0][i] | self.halves[1][i])
    }

    /// Distinct items in the window, all cores (linear counting).
    fn distinct(&mut self) -> f32 {
        if self.distinct < 0.0 {
            let ones: u32 = (0..WORDS)
                .map(|i| (self.halves[0][i] | self.halves[1][i] | self.others.bits[i]).count_ones())
                .sum();
            let zeros = (BITS - ones).max(1) as f32;
            self.distinct = BITS as f32 * (BITS as f32 / zeros).ln();
        }
        self.distinct
    }

    /// The sketch changed from outside (a merge).
    pub(super) fn recount(&mut self) {
        self.distinct = -1.0;
    }

    fn learn_tool(&mut self, tool: u32, warming: bool) -> f32 {
        let Err(at) = self.tools.binary_search(&tool) else {
            return 0.0;
        };
        if self.tools.len() < MAX_TOOLS {
            self.tools.insert(at, tool);
        }
        if warming {
            0.0
        } else {
            1.0
        }
    }

    fn learn_network(&mut self, net: u64, warming: bool) -> f32 {
        if let Some(i) = self.networks.iter().position(|n| *n == net) {
            // Most recent last: the oldest goes first when full.
            self.networks[i..].rotate_left(1);
            return 0.0;
        }
        if self.networks.len() >= MAX_NETWORKS {
            self.networks.remove(0);
        }
        self.networks.push(net);
        if warming {
            0.0
        } else {
            1.0
        }
    }

    /// `off_hours`: 1 outside working hours, 0.5 when this caller was
    /// active at this hour on an earlier day; learns the hour.
    fn hours(&mut self, s: &Settings, now: i64) -> f32 {
        let Some(h) = s.hours else { return 0.0 };
        let hour = (now + h.offset_secs).rem_euclid(86_400) / 3600;
        let bit = 1u32 << hour;
        self.hours_today |= bit;
        if h.within(now) {
            0.0
        } else if self.hours_before & bit != 0 {
            0.5
        } else {
            1.0
        }
    }
}

/// The network an address is in: its /24 (IPv4, IPv4-mapped too) or /48.
pub(super) fn network(ip: IpAddr) -> u64 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => (1 << 40) | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => (2 << 48) | (u128::from(v6) >> 80) as u64,
    }
}
