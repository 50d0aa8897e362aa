//! Every request case of aws/http-desync-guardian (read from
//! ../shared/data/http-desync-guardian, never copied here) through the request
//! head parser. Severe and Ambiguous requests must be rejected (portcullis
//! never forwards a request whose framing a peer could read differently);
//! Compliant requests must be accepted.

use portcullis::internal::http1::{parse_request, HeadLimits};
use portcullis::internal::HttpError;

/// Cases marked Compliant that portcullis rejects on purpose.
const DEVIATIONS: &[(&str, &str)] = &[
    (
        "International in URI",
        "raw non-ASCII bytes are not valid in a request target (RFC 3986: percent-encode)",
    ),
    ("Empty URI", "RFC 9112 has no empty request-target"),
    (
        "Compliant URL",
        "its target holds `#` (a fragment): RFC 9112 request-target has none",
    ),
];
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    name: String,
    uri: String,
    method: String,
    version: String,
    headers: Vec<Header>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: serde_yaml_ng::Value,
}

#[derive(Deserialize)]
struct Expected {
    tier: String,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/http-desync-guardian")
}

/// Characters of the YAML strings are bytes (`\xff` means the byte 0xff).
fn bytes(s: &str) -> Vec<u8> {
    s.chars().map(|c| u32::from(c).min(255) as u8).collect()
}

fn value_text(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default(),
    }
}

fn raw_request(case: &Case) -> Vec<u8> {
    let mut raw = bytes(&case.method);
    raw.push(b' ');
    raw.extend(bytes(&case.uri));
    if !case.version.is_empty() {
        raw.push(b' ');
        raw.extend(bytes(&case.version));
    }
    raw.extend_from_slice(b"\r\n");
    if !case
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"))
    {
        raw.extend_from_slice(b"Host: example.com\r\n");
    }
    for h in &case.headers {
        raw.extend(bytes(&h.name));
        raw.extend_from_slice(b": ");
        raw.extend(bytes(&value_text(&h.value)));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

#[test]
fn desync_guardian_cases() {
    let dir = data_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the shared test data must sit beside the project)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut total, mut failures) = (0, Vec::new());
    let mut tally = std::collections::BTreeMap::<(String, &str), usize>::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let cases: Vec<Case> =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in cases {
            total += 1;
            let raw = raw_request(&case);
            let mut headers = [portcullis::internal::http1::NO_HEADER; 64];
            let verdict = parse_request(&raw, &mut headers, &HeadLimits::default());
            let accepted = matches!(verdict, Ok(Some(_)));
            let outcome = match &verdict {
                Ok(Some(_)) => "accepted",
                Ok(None) => "incomplete",
                Err(_) => "rejected",
            };
            *tally
                .entry((case.expected.tier.clone(), outcome))
                .or_default() += 1;
            let ok = match case.expected.tier.as_str() {
                "Severe" | "Ambiguous" => !accepted,
                // Valid transfer codings other than a lone `chunked` are
                // answered 501 (RFC 9112 §6.1): never decoded, never forwarded.
                "Compliant" => {
                    accepted
                        || matches!(verdict, Err(HttpError::NotImplemented(_)))
                        || DEVIATIONS.iter().any(|(name, _)| *name == case.name)
                }
                // Acceptable: portcullis may be stricter than the RFC needs.
                _ => true,
            };
            if !ok {
                failures.push(format!(
                    "{}: {:?} (expected {}): {} {:?}",
                    file.file_name().unwrap().to_string_lossy(),
                    case.name,
                    case.expected.tier,
                    outcome,
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
    }
    for ((tier, outcome), n) in &tally {
        eprintln!("{tier:>10} {outcome:>10}: {n}");
    }
    assert!(
        total > 150,
        "only {total} cases read from {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every example configuration shipped in config/ passes `portcullis check`.
#[test]
fn example_configs_compile() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            portcullis::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n > 0, "no example configs in {}", dir.display());
}
