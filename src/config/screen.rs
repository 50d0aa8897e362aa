//! The per-route `screen` section: which content detectors run on a route's
//! JSON-RPC messages, its own named regular expressions, and what happens
//! when one matches. Parsing only; names and regexes are checked when the
//! detectors are compiled (`screen::Screen::compile`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The built-in detector groups, as `detectors` names them by default.
pub const GROUPS: [&str; 3] = ["secrets", "pii", "injection"];

/// Content screening: every JSON string value of a message (object keys are
/// not screened) is scanned for secrets (`private_key`, `aws_key`,
/// `github_token`, `slack_token`, `stripe_key`, `jwt`, `bearer`), personal
/// data (`email`, `card_number` with a Luhn check, `iban` with its check
/// digits), injection markers (`unicode_tags`, `bidi_control`, `zero_width`,
/// `ansi_escape`, `override_phrase`) and the `custom` expressions. Findings
/// name the detector, the value's JSON pointer and a count, never the
/// matched text.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScreenConfig {
    /// Built-in detectors to run, by name or group (`secrets`, `pii`,
    /// `injection`); `[]` runs the `custom` ones only.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<String>,
    /// Named regular expressions (Rust `regex` syntax, unanchored) run on
    /// every string value besides the built-ins; their group is `custom`.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// The action per detector or group name (`custom` included); a
    /// detector's own entry wins over its group's. Unnamed: `audit`.
    #[serde(default)]
    pub actions: BTreeMap<String, Action>,
    /// The least action for a secret (the `secrets` group) found in a
    /// request, such as a tool's arguments carrying a key out: the more
    /// severe of this and the secret's `actions` entry applies.
    #[serde(default = "default_arguments")]
    pub arguments: Action,
}

impl Default for ScreenConfig {
    fn default() -> Self {
        ScreenConfig {
            detectors: default_detectors(),
            custom: Vec::new(),
            actions: BTreeMap::new(),
            arguments: default_arguments(),
        }
    }
}

fn default_detectors() -> Vec<String> {
    GROUPS.iter().map(|g| g.to_string()).collect()
}

fn default_arguments() -> Action {
    Action::Block
}

/// A named regular expression screened for like a built-in detector.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    /// The detector's name in findings, actions and redaction markers:
    /// lowercase letters, digits and `_`, not a built-in's or a group's.
    pub name: String,
    /// The expression (Rust `regex` syntax; `(?i)` for case-insensitive).
    pub regex: String,
}

/// What a finding does to its message; ordered from least to most severe.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Deserialize,
    Serialize,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the finding (detector, JSON pointer, count); the message
    /// passes unchanged.
    #[default]
    Audit,
    /// Replace each match inside its JSON string with
    /// `[REDACTED:<detector>]`; the message keeps its shape and `id`.
    Redact,
    /// Refuse the message with a JSON-RPC error naming the detector (never
    /// the matched value).
    Block,
}
