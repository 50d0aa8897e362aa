use super::*;
use crate::config::identity::IdentityConfig;
use crate::identity::verify::verify_signature;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use ring::signature::KeyPair;
use serde_json::{json, Value};
use std::rc::Rc;

const ISS: &str = "https://idp.example.com";
const AUD: &str = "https://mcp.example.com/a";
const NOW: i64 = 1_800_000_000;
const RSA_PEM: &[u8] = include_bytes!("../../tests/keys/rsa2048.pem");
const RSA_PUB_PEM: &[u8] = include_bytes!("../../tests/keys/rsa2048.pub.pem");
const RSA_JWK: &str = include_str!("../../tests/keys/rsa2048.pub.jwk.json");
const RSA1024_JWK: &str = include_str!("../../tests/keys/rsa1024.pub.jwk.json");

fn b64(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa_jwk(kid: &str) -> Value {
    let mut v: Value = serde_json::from_str(RSA_JWK).unwrap();
    v["kid"] = json!(kid);
    v["alg"] = json!("RS256");
    v["use"] = json!("sig");
    v
}

struct Ec {
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn ec_key(kid: &str) -> Ec {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as A};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&A, &rng)
        .unwrap()
        .as_ref()
        .to_vec();
    let pair = EcdsaKeyPair::from_pkcs8(&A, &pkcs8, &rng).unwrap();
    let p = pair.public_key().as_ref();
    let jwk = json!({"kty":"EC","crv":"P-256","x":b64(&p[1..33]),"y":b64(&p[33..65]),"kid":kid});
    Ec { pkcs8, jwk }
}

fn cfg(jwks: Value) -> IssuerConfig {
    serde_json::from_value(json!({"name":"idp","issuer":ISS,"jwks":jwks})).unwrap()
}

fn compile(cfgs: &[IssuerConfig]) -> Issuers {
    Issuers::compile(cfgs, Path::new(".")).unwrap()
}

struct Fixture {
    issuers: Issuers,
    ec: Ec,
}

fn fixture_with(f: impl FnOnce(&mut IssuerConfig)) -> Fixture {
    let ec = ec_key("ec1");
    let mut c = cfg(json!({"keys":[rsa_jwk("rsa1"), ec.jwk.clone()]}));
    f(&mut c);
    Fixture {
        issuers: compile(&[c]),
        ec,
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

fn claims() -> Value {
    json!({"iss":ISS,"sub":"alice","aud":AUD,"exp":NOW+600,"iat":NOW-10,
           "scope":"read write","groups":["eng","ops"],"azp":"cli","email":"a@example.com"})
}

fn rs256(kid: &str, claims: &Value) -> String {
    crypto::install();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(&h, claims, &EncodingKey::from_rsa_pem(RSA_PEM).unwrap()).unwrap()
}

fn es256(ec: &Ec, kid: &str, claims: &Value) -> String {
    crypto::install();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(&h, claims, &EncodingKey::from_ec_der(&ec.pkcs8)).unwrap()
}

/// A token with a hand-written header, signed with `key` under `alg`.
fn signed_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    crypto::install();
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn rsa_enc() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}

#[test]
fn valid_rs256_and_es256_give_the_principal() {
    let f = fixture();
    let p = f
        .issuers
        .verify(&rs256("rsa1", &claims()), AUD, NOW)
        .unwrap();
    assert_eq!(&*p.issuer_name, "idp");
    assert_eq!(p.issuer, ISS);
    assert_eq!(p.sub, "alice");
    assert_eq!(p.email.as_deref(), Some("a@example.com"));
    assert_eq!(p.groups, ["eng", "ops"]);
    assert_eq!(p.scopes, ["read", "write"]);
    assert_eq!(p.client_id.as_deref(), Some("cli"));
    assert_eq!(p.exp, NOW + 600);
    assert_eq!(p.claim("azp"), Some(&json!("cli")));
    let p = f
        .issuers
        .verify(&es256(&f.ec, "ec1", &claims()), AUD, NOW)
        .unwrap();
    assert_eq!(p.sub, "alice");
}

#[test]
fn scp_array_single_group_and_client_id_over_azp() {
    let f = fixture();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["a", "b"]);
    c["groups"] = json!("solo");
    c["client_id"] = json!("app");
    let p = f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).unwrap();
    assert_eq!(p.scopes, ["a", "b"]);
    assert_eq!(p.groups, ["solo"]);
    assert_eq!(p.client_id.as_deref(), Some("app"));
}

