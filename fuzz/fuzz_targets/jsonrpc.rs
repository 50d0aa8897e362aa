//! JSON-RPC envelope decoding, differential against serde_json: the decoder
//! never panics, and whatever it accepts serde_json reads as valid JSON with
//! the same method, id, tool name and URI in every message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::mcp::{decode, Id, Scratch};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Scratch::default();
    let mut seen = Vec::new();
    let Ok(shape) = decode(&mut scratch, data, |m| {
        seen.push((
            m.method.map(|m| m.as_str().to_owned()),
            m.id.map(|id| match id {
                Id::Str(s) => Value::from(s),
                Id::Int(n) => Value::from(n),
            }),
            m.name.map(str::to_owned),
            m.uri.map(str::to_owned),
        ))
    }) else {
        return;
    };
    let value: Value = serde_json::from_slice(data).expect("decoder accepted what serde_json rejects");
    let messages: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    assert_eq!(shape.batch, value.is_array());
    assert_eq!(messages.len(), seen.len());
    for (m, (method, id, name, uri)) in messages.iter().zip(&seen) {
        assert_eq!(m.get("method").and_then(Value::as_str), method.as_deref());
        // Ids compare by value: `-0` is the integer 0 to the decoder and the
        // float -0.0 to serde_json; both are 0 to a client.
        let same_id = match (m.get("id"), id) {
            (None, None) => true,
            (Some(Value::String(a)), Some(Value::String(b))) => a == b,
            (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_i64() == b.as_i64() || a.as_f64() == b.as_f64(),
            _ => false,
        };
        assert!(same_id, "id {:?} vs {:?}", m.get("id"), id);
        let params = m.get("params");
        assert_eq!(params.and_then(|p| p.get("name")).and_then(Value::as_str), name.as_deref());
        assert_eq!(params.and_then(|p| p.get("uri")).and_then(Value::as_str), uri.as_deref());
    }
});
