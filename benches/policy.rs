//! Policy evaluation: one `tools/call` against 10 rules (with and without a
//! rate limit) and against 1,000 rules, and list filtering of 50 tools.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::internal::policy::{Facts, ItemKind, Policy, RuleConfig};
use portcullis::internal::Principal;

const TEN: &str = r#"
- allow: { mcp_method: { in: [initialize, ping, tools/list, prompts/list, resources/list] } }
- allow: { and: [{ groups: { any: [eng, sre] } }, { mcp_tool: { starts_with: git. } }] }
- allow: { and: [{ email: { ends_with: '@example.com' } }, { mcp_tool: { in: [search, fetch, summarize] } }] }
- allow: { and: [{ claim: { path: org.team, equals: infra } }, { mcp_resource: { glob: 'file:///srv/**' } }] }
- deny: { mcp_tool: { in: [drop_db, shell] } }
  message: dangerous tool
- deny: { and: [{ mcp_tool: { equals: git.push } }, { argument: { pointer: /force, equals: true } }] }
- deny: { and: [{ mcp_tool: { starts_with: git. } }, { not: { argument: { pointer: /repo, matches: '^acme/' } } }] }
- deny: { not: { source_ip: { in: ['10.0.0.0/8', '192.168.0.0/16', '2001:db8::/32'] } } }
- deny: { header: { name: X-Tenant, in: [blocked, evil] } }
- deny: { time: { days: [sun], tz: Europe/Berlin } }
"#;

const RATE: &str =
    "- deny: { rate_limit: { requests: 1073741824, per: 1h, key: principal_and_tool } }\n";

/// 1,000 rules: nine in ten tied to one tool, the rest general.
fn thousand() -> String {
    let mut y = String::new();
    for i in 0..1000 {
        let rule = match i % 10 {
            0 => "- deny: { and: [{ header: { name: X-Tenant, equals: blocked } }, { claim: { path: org.level, in: [0, 9] } }] }\n".to_string(),
            1 | 2 => format!("- deny: {{ and: [{{ mcp_tool: {{ equals: tool{i} }} }}, {{ argument: {{ pointer: /limit, min: 1000 }} }}] }}\n"),
            3 => format!("- deny: {{ mcp_tool: {{ in: [tool{i}, admin{i}] }} }}\n"),
            _ => format!(
                "- allow: {{ and: [{{ mcp_tool: {{ in: [tool{i}, alt{i}] }} }}, {{ groups: {{ any: [g{i}, eng] }} }}, {{ scope: {{ has: 'mcp:write' }} }}] }}\n"
            ),
        };
        y.push_str(&rule);
    }
    y
}

fn compile(yaml: &str) -> Policy {
    let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(yaml).unwrap();
    Policy::compile(&rules, &HashMap::new(), "bench").unwrap()
}

fn principal() -> Principal {
    let claims = serde_json::json!({"org": {"team": "infra", "level": 3}});
    Principal {
        issuer_name: Arc::from("corp"),
        issuer: "https://idp.example.com".into(),
        sub: "alice".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["eng".into(), "oncall".into()],
        scopes: vec!["mcp:read".into(), "mcp:write".into()],
        client_id: Some("cli".into()),
        exp: 0,
        claims: claims.as_object().unwrap().clone(),
        baseline_key: Default::default(),
        record_json: Default::default(),
    }
}

/// With `POLICY_ITERS=n` set, each benchmark body runs `n` times outside
/// criterion (only the one named `POLICY_ONLY`, if set), for
/// `perf stat -e instructions,cycles`: instructions per call are the
/// difference between two runs with different `n`, divided by the difference.
fn iters() -> Option<(u64, String)> {
    let n = std::env::var("POLICY_ITERS").ok()?.parse().ok()?;
    Some((n, std::env::var("POLICY_ONLY").unwrap_or_default()))
}

fn run(c: &mut Criterion, name: &str, mut body: impl FnMut()) {
    match iters() {
        Some((n, only)) => {
            if only.is_empty() || name == only {
                for _ in 0..n {
                    body();
                }
            }
        }
        None => {
            c.bench_function(name, |b| b.iter(&mut body));
        }
    }
}

fn bench(c: &mut Criterion) {
    let p = principal();
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"mcp.example.com",
        },
        httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        },
        httparse::Header {
            name: "Accept",
            value: b"application/json, text/event-stream",
        },
    ];
    let mut args = br#"{"repo":"acme/web","branch":"main","force":false,"limit":10}"#.to_vec();
    let tape = simd_json::to_tape(&mut args).unwrap();
    let facts = |name: &'static str| Facts {
        principal: Some(&p),
        method: Some(portcullis::internal::mcp::Method::ToolsCall),
        name: Some(name),
        uri: None,
        arguments: Some(&tape.0),
        source_ip: "10.1.2.3".parse().unwrap(),
        now_unix: 1_767_607_200, // a Monday
        headers: &headers,
        anomaly: None,
        content: &[],
    };

    let ten = compile(TEN);
    let f = facts("git.push");
    assert!(matches!(
        ten.evaluate(&f),
        portcullis::internal::policy::Verdict::Allow { .. }
    ));
    run(c, "policy/10_rules", || {
        black_box(ten.evaluate(black_box(&f)));
    });

    let ten_rate = compile(&format!("{TEN}{RATE}"));
    assert!(matches!(
        ten_rate.evaluate(&f),
        portcullis::internal::policy::Verdict::Allow { .. }
    ));
    run(c, "policy/10_rules_and_rate_limit", || {
        black_box(ten_rate.evaluate(black_box(&f)));
    });

    let big = compile(&thousand());
    let f = facts("tool504");
    assert!(matches!(
        big.evaluate(&f),
        portcullis::internal::policy::Verdict::Allow { .. }
    ));
    run(c, "policy/1000_rules", || {
        black_box(big.evaluate(black_box(&f)));
    });
    let miss = facts("unknown_tool");
    run(c, "policy/1000_rules_no_match", || {
        black_box(big.evaluate(black_box(&miss)));
    });

    let list = Facts {
        method: Some(portcullis::internal::mcp::Method::ToolsList),
        name: None,
        arguments: None,
        ..facts("x")
    };
    let tools: Vec<String> = (0..50)
        .map(|i| match i % 5 {
            0 => format!("git.op{i}"),
            1 => "search".to_string(),
            2 => "shell".to_string(),
            _ => format!("other{i}"),
        })
        .collect();
    run(c, "policy/visible_50_tools_10_rules", || {
        let n = tools
            .iter()
            .filter(|t| ten.visible(black_box(&list), ItemKind::Tool, t))
            .count();
        black_box(n);
    });
    let tools: Vec<String> = (0..50).map(|i| format!("tool{}", i * 20 + 4)).collect();
    run(c, "policy/visible_50_tools_1000_rules", || {
        let n = tools
            .iter()
            .filter(|t| big.visible(black_box(&list), ItemKind::Tool, t))
            .count();
        black_box(n);
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