#[test]
fn alg_none_in_any_case_is_rejected() {
    let f = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg":alg,"kid":"rsa1"}).to_string());
        let p = b64(claims().to_string());
        for sig in ["", "AAAA", "c2ln"] {
            let t = format!("{h}.{p}.{sig}");
            let e = f.issuers.verify(&t, AUD, NOW).unwrap_err();
            let want = if sig.is_empty() {
                AuthError::BadSignature
            } else {
                AuthError::AlgNone
            };
            assert_eq!(e, want, "alg {alg} sig {sig:?}");
        }
        // Two parts only.
        assert!(f.issuers.verify(&format!("{h}.{p}"), AUD, NOW).is_err());
    }
}

#[test]
fn empty_or_missing_signature_is_rejected() {
    let f = fixture();
    let t = rs256("rsa1", &claims());
    let (input, _) = t.rsplit_once('.').unwrap();
    let cases = [
        format!("{input}."),
        input.to_string(),
        format!("{input}.."),
        format!("{input}.AA.AA"),
    ];
    for c in cases {
        assert!(f.issuers.verify(&c, AUD, NOW).is_err(), "{c}");
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let header = json!({"alg":"HS256","typ":"JWT","kid":"rsa1"});
    let t = signed_raw(
        &header,
        &claims(),
        &EncodingKey::from_secret(RSA_PUB_PEM),
        Algorithm::HS256,
    );
    // Issuer allows only RS256/ES256.
    let f = fixture();
    assert_eq!(
        f.issuers.verify(&t, AUD, NOW).unwrap_err(),
        AuthError::AlgNotAllowed
    );
    // Even with HS256 allowed (and an oct key configured), the RSA key stays pinned to RS256.
    let oct = json!({"kty":"oct","k":b64([7u8; 32]),"kid":"hmac1","alg":"HS256"});
    let mut c = cfg(json!({"keys":[rsa_jwk("rsa1"), oct]}));
    c.algorithms = vec!["RS256".into(), "HS256".into()];
    let iss = compile(&[c]);
    assert_eq!(
        iss.verify(&t, AUD, NOW).unwrap_err(),
        AuthError::AlgNotAllowed
    );
    // The oct key itself works for HS256 where configured so.
    let t = signed_raw(
        &json!({"alg":"HS256","kid":"hmac1"}),
        &claims(),
        &EncodingKey::from_secret(&[7u8; 32]),
        Algorithm::HS256,
    );
    assert!(iss.verify(&t, AUD, NOW).is_ok());
}

#[test]
fn embedded_jwk_jku_x5u_x5c_are_ignored() {
    let f = fixture();
    let attacker = ec_key("evil");
    let key = EncodingKey::from_ec_der(&attacker.pkcs8);
    for kid in [Some("evil"), Some("ec1"), None] {
        let mut h = json!({"alg":"ES256","jwk":attacker.jwk,"jku":"https://evil.example/jwks",
                           "x5u":"https://evil.example/cert","x5c":["MIIB"]});
        if let Some(k) = kid {
            h["kid"] = json!(k);
        }
        let t = signed_raw(&h, &claims(), &key, Algorithm::ES256);
        let e = f.issuers.verify(&t, AUD, NOW).unwrap_err();
        assert!(
            matches!(e, AuthError::UnknownKey | AuthError::BadSignature),
            "{kid:?}: {e:?}"
        );
    }
    // A token signed by the trusted key is fine whatever those headers say.
    let h = json!({"alg":"ES256","kid":"ec1","jwk":attacker.jwk,"jku":"https://evil.example/jwks"});
    let t = signed_raw(
        &h,
        &claims(),
        &EncodingKey::from_ec_der(&f.ec.pkcs8),
        Algorithm::ES256,
    );
    assert!(f.issuers.verify(&t, AUD, NOW).is_ok());
}

#[test]
fn kid_is_only_a_map_key() {
    let f = fixture();
    let kids = [
        "../../../../etc/passwd",
        "' OR '1'='1",
        "$(reboot)",
        "`id`",
        "",
        "rsa1\0",
        "RSA1",
        "/dev/null",
    ];
    for kid in kids {
        let h = json!({"alg":"RS256","kid":kid});
        let t = signed_raw(&h, &claims(), &rsa_enc(), Algorithm::RS256);
        assert_eq!(
            f.issuers.verify(&t, AUD, NOW).unwrap_err(),
            AuthError::UnknownKey,
            "{kid:?}"
        );
    }
}

#[test]
fn crit_is_rejected() {
    let f = fixture();
    for crit in [json!(["exp"]), json!([]), json!(["b64"]), json!("x")] {
        let h = json!({"alg":"RS256","kid":"rsa1","crit":crit,"exp":1});
        let t = signed_raw(&h, &claims(), &rsa_enc(), Algorithm::RS256);
        assert_eq!(
            f.issuers.verify(&t, AUD, NOW).unwrap_err(),
            AuthError::UnsupportedCrit
        );
    }
}

#[test]
fn time_and_lifetime_checks() {
    let f = fixture();
    let day = 24 * 3600;
    let cases: &[(&str, Value, Result<(), AuthError>)] = &[
        (
            "exp past leeway",
            json!({"exp": NOW - 6}),
            Err(AuthError::Expired),
        ),
        (
            "exp at now-leeway",
            json!({"exp": NOW - 5}),
            Err(AuthError::Expired),
        ),
        ("exp within leeway", json!({"exp": NOW - 3}), Ok(())),
        (
            "exp missing",
            json!({"exp": null}),
            Err(AuthError::MissingClaim),
        ),
        (
            "exp string",
            json!({"exp": "soon"}),
            Err(AuthError::Malformed),
        ),
        ("exp float", json!({"exp": (NOW + 60) as f64 + 0.5}), Ok(())),
        (
            "nbf future",
            json!({"nbf": NOW + 6}),
            Err(AuthError::NotYetValid),
        ),
        ("nbf within leeway", json!({"nbf": NOW + 5}), Ok(())),
        (
            "iat future",
            json!({"iat": NOW + 6}),
            Err(AuthError::IssuedInFuture),
        ),
        ("iat within leeway", json!({"iat": NOW + 4}), Ok(())),
        (
            "lifetime max",
            json!({"iat": NOW - 10, "exp": NOW - 10 + day}),
            Ok(()),
        ),
        (
            "lifetime too long",
            json!({"iat": NOW - 10, "exp": NOW - 9 + day}),
            Err(AuthError::LifetimeTooLong),
        ),
        (
            "no iat, exp far",
            json!({"iat": null, "exp": NOW + day + 1}),
            Err(AuthError::LifetimeTooLong),
        ),
        (
            "no iat, nbf start",
            json!({"iat": null, "nbf": NOW - 100, "exp": NOW + day - 100}),
            Ok(()),
        ),
        (
            "sub missing",
            json!({"sub": null}),
            Err(AuthError::MissingClaim),
        ),
    ];
    for (name, patch, want) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let got = f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).map(|_| ());
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn max_lifetime_and_leeway_are_configurable() {
    let f = fixture_with(|c| {
        c.max_lifetime = Some(600);
        c.leeway = Some(0);
    });
    let mut c = claims();
    c["exp"] = json!(NOW + 591);
    assert_eq!(
        f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).unwrap_err(),
        AuthError::LifetimeTooLong
    );
    c["exp"] = json!(NOW);
    assert_eq!(
        f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).unwrap_err(),
        AuthError::Expired
    );
    c["exp"] = json!(NOW + 1);
    assert!(f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).is_ok());
}

