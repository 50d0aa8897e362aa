//! Who is calling: the verified identity of a request, built once per token by
//! `identity` (and cached per core), read by `policy` and the upstream
//! identity assertion. Nothing here is taken from an unverified source.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Its behaviour baselines' key, once computed (`behaviour::Exchange::key`):
    /// a cached token's caller is not hashed again on every request.
    pub baseline_key: KeyMemo,
    /// Its audit records' `principal` object, rendered once: a cached token's
    /// caller is not written out again on every request.
    pub record_json: RecordJson,
}

/// A key computed once, with the id of what computed it (0: none yet).
/// Never part of a principal's equality. Atomics (relaxed: plain loads and
/// stores) keep a principal `Sync`; one process has one exchange, so the
/// two never disagree.
#[derive(Debug, Default)]
pub struct KeyMemo {
    id: AtomicU64,
    key: AtomicU64,
}

impl KeyMemo {
    /// The key, when `id` computed it.
    pub fn get(&self, id: u64) -> Option<u64> {
        (self.id.load(Ordering::Relaxed) == id).then(|| self.key.load(Ordering::Relaxed))
    }

    pub fn set(&self, id: u64, key: u64) {
        self.key.store(key, Ordering::Relaxed);
        self.id.store(id, Ordering::Relaxed);
    }
}

impl Clone for KeyMemo {
    fn clone(&self) -> KeyMemo {
        KeyMemo {
            id: AtomicU64::new(self.id.load(Ordering::Relaxed)),
            key: AtomicU64::new(self.key.load(Ordering::Relaxed)),
        }
    }
}

impl PartialEq for KeyMemo {
    fn eq(&self, _: &KeyMemo) -> bool {
        true
    }
}

/// A principal's rendering in audit records, made on first use. Never part
/// of a principal's equality; a clone starts empty (it renders the same).
#[derive(Debug, Default)]
pub struct RecordJson(std::sync::OnceLock<Box<[u8]>>);

impl RecordJson {
    /// The rendering, made by `render` the first time.
    pub fn get_or_init(&self, render: impl FnOnce() -> Vec<u8>) -> &[u8] {
        self.0.get_or_init(|| render().into_boxed_slice())
    }
}

impl Clone for RecordJson {
    fn clone(&self) -> RecordJson {
        RecordJson::default()
    }
}

impl PartialEq for RecordJson {
    fn eq(&self, _: &RecordJson) -> bool {
        true
    }
}

impl Principal {
    /// A caller of issuer `idp` (`https://idp.test`) named `sub`, with no
    /// groups, scopes or claims and a token that never expires (tests).
    #[cfg(test)]
    pub(crate) fn for_tests(sub: &str) -> Principal {
        Principal {
            issuer_name: "idp".into(),
            issuer: "https://idp.test".into(),
            sub: sub.into(),
            email: None,
            groups: vec![],
            scopes: vec![],
            client_id: None,
            exp: i64::MAX,
            claims: Default::default(),
            baseline_key: Default::default(),
            record_json: Default::default(),
        }
    }

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
