//! Token parsing, the signature layer, and the claim checks on top of it.

use super::jwks::{parse_alg, Key, KeySet};
use crate::principal::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Tokens longer than this are rejected before any decoding.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was rejected. [`AuthError::reason`] is safe for `WWW-Authenticate` and logs:
/// it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthError {
    Oversized,
    Malformed,
    AlgNone,
    AlgNotAllowed,
    UnknownKey,
    BadSignature,
    UnsupportedCrit,
    WrongType,
    UnknownIssuer,
    WrongAudience,
    MissingClaim,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    /// The grant the token was issued under was revoked.
    Revoked,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Oversized => "token too large",
            AuthError::Malformed => "malformed token",
            AuthError::AlgNone => "unsigned token",
            AuthError::AlgNotAllowed => "algorithm not allowed",
            AuthError::UnknownKey => "unknown signing key",
            AuthError::BadSignature => "invalid signature",
            AuthError::UnsupportedCrit => "unsupported critical header",
            AuthError::WrongType => "wrong token type",
            AuthError::UnknownIssuer => "untrusted issuer",
            AuthError::WrongAudience => "token not for this resource",
            AuthError::MissingClaim => "required claim missing",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::IssuedInFuture => "token issued in the future",
            AuthError::LifetimeTooLong => "token lifetime too long",
            AuthError::Revoked => "token revoked",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// The protected header fields the verifier reads. `jwk`, `jku`, `x5u`, `x5c` and any other
/// member are ignored (never fetched, never used as a key).
#[derive(Deserialize, schemars::JsonSchema)]
struct RawHeader {
    /// The signature algorithm; `none` (any case) is refused.
    alg: String,
    /// Which key of the issuer's JWKS signed the token.
    kid: Option<String>,
    /// The token type, checked against the issuer's `typ` when that is set.
    typ: Option<String>,
    /// Critical extensions: none is understood, so any `crit` is refused.
    crit: Option<Value>,
}

/// A compact JWS split and decoded, signature not yet checked.
pub(crate) struct Jws<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    signing_input: &'a str,
    sig_b64: &'a str,
    pub payload: Vec<u8>,
}

/// Strict base64url: no padding, no characters outside the alphabet, no non-zero trailing bits.
fn b64(s: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| AuthError::Malformed)
}

impl<'a> Jws<'a> {
    /// Splits and decodes a compact JWS; rejects oversized input, `alg: none` in any case,
    /// unknown algorithms, any `crit`, and an empty signature.
    pub(crate) fn parse(token: &'a str) -> Result<Jws<'a>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Oversized);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if s.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let sig = b64(s)?;
        if sig.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let header: RawHeader =
            serde_json::from_slice(&b64(h)?).map_err(|_| AuthError::Malformed)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        let alg = parse_alg(&header.alg).ok_or(AuthError::AlgNotAllowed)?;
        // No crit extension is understood, so any `crit` (even an empty one) is rejected.
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCrit);
        }
        let payload = b64(p)?;
        Ok(Jws {
            alg,
            kid: header.kid,
            typ: header.typ,
            signing_input: &token[..h.len() + 1 + p.len()],
            sig_b64: s,
            payload,
        })
    }

    /// Checks the signature with one key: the header's alg must be one the key is pinned to.
    pub(crate) fn verify_with(&self, key: &Key) -> Result<(), AuthError> {
        if !key.algs.contains(&self.alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        match jsonwebtoken::crypto::verify(
            self.sig_b64,
            self.signing_input.as_bytes(),
            &key.key,
            self.alg,
        ) {
            Ok(true) => Ok(()),
            _ => Err(AuthError::BadSignature),
        }
    }

    /// Checks the signature against the key set (kid only as a map key).
    pub(crate) fn verify_in(&self, keys: &KeySet) -> Result<(), AuthError> {
        let mut last = AuthError::UnknownKey;
        for key in keys.candidates(self.kid.as_deref(), self.alg) {
            match self.verify_with(key) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The signature-only layer: parses `jws` and checks it with `key`; returns
/// the payload (tested alone against the Wycheproof vectors).
#[cfg(test)]
pub(crate) fn verify_signature(jws: &str, key: &Key) -> Result<Vec<u8>, AuthError> {
    let parsed = Jws::parse(jws)?;
    parsed.verify_with(key)?;
    Ok(parsed.payload)
}

/// What the claim checks need from an issuer's configuration.
pub(crate) struct ClaimRules<'a> {
    pub issuer_name: &'a Arc<str>,
    pub issuer: &'a str,
    /// Any one of these must appear in `aud`.
    pub audiences: &'a [&'a str],
    pub leeway: i64,
    pub max_lifetime: i64,
    pub typ: Option<&'a str>,
}

/// `at+jwt`, `AT+JWT` and `application/at+jwt` are the same type.
pub(crate) fn typ_matches(got: &str, want: &str) -> bool {
    fn norm(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &s[12..],
            _ => s,
        }
    }
    norm(got).eq_ignore_ascii_case(norm(want))
}

fn num(v: Option<&Value>) -> Result<Option<i64>, AuthError> {
    match v {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
            _ => Err(AuthError::Malformed),
        },
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses the payload as a claim set (a JSON object).
pub(crate) fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, AuthError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(AuthError::Malformed),
    }
}

/// Checks the claims of a token whose signature is already verified, and builds the principal.
pub(crate) fn check_claims(
    typ: Option<&str>,
    claims: Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: i64,
) -> Result<Principal, AuthError> {
    if let Some(want) = rules.typ {
        match typ {
            Some(got) if typ_matches(got, want) => {}
            _ => return Err(AuthError::WrongType),
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(AuthError::UnknownIssuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.contains(&a.as_str()),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| rules.audiences.contains(&a))),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::WrongAudience);
    }
    let exp = num(claims.get("exp"))?.ok_or(AuthError::MissingClaim)?;
    let nbf = num(claims.get("nbf"))?;
    let iat = num(claims.get("iat"))?;
    let l = rules.leeway;
    if now.saturating_sub(l) >= exp {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|t| t > now.saturating_add(l)) {
        return Err(AuthError::NotYetValid);
    }
    if iat.is_some_and(|t| t > now.saturating_add(l)) {
        return Err(AuthError::IssuedInFuture);
    }
    let start = iat.or(nbf).unwrap_or(now);
    if exp.saturating_sub(start) > rules.max_lifetime {
        return Err(AuthError::LifetimeTooLong);
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(AuthError::MissingClaim)?
        .to_owned();
    let scopes = match claims.get("scope") {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        _ => strings(claims.get("scp")),
    };
    let client_id = claims
        .get("client_id")
        .or_else(|| claims.get("azp"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Principal {
        issuer_name: rules.issuer_name.clone(),
        issuer: rules.issuer.to_owned(),
        sub,
        email: claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned),
        groups: strings(claims.get("groups")),
        scopes,
        client_id,
        exp,
        claims,
        baseline_key: Default::default(),
        record_json: Default::default(),
    })
}