#[test]
fn issuer_and_audience_checks() {
    let f = fixture();
    let cases: &[(&str, Value, Result<(), AuthError>)] = &[
        (
            "wrong iss",
            json!({"iss": "https://evil.example.com"}),
            Err(AuthError::UnknownIssuer),
        ),
        (
            "iss with slash",
            json!({"iss": "https://idp.example.com/"}),
            Err(AuthError::UnknownIssuer),
        ),
        (
            "iss missing",
            json!({"iss": null}),
            Err(AuthError::UnknownIssuer),
        ),
        (
            "wrong aud",
            json!({"aud": "https://mcp.example.com/b"}),
            Err(AuthError::WrongAudience),
        ),
        (
            "aud prefix",
            json!({"aud": "https://mcp.example.com/"}),
            Err(AuthError::WrongAudience),
        ),
        (
            "aud missing",
            json!({"aud": null}),
            Err(AuthError::WrongAudience),
        ),
        (
            "aud array without",
            json!({"aud": ["x", "y"]}),
            Err(AuthError::WrongAudience),
        ),
        ("aud array with", json!({"aud": ["x", AUD]}), Ok(())),
        (
            "aud number",
            json!({"aud": 5}),
            Err(AuthError::WrongAudience),
        ),
    ];
    for (name, patch, want) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let got = f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).map(|_| ());
        assert_eq!(&got, want, "{name}");
    }
    // Configured audiences replace the route's URL.
    let f = fixture_with(|c| c.audiences = Some(vec!["api://portcullis".into()]));
    let mut c = claims();
    assert_eq!(
        f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).unwrap_err(),
        AuthError::WrongAudience
    );
    c["aud"] = json!("api://portcullis");
    assert!(f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).is_ok());
}

