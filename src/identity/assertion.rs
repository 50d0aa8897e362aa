//! Identity assertions to upstreams: short-lived ES256 JWTs signed by the proxy, in place of
//! the client's token (which is never forwarded).
//!
//! Medians (`cargo bench --bench jwt -- assertion`, 2-core machine): signing 22-32 µs;
//! an [`AssertionCache`] hit 140 ns.

use crate::principal::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;

/// Lifetime of an assertion, seconds.
pub(crate) const ASSERTION_TTL: i64 = 60;
/// A cached assertion is reused until this many seconds before its `exp`.
pub(crate) const REUSE_MARGIN: i64 = 30;

/// Holds a P-256 key pair generated at start and signs assertions with it.
pub struct AssertionSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    issuer: String,
    header_b64: String,
    jwks: String,
}

impl AssertionSigner {
    /// Generates a fresh key pair and a random kid. `issuer` becomes the assertions' `iss`.
    pub fn generate(issuer: &str) -> Result<Self, String> {
        let (kid, pkcs8) = Self::new_key()?;
        Self::from_pkcs8(issuer, &kid, &pkcs8)
    }

    /// A new key: a random kid and the key pair as PKCS#8 (to keep it, sealed,
    /// where every instance finds it).
    pub fn new_key() -> Result<(String, zeroize::Zeroizing<Vec<u8>>), String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "generating the assertion key failed")?;
        let mut kid = [0u8; 12];
        rng.fill(&mut kid)
            .map_err(|_| "no randomness for the kid")?;
        Ok((
            URL_SAFE_NO_PAD.encode(kid),
            zeroize::Zeroizing::new(pkcs8.as_ref().to_vec()),
        ))
    }

    /// The signer of a kept key (`new_key`'s kid and PKCS#8).
    pub fn from_pkcs8(issuer: &str, kid: &str, pkcs8: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| "loading the assertion key failed")?;
        let kid = kid.to_string();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string();
        let header_b64 = URL_SAFE_NO_PAD.encode(header);
        // Uncompressed point: 0x04 || x || y.
        let point = key.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .ok_or("unexpected public key")?;
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            "use": "sig", "alg": "ES256", "kid": kid,
        }]})
        .to_string();
        Ok(AssertionSigner {
            key,
            rng,
            kid,
            issuer: issuer.to_owned(),
            header_b64,
            jwks,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK set, for upstreams to verify assertions.
    pub fn jwks_json(&self) -> String {
        self.jwks.clone()
    }

    /// A compact JWT asserting `principal` to `audience`, valid for [`ASSERTION_TTL`] seconds,
    /// with `jti` = `request_id`.
    pub fn sign(
        &self,
        principal: &Principal,
        audience: &str,
        now: i64,
        request_id: &str,
    ) -> String {
        let mut c = Map::new();
        c.insert("iss".into(), Value::from(self.issuer.as_str()));
        c.insert("sub".into(), Value::from(principal.sub.as_str()));
        c.insert("aud".into(), Value::from(audience));
        c.insert("iat".into(), Value::from(now));
        c.insert("exp".into(), Value::from(now.saturating_add(ASSERTION_TTL)));
        if let Some(e) = &principal.email {
            c.insert("email".into(), Value::from(e.as_str()));
        }
        if !principal.groups.is_empty() {
            c.insert("groups".into(), Value::from(principal.groups.clone()));
        }
        if let Some(id) = &principal.client_id {
            c.insert("client_id".into(), Value::from(id.as_str()));
        }
        c.insert("idp".into(), Value::from(principal.issuer.as_str()));
        c.insert("jti".into(), Value::from(request_id));
        let claims = Value::Object(c).to_string();
        let mut out = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        // Signing only fails if the system RNG fails; then the assertion carries no valid
        // signature and the upstream rejects it.
        let sig = self.key.sign(&self.rng, out.as_bytes());
        out.push('.');
        if let Ok(sig) = sig {
            URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
        }
        out
    }
}

/// The principal fields an assertion carries, plus its audience.
struct Asserted {
    issuer: String,
    sub: String,
    email: Option<String>,
    groups: Vec<String>,
    client_id: Option<String>,
    audience: String,
}

impl Asserted {
    fn matches(&self, p: &Principal, audience: &str) -> bool {
        self.sub == p.sub
            && self.audience == audience
            && self.issuer == p.issuer
            && self.email == p.email
            && self.groups == p.groups
            && self.client_id == p.client_id
    }
}

/// Per-core cache of signed assertions: one per (asserted principal fields, audience), reused
/// until [`REUSE_MARGIN`] seconds before its `exp`. A reused assertion repeats its `jti`
/// (the id of the request it was first signed for). Keyed by a hash of those fields, checked
/// in full on a hit; cleared whole when full.
pub struct AssertionCache {
    hasher: foldhash::fast::RandomState,
    map: HashMap<u64, (Asserted, Rc<str>, i64)>,
    max: usize,
}

impl AssertionCache {
    pub fn new(max: usize) -> Self {
        AssertionCache {
            hasher: Default::default(),
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Assertions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn hash(&self, p: &Principal, audience: &str) -> u64 {
        self.hasher.hash_one((
            &p.issuer,
            &p.sub,
            &p.email,
            &p.groups,
            &p.client_id,
            audience,
        ))
    }

    /// A cached assertion, or a fresh one signed by `signer`.
    pub fn get_or_sign(
        &mut self,
        signer: &AssertionSigner,
        principal: &Principal,
        audience: &str,
        now: i64,
        request_id: &str,
    ) -> Rc<str> {
        let h = self.hash(principal, audience);
        if let Some((who, jwt, exp)) = self.map.get(&h) {
            if now < exp - REUSE_MARGIN && who.matches(principal, audience) {
                return jwt.clone();
            }
        }
        let jwt: Rc<str> = signer.sign(principal, audience, now, request_id).into();
        if self.map.len() >= self.max {
            self.map.clear();
        }
        let who = Asserted {
            issuer: principal.issuer.clone(),
            sub: principal.sub.clone(),
            email: principal.email.clone(),
            groups: principal.groups.clone(),
            client_id: principal.client_id.clone(),
            audience: audience.to_owned(),
        };
        self.map
            .insert(h, (who, jwt.clone(), now.saturating_add(ASSERTION_TTL)));
        jwt
    }
}
