//! The top-level `behaviour` section: per-principal behaviour baselines and
//! the anomaly signals policies read with `anomaly`. Parsing only; values are
//! checked when the settings are compiled (`behaviour::Settings::compile`).

use super::Dur;
use serde::Deserialize;
use std::time::Duration;

/// Behaviour baselines: each worker keeps, per caller (issuer, `sub` and
/// client; by address without a token), what it usually does, and scores
/// every MCP request on six signals in [0, 1]: `burst`, `new_tool`,
/// `enumeration`, `off_hours`, `new_network`, `denial_streak`. Policies test
/// them with `anomaly`; signals at `report_above` or more are written to the
/// audit record and counted (`portcullis_anomalies_total`). Off when absent.
/// Kept in memory across reloads, lost on restart.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BehaviourConfig {
    /// Callers kept per worker; the least recently active are forgotten
    /// beyond it (about 0.5 KiB each, plus 24 bytes a tool).
    #[serde(default = "default_max_principals")]
    pub max_principals: usize,
    /// A caller is new until it has made this many requests and was first
    /// seen `warmup` ago: until then `burst`, `new_tool` and `new_network`
    /// stay 0 while its baseline is learnt.
    #[serde(default = "default_warmup_requests")]
    pub warmup_requests: u64,
    /// See `warmup_requests`.
    #[serde(default = "default_warmup")]
    pub warmup: Dur,
    /// Signals scoring at least this (0 to 1) are written to the request's
    /// audit record and counted in `portcullis_anomalies_total`.
    #[serde(default = "default_report_above")]
    pub report_above: f64,
    /// `burst`: the caller's request rate against its own usual rate.
    #[serde(default)]
    pub burst: BurstConfig,
    /// `enumeration`: distinct resources and prompts read in a short window.
    #[serde(default)]
    pub enumeration: EnumerationConfig,
    /// `off_hours`: requests outside these hours score 1 (0.5 when the
    /// caller was active at that hour on an earlier day). Absent:
    /// `off_hours` is always 0.
    #[serde(default)]
    pub working_hours: Option<WorkingHours>,
    /// `denial_streak`: failed requests in a row that score 1 (fewer score
    /// in proportion): denied or stepped up, an upstream 5xx or JSON-RPC
    /// error, a refused token. A request answered well ends the streak.
    #[serde(default = "default_denial_streak")]
    pub denial_streak: u32,
}

/// `burst`: the requests in the last `window` against the caller's usual
/// count per `window` (learnt from earlier active windows), and the calls
/// of each tool against the caller's usual count for that tool.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    /// The sliding window (at least 4 s).
    #[serde(default = "default_window")]
    pub window: Dur,
    /// How many times the usual rate scores 1 (more than 1); the score
    /// grows linearly from 0 at the usual rate.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Fewer requests than this in the window never score.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
}

/// `enumeration`: distinct resource URIs and prompt names in a sliding window.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnumerationConfig {
    /// The sliding window (at least 2 s).
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Distinct items in the window that score 1 (fewer score in
    /// proportion); from 2 to 500.
    #[serde(default = "default_distinct")]
    pub distinct: u32,
}

/// Working hours for `off_hours`, at a fixed offset from UTC.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkingHours {
    /// `mon` .. `sun`.
    #[serde(default = "default_days")]
    pub days: Vec<String>,
    /// `"HH:MM-HH:MM"`, end exclusive (may wrap past midnight).
    #[serde(default = "default_hours")]
    pub hours: String,
    /// The offset from UTC the hours are in: `+02:00`, `-05:30`, `Z`.
    #[serde(default = "default_offset")]
    pub utc_offset: String,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            window: default_window(),
            factor: default_factor(),
            min_requests: default_min_requests(),
        }
    }
}

impl Default for EnumerationConfig {
    fn default() -> Self {
        EnumerationConfig {
            window: default_window(),
            distinct: default_distinct(),
        }
    }
}

fn default_max_principals() -> usize {
    10_000
}
fn default_warmup_requests() -> u64 {
    100
}
fn default_warmup() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_report_above() -> f64 {
    0.8
}
fn default_denial_streak() -> u32 {
    5
}
fn default_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_factor() -> f64 {
    10.0
}
fn default_min_requests() -> u32 {
    20
}
fn default_distinct() -> u32 {
    100
}
fn default_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"].map(String::from).into()
}
fn default_hours() -> String {
    "08:00-18:00".into()
}
fn default_offset() -> String {
    "+00:00".into()
}
