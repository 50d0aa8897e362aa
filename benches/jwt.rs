//! JWT verification and the identity caches.
//!
//! `signature/*`: the signature check alone through each jsonwebtoken `CryptoProvider`
//! (`ring` is this crate's; `rust_crypto` and `aws_lc` only with
//! `--features jwt-bench-backends`) and through ring called directly.
//! `verify/*`: a whole `Issuers::verify` (parse, signature, claims, principal).
//! `cache/*`: a token-cache hit; `assertion/*`: signing an identity assertion, and a hit in
//! the per-core assertion cache.
//!
//! Run: `cargo bench --bench jwt --features jwt-bench-backends`

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use portcullis::internal::identity::minted;
use portcullis::internal::identity::{
    crypto, AssertionCache, AssertionSigner, IssuerConfig, Issuers, TokenCache,
};
use ring::signature::KeyPair;
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;

const RSA_PEM: &[u8] = include_bytes!("../tests/keys/rsa2048.pem");
const RSA_JWK: &str = include_str!("../tests/keys/rsa2048.pub.jwk.json");
const ISS: &str = "https://idp.example.com";
const AUD: &str = "https://mcp.example.com/a";
const NOW: i64 = 1_800_000_000;

struct Setup {
    issuers: Issuers,
    rs256: String,
    es256: String,
    rsa_key: DecodingKey,
    ec_key: DecodingKey,
    ec_point: Vec<u8>,
    rsa_n_e: (Vec<u8>, Vec<u8>),
}

fn b64(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn setup() -> Setup {
    crypto::install();
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let p = pair.public_key().as_ref().to_vec();
    let ec_jwk =
        json!({"kty":"EC","crv":"P-256","x":b64(&p[1..33]),"y":b64(&p[33..65]),"kid":"ec1"});
    let mut rsa_jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    rsa_jwk["kid"] = json!("rsa1");
    let cfg: IssuerConfig = serde_json::from_value(
        json!({"name":"idp","issuer":ISS,"jwks":{"keys":[rsa_jwk.clone(), ec_jwk]}}),
    )
    .unwrap();
    let issuers = Issuers::compile(&[cfg], Path::new(".")).unwrap();
    let claims = json!({"iss":ISS,"sub":"alice","aud":AUD,"exp":NOW+600,"iat":NOW-10,
        "scope":"read write","groups":["eng","ops"],"azp":"cli","email":"alice@example.com"});
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    let rs256 = encode(&h, &claims, &EncodingKey::from_rsa_pem(RSA_PEM).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec1".into());
    let es256 = encode(&h, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(rsa_jwk["n"].as_str().unwrap())
        .unwrap();
    let e = URL_SAFE_NO_PAD
        .decode(rsa_jwk["e"].as_str().unwrap())
        .unwrap();
    Setup {
        issuers,
        rs256,
        es256,
        rsa_key: DecodingKey::from_rsa_raw_components(&n, &e),
        ec_key: DecodingKey::from_ec_der(&p),
        ec_point: p,
        rsa_n_e: (n, e),
    }
}

fn split(token: &str) -> (&[u8], Vec<u8>) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    (input.as_bytes(), URL_SAFE_NO_PAD.decode(sig).unwrap())
}

fn providers() -> Vec<(&'static str, &'static CryptoProvider)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, &'static CryptoProvider)> =
        vec![("ring", &crypto::RING_PROVIDER)];
    #[cfg(feature = "jwt-bench-backends")]
    {
        v.push((
            "rust_crypto",
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        ));
        v.push(("aws_lc", &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER));
    }
    v
}

fn signature(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("signature");
    for (name, alg, token, key) in [
        ("rs256", Algorithm::RS256, &s.rs256, &s.rsa_key),
        ("es256", Algorithm::ES256, &s.es256, &s.ec_key),
    ] {
        let (msg, sig) = split(token);
        for (pname, p) in providers() {
            let v = (p.verifier_factory)(&alg, key).unwrap();
            assert!(v.verify(msg, &sig).is_ok(), "{pname} {name}");
            g.bench_function(format!("{name}/{pname}"), |b| {
                b.iter(|| {
                    let v = (p.verifier_factory)(&alg, black_box(key)).unwrap();
                    v.verify(black_box(msg), black_box(&sig)).is_ok()
                })
            });
        }
    }
    // ring without jsonwebtoken around it.
    let (msg, sig) = split(&s.rs256);
    let (n, e) = &s.rsa_n_e;
    g.bench_function("rs256/ring_direct", |b| {
        b.iter(|| {
            ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    black_box(msg),
                    black_box(&sig),
                )
                .is_ok()
        })
    });
    let (msg, sig) = split(&s.es256);
    g.bench_function("es256/ring_direct", |b| {
        b.iter(|| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &s.ec_point,
            )
            .verify(black_box(msg), black_box(&sig))
            .is_ok()
        })
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("verify");
    g.bench_function("rs256", |b| {
        b.iter(|| s.issuers.verify(black_box(&s.rs256), AUD, NOW).unwrap())
    });
    g.bench_function("es256", |b| {
        b.iter(|| s.issuers.verify(black_box(&s.es256), AUD, NOW).unwrap())
    });
    // A token portcullis issues itself (issue 11): HS256 under its own key,
    // cold (no cache), the same claims as the IdP tokens above plus groups.
    let key = minted::MintKey::new("k1", &[7; 32]);
    let (scopes, groups) = (vec!["mcp".to_string()], vec!["engineering".to_string()]);
    let token = minted::mint(
        &key,
        &minted::AccessClaims {
            issuer: "https://mcp.example.com",
            subject: "alice",
            audience: AUD,
            client_id: "https://claude.ai/oauth/mcp-oauth-client-metadata",
            scopes: &scopes,
            email: Some("alice@example.com"),
            groups: &groups,
            issued_at: NOW - 60,
            expires: NOW + 3600,
            token_id: "0f3a9c2e-grant",
        },
    );
    let name: std::sync::Arc<str> = "portcullis".into();
    let expect = minted::Expect {
        issuer_name: &name,
        issuer: "https://mcp.example.com",
        audience: AUD,
        max_lifetime: 86_400,
    };
    let keys = [key];
    g.bench_function("minted_hs256", |b| {
        b.iter(|| minted::verify(&keys, black_box(&token), &expect, NOW).unwrap())
    });
    // What a cached minted token costs on the request path: the per-core
    // cache hit plus the revocation check against 1,000 revoked grants.
    let issued = minted::Issued {
        issuer: "https://mcp.example.com".into(),
        issuer_name: name.clone(),
        keys: vec![minted::MintKey::new("k1", &[7; 32])],
        max_lifetime: 86_400,
        revoked: (0..1000).map(|i| format!("grant{i}")).collect(),
    };
    let p = Rc::new(issued.verify(&token, AUD, NOW).unwrap());
    let mut cache = TokenCache::default();
    cache.insert(&token, AUD, p);
    g.bench_function("minted_hs256_cached_with_revocations", |b| {
        b.iter(|| {
            let p = cache.get(black_box(&token), AUD, NOW).unwrap();
            assert!(!issued.is_revoked(&p));
        })
    });
    g.finish();
}

