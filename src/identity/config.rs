//! Configuration of trusted token issuers (`identity: { issuers: [...] }`).

use serde::Deserialize;
use std::path::PathBuf;

/// The `identity` section.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer. Exactly one of `jwks_uri`, `jwks_file`, `jwks` must be set.
/// Durations are integers of seconds.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Name used by routes and recorded as `Principal::issuer_name`.
    pub name: String,
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    pub jwks_uri: Option<String>,
    /// Relative paths are resolved against the config file's directory.
    pub jwks_file: Option<PathBuf>,
    /// An inline JWK set (`{"keys": [...]}`).
    pub jwks: Option<serde_json::Value>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Accepted audiences; when set, these replace the route's public URL.
    pub audiences: Option<Vec<String>>,
    /// Clock leeway in seconds (default 5).
    pub leeway: Option<u64>,
    /// Required `typ` header (e.g. `at+jwt`); case-insensitive, `application/` optional.
    pub typ: Option<String>,
    /// Longest accepted `exp - iat` in seconds (default 86400).
    pub max_lifetime: Option<u64>,
    /// Remote JWKS refresh period in seconds (default 300).
    pub refresh_interval: Option<u64>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

pub const DEFAULT_LEEWAY: u64 = 5;
pub const DEFAULT_MAX_LIFETIME: u64 = 24 * 3600;
pub const DEFAULT_REFRESH_INTERVAL: u64 = 300;
