//! Client ID Metadata Document validation on arbitrary bytes: never panics,
//! and whatever it accepts is a public client whose document is a JSON object
//! under the size limit naming exactly its URL, with redirect URIs a public
//! client may register, no secret, and only the grant types this server
//! issues. Input: a URL, a NUL, the document; without a NUL, the whole input
//! is the document of `https://client.example/cimd.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::authz::cimd::{check_url, validate, MAX_DOC_BYTES};
use portcullis::internal::authz::redirect;
use portcullis::internal::store::ClientKind;
use serde_json::Value;

const URL: &str = "https://client.example/cimd.json";
const NOW: i64 = 1_800_000_000;
const AGE: i64 = 3600;

fuzz_target!(|data: &[u8]| {
    let (url, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => match std::str::from_utf8(&data[..at]) {
            Ok(url) => (url, &data[at + 1..]),
            Err(_) => return,
        },
        None => (URL, data),
    };
    let client = match validate(url, body, NOW, AGE) {
        Ok(client) => client,
        Err(refused) => {
            assert!(!refused.reason().is_empty());
            return;
        }
    };
    assert_eq!(check_url(url), Ok(()), "accepted a bad URL");
    assert!(body.len() <= MAX_DOC_BYTES, "accepted an oversized document");
    assert_eq!(client.id, url);
    assert_eq!(client.kind, ClientKind::MetadataDocument);
    assert_eq!(client.secret_hash, None);
    assert_eq!((client.created, client.expires), (NOW, Some(NOW + AGE)));
    assert!(!client.name.trim().is_empty());
    assert!(!client.redirect_uris.is_empty());
    for uri in &client.redirect_uris {
        assert_eq!(redirect::check(uri, true), Ok(()), "accepted redirect URI {uri:?}");
    }
    assert_eq!(client.grant_types.first().map(String::as_str), Some("authorization_code"));
    assert!(client.grant_types.len() <= 2);
    assert!(client.grant_types.iter().skip(1).all(|g| g == "refresh_token"));
    // Another reading of the same bytes agrees: an object naming this URL,
    // with no secret.
    let doc: Value = serde_json::from_slice(body).expect("accepted invalid JSON");
    let doc = doc.as_object().expect("accepted a non-object");
    assert_eq!(doc.get("client_id").and_then(Value::as_str), Some(url));
    assert!(!doc.contains_key("client_secret") && !doc.contains_key("client_secret_expires_at"));
});