fn caches(c: &mut Criterion) {
    let s = setup();
    let p = Rc::new(s.issuers.verify(&s.rs256, AUD, NOW).unwrap());
    let mut cache = TokenCache::default();
    cache.insert(&s.rs256, AUD, p.clone());
    println!("token length {} bytes", s.rs256.len());
    c.bench_function("cache/hit", |b| {
        b.iter(|| cache.get(black_box(&s.rs256), AUD, NOW).is_some())
    });
    c.bench_function("cache/miss_same_slot_other_audience", |b| {
        b.iter(|| {
            cache
                .get(black_box(&s.rs256), "https://other", NOW)
                .is_some()
        })
    });
    let signer = AssertionSigner::generate("portcullis").unwrap();
    c.bench_function("assertion/sign", |b| {
        b.iter(|| signer.sign(black_box(&p), "https://upstream.internal/mcp", NOW, "req-1"))
    });
    let mut ac = AssertionCache::new(1024);
    ac.get_or_sign(&signer, &p, "https://upstream.internal/mcp", NOW, "req-1");
    c.bench_function("assertion/cache_hit", |b| {
        b.iter(|| {
            ac.get_or_sign(
                &signer,
                black_box(&p),
                "https://upstream.internal/mcp",
                NOW,
                "req-2",
            )
        })
    });
}

/// What injecting a user's upstream token adds on the cached path (issue
/// 12): the per-core cache hit and the
/// header line, beside the assertion an assertion-only route adds.
fn upstream_tokens(c: &mut Criterion) {
    use portcullis::internal::proxy::UpstreamTokens;
    let mut cache = UpstreamTokens::default();
    for i in 0..1000 {
        cache.insert(
            &format!("user{i}"),
            0,
            zeroize::Zeroizing::new(format!("gho_{i:0>36}")),
            NOW + 3600,
        );
    }
    let mut up = Vec::with_capacity(1024);
    c.bench_function("inject/cache_hit_and_header", |b| {
        b.iter(|| {
            up.clear();
            let t = cache.get(0, black_box("user500"), 0, NOW).unwrap();
            up.extend_from_slice(b"Authorization: Bearer ");
            up.extend_from_slice(t.as_bytes());
            up.extend_from_slice(b"\r\n");
        })
    });
}

criterion_group!(benches, signature, verify, caches, upstream_tokens);
criterion_main!(benches);
