//! The per-route `pin` section: which definitions an upstream serves are
//! pinned (tools, prompts, resource templates), and whether a change is
//! only recorded or held back until an operator approves it. Parsing only.

use serde::{Deserialize, Serialize};

/// Tool pinning: portcullis keeps, per route, the definitions the upstream
/// serves (a canonical SHA-256 per item) in the store, and notices when
/// they change (a "rug pull": a tool's description rewritten after it was
/// trusted). Each kind is off unless named. Needs `mcp` and the `store`
/// section. `portcullis tools diff ROUTE` shows what changed,
/// `portcullis tools approve ROUTE [NAME]` approves it.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// Tools (`tools/list`, `tools/call`).
    #[serde(default)]
    pub tools: PinMode,
    /// Prompts (`prompts/list`, `prompts/get`).
    #[serde(default)]
    pub prompts: PinMode,
    /// Resource templates (`resources/templates/list`).
    #[serde(default)]
    pub resource_templates: PinMode,
}

/// What pinning does for one kind of definition.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// Not pinned.
    #[default]
    Off,
    /// The first definitions seen are stored; every later change (added,
    /// removed, changed, with which fields) is audited and becomes the
    /// recorded one. Nothing is hidden.
    Record,
    /// As `record`, but a new or changed item, or one whose description
    /// carries injection markers, is hidden from list answers and its calls
    /// (`tools/call`, `prompts/get`) refused until an operator approves it.
    /// The first definitions seen are trusted.
    Enforce,
}
