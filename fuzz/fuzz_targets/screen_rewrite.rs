//! Redaction on arbitrary bytes, differential against serde_json: what
//! serde_json reads as JSON the screen reads too (unless nested deeper than
//! its cap), and redacting every detector gives JSON again, of the same
//! shape (same keys, array lengths, numbers, booleans and nulls; only
//! strings may change) with the same message ids. An empty mask copies the
//! body byte for byte.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::internal::screen::{JsonError, Mask, Screen, ScreenConfig};
use serde_json::Value;

fn screen() -> &'static Screen {
    static S: OnceLock<Screen> = OnceLock::new();
    S.get_or_init(|| {
        let config: ScreenConfig =
            serde_yaml_ng::from_str("custom: [{ name: acme_id, regex: 'ACME-[0-9]{4}' }]").unwrap();
        Screen::compile(&config).unwrap()
    })
}

/// Same shape; strings may differ except where `id` says they must not.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_shape(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|((ka, a), (kb, b))| ka == kb && same_shape(a, b))
        }
        (a, b) => a == b,
    }
}

fn ids(v: &Value) -> Vec<Option<&Value>> {
    match v {
        Value::Array(items) => items.iter().map(|m| m.get("id")).collect(),
        other => vec![other.get("id")],
    }
}

fuzz_target!(|data: &[u8]| {
    let screen = screen();
    let mut out = Vec::new();
    let redacted = screen.redact(data, Mask::ALL, &mut out);
    let before: Result<Value, _> = serde_json::from_slice(data);
    match (&before, &redacted) {
        (Ok(before), Ok(_)) => {
            let after: Value = serde_json::from_slice(&out).expect("redaction output is JSON");
            assert!(same_shape(before, &after), "shape changed");
            assert_eq!(ids(before), ids(&after), "ids changed");
            let mut copy = Vec::new();
            assert_eq!(screen.redact(data, Mask::default(), &mut copy), Ok(0));
            assert_eq!(copy, data);
            assert!(screen.scan(data).is_ok());
        }
        (Ok(_), Err(JsonError::TooDeep)) | (Err(_), _) => {}
        (Ok(_), Err(e)) => panic!("serde_json reads it, the screen refuses it: {e}"),
    }
});
