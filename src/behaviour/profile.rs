//! One caller's baseline and the signals scored from it, split for the
//! cache: the part every request needs inline in the table's slab, the rest
//! behind one pointer.

use super::tool::Tool;
use super::{Event, Outcome, Scores, Settings, Signal};
use std::net::IpAddr;

/// Buckets of the `burst` window.
pub(super) const BUCKETS: usize = 4;
/// Words of one resource sketch (512 bits).
pub(super) const WORDS: usize = 8;
const BITS: u32 = (WORDS * 64) as u32;
/// Weight of a finished bucket in the usual rate.
const ALPHA: f32 = 0.1;
/// Tools and networks remembered per caller; beyond, a tool is still new
/// each time (and scored, without a window of its own), a network replaces
/// the oldest.
pub(super) const MAX_TOOLS: usize = 256;
pub(super) const MAX_NETWORKS: usize = 16;

/// What other cores reported of this caller (see `merge`); their sketch
/// is in [`Cold::bits`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Others {
    pub requests: u64,
    pub recent: u32,
    pub baseline: f32,
}

/// One caller's baseline on one core: the part every request reads and
/// writes, two cache lines in the table's slab. What only some requests
/// need is behind `cold`; the tools a `tools/call` counts in are behind
/// `tools`.
#[repr(align(64))]
#[derive(Debug, Clone)]
pub struct Profile {
    pub(super) key: u64,
    pub(super) cold: Box<Cold>,
    /// Learnt tools with their windows, sorted by hash.
    pub(super) tools: Box<[Tool]>,
    pub(super) last_seen: i64,
    /// Until this time `advance` has nothing to do (`i64::MIN`: the
    /// settings changed).
    pub(super) next: i64,
    /// `burst`: requests per bucket, the current bucket's number, and the
    /// usual requests per window.
    buckets: [u32; BUCKETS],
    bucket: i64,
    pub(super) baseline: f32,
    pub(super) requests: u64,
    pub(super) others: Others,
    /// Requests that failed in a row (denied, stepped up, an upstream
    /// error, an authentication failure) with no good answer since.
    streak: u32,
    /// Local hours of the day active on earlier days, and today.
    pub(super) hours_before: u32,
    hours_today: u32,
    /// Distinct items estimated from the sketches (-1: to be counted again).
    distinct: f32,
    /// Warmed up (never warming again).
    warm: bool,
    /// A `step_up` rule refused this caller (`cold.step_up_at` says when).
    owes: bool,
    /// The network of the last request (0: none yet).
    network: u64,
}

/// The rest of a caller's baseline, read when a request needs it.
#[derive(Debug, Clone)]
pub(super) struct Cold {
    pub first_seen: i64,
    /// The bucket and half sizes and UTC offset the windows were kept in.
    bucket_secs: i64,
    half_secs: i64,
    offset: i64,
    /// Finished active buckets folded into `baseline` (its first ones are
    /// averaged plainly).
    folded: u32,
    /// `enumeration`: one sketch per half window (`half % 2` is current).
    halves: [[u64; WORDS]; 2],
    half: i64,
    /// The other cores' sketch of the window.
    pub bits: [u64; WORDS],
    /// Most recent last.
    pub networks: Vec<u64>,
    day: i64,
    /// When a `step_up` rule refused this caller (0: it owes none), and the
    /// last such time a newer token settled.
    pub step_up_at: i64,
    pub forgiven: i64,
}

const _: () = assert!(std::mem::size_of::<Profile>() == 128);

/// Fold a finished active bucket of `done` requests into a usual count per
/// window: a plain mean of the first ones, then a moving average; a burst
/// must not teach the usual rate at once (at most twice it).
pub(super) fn fold(baseline: f32, folded: &mut u32, done: u32) -> f32 {
    let mut rate = (done as usize * BUCKETS) as f32;
    if *folded > 0 {
        rate = rate.min(2.0 * baseline);
    }
    *folded = folded.saturating_add(1);
    let alpha = (1.0 / *folded as f32).max(ALPHA);
    baseline + alpha * (rate - baseline)
}

