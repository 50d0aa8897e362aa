//! Who is calling: the verified identity of a request, built once per token by
//! `identity` (and cached per core), read by `policy` and the upstream
//! identity assertion. Nothing here is taken from an unverified source.

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The configured name of the issuer that signed the token (`identity.issuers[].name`).
    pub issuer_name: Arc<str>,
    /// The token's `iss`.
    pub issuer: String,
    pub sub: String,
    pub email: Option<String>,
    /// `groups` claim (array of strings, or one string).
    pub groups: Vec<String>,
    /// `scope` (space-separated string) or `scp` (array) claim.
    pub scopes: Vec<String>,
    /// `client_id`, else `azp`.
    pub client_id: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Every claim of the token, for `claim` criteria (paths like `org.team`).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    /// A claim by dotted path (`a.b.c`), walking nested objects.
    pub fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        let mut parts = path.split('.');
        let mut v = self.claims.get(parts.next()?)?;
        for p in parts {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
