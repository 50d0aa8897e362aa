//! Policy compilation on arbitrary YAML: parsing, compiling and, when that
//! succeeds, evaluating and list filtering against fixed facts never panic.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis::internal::policy::{Facts, ItemKind, Policy, RuleConfig};
use portcullis::internal::Principal;

const SHARED: &str = r#"
base:
  - allow: { groups: { has: eng } }
  - deny: { mcp_tool: { equals: drop } }
loop: [{ use: loop }]
"#;

fn shared() -> &'static HashMap<String, Vec<RuleConfig>> {
    static S: OnceLock<HashMap<String, Vec<RuleConfig>>> = OnceLock::new();
    S.get_or_init(|| serde_yaml_ng::from_str(SHARED).unwrap())
}

fn principal() -> Principal {
    let claims = serde_json::json!({"org": {"team": "infra", "tags": ["a"]}, "n": 3});
    Principal {
        issuer_name: Arc::from("corp"),
        issuer: "https://idp.example.com".into(),
        sub: "alice".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["eng".into()],
        scopes: vec!["mcp:read".into()],
        client_id: Some("cli".into()),
        exp: 0,
        claims: claims.as_object().unwrap().clone(),
        baseline_key: Default::default(),
        record_json: Default::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = serde_yaml_ng::from_str::<Vec<RuleConfig>>(text) else {
        return;
    };
    let Ok(policy) = Policy::compile(&rules, shared(), "fuzz") else {
        return;
    };
    let p = principal();
    let headers = [
        httparse::Header { name: "X-Tenant", value: b"acme" },
        httparse::Header { name: "x-tenant", value: b"\xff" },
    ];
    let mut args = br#"{"repo":"acme/web","n":5,"list":[1,{"a~b/c":null}],"d":1,"d":2}"#.to_vec();
    let tape = simd_json::to_tape(&mut args).unwrap();
    let calls: [(&str, Option<&str>, Option<&str>); 5] = [
        ("tools/call", Some("git.push"), None),
        ("resources/read", None, Some("file:///srv/../etc/passwd")),
        ("prompts/get", Some("p"), None),
        ("tools/list", None, None),
        ("", None, None),
    ];
    for (i, (method, name, uri)) in calls.into_iter().enumerate() {
        let f = Facts {
            principal: (i != 4).then_some(&p),
            method: (!method.is_empty()).then(|| portcullis::internal::mcp::Method::parse(method)),
            name,
            uri,
            arguments: (i == 0).then_some(&tape.0[..]),
            source_ip: if i % 2 == 0 { "::ffff:10.0.0.1".parse().unwrap() } else { "2001:db8::1".parse().unwrap() },
            now_unix: [1_767_607_200, 0, -1, i64::MAX, i64::MIN][i],
            headers: &headers,
            anomaly: None,
            content: &[],
        };
        let _ = policy.evaluate(&f);
        for kind in [ItemKind::Tool, ItemKind::Prompt, ItemKind::Resource, ItemKind::ResourceTemplate] {
            let _ = policy.visible(&f, kind, "file:///srv/{x}");
        }
    }
});
