//! Behaviour baselines: what each caller usually does, and six anomaly
//! signals scored in [0, 1] on every MCP request (see README "Behaviour
//! baselines").
//!
//! Design: per core, merged lock-free.
//! - Each worker owns a [`Baselines`] table (in its `Worker`, not in the
//!   snapshot, so it survives reloads): caller key → [`Profile`]. The request
//!   path does one hash lookup and updates plain fields; no lock, no atomic,
//!   no allocation but when a caller or one of its tools or networks is new.
//! - The table is bounded (`max_principals`): a new caller beyond it evicts
//!   the least recently active eighth of the table at once (amortised).
//! - Once a second each worker publishes a compact [`merge::Summary`] of its
//!   recently active callers (counts, baseline, resources seen, learnt tools,
//!   networks and hours) into its own `ArcSwap` slot of the [`Exchange`], and
//!   folds the other workers' summaries into its profiles. So a caller whose
//!   connections land on several cores is scored on its traffic on all of
//!   them, at most about a second late; nothing on the request path reads
//!   another core's data.
//! - Settings come from the snapshot on each request: a reload changes them
//!   (windows restart when their size changes) and keeps what was learnt.

mod merge;
mod profile;
mod table;
mod tool;

#[cfg(test)]
mod outcome_tests;
#[cfg(test)]
mod tests;

use crate::config::behaviour::{BehaviourConfig, WorkingHours};
use crate::principal::Principal;
use std::hash::BuildHasher;
use std::net::IpAddr;

pub use merge::Exchange;
pub use profile::Profile;
pub use table::Baselines;

/// An anomaly signal; its number indexes [`Scores::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Burst,
    NewTool,
    Enumeration,
    OffHours,
    NewNetwork,
    DenialStreak,
}

/// Every signal, in index order.
pub const SIGNALS: [Signal; 6] = [
    Signal::Burst,
    Signal::NewTool,
    Signal::Enumeration,
    Signal::OffHours,
    Signal::NewNetwork,
    Signal::DenialStreak,
];

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Burst => "burst",
            Signal::NewTool => "new_tool",
            Signal::Enumeration => "enumeration",
            Signal::OffHours => "off_hours",
            Signal::NewNetwork => "new_network",
            Signal::DenialStreak => "denial_streak",
        }
    }

    pub fn parse(name: &str) -> Option<Signal> {
        SIGNALS.into_iter().find(|s| s.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One request's scores, and whether its caller owes a step-up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    pub values: [f32; 6],
    /// A `step_up` rule refused this caller and it has not presented a token
    /// issued since (`iat`, or `auth_time` when present).
    pub step_up_pending: bool,
}

impl Scores {
    pub fn get(&self, s: Signal) -> f32 {
        self.values[s.index()]
    }

    /// The signals scoring at least `above`.
    pub fn raised(&self, above: f32) -> impl Iterator<Item = (Signal, f32)> + '_ {
        SIGNALS
            .into_iter()
            .map(|s| (s, self.get(s)))
            .filter(move |(_, v)| *v >= above && *v > 0.0)
    }
}

/// What one request tells the baseline.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The caller's key ([`Exchange::key`]).
    pub key: u64,
    pub now: i64,
    pub ip: IpAddr,
    /// The tool of a `tools/call`.
    pub tool: Option<&'a str>,
    /// The resource URI or prompt name read (for `enumeration`).
    pub item: Option<&'a str>,
    /// The caller (its token's `auth_time`/`iat` settle a step-up).
    pub principal: Option<&'a Principal>,
}

/// How a request ended, for `denial_streak` and `step_up`: a request
/// allowed by the policy is settled when its answer is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered without an error: the streak ends.
    Answered,
    Denied,
    SteppedUp,
    /// The upstream failed: a 5xx, no answer, or a JSON-RPC error.
    UpstreamError,
    /// A token was refused (invalid for the route, or short of a scope).
    AuthFailed,
}

/// The compiled `behaviour` section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_principals: usize,
    pub warmup_requests: u64,
    pub warmup_secs: i64,
    pub report_above: f32,
    /// `burst.window` / 4: the window is four buckets.
    pub bucket_secs: i64,
    pub factor: f32,
    pub min_requests: u32,
    /// `enumeration.window` / 2: the window is two halves.
    pub half_secs: i64,
    pub distinct: u32,
    pub hours: Option<Hours>,
    pub denial_streak: u32,
}

/// Working hours at a fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Bit 0 is Monday.
    pub days: u8,
    /// Minutes after local midnight; `end` exclusive, before `start` when
    /// the window wraps past midnight.
    pub start: u32,
    pub end: u32,
    pub offset_secs: i64,
}

