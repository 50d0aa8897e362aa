//! JWK sets: parsing into keys with pinned algorithms, and the remote fetch.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest JWKS document fetched.
pub(crate) const MAX_JWKS_BYTES: u64 = 1 << 20;
/// Timeout of one JWKS fetch.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A verification key and the algorithms it may be used with (never taken from a token).
pub(crate) struct Key {
    pub kid: Option<String>,
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

/// The usable keys of one JWK set.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    no_kid: Vec<Arc<Key>>,
}

/// Parses an algorithm name as the verifier supports it. `none` and unknown names are `None`.
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

impl KeySet {
    /// Builds the key set. Keys whose `use` is not `sig`, whose `key_ops` lacks `verify`,
    /// or whose algorithm is not allowed are skipped; malformed keys, RSA keys under 2048
    /// bits and duplicate kids are errors. `oct` (HMAC) keys are used only when
    /// `allow_secret` (inline config) and an HS algorithm is in `allowed`.
    pub(crate) fn parse(
        jwks: &Value,
        allowed: &[Algorithm],
        allow_secret: bool,
    ) -> Result<KeySet, String> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no \"keys\" array")?;
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate() {
            let Some(key) =
                parse_key(jwk, allowed, allow_secret).map_err(|e| format!("key {i}: {e}"))?
            else {
                continue;
            };
            let key = Arc::new(key);
            match &key.kid {
                Some(kid) => {
                    if set.by_kid.insert(kid.clone(), key.clone()).is_some() {
                        return Err(format!("key {i}: duplicate kid {kid:?}"));
                    }
                }
                None => set.no_kid.push(key),
            }
        }
        if set.is_empty() {
            return Err("JWKS has no usable signing key for the allowed algorithms".into());
        }
        Ok(set)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.no_kid.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.no_kid.len()
    }

    /// The keys a token may be checked against: the one named by `kid` (a map key, nothing
    /// more), or without a kid every kid-less key that allows `alg`.
    pub(crate) fn candidates<'a>(&'a self, kid: Option<&str>, alg: Algorithm) -> Candidates<'a> {
        match kid {
            Some(k) => Candidates::One(self.by_kid.get(k).map(|k| &**k)),
            None => Candidates::Many(self.no_kid.iter(), alg),
        }
    }
}

pub(crate) enum Candidates<'a> {
    One(Option<&'a Key>),
    Many(std::slice::Iter<'a, Arc<Key>>, Algorithm),
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Key;
    fn next(&mut self) -> Option<&'a Key> {
        match self {
            Candidates::One(k) => k.take(),
            Candidates::Many(it, alg) => it.find(|k| k.algs.contains(alg)).map(|k| &**k),
        }
    }
}

fn b64_field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or(format!("missing \"{name}\""))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("\"{name}\" is not base64url"))
}

/// One JWK as a [`Key`]; `Ok(None)` when it is skipped (see [`KeySet::parse`]).
pub(crate) fn parse_key(
    jwk: &Value,
    allowed: &[Algorithm],
    allow_secret: bool,
) -> Result<Option<Key>, String> {
    let str_field = |n: &str| jwk.get(n).and_then(Value::as_str);
    if let Some(u) = jwk.get("use") {
        if u.as_str() != Some("sig") {
            return Ok(None);
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ok = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !ok {
            return Ok(None);
        }
    }
    let kty = str_field("kty").ok_or("missing \"kty\"")?;
    let family: Vec<Algorithm> = match (kty, str_field("crv")) {
        ("RSA", _) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        ("EC", Some("P-256")) => vec![Algorithm::ES256],
        ("EC", Some("P-384")) => vec![Algorithm::ES384],
        ("OKP", Some("Ed25519")) => vec![Algorithm::EdDSA],
        ("oct", _) if allow_secret => vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        _ => return Ok(None),
    };
    let algs: Vec<Algorithm> = match jwk.get("alg") {
        Some(a) => {
            let Some(a) = a.as_str().and_then(parse_alg) else {
                return Ok(None);
            };
            if !family.contains(&a) {
                return Err(format!("\"alg\" does not match kty {kty}"));
            }
            vec![a]
        }
        None => family,
    };
    let algs: Vec<Algorithm> = algs.into_iter().filter(|a| allowed.contains(a)).collect();
    if algs.is_empty() {
        return Ok(None);
    }
    let key = match kty {
        "RSA" => {
            let n = b64_field(jwk, "n")?;
            let e = b64_field(jwk, "e")?;
            let n = strip_zeros(&n);
            // `n` has no leading zero bytes: its first byte's leading zeros are all.
            let bits =
                (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits (2048 at least)"));
            }
            if strip_zeros(&e).is_empty() {
                return Err("RSA exponent is zero".into());
            }
            DecodingKey::from_rsa_raw_components(n, &e)
        }
        "EC" => {
            let (x, y) = (b64_field(jwk, "x")?, b64_field(jwk, "y")?);
            let len = if algs[0] == Algorithm::ES256 { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err("EC coordinates of the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            DecodingKey::from_ec_der(&point)
        }
        "OKP" => {
            let x = b64_field(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key of the wrong length".into());
            }
            DecodingKey::from_ed_der(&x)
        }
        _ => {
            let k = b64_field(jwk, "k")?;
            if k.len() < 32 {
                return Err("HMAC key shorter than 256 bits".into());
            }
            DecodingKey::from_secret(&k)
        }
    };
    let kid = str_field("kid").map(str::to_owned);
    Ok(Some(Key { kid, algs, key }))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// Fetches a JWKS document (blocking; timeout [`FETCH_TIMEOUT`], at most [`MAX_JWKS_BYTES`]).
pub(crate) fn fetch(url: &str) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("fetching JWKS {url}: {e}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_vec()
        .map_err(|e| format!("reading JWKS {url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("JWKS {url} is not JSON: {e}"))
}
