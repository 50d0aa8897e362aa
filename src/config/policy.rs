//! The policy language as written in YAML: rule lists and condition trees.
//! Parsing only; meaning is checked by `compile`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One rule: exactly one of `allow`, `deny` or `use`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Allow a message when this condition is true (and no deny rule applies).
    #[serde(default)]
    pub allow: Option<Condition>,
    /// Deny a message when this condition is true or cannot be decided; deny
    /// wins over allow.
    #[serde(default)]
    pub deny: Option<Condition>,
    /// Refuse a message when this condition is true (like `deny`) with HTTP
    /// 401 `insufficient_user_authentication`: the user must authorize
    /// again. The rule then holds for that caller, whatever the condition,
    /// until it presents a token issued after the refusal (`auth_time`,
    /// else `iat`). Routes with `auth` only; no `rate_limit` inside.
    #[serde(default)]
    pub step_up: Option<Condition>,
    /// Include the named shared policy's rules (from `policies`) here; takes no
    /// `name` or `message`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// The rule's name in denials, audit records and logs; default
    /// `<route>#<n>` (`<policy>#<n>` in a shared policy), n counting from 1.
    #[serde(default)]
    pub name: Option<String>,
    /// Shown to the caller when this rule denies; default `denied by policy
    /// rule <name>`.
    #[serde(default)]
    pub message: Option<String>,
}

/// A condition: `and`, `or`, `not`, or one criterion. Exactly one key may be set.
/// Criteria on the token are false for a caller without one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// True when every condition in the list is (`and: []` is always true).
    #[serde(default)]
    pub and: Option<Vec<Condition>>,
    /// True when any condition in the list is.
    #[serde(default)]
    pub or: Option<Vec<Condition>>,
    /// True when the condition is false.
    #[serde(default)]
    pub not: Option<Box<Condition>>,
    /// Any claim of the caller's token, by dotted path.
    #[serde(default)]
    pub claim: Option<ClaimTest>,
    /// The token's `groups` claim.
    #[serde(default)]
    pub groups: Option<SetTest>,
    /// The token's `email` claim.
    #[serde(default)]
    pub email: Option<EmailTest>,
    /// The token's scopes (`scope`, else `scp`).
    #[serde(default)]
    pub scope: Option<SetTest>,
    /// The token's `client_id` claim (else `azp`).
    #[serde(default)]
    pub client_id: Option<EqTest>,
    /// The `name` of the `identity.issuers` entry that verified the token (not
    /// its `iss` URL).
    #[serde(default)]
    pub issuer: Option<EqTest>,
    /// The JSON-RPC method; empty for GET (listen stream) and DELETE (end
    /// session) requests.
    #[serde(default)]
    pub mcp_method: Option<NameTest>,
    /// The tool of a `tools/call` (`params.name`); false for other methods.
    #[serde(default)]
    pub mcp_tool: Option<ToolTest>,
    /// The URI of a `resources/*` request (`params.uri`); false for other
    /// methods.
    #[serde(default)]
    pub mcp_resource: Option<ResourceTest>,
    /// The prompt of a `prompts/get` (`params.name`); false for other methods.
    #[serde(default)]
    pub mcp_prompt: Option<NameTest>,
    /// A value in the message's `params.arguments`, by JSON pointer.
    #[serde(default)]
    pub argument: Option<ArgumentTest>,
    /// The client's IP address (the TCP peer's).
    #[serde(default)]
    pub source_ip: Option<SourceIpTest>,
    /// Days of the week and hours of the day in a time zone.
    #[serde(default)]
    pub time: Option<TimeTest>,
    /// A header of the HTTP request that carries the message.
    #[serde(default)]
    pub header: Option<HeaderTest>,
    /// What the route's content screening (`screen`) found in the message:
    /// true when a detector (or one of a group) matched anywhere in it.
    /// Only on routes with a `screen` section that runs the detector.
    #[serde(default)]
    pub content: Option<ContentTest>,
    /// The caller's request rate; deny rules only: true when over the limit
    /// (429 with `Retry-After`).
    #[serde(default)]
    pub rate_limit: Option<RateLimitTest>,
    /// The caller's behaviour anomaly scores (needs the top-level
    /// `behaviour` section).
    #[serde(default)]
    pub anomaly: Option<AnomalyTest>,
}