#[test]
fn verify_for_restricts_issuers() {
    let ec = ec_key("ec1");
    let mut other = cfg(json!({"keys":[ec.jwk.clone()]}));
    other.name = "other".into();
    other.issuer = "https://other.example.com".into();
    let iss = compile(&[other, cfg(json!({"keys":[rsa_jwk("rsa1")]}))]);
    let idp = iss.index_of("idp").unwrap();
    let t = rs256("rsa1", &claims());
    assert!(iss.verify_for(&[idp], &t, AUD, NOW).is_ok());
    assert_eq!(
        iss.verify_for(&[0], &t, AUD, NOW).unwrap_err(),
        AuthError::UnknownIssuer
    );
    assert_eq!(
        iss.verify_for(&[], &t, AUD, NOW).unwrap_err(),
        AuthError::UnknownIssuer
    );
    // A token of "other" signed with its key is not accepted as idp's.
    let mut c = claims();
    c["iss"] = json!("https://other.example.com");
    let t = es256(&ec, "ec1", &c);
    assert!(iss.verify_for(&[0], &t, AUD, NOW).is_ok());
    assert_eq!(
        iss.verify_for(&[idp], &t, AUD, NOW).unwrap_err(),
        AuthError::UnknownIssuer
    );
}

#[test]
fn typ_is_checked_where_configured() {
    let f = fixture_with(|c| c.typ = Some("at+jwt".into()));
    let cases: &[(Option<&str>, bool)] = &[
        (Some("at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("application/at+jwt"), true),
        (Some("Application/AT+JWT"), true),
        (Some("JWT"), false),
        (Some("application/jwt"), false),
        (Some("at+jwt "), false),
        (None, false),
    ];
    for (typ, ok) in cases {
        let mut h = json!({"alg":"RS256","kid":"rsa1"});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        let t = signed_raw(&h, &claims(), &rsa_enc(), Algorithm::RS256);
        let got = f.issuers.verify(&t, AUD, NOW);
        assert_eq!(got.is_ok(), *ok, "{typ:?}");
        if !ok {
            assert_eq!(got.unwrap_err(), AuthError::WrongType);
        }
    }
    // Without configuration any typ passes.
    let f = fixture();
    let t = signed_raw(
        &json!({"alg":"RS256","kid":"rsa1","typ":"whatever"}),
        &claims(),
        &rsa_enc(),
        Algorithm::RS256,
    );
    assert!(f.issuers.verify(&t, AUD, NOW).is_ok());
}

#[test]
fn oversized_tokens_are_rejected_before_decoding() {
    let f = fixture();
    let mut c = claims();
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let t = rs256("rsa1", &c);
    assert_eq!(
        f.issuers.verify(&t, AUD, NOW).unwrap_err(),
        AuthError::Oversized
    );
    let junk = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        f.issuers.verify(&junk, AUD, NOW).unwrap_err(),
        AuthError::Oversized
    );
    // Just under the cap is decoded normally.
    let mut c = claims();
    c["pad"] = json!("x".repeat(5000));
    assert!(f.issuers.verify(&rs256("rsa1", &c), AUD, NOW).is_ok());
}

/// Flips the lowest bit of the last character of a segment whose length leaves unused
/// trailing bits: same decoded bytes under a lenient decoder, non-canonical text.
fn non_canonical(seg: &str) -> Option<String> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if seg.len().is_multiple_of(4) {
        return None;
    }
    let last = *seg.as_bytes().last()?;
    let i = A.iter().position(|&c| c == last)?;
    Some(format!("{}{}", &seg[..seg.len() - 1], A[i ^ 1] as char))
}

#[test]
fn non_canonical_base64url_is_rejected() {
    let f = fixture();
    // Pad the claims so that every segment has trailing bits.
    let mut found = 0;
    for pad in 0..3 {
        let mut c = claims();
        c["p"] = json!("x".repeat(pad));
        let t = rs256("rsa1", &c);
        assert!(f.issuers.verify(&t, AUD, NOW).is_ok());
        let parts: Vec<&str> = t.split('.').collect();
        for i in 0..3 {
            let Some(seg) = non_canonical(parts[i]) else {
                continue;
            };
            found += 1;
            let mut p = parts.clone();
            p[i] = &seg;
            assert_eq!(
                f.issuers.verify(&p.join("."), AUD, NOW).unwrap_err(),
                AuthError::Malformed,
                "segment {i}"
            );
        }
        // Padding, standard alphabet, whitespace.
        for i in 0..3 {
            for bad in [
                format!("{}=", parts[i]),
                format!("{}==", parts[i]),
                format!(" {}", parts[i]),
            ] {
                let mut p = parts.clone();
                p[i] = &bad;
                assert!(f.issuers.verify(&p.join("."), AUD, NOW).is_err());
            }
        }
        let std_alpha = t.replace('-', "+").replace('_', "/");
        if std_alpha != t {
            assert!(f.issuers.verify(&std_alpha, AUD, NOW).is_err());
        }
    }
    assert!(found >= 3, "no segment with trailing bits was tried");
}