impl Profile {
    pub fn new(key: u64, now: i64) -> Profile {
        Profile {
            key,
            cold: Box::new(Cold {
                first_seen: now,
                bucket_secs: 0,
                half_secs: 0,
                offset: 0,
                folded: 0,
                halves: [[0; WORDS]; 2],
                half: 0,
                bits: [0; WORDS],
                networks: Vec::new(),
                day: i64::MIN,
                step_up_at: 0,
                forgiven: 0,
            }),
            tools: Box::default(),
            last_seen: now,
            next: i64::MIN,
            buckets: [0; BUCKETS],
            bucket: 0,
            baseline: 0.0,
            requests: 0,
            others: Others::default(),
            streak: 0,
            hours_before: 0,
            hours_today: 0,
            distinct: 0.0,
            warm: false,
            owes: false,
            network: 0,
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
        tool: Option<u32>,
        item: Option<u32>,
    ) -> Scores {
        let now = ev.now.max(self.last_seen);
        self.last_seen = now;
        let pending = self.owes && self.still_owes(ev);
        let warming = !self.warm && self.warming(s, now);
        self.requests += 1;
        if now >= self.next {
            self.advance(s, now);
        }
        let b = self.bucket as usize % BUCKETS;
        // Summed before the count: a wide load of what was just stored
        // narrowly would wait for the store.
        let recent = self.recent().saturating_add(1);
        self.buckets[b] = self.buckets[b].saturating_add(1);
        if let Some(bit) = item {
            self.sketch_item(bit);
        }
        let mut v = [0f32; 6];
        v[Signal::Burst.index()] = if warming { 0.0 } else { self.burst(s, recent) };
        if let Some(t) = tool {
            let (new, burst) = self.call(s, t, warming);
            v[Signal::NewTool.index()] = new;
            v[Signal::Burst.index()] = v[Signal::Burst.index()].max(burst);
        }
        v[Signal::Enumeration.index()] = (self.distinct() / s.distinct as f32).min(1.0);
        v[Signal::OffHours.index()] = self.hours(s, now);
        let net = network(ev.ip);
        if net != self.network {
            self.network = net;
            v[Signal::NewNetwork.index()] = learn_network(&mut self.cold.networks, net, warming);
        }
        v[Signal::DenialStreak.index()] = (self.streak as f32 / s.denial_streak as f32).min(1.0);
        Scores {
            values: v,
            step_up_pending: pending,
        }
    }

    /// Whether this caller is still new (and learning); once not, never
    /// again.
    fn warming(&mut self, s: &Settings, now: i64) -> bool {
        let warming = self.requests + self.others.requests < s.warmup_requests
            || now - self.cold.first_seen < s.warmup_secs;
        self.warm = !warming;
        warming
    }

    /// A step-up is owed: settled by a token issued since (`auth_time`,
    /// else `iat`), else still pending.
    fn still_owes(&mut self, ev: &Event<'_>) -> bool {
        let issued = ev.principal.and_then(super::token_time);
        if issued.is_some_and(|t| t > self.cold.step_up_at) {
            self.forgive();
            false
        } else {
            true
        }
    }

    fn sketch_item(&mut self, bit: u32) {
        let (w, m) = ((bit % BITS) as usize / 64, 1u64 << (bit % 64));
        let cold = &mut *self.cold;
        let cur = &mut cold.halves[(cold.half % 2) as usize];
        if cur[w] & m == 0 {
            cur[w] |= m;
            self.distinct = -1.0;
        }
    }

    /// A `tools/call` of the tool hashed `hash`: `new_tool`, and the
    /// tool's own `burst`.
    fn call(&mut self, s: &Settings, hash: u32, warming: bool) -> (f32, f32) {
        let (at, new) = super::tool::learn(&mut self.tools, hash, MAX_TOOLS);
        let burst = at.map_or(0.0, |i| self.tools[i].count(s, self.bucket, warming));
        (if new && !warming { 1.0 } else { 0.0 }, burst)
    }

    /// How the request ended.
    pub fn settle(&mut self, outcome: Outcome, now: i64) {
        match outcome {
            Outcome::Answered => self.streak = 0,
            Outcome::Denied | Outcome::UpstreamError | Outcome::AuthFailed => {
                self.streak = self.streak.saturating_add(1)
            }
            Outcome::SteppedUp => {
                self.streak = self.streak.saturating_add(1);
                if !self.owes {
                    self.owes = true;
                    // Later than any settled one, even if the clock went back.
                    self.cold.step_up_at = now.max(self.cold.forgiven + 1);
                }
            }
        }
    }

    /// When a `step_up` rule refused this caller (0: it owes none).
    pub(super) fn step_up_at(&self) -> i64 {
        if self.owes {
            self.cold.step_up_at
        } else {
            0
        }
    }

    /// Another core demanded a step-up at `at`: it holds here too, unless a
    /// newer token already settled it here.
    pub(super) fn owe(&mut self, at: i64) {
        if at > self.step_up_at().max(self.cold.forgiven) {
            self.owes = true;
            self.cold.step_up_at = at;
        }
    }

    /// A fresh token after a step-up: the windows that raised it start over.
    fn forgive(&mut self) {
        let at = self.cold.step_up_at;
        self.forgive_to(at);
    }

    /// A newer token settled the step-up demanded at `at` (here or on
    /// another core): it and any older one are settled here, and the
    /// windows start over. Nothing when this core saw it settled already.
    pub(super) fn forgive_to(&mut self, at: i64) {
        let cold = &mut *self.cold;
        if at <= cold.forgiven {
            return;
        }
        cold.forgiven = at;
        if cold.step_up_at <= at {
            cold.step_up_at = 0;
            self.owes = false;
        }
        self.streak = 0;
        self.buckets = [0; BUCKETS];
        cold.halves = [[0; WORDS]; 2];
        self.others.recent = 0;
        cold.bits = [0; WORDS];
        self.distinct = 0.0;
    }

    /// Move the windows to `now`: finished buckets feed the usual rate,
    /// buckets and halves out of the window are emptied.
    pub(super) fn advance(&mut self, s: &Settings, now: i64) {
        let offset = s.hours.map_or(0, |h| h.offset_secs);
        let cold = &mut *self.cold;
        let bucket = now.div_euclid(s.bucket_secs);
        if cold.bucket_secs != s.bucket_secs {
            (cold.bucket_secs, self.bucket, self.buckets) = (s.bucket_secs, bucket, [0; BUCKETS]);
            self.baseline = 0.0;
            self.tools.iter_mut().for_each(Tool::restart);
        }
        if bucket > self.bucket {
            let done = self.buckets[(self.bucket as usize) % BUCKETS];
            // Only active buckets (the usual rate while working), and not
            // the caller's first (it began part way through).
            if done > 0 && self.requests > u64::from(done) {
                self.baseline = fold(self.baseline, &mut cold.folded, done);
            }
            let gap = (bucket - self.bucket).min(BUCKETS as i64);
            for k in 1..=gap {
                self.buckets[((self.bucket + k) as usize) % BUCKETS] = 0;
            }
            self.bucket = bucket;
        }
        let half = now.div_euclid(s.half_secs);
        if cold.half_secs != s.half_secs || half > cold.half + 1 {
            (cold.half_secs, cold.half, cold.halves) = (s.half_secs, half, [[0; WORDS]; 2]);
            self.distinct = -1.0;
        } else if half == cold.half + 1 {
            cold.halves[(half % 2) as usize] = [0; WORDS];
            cold.half = half;
            self.distinct = -1.0;
        }
        let day = (now + offset).div_euclid(86_400);
        if day != cold.day {
            self.hours_before |= self.hours_today;
            (self.hours_today, cold.day) = (0, day);
        }
        cold.offset = offset;
        self.next = ((self.bucket + 1) * s.bucket_secs)
            .min((cold.half + 1) * s.half_secs)
            .min((day + 1) * 86_400 - offset);
    }

    /// Requests in the window (`recent` here, and on the other cores)
    /// against the usual count.
    fn burst(&self, s: &Settings, recent: u32) -> f32 {
        let recent = recent.saturating_add(self.others.recent);
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
        let h = &self.cold.halves;
        std::array::from_fn(|i| h[0][i] | h[1][i])
    }

    /// Distinct items in the window, all cores (linear counting).
    fn distinct(&mut self) -> f32 {
        if self.distinct < 0.0 {
            let c = &self.cold;
            let ones: u32 = (0..WORDS)
                .map(|i| (c.halves[0][i] | c.halves[1][i] | c.bits[i]).count_ones())
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

/// A network not the last one's: `new_network` unless learnt.
fn learn_network(networks: &mut Vec<u64>, net: u64, warming: bool) -> f32 {
    if let Some(i) = networks.iter().position(|n| *n == net) {
        // Most recent last: the oldest goes first when full.
        networks[i..].rotate_left(1);
        return 0.0;
    }
    if networks.len() >= MAX_NETWORKS {
        networks.remove(0);
    }
    networks.push(net);
    if warming {
        0.0
    } else {
        1.0
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
