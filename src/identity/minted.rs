//! Access tokens portcullis issues itself, as the authorization server of
//! issue 11, and verifies on the request path.
//!
//! Issuer and verifier are the same program, so the token is a compact JWS
//! under a symmetric key only portcullis holds: `HS256`, `typ: at+jwt`, the
//! RFC 9068 claims (`iss`, `sub`, `aud` = the one route's canonical URL,
//! `client_id`, `scope`, `exp`, `iat`, `jti`) plus the principal's `email`
//! and `groups`, so policies read them as they read an external IdP's.
//! Cold verification is an HMAC over the token and one JSON parse (`cargo
//! bench --bench jwt -- minted`), where an ES256 token of an external IdP
//! costs a signature check of ~60 µs.
//!
//! The header is fixed per key (`{"alg":"HS256","kid":…,"typ":"at+jwt"}`):
//! a token's header must equal one key's byte for byte, so it is never
//! parsed, an algorithm is never read from a token, and nothing but these
//! keys can verify. The first key signs, every key verifies (rotation).

use super::verify::{check_claims, parse_claims, AuthError, ClaimRules, MAX_TOKEN_BYTES};
use crate::principal::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use std::sync::Arc;

/// The claims portcullis puts in an access token it issues.
pub struct AccessClaims<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    /// The canonical URL of the one route the token is for.
    pub audience: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a [String],
    pub email: Option<&'a str>,
    pub groups: &'a [String],
    pub issued_at: i64,
    pub expires: i64,
    /// A unique id (the grant's, or the request's that minted it).
    pub token_id: &'a str,
}

/// One signing key: its id, the HMAC key, and its fixed header, encoded.
#[derive(Clone)]
pub struct MintKey {
    kid: String,
    key: hmac::Key,
    header: String,
}

