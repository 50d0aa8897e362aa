//! JWT verification on arbitrary bytes: never panics, and never accepts (no valid signature
//! is reachable from fuzzer input; the seeds are signed tokens that fail a claim check or use
//! a key not in the set).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::identity::{IssuerConfig, Issuers};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;
const AUD: &str = "https://mcp.example.com/a";

fn issuers() -> &'static Issuers {
    static ISSUERS: OnceLock<Issuers> = OnceLock::new();
    ISSUERS.get_or_init(|| {
        let mut rsa: Value = serde_json::from_str(include_str!("../../tests/keys/rsa2048.pub.jwk.json")).unwrap();
        rsa["kid"] = json!("rsa1");
        let ec = json!({"kty":"EC","crv":"P-256","kid":"ec1","alg":"ES256",
            "x":"swb5H54OYnoaONYlTKqyvdalcuLJ7nRPLgnKH4rCtyY","y":"ueS4831oqUCDcr2ZEqMnDR2UiCoMNWEgnNmYH3CYQQA"});
        let oct = json!({"kty":"oct","kid":"hs1","alg":"HS256","k":"c2VjcmV0LWtleS1mb3ItZnV6emluZy1vbmx5LTEyMzQ"});
        let cfg: IssuerConfig = serde_json::from_value(json!({
            "name": "idp", "issuer": "https://idp.example.com",
            "algorithms": ["RS256", "ES256", "HS256"],
            "jwks": {"keys": [rsa, ec, oct]}
        }))
        .unwrap();
        Issuers::compile(&[cfg], Path::new(".")).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let r = issuers().verify(&token, AUD, NOW);
    assert!(r.is_err(), "accepted a token from fuzzer input");
    if let Err(e) = r {
        assert!(!e.reason().is_empty());
    }
});