/// `anomaly`: true when any of `signals` scores above `above` for this
/// request (see `behaviour`); false for list filtering and on routes
/// whose requests are not scored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyTest {
    /// Any of `burst`, `new_tool`, `enumeration`, `off_hours`,
    /// `new_network`, `denial_streak` (at least one).
    pub signals: Vec<String>,
    /// The score (from 0 up to but not including 1) a signal must exceed.
    pub above: f64,
}

/// Schema only: the value a criterion compares with.
pub struct ScalarSchema;

impl schemars::JsonSchema for ScalarSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string, number or boolean (`null` in `in` lists); numbers compare by value (`1` equals `1.0`), strings exactly.",
            "type": ["string", "number", "boolean", "null"]
        })
    }
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

/// `claim`: one claim of the caller's token, found by `path`; exactly one of
/// `equals`, `in`, `contains`, `matches`. False when the claim is missing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimTest {
    /// Dotted path through the claims' objects: `org.team` is the `team`
    /// member of the `org` claim.
    pub path: String,
    /// True when the claim equals this value.
    #[serde(default)]
    #[schemars(with = "Option<ScalarSchema>")]
    pub equals: Option<Value>,
    /// True when the claim equals one of these values.
    #[serde(default, rename = "in")]
    #[schemars(with = "Option<Vec<ScalarSchema>>")]
    pub in_: Option<Vec<Value>>,
    /// True when the claim is a list holding this value, or a string
    /// containing this text.
    #[serde(default)]
    #[schemars(with = "Option<ScalarSchema>")]
    pub contains: Option<Value>,
    /// True when the claim is a string matching this regular expression
    /// (unanchored: write `^...$` to match it whole).
    #[serde(default)]
    pub matches: Option<String>,
}

/// `groups` (the token's `groups` claim: a string or a list) and `scope` (its
/// `scope` claim split on spaces, else its `scp` list); exactly one key.
/// Values compare exactly, case included.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTest {
    /// True when the set holds this value.
    #[serde(default)]
    pub has: Option<String>,
    /// True when the set holds at least one of these.
    #[serde(default)]
    pub any: Option<Vec<String>>,
    /// True when the set holds every one of these.
    #[serde(default)]
    pub all: Option<Vec<String>>,
}

/// `email`: the token's `email` claim; exactly one key. False without one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTest {
    /// True when the address is this one, ignoring ASCII case.
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the address is one of these, ignoring ASCII case.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// True when the address ends with this suffix (or one of these), ignoring
    /// ASCII case: `@example.com`.
    #[serde(default)]
    pub ends_with: Option<OneOrMany>,
    /// True when the address matches this regular expression (unanchored;
    /// case-sensitive unless it starts with `(?i)`).
    #[serde(default)]
    pub matches: Option<String>,
}

/// `client_id` and `issuer`; exactly one key. Values compare exactly.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EqTest {
    /// True when the value is this one.
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the value is one of these.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
}

/// `mcp_method` and `mcp_prompt`; exactly one key. Names compare exactly.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameTest {
    /// True when the name is this one.
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the name is one of these.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// True when the name starts with this prefix (or one of these).
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
}

/// `mcp_tool`: the tool name of a `tools/call`; exactly one key. Names compare
/// exactly.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolTest {
    /// True when the tool is this one.
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the tool is one of these.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// True when the tool name starts with this prefix (or one of these).
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
    /// True when the tool name matches this regular expression (unanchored).
    #[serde(default)]
    pub matches: Option<String>,
}

/// `mcp_resource`: the URI of a `resources/*` request; exactly one key. A URI
/// with a `.`/`..` segment or an encoded separator (`%2f`, `%5c`, `%25`) never
/// passes `starts_with` or `glob` in an allow rule, and always does in a deny
/// rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceTest {
    /// True when the URI is exactly this one.
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the URI starts with this prefix (or one of these).
    #[serde(default)]
    pub starts_with: Option<OneOrMany>,
    /// True when the whole URI matches this glob (or one of these): `*` is
    /// any run without `/`, `**` any run, `?` one character other than `/`.
    #[serde(default)]
    pub glob: Option<OneOrMany>,
}