#[test]
fn es256_psychic_signatures_are_rejected() {
    let f = fixture();
    let t = es256(&f.ec, "ec1", &claims());
    let (input, _) = t.rsplit_once('.').unwrap();
    let n = hex_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let zero = [0u8; 32];
    for (r, s) in [
        (&zero[..], &zero[..]),
        (&n[..], &n[..]),
        (&zero[..], &n[..]),
        (&n[..], &zero[..]),
    ] {
        let sig = [r, s].concat();
        let forged = format!("{input}.{}", b64(&sig));
        assert_eq!(
            f.issuers.verify(&forged, AUD, NOW).unwrap_err(),
            AuthError::BadSignature
        );
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn tampered_payload_or_header_fails() {
    let f = fixture();
    let t = rs256("rsa1", &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("root");
    let p = b64(c.to_string());
    let forged = format!("{}.{}.{}", parts[0], p, parts[2]);
    assert_eq!(
        f.issuers.verify(&forged, AUD, NOW).unwrap_err(),
        AuthError::BadSignature
    );
    let h = b64(json!({"alg":"RS256","kid":"rsa1","typ":"JWT","x":1}).to_string());
    let forged = format!("{h}.{}.{}", parts[1], parts[2]);
    assert_eq!(
        f.issuers.verify(&forged, AUD, NOW).unwrap_err(),
        AuthError::BadSignature
    );
    // alg switched to one the key is not pinned to.
    let h = b64(json!({"alg":"PS256","kid":"rsa1"}).to_string());
    let forged = format!("{h}.{}.{}", parts[1], parts[2]);
    assert_eq!(
        f.issuers.verify(&forged, AUD, NOW).unwrap_err(),
        AuthError::AlgNotAllowed
    );
}

#[test]
fn malformed_inputs() {
    let f = fixture();
    for t in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b.c.d",
        "e30.e30.AA",
        "W10.e30.AAAA",
        "e30.W10.AAAA",
    ] {
        assert!(f.issuers.verify(t, AUD, NOW).is_err(), "{t}");
    }
    // Header with duplicate alg.
    let h = b64(r#"{"alg":"RS256","alg":"none","kid":"rsa1"}"#);
    let t = format!("{h}.{}.AAAA", b64(claims().to_string()));
    assert_eq!(
        f.issuers.verify(&t, AUD, NOW).unwrap_err(),
        AuthError::Malformed
    );
}

// ---- configuration and key sets ----

#[test]
fn config_shape() {
    let c: IdentityConfig = serde_yaml_ng::from_str(
        "issuers:\n  - name: a\n    issuer: https://a\n    jwks_file: keys.json\n    typ: at+jwt\n    leeway: 3\n",
    )
    .unwrap();
    assert_eq!(c.issuers[0].algorithms, ["RS256", "ES256"]);
    assert_eq!(c.issuers[0].leeway, Some(3));
    let bad = serde_yaml_ng::from_str::<IdentityConfig>(
        "issuers:\n  - name: a\n    issuer: b\n    jwks_url: x\n",
    );
    assert!(bad.is_err());
}

fn compile_err(c: IssuerConfig) -> String {
    match Issuers::compile(&[c], Path::new(".")) {
        Ok(_) => panic!("compiled"),
        Err(e) => e[0].1.clone(),
    }
}

#[test]
fn compile_errors() {
    let jwks = json!({"keys":[rsa_jwk("rsa1")]});
    let mut c = cfg(jwks.clone());
    c.jwks_file = Some("x.json".into());
    assert!(compile_err(c).contains("exactly one"));
    let mut c = cfg(jwks.clone());
    c.algorithms = vec!["none".into()];
    assert!(compile_err(c).contains("none"));
    let mut c = cfg(jwks.clone());
    c.algorithms = vec!["XX1".into()];
    assert!(compile_err(c).contains("unsupported"));
    let weak: Value = serde_json::from_str(RSA1024_JWK).unwrap();
    assert!(compile_err(cfg(json!({"keys":[weak]}))).contains("1024 bits"));
    // An all-zero modulus is a short key, not an arithmetic overflow.
    let zero = json!({"kty": "RSA", "kid": "z", "n": "AAAA", "e": "AQAB"});
    assert!(compile_err(cfg(json!({"keys":[zero]}))).contains("0 bits"));
    assert!(
        compile_err(cfg(json!({"keys":[rsa_jwk("a"), rsa_jwk("a")]}))).contains("duplicate kid")
    );
    // Only an encryption key: nothing usable.
    let mut enc = rsa_jwk("e");
    enc["use"] = json!("enc");
    assert!(compile_err(cfg(json!({"keys":[enc.clone()]}))).contains("no usable"));
    // Skipped beside a usable key.
    assert!(Issuers::compile(&[cfg(json!({"keys":[enc, rsa_jwk("r")]}))], Path::new(".")).is_ok());
    // A key whose alg is not allowed is skipped.
    let mut k = rsa_jwk("r");
    k["alg"] = json!("RS512");
    assert!(compile_err(cfg(json!({"keys":[k]}))).contains("no usable"));
    // HS256 only with an inline oct key.
    let mut c = cfg(jwks.clone());
    c.jwks = None;
    c.jwks_file = Some("k.json".into());
    c.algorithms = vec!["HS256".into()];
    assert!(compile_err(c).contains("HS*"));
    // oct keys are skipped unless HS is listed.
    let oct = json!({"kty":"oct","k":b64([1u8; 32])});
    assert!(compile_err(cfg(json!({"keys":[oct]}))).contains("no usable"));
    // Missing file names the path.
    let mut c = cfg(jwks);
    c.jwks = None;
    c.jwks_file = Some("no/such/file.json".into());
    assert!(compile_err(c).contains("no/such/file.json"));
    // Duplicate names.
    let a = cfg(json!({"keys":[rsa_jwk("rsa1")]}));
    assert!(Issuers::compile(&[a.clone(), a], Path::new(".")).is_err());
}

#[test]
fn jwks_file_is_relative_to_base_dir() {
    let dir = std::env::temp_dir().join(format!("portcullis-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keys.json"),
        json!({"keys":[rsa_jwk("rsa1")]}).to_string(),
    )
    .unwrap();
    let mut c = cfg(Value::Null);
    c.jwks = None;
    c.jwks_file = Some("keys.json".into());
    let iss = Issuers::compile(&[c], &dir).unwrap();
    assert!(iss.verify(&rs256("rsa1", &claims()), AUD, NOW).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kidless_keys_are_tried_by_alg() {
    let mut k = rsa_jwk("x");
    k.as_object_mut().unwrap().remove("kid");
    let iss = compile(&[cfg(json!({"keys":[k]}))]);
    let t = signed_raw(
        &json!({"alg":"RS256"}),
        &claims(),
        &rsa_enc(),
        Algorithm::RS256,
    );
    assert!(iss.verify(&t, AUD, NOW).is_ok());
    // A kid naming no key is unknown even if a kid-less key would verify.
    assert_eq!(
        iss.verify(&rs256("rsa1", &claims()), AUD, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
}

// ---- remote JWKS ----

mod server {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    pub(super) struct Server {
        pub url: String,
        pub body: Arc<Mutex<(u16, String)>>,
        pub hits: Arc<AtomicUsize>,
    }

    pub(super) fn start(body: String) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        let state = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = s.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes());
            }
        });
        Server {
            url,
            body: state,
            hits,
        }
    }
}

fn remote_cfg(url: &str) -> IssuerConfig {
    serde_json::from_value(json!({"name":"idp","issuer":ISS,"jwks_uri":url})).unwrap()
}

#[test]
fn unreachable_jwks_uri_is_a_startup_error_naming_the_url() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", l.local_addr().unwrap());
    drop(l);
    let e = compile_err(remote_cfg(&url));
    assert!(e.contains(&url), "{e}");
}

#[test]
fn remote_refresh_replaces_keys_and_keeps_the_last_good_set() {
    use std::sync::atomic::Ordering;
    let ec = ec_key("ec2");
    let srv = server::start(json!({"keys":[rsa_jwk("rsa1")]}).to_string());
    let iss = compile(&[remote_cfg(&srv.url)]);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    assert!(iss.verify(&rs256("rsa1", &claims()), AUD, NOW).is_ok());

    // Unknown kid: fails now, asks for a refresh, fetches nothing on the request path.
    let t2 = es256(&ec, "ec2", &claims());
    assert_eq!(
        iss.verify(&t2, AUD, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
    assert!(iss.refresh_wanted(0));
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    // Rate limit: the refresher does not honour it within MIN_REFETCH of the last fetch.
    iss.refresh_due();
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);

    // A refresh picks up the rotated set.
    srv.body.lock().unwrap().1 = json!({"keys":[rsa_jwk("rsa1"), ec.jwk.clone()]}).to_string();
    assert_eq!(iss.refresh(0), Ok(2));
    assert!(!iss.refresh_wanted(0));
    assert!(iss.verify(&t2, AUD, NOW).is_ok());

    // Failures keep the last good set.
    *srv.body.lock().unwrap() = (500, "oops".into());
    assert!(iss.refresh(0).is_err());
    *srv.body.lock().unwrap() = (200, "{\"keys\":[]}".into());
    assert!(iss.refresh(0).is_err());
    *srv.body.lock().unwrap() = (200, "not json".into());
    assert!(iss.refresh(0).is_err());
    assert!(iss.verify(&t2, AUD, NOW).is_ok());
    assert!(iss.verify(&rs256("rsa1", &claims()), AUD, NOW).is_ok());

    // /metrics: the keys held, one good refresh, three failed, failing now.
    let mut m = String::new();
    iss.render_metrics(&mut m);
    let name = remote_cfg(&srv.url).name;
    for line in [
        format!("portcullis_jwks_keys{{issuer=\"{name}\"}} 2"),
        format!("portcullis_jwks_refreshes_total{{issuer=\"{name}\",outcome=\"ok\"}} 1"),
        format!("portcullis_jwks_refreshes_total{{issuer=\"{name}\",outcome=\"failed\"}} 3"),
        format!("portcullis_jwks_refresh_failing{{issuer=\"{name}\"}} 1"),
    ] {
        assert!(
            m.contains(&format!("{line}\n")),
            "missing {line:?} in:\n{m}"
        );
    }
}

#[test]
fn refresher_thread_stops() {
    let srv = server::start(json!({"keys":[rsa_jwk("rsa1")]}).to_string());
    let iss = Arc::new(compile(&[remote_cfg(&srv.url)]));
    let stop = Arc::new(AtomicBool::new(false));
    let h = iss.start_refresher(stop.clone()).expect("thread");
    stop.store(true, Ordering::Relaxed);
    h.thread().unpark();
    h.join().unwrap();
    // No thread without remote sets.
    let local = Arc::new(compile(&[cfg(json!({"keys":[rsa_jwk("rsa1")]}))]));
    assert!(local.start_refresher(stop).is_none());
}

// ---- token cache ----

fn principal(exp: i64) -> Rc<Principal> {
    Rc::new(Principal {
        issuer_name: Arc::from("idp"),
        issuer: ISS.into(),
        sub: "alice".into(),
        email: None,
        groups: vec![],
        scopes: vec![],
        client_id: None,
        exp,
        claims: Default::default(),
        baseline_key: Default::default(),
        record_json: Default::default(),
    })
}

#[test]
fn token_cache_hits_only_for_same_token_audience_and_before_exp() {
    let mut c = TokenCache::new(64);
    let t = rs256("rsa1", &claims());
    assert!(c.get(&t, AUD, NOW).is_none());
    c.insert(&t, AUD, principal(NOW + 100));
    assert_eq!(c.get(&t, AUD, NOW).unwrap().sub, "alice");
    assert!(c.get(&t, "https://mcp.example.com/b", NOW).is_none());
    assert!(c.get(&t, AUD, NOW + 100).is_none());
    assert!(c.get(&t, AUD, NOW + 99).is_some());
    // A different token (same tail, so same slot) never gets this entry.
    let other = format!("x{}", &t[1..]);
    assert!(c.get(&other, AUD, NOW).is_none());
}

#[test]
fn token_cache_is_bounded_and_evicts_on_collision() {
    let mut c = TokenCache::new(1);
    c.insert("a.b.c", AUD, principal(NOW + 100));
    c.insert("d.e.f", AUD, principal(NOW + 100));
    assert!(c.get("a.b.c", AUD, NOW).is_none());
    assert!(c.get("d.e.f", AUD, NOW).is_some());
}

#[test]
fn negative_cache() {
    let mut c = TokenCache::default();
    c.insert_rejected("bad", AUD, NOW, AuthError::Expired);
    assert_eq!(
        c.get_rejected("bad", AUD, NOW + 9),
        Some(AuthError::Expired)
    );
    assert_eq!(c.get_rejected("bad", AUD, NOW + 10), None);
    assert_eq!(c.get_rejected("bad", "other", NOW), None);
    c.insert_rejected("kid", AUD, NOW, AuthError::UnknownKey);
    assert_eq!(c.get_rejected("kid", AUD, NOW), None);
}

// ---- assertions ----

#[test]
fn assertion_verifies_with_the_published_jwk() {
    crypto::install();
    let signer = AssertionSigner::generate("portcullis").unwrap();
    let mut p = (*principal(NOW + 100)).clone();
    p.email = Some("a@example.com".into());
    p.groups = vec!["eng".into()];
    p.client_id = Some("cli".into());
    let jwt = signer.sign(&p, "https://upstream.internal", NOW, "req-1");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&signer.jwks_json()).unwrap();
    let jwk = set.find(signer.kid()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let h = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(h.alg, Algorithm::ES256);
    assert_eq!(h.typ.as_deref(), Some("JWT"));
    assert_eq!(h.kid.as_deref(), Some(signer.kid()));
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&["https://upstream.internal"]);
    v.set_issuer(&["portcullis"]);
    v.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(&jwt, &key, &v).unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["exp"], NOW + 60);
    assert_eq!(c["iat"], NOW);
    assert_eq!(c["idp"], ISS);
    assert_eq!(c["jti"], "req-1");
    assert_eq!(c["email"], "a@example.com");
    assert_eq!(c["groups"], json!(["eng"]));
    assert_eq!(c["client_id"], "cli");
    // And through this module's own verifier, with the published set inline.
    let mut ic = cfg(serde_json::from_str(&signer.jwks_json()).unwrap());
    ic.issuer = "portcullis".into();
    let iss = compile(&[ic]);
    let p2 = iss.verify(&jwt, "https://upstream.internal", NOW).unwrap();
    assert_eq!(p2.sub, "alice");
}