impl Hours {
    /// Whether `now` is within the hours. The part of a window after
    /// midnight belongs to the day it started on.
    pub fn within(&self, now: i64) -> bool {
        let local = now + self.offset_secs;
        let day = (local.div_euclid(86_400) + 3).rem_euclid(7) as u8;
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&minute)
        } else {
            (on(day) && minute >= self.start) || (on((day + 6) % 7) && minute < self.end)
        }
    }
}

/// Largest `enumeration.distinct` (the 512-bit resource sketch counts about
/// 1500 distinct items before it fills).
const MAX_DISTINCT: u32 = 500;

impl Settings {
    /// Check and compile the section; errors name the option.
    pub fn compile(c: &BehaviourConfig) -> Result<Settings, Vec<String>> {
        let mut errs = Vec::new();
        let burst = c.burst.window.0.as_secs() as i64;
        if burst < 4 {
            errs.push("behaviour.burst.window: at least 4s".to_string());
        }
        if !(c.burst.factor > 1.0 && c.burst.factor <= 1e6) {
            errs.push(format!(
                "behaviour.burst.factor: {} is not above 1",
                c.burst.factor
            ));
        }
        let enumeration = c.enumeration.window.0.as_secs() as i64;
        if enumeration < 2 {
            errs.push("behaviour.enumeration.window: at least 2s".to_string());
        }
        if !(2..=MAX_DISTINCT).contains(&c.enumeration.distinct) {
            errs.push(format!(
                "behaviour.enumeration.distinct: {} is not from 2 to {MAX_DISTINCT}",
                c.enumeration.distinct
            ));
        }
        if !(0.0..=1.0).contains(&c.report_above) {
            errs.push(format!(
                "behaviour.report_above: {} is not from 0 to 1",
                c.report_above
            ));
        }
        if c.max_principals == 0 || c.max_principals > 10_000_000 {
            errs.push("behaviour.max_principals: from 1 to 10000000".to_string());
        }
        if c.denial_streak == 0 {
            errs.push("behaviour.denial_streak: at least 1".to_string());
        }
        let hours = match c.working_hours.as_ref().map(hours).transpose() {
            Ok(h) => h,
            Err(e) => {
                errs.push(format!("behaviour.working_hours: {e}"));
                None
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Settings {
            max_principals: c.max_principals,
            warmup_requests: c.warmup_requests,
            warmup_secs: c.warmup.0.as_secs() as i64,
            report_above: c.report_above as f32,
            bucket_secs: burst / 4,
            factor: c.burst.factor as f32,
            min_requests: c.burst.min_requests,
            half_secs: enumeration / 2,
            distinct: c.enumeration.distinct,
            hours,
            denial_streak: c.denial_streak,
        })
    }
}

fn hours(w: &WorkingHours) -> Result<Hours, String> {
    let mut days = 0u8;
    for d in &w.days {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        match names.iter().position(|n| n.eq_ignore_ascii_case(d)) {
            Some(i) => days |= 1 << i,
            None => return Err(format!("days: {d:?} is not mon .. sun")),
        }
    }
    if days == 0 {
        return Err("days: at least one day".into());
    }
    let bad = || format!("hours: {:?} is not HH:MM-HH:MM", w.hours);
    let (a, b) = w.hours.split_once('-').ok_or_else(bad)?;
    let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!("hours: {:?} is an empty window", w.hours));
    }
    let offset_secs = offset(&w.utc_offset)
        .ok_or_else(|| format!("utc_offset: {:?} is not +HH:MM, -HH:MM or Z", w.utc_offset))?;
    Ok(Hours {
        days,
        start,
        end,
        offset_secs,
    })
}

/// `HH:MM` (24:00 allowed as an end) in minutes.
fn minutes(t: &str) -> Option<u32> {
    let (h, m) = t.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// `+HH:MM`, `-HH:MM` or `Z` in seconds.
fn offset(t: &str) -> Option<i64> {
    let t = t.trim();
    if t == "Z" {
        return Some(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

impl Exchange {
    /// A caller's key: issuer, `sub` and client of its token; its address
    /// when it has none. Seeded per process, the same on every core; kept
    /// in the principal (a cached token's), so hashed once per token.
    pub fn key(&self, principal: Option<&Principal>, ip: IpAddr) -> u64 {
        let h = self.hasher();
        let Some(p) = principal else {
            return h.hash_one(ip);
        };
        if let Some(key) = p.baseline_key.get(self.id()) {
            return key;
        }
        let key = h.hash_one((&*p.issuer_name, &p.sub, p.client_id.as_deref()));
        p.baseline_key.set(self.id(), key);
        key
    }
}

/// When a caller's token was issued: `auth_time` (the user's last
/// authentication), else `iat`.
pub(crate) fn token_time(p: &Principal) -> Option<i64> {
    let claim = |n: &str| p.claims.get(n).and_then(serde_json::Value::as_i64);
    claim("auth_time").or_else(|| claim("iat"))
}