/// `argument`: one value in the message's `params.arguments`; `pointer` and
/// exactly one of `equals`, `in`, `matches`, `min`/`max`, `exists`. False when
/// the value is missing (but for `exists: false`); undecided (a deny rule
/// denies, an allow rule does not allow) when a key on the path is repeated.
/// Undecided while filtering lists.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArgumentTest {
    /// RFC 6901 JSON pointer into `params.arguments`: `/repo`, `/files/0/path`
    /// (`""` is the whole object).
    pub pointer: String,
    /// True when the value equals this one.
    #[serde(default)]
    #[schemars(with = "Option<ScalarSchema>")]
    pub equals: Option<Value>,
    /// True when the value equals one of these.
    #[serde(default, rename = "in")]
    #[schemars(with = "Option<Vec<ScalarSchema>>")]
    pub in_: Option<Vec<Value>>,
    /// True when the value is a string matching this regular expression
    /// (unanchored).
    #[serde(default)]
    pub matches: Option<String>,
    /// True when the value is a number at least this (with `max`: within both,
    /// inclusive).
    #[serde(default)]
    pub min: Option<f64>,
    /// True when the value is a number at most this.
    #[serde(default)]
    pub max: Option<f64>,
    /// `true`: true when the value is present (of any type); `false`: when it is
    /// absent.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// `source_ip`: the client's address, the TCP peer's (`X-Forwarded-For` is not
/// read).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIpTest {
    /// True when the address is in one of these: addresses or CIDR ranges,
    /// IPv4 or IPv6 (`10.0.0.0/8`, `"::1/128"`). An IPv4-mapped IPv6 address
    /// counts as IPv4.
    #[serde(rename = "in")]
    pub in_: Vec<String>,
}

/// `time`: true on the listed `days` within one of the `hours` windows, in
/// zone `tz` (DST-correct).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeTest {
    /// `mon` .. `sun`; absent means every day. The part of a window after
    /// midnight belongs to the day it started on.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// `"HH:MM-HH:MM"` windows (end exclusive, may wrap past midnight); absent
    /// means the whole day.
    #[serde(default)]
    pub hours: Option<OneOrMany>,
    /// IANA zone (`Europe/Berlin`); absent means UTC.
    #[serde(default)]
    pub tz: Option<String>,
}

/// `header`: a request header; `name` and exactly one of `equals`, `in`,
/// `matches`, `exists`. False when the header is absent (but for
/// `exists: false`); undecided when it is repeated and its values disagree.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderTest {
    /// The header name, case-insensitive.
    pub name: String,
    /// True when the value is exactly this (case-sensitive).
    #[serde(default)]
    pub equals: Option<String>,
    /// True when the value is exactly one of these.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// True when the value matches this regular expression (unanchored).
    #[serde(default)]
    pub matches: Option<String>,
    /// `true`: true when the header is present; `false`: when it is absent.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// `content`: exactly one of `detector` and `group`. True when content
/// screening found that detector (or any detector of that group) in the
/// message's strings; false when it found nothing of it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentTest {
    /// A detector's name: a built-in one (`aws_key`, `email`, `tag_chars`,
    /// ...) or a custom one of the route's `screen`.
    #[serde(default)]
    pub detector: Option<String>,
    /// A group of detectors: `secrets`, `pii`, `injection` or `custom`.
    #[serde(default)]
    pub group: Option<String>,
}

/// `rate_limit` (deny rules only): true when the caller has used up `requests`
/// in the current window of `per` (fixed windows, so up to twice the limit
/// across a window boundary). One count across all workers; counters start
/// afresh on reload. Only requests that reach it are counted: not those
/// denied by another rule or by no allow rule.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTest {
    /// Requests allowed per window and key (at most 2^30).
    pub requests: u64,
    /// The window: `30s`, `1m`, `2h`, or a number of seconds.
    pub per: Period,
    /// What is counted separately.
    #[serde(default)]
    pub key: RateKey,
}

/// A rate-limit window: `30s`, `1m`, `2h`, or a number of seconds (at least 1).
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Period {
    Seconds(u64),
    Text(String),
}

/// What a rate limit counts separately.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// Each caller (issuer and `sub`); callers without a token by client
    /// address.
    #[default]
    Principal,
    /// Each caller and tool: every tool's `tools/call` is counted apart (other
    /// methods per caller).
    PrincipalAndTool,
}