#[test]
fn assertion_cache_reuses_until_30s_before_exp() {
    let signer = AssertionSigner::generate("portcullis").unwrap();
    let p = principal(NOW + 100);
    let mut c = AssertionCache::new(8);
    let a = c.get_or_sign(&signer, &p, "u", NOW, "r1");
    assert_eq!(c.get_or_sign(&signer, &p, "u", NOW + 29, "r2"), a);
    assert_ne!(c.get_or_sign(&signer, &p, "v", NOW + 29, "r3"), a);
    assert_ne!(c.get_or_sign(&signer, &p, "u", NOW + 30, "r4"), a);
    let mut bob = (*p).clone();
    bob.sub = "bob".into();
    let b = c.get_or_sign(&signer, &bob, "u", NOW + 30, "r5");
    assert!(jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&*b).unwrap()["sub"] == "bob");
}

// ---- Wycheproof ----

/// Cases where the file's expected result is not this verifier's, each with its reason
/// (comment, this verifier's outcome, why). Other projects list the same cases as defective.
const DEVIATIONS: &[(&str, bool, &str)] = &[
    (
        "invalidBase64Padding",
        true,
        "the vector's jws is canonical base64url with a correct MAC (the same token as tcId 372 without the '?')",
    ),
    (
        "invalidBase64PaddingInPayload",
        true,
        "the vector's jws is canonical base64url with a correct MAC (the same token as tcId 373 without the '?')",
    ),
    ("InvalidCharacterInsertedInHeader", false, "'?' is not base64url; strict decoding refuses it (RFC 7515 section 2)"),
    ("InvalidCharacterInsertedInPayload", false, "'?' is not base64url; strict decoding refuses it (RFC 7515 section 2)"),
    ("Figure20", false, "the JWK says alg PS256, the JWS uses PS384: keys are pinned to their JWK alg"),
];

