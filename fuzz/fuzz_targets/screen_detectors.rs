//! The detector set on arbitrary text: never panics, reports ranges inside
//! the text on code point boundaries, and finds the same matches in a text
//! on its own, as a plain JSON string and as a string whose every code
//! point is a `\u` escape (the body search and the decoded copy agree).
//! Arbitrary bytes as a body never panic either.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::internal::screen::{Screen, ScreenConfig};

fn screen() -> &'static Screen {
    static S: OnceLock<Screen> = OnceLock::new();
    S.get_or_init(|| {
        let config: ScreenConfig =
            serde_yaml_ng::from_str("custom: [{ name: acme_id, regex: 'ACME-[0-9]{4}' }]").unwrap();
        Screen::compile(&config).unwrap()
    })
}

fn counts(screen: &Screen, body: &[u8]) -> BTreeMap<String, u32> {
    let mut n = BTreeMap::new();
    for f in screen.scan(body).expect("a JSON string value scans") {
        *n.entry(f.detector.to_string()).or_insert(0) += f.count;
    }
    n
}

fuzz_target!(|data: &[u8]| {
    let screen = screen();
    let _ = screen.scan(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = screen.find(text);
    let mut alone = BTreeMap::new();
    for (name, r) in &found {
        assert!(r.start < r.end && r.end <= text.len(), "{name} {r:?}");
        assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end), "{name} {r:?}");
        *alone.entry(name.to_string()).or_insert(0u32) += 1;
    }
    let plain = serde_json::to_vec(&serde_json::json!({ "v": text })).unwrap();
    assert_eq!(counts(screen, &plain), alone, "as a plain JSON string");
    let mut escaped = String::from("{\"v\":\"");
    for unit in text.encode_utf16() {
        let _ = write!(escaped, "\\u{unit:04x}");
    }
    escaped.push_str("\"}");
    assert_eq!(counts(screen, escaped.as_bytes()), alone, "as an escaped JSON string");
});
