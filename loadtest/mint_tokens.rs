//! Load-test helper (not part of the proxy): an ES256 issuer key and tokens signed with it.
//!
//!   mint_tokens keygen <dir>
//!       writes <dir>/issuer.p8 (PKCS#8 DER, P-256) and <dir>/jwks.json (its public key,
//!       kid "loadtest-1", alg ES256, use sig)
//!   mint_tokens mint <dir> <count> <claims.json> <out> [lifetime-seconds]
//!       signs <count> compact JWTs with <dir>/issuer.p8, one per line in <out>. Each gets the
//!       claims of <claims.json> (a JSON object: iss, aud, sub, groups, ...) plus
//!       iat = now, exp = now + lifetime (default 7200) and a distinct jti, so every token is
//!       different (a cold token cache sees each one as new).
//!
//! Built by loadtest/run (cargo example `mint_tokens`); see loadtest/ltlib.py.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const KID: &str = "loadtest-1";

fn die(msg: String) -> ! {
    eprintln!("mint_tokens: {msg}");
    std::process::exit(2)
}

fn keygen(dir: &Path) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .unwrap_or_else(|_| die("key generation failed".into()));
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .unwrap_or_else(|_| die("key load failed".into()));
    let point = key.public_key().as_ref(); // 0x04 || x || y
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "use": "sig", "alg": "ES256", "kid": KID,
    }]});
    std::fs::write(dir.join("issuer.p8"), pkcs8.as_ref())
        .unwrap_or_else(|e| die(format!("write issuer.p8: {e}")));
    std::fs::write(dir.join("jwks.json"), jwks.to_string())
        .unwrap_or_else(|e| die(format!("write jwks.json: {e}")));
}

fn mint(dir: &Path, count: usize, claims_path: &Path, out: &Path, lifetime: u64) {
    let rng = SystemRandom::new();
    let pkcs8 = std::fs::read(dir.join("issuer.p8"))
        .unwrap_or_else(|e| die(format!("read issuer.p8: {e}")));
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
        .unwrap_or_else(|_| die("bad issuer.p8".into()));
    let text = std::fs::read_to_string(claims_path)
        .unwrap_or_else(|e| die(format!("read {}: {e}", claims_path.display())));
    let mut claims: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| die(format!("claims: {e}")));
    if !claims.is_object() {
        die("claims must be a JSON object".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": KID}).to_string());
    let f = std::fs::File::create(out).unwrap_or_else(|e| die(format!("create out: {e}")));
    let mut w = std::io::BufWriter::new(f);
    for i in 0..count {
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + lifetime);
        claims["jti"] = json!(format!("lt-{now}-{i}"));
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let sig = key
            .sign(&rng, input.as_bytes())
            .unwrap_or_else(|_| die("signing failed".into()));
        writeln!(w, "{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
            .unwrap_or_else(|e| die(format!("write: {e}")));
    }
    w.flush().unwrap_or_else(|e| die(format!("write: {e}")));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("keygen") if args.len() == 3 => keygen(Path::new(&args[2])),
        Some("mint") if args.len() == 6 || args.len() == 7 => {
            let count = args[3].parse().unwrap_or_else(|_| die("bad count".into()));
            let lifetime = args
                .get(6)
                .map(|s| s.parse().unwrap_or_else(|_| die("bad lifetime".into())))
                .unwrap_or(7200);
            mint(Path::new(&args[2]), count, Path::new(&args[4]), Path::new(&args[5]), lifetime)
        }
        _ => die(
            "usage: mint_tokens keygen <dir> | mint <dir> <count> <claims.json> <out> [lifetime]"
                .into(),
        ),
    }
}