#[test]
fn wycheproof_json_web_signature() {
    crypto::install();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/wycheproof/json_web_signature_test.json"
    );
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => panic!("Wycheproof vectors not found at {path}: {e}"),
    };
    let doc: Value = serde_json::from_str(&text).unwrap();
    let all = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let (mut run, mut valid, mut invalid, mut skipped, mut deviating) =
        (0, 0, 0, Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for g in doc["testGroups"].as_array().unwrap() {
        let jwk = g.get("public").unwrap_or(&g["private"]);
        let unsupported = jwk["crv"] == "P-521" || jwk["alg"] == "ES512";
        let key = jwks::parse_key(jwk, &all, true).ok().flatten();
        for t in g["tests"].as_array().unwrap() {
            let id = t["tcId"].as_i64().unwrap();
            let want = t["result"] == "valid";
            if unsupported {
                skipped.push(format!(
                    "tcId {id}: P-521 (ES512) is not supported by jsonwebtoken"
                ));
                continue;
            }
            run += 1;
            let jws = t["jws"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| t["jws"].to_string());
            let got = key
                .as_ref()
                .is_some_and(|k| verify_signature(&jws, k).is_ok());
            let comment = t["comment"].as_str().unwrap_or("");
            if let Some((_, ours, why)) = DEVIATIONS.iter().find(|d| d.0 == comment) {
                assert_eq!(
                    got, *ours,
                    "tcId {id} ({comment}): documented outcome changed"
                );
                if comment == "Figure20" {
                    // Only the pinning rejects it: unpinned, the PS384 signature verifies.
                    let mut unpinned = jwk.clone();
                    unpinned.as_object_mut().unwrap().remove("alg");
                    let k = jwks::parse_key(&unpinned, &all, false).unwrap().unwrap();
                    assert!(verify_signature(&jws, &k).is_ok());
                }
                deviating.push(format!(
                    "tcId {id} {comment}: expected {}, ours {got}: {why}",
                    t["result"]
                ));
                continue;
            }
            if want {
                valid += 1;
            } else {
                invalid += 1;
            }
            if got != want {
                failures.push(format!(
                    "tcId {id} ({}): expected {}, got {got}",
                    t["comment"], t["result"]
                ));
            }
        }
    }
    println!(
        "wycheproof JWS: {run} cases run ({valid} valid, {invalid} invalid), {} skipped",
        skipped.len()
    );
    for s in &skipped {
        println!("  skipped {s}");
    }
    println!(
        "{} cases run where this verifier differs from the file, by design:",
        deviating.len()
    );
    for d in &deviating {
        println!("  {d}");
    }
    assert_eq!(deviating.len(), 6);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(run >= 390, "only {run} cases ran");
}