impl MintKey {
    /// A key from 32 secret bytes (kept sealed in the store by the caller).
    pub fn new(kid: &str, secret: &[u8; 32]) -> MintKey {
        let header = serde_json::json!({"alg": "HS256", "kid": kid, "typ": "at+jwt"});
        MintKey {
            kid: kid.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Sign an access token with `key`.
pub fn mint(key: &MintKey, c: &AccessClaims<'_>) -> String {
    let mut claims = serde_json::json!({
        "iss": c.issuer,
        "sub": c.subject,
        "aud": c.audience,
        "client_id": c.client_id,
        "scope": c.scopes.join(" "),
        "groups": c.groups,
        "iat": c.issued_at,
        "exp": c.expires,
        "jti": c.token_id,
    });
    if let Some(email) = c.email {
        claims["email"] = email.into();
    }
    let mut token = key.header.clone();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
    let tag = hmac::sign(&key.key, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

/// What a minted token must be to be accepted.
pub struct Expect<'a> {
    /// The configured name of the built-in issuer (the principal's `issuer_name`).
    pub issuer_name: &'a Arc<str>,
    pub issuer: &'a str,
    /// The route's canonical URL: a token for another route is refused.
    pub audience: &'a str,
    /// The longest lifetime an access token may have.
    pub max_lifetime: i64,
}

/// Verify a token minted with one of `keys` and build its principal.
pub fn verify(
    keys: &[MintKey],
    token: &str,
    expect: &Expect<'_>,
    now: i64,
) -> Result<Principal, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Oversized);
    }
    let (header, rest) = token.split_once('.').ok_or(AuthError::Malformed)?;
    let key = keys
        .iter()
        .find(|k| k.header == header)
        .ok_or(AuthError::UnknownKey)?;
    let (payload, tag) = rest.split_once('.').ok_or(AuthError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| AuthError::BadSignature)?;
    let signed = &token[..header.len() + 1 + payload.len()];
    hmac::verify(&key.key, signed.as_bytes(), &tag).map_err(|_| AuthError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    let rules = ClaimRules {
        issuer_name: expect.issuer_name,
        issuer: expect.issuer,
        audiences: &[expect.audience],
        // Issuer and verifier share one clock.
        leeway: 0,
        max_lifetime: expect.max_lifetime,
        typ: Some("at+jwt"),
    };
    check_claims(Some("at+jwt"), parse_claims(&payload)?, &rules, now)
}

/// What the data plane needs to accept the built-in issuer's tokens:
/// published by the authorization server (control plane) through an
/// `ArcSwapOption` in the workers' shared state, read with one atomic load.
pub struct Issued {
    pub issuer: String,
    pub issuer_name: Arc<str>,
    /// The first signs; all verify.
    pub keys: Vec<MintKey>,
    /// The longest access-token lifetime configured.
    pub max_lifetime: i64,
    /// Revoked grants (their tokens' `jti` is `<grant>.<n>`) whose tokens
    /// may still be unexpired.
    pub revoked: std::collections::HashSet<String>,
}

impl Issued {
    /// Verify a token of this issuer for `audience`, refusing a revoked grant's.
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Principal, AuthError> {
        let expect = Expect {
            issuer_name: &self.issuer_name,
            issuer: &self.issuer,
            audience,
            max_lifetime: self.max_lifetime,
        };
        let p = verify(&self.keys, token, &expect, now)?;
        if self.is_revoked(&p) {
            return Err(AuthError::Revoked);
        }
        Ok(p)
    }

    /// Whether a principal of this issuer comes from a revoked grant.
    pub fn is_revoked(&self, p: &Principal) -> bool {
        !self.revoked.is_empty() && self.revoked.contains(grant_of(p))
    }

    /// Whether `token` looks like one of this issuer's (its header is a key's).
    pub fn claims_token(&self, token: &str) -> bool {
        let header = token.split('.').next().unwrap_or("");
        self.keys.iter().any(|k| k.header == header)
    }
}

/// The `iat` of a token, read without verifying it (only as the clock at
/// which to verify it: revoking an expired token).
pub(crate) fn issued_at(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()?
        .get("iat")?
        .as_i64()
}

/// The grant id of a minted token's principal (`jti` up to its first `.`).
pub(crate) fn grant_of(p: &Principal) -> &str {
    let jti = p.claims.get("jti").and_then(|v| v.as_str()).unwrap_or("");
    jti.split('.').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://mcp.example.com";
    const AUD: &str = "https://mcp.example.com/github";

    fn claims<'a>(scopes: &'a [String], groups: &'a [String]) -> AccessClaims<'a> {
        AccessClaims {
            issuer: ISS,
            subject: "alice",
            audience: AUD,
            client_id: "https://claude.ai/oauth/mcp-oauth-client-metadata",
            scopes,
            email: Some("alice@example.com"),
            groups,
            issued_at: 1_000,
            expires: 4_600,
            token_id: "g1",
        }
    }

    fn expect(name: &Arc<str>) -> Expect<'_> {
        Expect {
            issuer_name: name,
            issuer: ISS,
            audience: AUD,
            max_lifetime: 86_400,
        }
    }

    #[test]
    fn a_minted_token_verifies_into_its_principal() {
        let (scopes, groups) = (vec!["mcp".to_string()], vec!["eng".to_string()]);
        let key = MintKey::new("k1", &[7; 32]);
        let token = mint(&key, &claims(&scopes, &groups));
        let name: Arc<str> = "portcullis".into();
        let p = verify(&[key], &token, &expect(&name), 2_000).unwrap();
        assert_eq!(p.sub, "alice");
        assert_eq!(&*p.issuer_name, "portcullis");
        assert_eq!(p.email.as_deref(), Some("alice@example.com"));
        assert_eq!(p.groups, ["eng"]);
        assert_eq!(p.scopes, ["mcp"]);
        assert_eq!(
            p.client_id.as_deref(),
            Some("https://claude.ai/oauth/mcp-oauth-client-metadata")
        );
        assert_eq!(p.claims["jti"], "g1");
    }

    #[test]
    fn only_its_keys_its_route_and_its_lifetime_are_accepted() {
        let (scopes, groups) = (vec!["mcp".to_string()], vec![]);
        let (k1, k2) = (MintKey::new("k1", &[7; 32]), MintKey::new("k2", &[8; 32]));
        let name: Arc<str> = "portcullis".into();
        let token = mint(&k1, &claims(&scopes, &groups));
        // Rotation: a token of an older key verifies while that key is listed.
        let both = [MintKey::new("k2", &[8; 32]), MintKey::new("k1", &[7; 32])];
        assert!(verify(&both, &token, &expect(&name), 2_000).is_ok());
        let check = |keys: &[MintKey], token: &str, expect: &Expect<'_>, now| {
            verify(keys, token, expect, now).map(|_| ()).unwrap_err()
        };
        assert_eq!(
            check(&[k2], &token, &expect(&name), 2_000),
            AuthError::UnknownKey
        );
        // The same kid with another secret: the signature fails.
        let impostor = MintKey::new("k1", &[9; 32]);
        assert_eq!(
            check(&[impostor], &token, &expect(&name), 2_000),
            AuthError::BadSignature
        );
        let other_route = Expect {
            audience: "https://mcp.example.com/notion",
            ..expect(&name)
        };
        let keys = [MintKey::new("k1", &[7; 32])];
        assert_eq!(
            check(&keys, &token, &other_route, 2_000),
            AuthError::WrongAudience
        );
        assert_eq!(
            check(&keys, &token, &expect(&name), 4_600),
            AuthError::Expired
        );
        let short = Expect {
            max_lifetime: 600,
            ..expect(&name)
        };
        assert_eq!(
            check(&keys, &token, &short, 2_000),
            AuthError::LifetimeTooLong
        );
        // A changed payload (another subject) under the original tag.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("alice", "admin"),
        );
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            check(&keys, &tampered, &expect(&name), 2_000),
            AuthError::BadSignature
        );
        // Another algorithm in the header never selects a key.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            parts[1]
        );
        assert_eq!(
            check(&keys, &none, &expect(&name), 2_000),
            AuthError::UnknownKey
        );
        for bad in [
            "",
            "abc",
            &format!("{}.x", parts[0]),
            &format!("{}.{}.!!", parts[0], parts[1]),
        ] {
            assert!(verify(&keys, bad, &expect(&name), 2_000).is_err(), "{bad}");
        }
    }
}
