//! Configuration of trusted token issuers (`identity: { issuers: [...] }`).

use serde::Deserialize;
use std::path::PathBuf;

/// The `identity` section: the token issuers routes may trust.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The issuers whose tokens routes may accept.
    #[serde(default)]
    #[schemars(extend("default" = []))]
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer. Exactly one of `jwks_uri`, `jwks_file`, `jwks` must be set.
/// Durations are integers of seconds.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Unique name, used by routes (`auth.issuers`) and by the policy
    /// criterion `issuer`.
    pub name: String,
    /// The exact `iss` value of its tokens (`${ENV_VAR}` is substituted).
    #[serde(deserialize_with = "crate::config::env_string")]
    pub issuer: String,
    /// URL of its JWK set: fetched at load (unreachable: the configuration
    /// is rejected), refreshed every `refresh_interval` and on an unknown
    /// `kid` (at most once per 30 s); a failed refresh keeps the last good set.
    /// `${ENV_VAR}` is substituted.
    #[serde(default, deserialize_with = "crate::config::env_opt_string")]
    pub jwks_uri: Option<String>,
    /// A file holding its JWK set, read at load. Relative paths are resolved
    /// against the config file's directory; `${ENV_VAR}` is substituted.
    #[serde(default, deserialize_with = "env_opt_path")]
    pub jwks_file: Option<PathBuf>,
    /// An inline JWK set (`{"keys": [...]}`); the only place `oct` keys for
    /// HS256/384/512 are accepted.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub jwks: Option<serde_json::Value>,
    /// Signature algorithms accepted: RS256/384/512, PS256/384/512, ES256,
    /// ES384, EdDSA, and HS256/384/512 with an inline `jwks` only. What a key
    /// may verify comes from the JWKS (its `alg`, else its key type), within
    /// this list; never from the token.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Accepted audiences (any one must be in `aud`); when set, these replace
    /// the default, the route's public URL (`from`). `${ENV_VAR}` is
    /// substituted.
    #[serde(default, deserialize_with = "crate::config::env_opt_strings")]
    pub audiences: Option<Vec<String>>,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
    #[schemars(extend("default" = DEFAULT_LEEWAY))]
    pub leeway: Option<u64>,
    /// Required `typ` header (e.g. `at+jwt`); case-insensitive, `application/`
    /// optional. Absent: any `typ`.
    pub typ: Option<String>,
    /// Longest accepted token lifetime, `exp` minus `iat` (or `nbf`), in
    /// seconds.
    #[schemars(extend("default" = DEFAULT_MAX_LIFETIME))]
    pub max_lifetime: Option<u64>,
    /// How often a `jwks_uri` is fetched again, in seconds.
    #[schemars(extend("default" = DEFAULT_REFRESH_INTERVAL))]
    pub refresh_interval: Option<u64>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

pub const DEFAULT_LEEWAY: u64 = 5;
pub const DEFAULT_MAX_LIFETIME: u64 = 24 * 3600;
pub const DEFAULT_REFRESH_INTERVAL: u64 = 300;

fn env_opt_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    crate::config::env_opt_string(d).map(|s| s.map(PathBuf::from))
}
