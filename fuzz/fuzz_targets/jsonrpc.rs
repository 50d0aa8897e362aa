//! JSON-RPC envelope decoding, differential against serde_json: the decoder
//! never panics, and whatever it accepts serde_json reads as valid JSON with
//! the same method, id, tool name and URI in every message; and
//! `decode_without_arguments` (which reads the common body without simd-json)
//! answers as `decode` does, with the same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::mcp::{decode, decode_without_arguments, Id, Message, Scratch};
use serde_json::Value;

/// What a message says to the proxy, arguments aside.
fn view(m: &Message<'_>) -> String {
    format!(
        "{:?}",
        (m.kind, m.id, m.method.map(|m| m.as_str().to_owned()), m.name, m.uri, m.task_id)
    ) + &format!("{:?}", (m.protocol_version, m.ref_name, m.ref_uri, m.subscription_uris().collect::<Vec<_>>()))
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = Scratch::default();
    let mut seen = Vec::new();
    let mut views = Vec::new();
    let full = decode(&mut scratch, data, |m| {
        views.push(view(m));
        seen.push((
            m.method.map(|m| m.as_str().to_owned()),
            m.id.map(|id| match id {
                Id::Str(s) => Value::from(s),
                Id::Int(n) => Value::from(n),
            }),
            m.name.map(str::to_owned),
            m.uri.map(str::to_owned),
        ))
    });
    let mut lean_views = Vec::new();
    let lean = decode_without_arguments(&mut scratch, data, |m| {
        assert!(m.arguments.is_none());
        lean_views.push(view(m));
    });
    assert_eq!(full, lean, "decode_without_arguments answered otherwise");
    assert_eq!(views, lean_views, "decode_without_arguments read other messages");
    let Ok(shape) = full else {
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
