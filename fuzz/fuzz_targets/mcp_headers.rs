//! The MCP header/body consistency check (`gate`): never panics, and in the
//! modern era whatever it accepts has `Mcp-Method` / `Mcp-Name` headers that
//! decode to exactly the body's method and name (or URI). Input: the
//! Mcp-Method value, a NUL, the Mcp-Name value, a NUL, the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::proxy::{decode_mirror, message, McpHead, Mirrors, MODERN};
use portcullis::internal::mcp::{decode, Kind, Scratch};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(method), Some(name), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Some(method), Some(name)) = (decode_mirror(method), decode_mirror(name)) else {
        return;
    };
    let head = McpHead {
        version: MODERN,
        mirrors: Some(Box::new(Mirrors {
            method: (!method.is_empty()).then(|| method.clone()),
            name: (!name.is_empty()).then(|| name.clone()),
        })),
        legacy_post: false,
    };
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut scratch = Scratch::default();
    let _ = decode(&mut scratch, body, |m| {
        if message(m, &head, batch).is_ok() && m.kind == Some(Kind::Request) {
            assert!(!batch, "a batch passed with mirrored headers");
            assert_eq!(m.method.map(|m| m.as_str()), Some(&*method), "accepted a different Mcp-Method");
            let body_name = match m.method.map(|m| m.as_str()) {
                Some("tools/call") | Some("prompts/get") => m.name,
                Some("resources/read") => m.uri,
                _ => None,
            };
            assert_eq!(body_name.unwrap_or(""), &*name, "accepted a different Mcp-Name");
        }
    });
});
