//! The policy language as written in YAML: rule lists and condition trees.
//! Parsing only; meaning is checked by `compile`.

use serde::Deserialize;
use serde_json::Value;

/// One rule: exactly one of `allow`, `deny` or `use`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub allow: Option<Condition>,
    #[serde(default)]
    pub deny: Option<Condition>,
    /// Include the named shared policy's rules here.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Shown to the caller when this rule denies.
    #[serde(default)]
    pub message: Option<String>,
}

/// A condition: `and`, `or`, `not`, or one criterion. Exactly one key may be set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub and: Option<Vec<Condition>>,
    #[serde(default)]
    pub or: Option<Vec<Condition>>,
    #[serde(default)]
    pub not: Option<Box<Condition>>,
    #[serde(default)]
    pub claim: Option<ClaimTest>,
    #[serde(default)]
    pub groups: Option<SetTest>,
    #[serde(default)]
    pub email: Option<EmailTest>,
    #[serde(default)]
    pub scope: Option<SetTest>,
    #[serde(default)]
    pub client_id: Option<EqTest>,
    #[serde(default)]
    pub issuer: Option<EqTest>,
    #[serde(default)]
    pub mcp_method: Option<NameTest>,
    #[serde(default)]
    pub mcp_tool: Option<ToolTest>,
    #[serde(default)]
    pub mcp_resource: Option<ResourceTest>,
    #[serde(default)]
    pub mcp_prompt: Option<NameTest>,
    #[serde(default)]
    pub argument: Option<ArgumentTest>,
    #[serde(default)]
    pub source_ip: Option<SourceIpTest>,
    #[serde(default)]
    pub time: Option<TimeTest>,
    #[serde(default)]
    pub header: Option<HeaderTest>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitTest>,
}

/// One string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimTest {
    pub path: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<Value>>,
    #[serde(default)]
    pub contains: Option<Value>,
    #[serde(default)]
    pub matches: Option<String>,
}

/// `groups` and `scope`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTest {
    #[serde(default)]
    pub has: Option<String>,
    #[serde(default)]
    pub any: Option<Vec<String>>,
    #[serde(default)]
    pub all: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTest {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    #[serde(default)]
    pub ends_with: Option<OneOrMany>,
    #[serde(default)]
    pub matches: Option<String>,
}

/// `client_id` and `issuer`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EqTest {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
}

/// `mcp_method` and `mcp_prompt`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameTest {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolTest {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
    #[serde(default)]
    pub matches: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceTest {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
    #[serde(default)]
    pub glob: Option<OneOrMany>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArgumentTest {
    /// RFC 6901 JSON pointer into `params.arguments`.
    pub pointer: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<Value>>,
    #[serde(default)]
    pub matches: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIpTest {
    #[serde(rename = "in")]
    pub in_: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeTest {
    /// `mon` .. `sun`; absent means every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// `"HH:MM-HH:MM"` windows (end exclusive, may wrap past midnight).
    #[serde(default)]
    pub hours: Option<OneOrMany>,
    /// IANA zone; absent means UTC.
    #[serde(default)]
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderTest {
    pub name: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    #[serde(default)]
    pub matches: Option<String>,
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTest {
    pub requests: u64,
    /// `30s`, `1m`, `2h`, or a number of seconds.
    pub per: Period,
    #[serde(default)]
    pub key: RateKey,
}

#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Period {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    #[default]
    Principal,
    PrincipalAndTool,
}
