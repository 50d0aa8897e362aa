use crate::mcp::method::Method;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;

fn rules(yaml: &str) -> Vec<RuleConfig> {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn policy(yaml: &str) -> Policy {
    Policy::compile(&rules(yaml), &HashMap::new(), "r").unwrap()
}

fn errors(yaml: &str) -> Vec<String> {
    Policy::compile(&rules(yaml), &HashMap::new(), "r").unwrap_err()
}

fn alice() -> Principal {
    let claims = serde_json::json!({
        "org": {"team": "infra", "level": 3, "tags": ["a", "b"]},
        "dept": "research-and-dev",
        "admin": true
    });
    Principal {
        issuer_name: Arc::from("corp"),
        issuer: "https://idp.example.com".into(),
        sub: "alice".into(),
        email: Some("Alice@Example.COM".into()),
        groups: vec!["eng".into(), "oncall".into()],
        scopes: vec!["mcp:read".into(), "mcp:write".into()],
        client_id: Some("cli-1".into()),
        exp: 0,
        claims: claims.as_object().unwrap().clone(),
        baseline_key: Default::default(),
        record_json: Default::default(),
    }
}

/// A method as the tests write it: "" for none.
fn method_of(text: &str) -> Option<Method<'_>> {
    (!text.is_empty()).then(|| Method::parse(text))
}

fn facts<'a>(p: Option<&'a Principal>, method: &'a str, name: Option<&'a str>) -> Facts<'a> {
    Facts {
        principal: p,
        method: method_of(method),
        name,
        uri: None,
        arguments: None,
        source_ip: "10.1.2.3".parse().unwrap(),
        // Monday 2026-01-05 10:00 UTC
        now_unix: 1_767_607_200,
        headers: &[],
        anomaly: None,
        content: &[],
    }
}

fn allowed(v: Verdict) -> bool {
    matches!(v, Verdict::Allow { .. })
}

/// Whether `allow: <cond>` allows `f`.
fn holds(cond: &str, f: &Facts) -> bool {
    let p = policy(&format!("- allow: {cond}"));
    allowed(p.evaluate(f))
}

#[test]
fn empty_policy_allows_everything() {
    let p = policy("[]");
    assert!(p.is_empty());
    let a = alice();
    assert_eq!(
        p.evaluate(&facts(Some(&a), "tools/call", Some("x"))),
        Verdict::Allow { rule: None }
    );
    assert!(p.visible(&facts(None, "", None), ItemKind::Tool, "x"));
}

#[test]
fn deny_wins_and_default_deny() {
    let p = policy(
        r#"
- allow: { groups: { has: eng } }
  name: engineers
- deny: { mcp_tool: { equals: drop_db } }
  message: never
"#,
    );
    let a = alice();
    assert_eq!(
        p.evaluate(&facts(Some(&a), "tools/call", Some("search"))),
        Verdict::Allow {
            rule: Some("engineers")
        }
    );
    assert_eq!(
        p.evaluate(&facts(Some(&a), "tools/call", Some("drop_db"))),
        Verdict::Deny {
            rule: "r#2",
            message: "never",
            retry_after_secs: None
        }
    );
    let mut b = alice();
    b.groups.clear();
    assert_eq!(
        p.evaluate(&facts(Some(&b), "tools/call", Some("search"))),
        Verdict::Deny {
            rule: "r#default",
            message: "no rule allowed it",
            retry_after_secs: None
        }
    );
    // Only deny rules: nothing is allowed.
    let p = policy("- deny: { mcp_tool: { equals: x } }");
    assert!(!allowed(p.evaluate(&facts(
        Some(&a),
        "tools/call",
        Some("y")
    ))));
    let p = policy("- deny: { mcp_tool: { equals: x } }\n- allow: { and: [] }");
    assert!(allowed(p.evaluate(&facts(
        Some(&a),
        "tools/call",
        Some("y")
    ))));
    let v = p.evaluate(&facts(Some(&a), "tools/call", Some("x")));
    assert_eq!(
        v,
        Verdict::Deny {
            rule: "r#1",
            message: "denied by policy rule r#1",
            retry_after_secs: None
        }
    );
}

#[test]
fn logic_and_or_not() {
    let a = alice();
    let f = facts(Some(&a), "tools/call", Some("t"));
    assert!(holds("{ and: [] }", &f));
    assert!(!holds("{ or: [] }", &f));
    assert!(holds(
        "{ and: [{ groups: { has: eng } }, { scope: { has: mcp:read } }] }",
        &f
    ));
    assert!(!holds(
        "{ and: [{ groups: { has: eng } }, { scope: { has: nope } }] }",
        &f
    ));
    assert!(holds(
        "{ or: [{ groups: { has: x } }, { scope: { has: mcp:read } }] }",
        &f
    ));
    assert!(holds("{ not: { groups: { has: x } } }", &f));
    assert!(!holds("{ not: { groups: { has: eng } } }", &f));
}

#[test]
fn claim_criterion() {
    let a = alice();
    let f = facts(Some(&a), "ping", None);
    assert!(holds("{ claim: { path: org.team, equals: infra } }", &f));
    assert!(!holds("{ claim: { path: org.team, equals: web } }", &f));
    assert!(holds("{ claim: { path: org.level, equals: 3 } }", &f));
    assert!(holds("{ claim: { path: org.level, equals: 3.0 } }", &f));
    assert!(!holds("{ claim: { path: org.level, equals: '3' } }", &f));
    assert!(holds("{ claim: { path: org.level, in: [1, 2, 3] } }", &f));
    assert!(holds("{ claim: { path: admin, equals: true } }", &f));
    assert!(holds("{ claim: { path: org.tags, contains: b } }", &f));
    assert!(!holds("{ claim: { path: org.tags, contains: c } }", &f));
    assert!(holds("{ claim: { path: dept, contains: and } }", &f));
    assert!(holds("{ claim: { path: dept, matches: '^research' } }", &f));
    assert!(!holds("{ claim: { path: dept, matches: '^dev' } }", &f));
    assert!(!holds("{ claim: { path: org.missing, equals: x } }", &f));
    assert!(!holds("{ claim: { path: org.team.x, equals: x } }", &f));
    assert!(!holds(
        "{ claim: { path: org.team, equals: infra } }",
        &facts(None, "ping", None)
    ));
}

#[test]
fn groups_scope_client_issuer() {
    let a = alice();
    let f = facts(Some(&a), "ping", None);
    assert!(holds("{ groups: { any: [x, oncall] } }", &f));
    assert!(!holds("{ groups: { any: [x, y] } }", &f));
    assert!(holds("{ groups: { all: [eng, oncall] } }", &f));
    assert!(!holds("{ groups: { all: [eng, x] } }", &f));
    assert!(holds("{ scope: { all: ['mcp:read', 'mcp:write'] } }", &f));
    assert!(holds("{ scope: { any: ['mcp:admin', 'mcp:write'] } }", &f));
    assert!(!holds("{ scope: { has: 'mcp:admin' } }", &f));
    assert!(holds("{ client_id: { equals: cli-1 } }", &f));
    assert!(!holds("{ client_id: { in: [cli-2] } }", &f));
    assert!(holds("{ issuer: { in: [other, corp] } }", &f));
    assert!(!holds("{ issuer: { equals: other } }", &f));
    let anon = facts(None, "ping", None);
    assert!(!holds("{ groups: { any: [eng] } }", &anon));
    assert!(holds("{ not: { client_id: { equals: cli-1 } } }", &anon));
}

#[test]
fn email_criterion() {
    let a = alice();
    let f = facts(Some(&a), "ping", None);
    assert!(holds("{ email: { equals: alice@example.com } }", &f));
    assert!(holds(
        "{ email: { in: [bob@example.com, ALICE@example.com] } }",
        &f
    ));
    assert!(!holds("{ email: { equals: bob@example.com } }", &f));
    assert!(holds("{ email: { ends_with: '@example.com' } }", &f));
    assert!(holds(
        "{ email: { ends_with: ['@x.org', '@EXAMPLE.com'] } }",
        &f
    ));
    assert!(!holds("{ email: { ends_with: '@evil.com' } }", &f));
    assert!(holds("{ email: { matches: '(?i)^alice@' } }", &f));
    assert!(!holds("{ email: { matches: '^alice@' } }", &f));
    let mut b = alice();
    b.email = None;
    assert!(!holds(
        "{ email: { ends_with: '' } }",
        &facts(Some(&b), "ping", None)
    ));
}

#[test]
fn method_tool_prompt_resource() {
    let a = alice();
    let call = facts(Some(&a), "tools/call", Some("git.push"));
    assert!(holds("{ mcp_method: { equals: tools/call } }", &call));
    assert!(holds("{ mcp_method: { in: [ping, tools/call] } }", &call));
    assert!(holds("{ mcp_method: { starts_with: tools/ } }", &call));
    assert!(!holds(
        "{ mcp_method: { starts_with: [resources/, prompts/] } }",
        &call
    ));
    assert!(holds("{ mcp_tool: { equals: git.push } }", &call));
    assert!(holds("{ mcp_tool: { in: [a, git.push] } }", &call));
    assert!(holds("{ mcp_tool: { starts_with: git. } }", &call));
    assert!(holds(
        "{ mcp_tool: { matches: '^git\\.(push|pull)$' } }",
        &call
    ));
    assert!(!holds("{ mcp_tool: { matches: '^git\\.pull$' } }", &call));
    // Only on tools/call.
    let get = facts(Some(&a), "prompts/get", Some("git.push"));
    assert!(!holds("{ mcp_tool: { equals: git.push } }", &get));
    assert!(holds("{ mcp_prompt: { equals: git.push } }", &get));
    assert!(holds("{ mcp_prompt: { starts_with: git } }", &get));
    assert!(!holds("{ mcp_prompt: { in: [x] } }", &get));
    assert!(!holds("{ mcp_prompt: { equals: git.push } }", &call));
    // Arbitrary UTF-8 names.
    let odd = facts(Some(&a), "tools/call", Some("wérk/ツール"));
    assert!(holds("{ mcp_tool: { equals: wérk/ツール } }", &odd));
    assert!(holds("{ mcp_tool: { starts_with: wé } }", &odd));

    let mut read = facts(Some(&a), "resources/read", None);
    read.uri = Some("file:///srv/data/a.txt");
    assert!(holds(
        "{ mcp_resource: { equals: 'file:///srv/data/a.txt' } }",
        &read
    ));
    assert!(holds(
        "{ mcp_resource: { starts_with: 'file:///srv/' } }",
        &read
    ));
    assert!(!holds(
        "{ mcp_resource: { starts_with: 'file:///etc/' } }",
        &read
    ));
    assert!(holds(
        "{ mcp_resource: { glob: 'file:///srv/*/*.txt' } }",
        &read
    ));
    assert!(!holds("{ mcp_resource: { glob: 'file:///srv/*' } }", &read));
    assert!(holds("{ mcp_resource: { glob: 'file:///srv/**' } }", &read));
    read.method = Some(Method::ResourcesSubscribe);
    assert!(holds(
        "{ mcp_resource: { starts_with: 'file:///srv/' } }",
        &read
    ));
    read.method = Some(Method::ToolsCall);
    assert!(!holds(
        "{ mcp_resource: { starts_with: 'file:///srv/' } }",
        &read
    ));
    // Dot segments: a prefix cannot confine them; a deny rule denies them.
    read.method = Some(Method::ResourcesRead);
    read.uri = Some("file:///srv/%2E%2e/etc/passwd");
    assert!(!holds(
        "{ mcp_resource: { starts_with: 'file:///srv/' } }",
        &read
    ));
    let p = policy(
        "- allow: { and: [] }\n- deny: { not: { mcp_resource: { glob: 'file:///srv/**' } } }",
    );
    assert!(!allowed(p.evaluate(&read)));
    read.uri = Some("file:///srv/x");
    assert!(allowed(p.evaluate(&read)));
}

#[test]
fn dot_segments() {
    for (uri, dot) in [
        ("file:///a/../b", true),
        ("file:///a/./b", true),
        ("file:///a/%2e%2E/b", true),
        ("file:///a/.%2e", true),
        ("file:///a/...", false),
        ("file:///a/.b", false),
        ("file:///a/b..", false),
        ("x:..", false),
        ("file:///a\\..\\b", true),
    ] {
        assert_eq!(eval::dot_segment(uri), dot, "{uri}");
    }
}

#[test]
fn argument_criterion() {
    let a = alice();
    let mut buf = Vec::from(
        r#"{"repo":"acme/web","n":5,"big":18446744073709551615,"f":2.5,"ok":true,"nil":null,
            "a/b":1,"m~n":2,"list":[{"x":1},"two",[3]],"nested":{"deep":{"k":"v"}},"":"empty",
            "dup":1,"dup":2}"#
            .as_bytes(),
    );
    let t = simd_json::to_tape(&mut buf).unwrap();
    let mut f = facts(Some(&a), "tools/call", Some("t"));
    f.arguments = Some(&t.0);
    let yes = |c: &str| holds(&format!("{{ argument: {c} }}"), &f);
    assert!(yes("{ pointer: /repo, equals: acme/web }"));
    assert!(!yes("{ pointer: /repo, equals: acme/api }"));
    assert!(yes("{ pointer: /repo, in: [x, acme/web] }"));
    assert!(yes("{ pointer: /repo, matches: '^acme/' }"));
    assert!(!yes("{ pointer: /n, matches: '5' }"));
    assert!(yes("{ pointer: /n, equals: 5 }"));
    assert!(yes("{ pointer: /n, equals: 5.0 }"));
    assert!(!yes("{ pointer: /n, equals: '5' }"));
    assert!(yes("{ pointer: /big, equals: 18446744073709551615 }"));
    assert!(yes("{ pointer: /n, min: 1, max: 5 }"));
    assert!(!yes("{ pointer: /n, max: 4 }"));
    assert!(yes("{ pointer: /f, min: 2.5 }"));
    assert!(!yes("{ pointer: /repo, min: 0 }"));
    assert!(yes("{ pointer: /ok, equals: true }"));
    assert!(yes("{ pointer: /nil, in: [null] }"));
    assert!(yes("{ pointer: /a~1b, equals: 1 }"));
    assert!(yes("{ pointer: /m~0n, equals: 2 }"));
    assert!(yes("{ pointer: /list/0/x, equals: 1 }"));
    assert!(yes("{ pointer: /list/1, equals: two }"));
    assert!(yes("{ pointer: /list/2/0, equals: 3 }"));
    assert!(!yes("{ pointer: /list/3, exists: true }"));
    assert!(!yes("{ pointer: /list/01, exists: true }"));
    assert!(!yes("{ pointer: /list/-, exists: true }"));
    assert!(yes("{ pointer: /nested/deep/k, equals: v }"));
    assert!(yes("{ pointer: /nested, exists: true }"));
    assert!(yes("{ pointer: /, equals: empty }"));
    assert!(yes("{ pointer: '', exists: true }"));
    assert!(yes("{ pointer: /missing, exists: false }"));
    assert!(!yes("{ pointer: /missing, equals: x }"));
    assert!(!yes("{ pointer: /repo/x, exists: true }"));
    // A duplicated key is ambiguous: neither allowed nor passed by a deny rule.
    assert!(!yes("{ pointer: /dup, exists: true }"));
    assert!(!yes("{ pointer: /dup, exists: false }"));
    let p = policy("- allow: { and: [] }\n- deny: { argument: { pointer: /dup, equals: 3 } }");
    assert!(!allowed(p.evaluate(&f)));
    // No arguments at all.
    let g = facts(Some(&a), "tools/call", Some("t"));
    assert!(holds("{ argument: { pointer: /repo, exists: false } }", &g));
    assert!(!holds("{ argument: { pointer: /repo, equals: x } }", &g));
}

#[test]
fn source_ip_criterion() {
    let a = alice();
    let mut f = facts(Some(&a), "ping", None);
    let c = "{ source_ip: { in: ['10.0.0.0/8', '2001:db8::/32', '127.0.0.1'] } }";
    assert!(holds(c, &f));
    f.source_ip = "::ffff:10.9.9.9".parse().unwrap();
    assert!(holds(c, &f));
    f.source_ip = "2001:db8::5".parse().unwrap();
    assert!(holds(c, &f));
    f.source_ip = IpAddr::from([192, 168, 1, 1]);
    assert!(!holds(c, &f));
}

#[test]
fn time_criterion() {
    let a = alice();
    let mut f = facts(Some(&a), "ping", None);
    let c =
        "{ time: { days: [mon, tue, wed, thu, fri], hours: '08:00-19:00', tz: Europe/Berlin } }";
    assert!(holds(c, &f)); // Monday 11:00 in Berlin
    f.now_unix += 9 * 3600; // 20:00 in Berlin
    assert!(!holds(c, &f));
    assert!(holds(
        "{ time: { hours: ['08:00-12:00', '19:30-20:30'], tz: Europe/Berlin } }",
        &f
    ));
    f.now_unix += 5 * 86_400; // Saturday
    assert!(!holds(c, &f));
}

#[test]
fn header_criterion() {
    let a = alice();
    let headers = [
        httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        },
        httparse::Header {
            name: "x-dup",
            value: b"a",
        },
        httparse::Header {
            name: "X-Dup",
            value: b"b",
        },
        httparse::Header {
            name: "x-bin",
            value: b"\xff",
        },
    ];
    let mut f = facts(Some(&a), "ping", None);
    f.headers = &headers;
    assert!(holds("{ header: { name: x-tenant, equals: acme } }", &f));
    assert!(holds("{ header: { name: X-TENANT, in: [a, acme] } }", &f));
    assert!(holds("{ header: { name: X-Tenant, matches: '^ac' } }", &f));
    assert!(!holds("{ header: { name: X-Tenant, equals: other } }", &f));
    assert!(holds("{ header: { name: X-Tenant, exists: true } }", &f));
    assert!(holds("{ header: { name: X-None, exists: false } }", &f));
    assert!(!holds("{ header: { name: X-None, equals: acme } }", &f));
    assert!(!holds("{ header: { name: x-bin, matches: '.*' } }", &f));
    // Repeated header that answers differently: unknown, so a deny rule denies.
    assert!(!holds("{ header: { name: x-dup, equals: a } }", &f));
    let p = policy("- allow: { and: [] }\n- deny: { header: { name: x-dup, equals: b } }");
    assert!(!allowed(p.evaluate(&f)));
    assert!(holds("{ header: { name: x-dup, matches: '^[ab]$' } }", &f));
}

#[test]
fn rate_limit_denies_with_retry_after() {
    let p = policy(
        r#"
- allow: { and: [] }
- deny: { rate_limit: { requests: 2, per: 1m, key: principal_and_tool } }
  name: slow down
"#,
    );
    let a = alice();
    let mut f = facts(Some(&a), "tools/call", Some("x"));
    f.now_unix = 1_000_020;
    let start = f.now_unix - f.now_unix % 60;
    assert!(allowed(p.evaluate(&f)));
    assert!(allowed(p.evaluate(&f)));
    let v = p.evaluate(&f);
    assert_eq!(
        v,
        Verdict::Deny {
            rule: "slow down",
            message: "denied by policy rule slow down",
            retry_after_secs: Some((start + 60 - f.now_unix) as u64)
        }
    );
    // Another tool has its own count; so does another principal.
    assert!(allowed(p.evaluate(&facts(
        Some(&a),
        "tools/call",
        Some("y")
    ))));
    let mut b = alice();
    b.sub = "bob".into();
    let mut g = f;
    g.principal = Some(&b);
    assert!(allowed(p.evaluate(&g)));
    // Next window.
    f.now_unix = start + 60;
    assert!(allowed(p.evaluate(&f)));
}

#[test]
fn denied_requests_use_no_quota() {
    let p = policy(
        r#"
- allow: { groups: { has: eng } }
- deny: { mcp_tool: { equals: bad } }
- deny: { rate_limit: { requests: 1, per: 3600 } }
"#,
    );
    let a = alice();
    let mut b = alice();
    b.groups.clear();
    for _ in 0..5 {
        assert!(!allowed(p.evaluate(&facts(
            Some(&a),
            "tools/call",
            Some("bad")
        ))));
        assert!(!allowed(p.evaluate(&facts(
            Some(&b),
            "tools/call",
            Some("ok")
        ))));
    }
    assert!(allowed(p.evaluate(&facts(
        Some(&a),
        "tools/call",
        Some("ok")
    ))));
    let v = p.evaluate(&facts(Some(&a), "tools/call", Some("ok")));
    assert!(matches!(
        v,
        Verdict::Deny {
            retry_after_secs: Some(_),
            ..
        }
    ));
    // Visible does not count and does not hide on a rate limit.
    assert!(p.visible(&facts(Some(&a), "tools/list", None), ItemKind::Tool, "ok"));
}

#[test]
fn rate_limit_is_one_limit_across_threads() {
    let p = Arc::new(policy(
        "- allow: { and: [] }\n- deny: { rate_limit: { requests: 500, per: 1h } }",
    ));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                let a = alice();
                let f = facts(Some(&a), "tools/call", Some("x"));
                (0..2000).filter(|_| allowed(p.evaluate(&f))).count()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 500);
}

#[test]
fn shared_policies() {
    let shared: HashMap<String, Vec<RuleConfig>> = serde_yaml_ng::from_str(
        r#"
base:
  - allow: { groups: { has: eng } }
  - use: guard
guard:
  - deny: { mcp_tool: { equals: drop } }
    message: no dropping
loop_a: [{ use: loop_b }]
loop_b: [{ use: loop_a }]
"#,
    )
    .unwrap();
    let p = Policy::compile(&rules("- use: base"), &shared, "r").unwrap();
    let a = alice();
    assert!(allowed(p.evaluate(&facts(
        Some(&a),
        "tools/call",
        Some("x")
    ))));
    assert_eq!(
        p.evaluate(&facts(Some(&a), "tools/call", Some("drop"))),
        Verdict::Deny {
            rule: "guard#1",
            message: "no dropping",
            retry_after_secs: None
        }
    );
    let e = Policy::compile(&rules("- use: nope"), &shared, "r").unwrap_err();
    assert!(e[0].contains("unknown policy \"nope\""), "{e:?}");
    let e = Policy::compile(&rules("- use: loop_a"), &shared, "r").unwrap_err();
    assert!(e[0].contains("uses itself"), "{e:?}");
    let e = Policy::compile(&rules("- use: base\n  name: x"), &shared, "r").unwrap_err();
    assert!(e[0].contains("no name"), "{e:?}");
}

#[test]
fn expansion_is_capped() {
    // Each level uses the one below ten times: 10^5 rules.
    let mut shared = HashMap::new();
    shared.insert("l0".to_string(), rules("- allow: { and: [] }"));
    for i in 1..=5 {
        shared.insert(
            format!("l{i}"),
            vec![
                RuleConfig {
                    use_: Some(format!("l{}", i - 1)),
                    ..Default::default()
                };
                10
            ],
        );
    }
    let e = Policy::compile(&rules("- use: l5"), &shared, "r").unwrap_err();
    assert!(e[0].contains("more than"), "{e:?}");
}

#[test]
fn compile_errors() {
    let cases = [
        ("- allow: { mcp_tool: { matches: '(' } }", "bad regex"),
        (
            "- allow: { source_ip: { in: ['10.0.0.0/40'] } }",
            "source_ip",
        ),
        (
            "- allow: { time: { tz: Nowhere/City } }",
            "unknown time zone",
        ),
        ("- allow: { time: { hours: '9-5' } }", "bad hours"),
        (
            "- allow: { groups: { has: a }, scope: { has: b } }",
            "exactly one key",
        ),
        ("- allow: {}", "empty condition"),
        (
            "- allow: { mcp_tool: { equals: a, in: [b] } }",
            "only one of",
        ),
        ("- allow: { mcp_tool: {} }", "needs one of"),
        (
            "- allow: { rate_limit: { requests: 1, per: 1m } }",
            "deny rule",
        ),
        ("- deny: { rate_limit: { requests: 1, per: 1x } }", "period"),
        ("- deny: { rate_limit: { requests: 1, per: 0 } }", "period"),
        (
            "- allow: { argument: { pointer: repo, exists: true } }",
            "JSON pointer",
        ),
        (
            "- allow: { argument: { pointer: /a~2, exists: true } }",
            "JSON pointer",
        ),
        (
            "- allow: { argument: { pointer: /a, min: 5, max: 1 } }",
            "range",
        ),
        (
            "- allow: { argument: { pointer: /a, equals: [1] } }",
            "only strings",
        ),
        (
            "- allow: { claim: { path: 'a..b', equals: 1 } }",
            "bad path",
        ),
        (
            "- allow: { header: { name: 'a b', exists: true } }",
            "bad name",
        ),
        (
            "- allow: { and: [] }\n  deny: { and: [] }",
            "exactly one of allow",
        ),
    ];
    for (yaml, want) in cases {
        let e = errors(yaml);
        assert!(
            e.iter()
                .any(|m| m.contains(want) && m.contains("rule 1 (r#1)")),
            "{yaml}: {e:?}"
        );
    }
    // Every error is reported, with the rule's name.
    let e = errors("- allow: { mcp_tool: { matches: '(' } }\n- deny: { email: { matches: '[' } }\n  name: second");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[1].contains("rule 2 (second)"), "{e:?}");
}

#[test]
fn parse_errors() {
    // Unknown criterion, unknown operator, unknown rule key: serde refuses them.
    for yaml in [
        "- allow: { nope: { equals: x } }",
        "- allow: { mcp_tool: { is: x } }",
        "- allow: { and: [] }\n  priority: 1",
        "- allow: { rate_limit: { requests: 1, per: 1m, key: tenant } }",
    ] {
        assert!(
            serde_yaml_ng::from_str::<Vec<RuleConfig>>(yaml).is_err(),
            "{yaml}"
        );
    }
}

#[test]
fn visible_three_valued() {
    let p = policy(
        r#"
- allow: { and: [{ mcp_tool: { starts_with: git. } }, { argument: { pointer: /repo, matches: '^acme/' } }] }
- allow: { mcp_prompt: { equals: summary } }
- allow: { mcp_resource: { glob: 'file:///srv/**' } }
- deny: { mcp_tool: { equals: git.force_push } }
- deny: { and: [{ mcp_tool: { equals: git.push } }, { argument: { pointer: /force, equals: true } }] }
- deny: { and: [{ mcp_tool: { equals: git.reset } }, { rate_limit: { requests: 1, per: 1h } }] }
"#,
    );
    let a = alice();
    let f = facts(Some(&a), "tools/list", None);
    // Allow depends on arguments: unknown, so visible.
    assert!(p.visible(&f, ItemKind::Tool, "git.pull"));
    // Deny depends on arguments: unknown, so visible.
    assert!(p.visible(&f, ItemKind::Tool, "git.push"));
    assert!(p.visible(&f, ItemKind::Tool, "git.reset"));
    // Certain deny.
    assert!(!p.visible(&f, ItemKind::Tool, "git.force_push"));
    // No allow rule can be true.
    assert!(!p.visible(&f, ItemKind::Tool, "shell"));
    assert!(p.visible(&f, ItemKind::Prompt, "summary"));
    assert!(!p.visible(&f, ItemKind::Prompt, "other"));
    assert!(p.visible(&f, ItemKind::Resource, "file:///srv/a/b"));
    assert!(!p.visible(&f, ItemKind::Resource, "file:///etc/passwd"));
    assert!(p.visible(&f, ItemKind::ResourceTemplate, "file:///srv/{path}"));
    assert!(!p.visible(&f, ItemKind::ResourceTemplate, "db://{table}"));
    // A call is judged on its arguments.
    let mut buf = br#"{"repo":"acme/web","force":true}"#.to_vec();
    let t = simd_json::to_tape(&mut buf).unwrap();
    let mut call = facts(Some(&a), "tools/call", Some("git.push"));
    call.arguments = Some(&t.0);
    assert!(matches!(
        p.evaluate(&call),
        Verdict::Deny { rule: "r#5", .. }
    ));
    call.name = Some("git.pull");
    assert!(allowed(p.evaluate(&call)));
}

/// The index must give the same verdicts as scanning every rule.
#[test]
fn index_agrees_with_full_scan() {
    let mut yaml = String::new();
    for i in 0..40 {
        yaml.push_str(&format!("- allow: {{ and: [{{ mcp_tool: {{ in: [t{i}, u{i}] }} }}, {{ groups: {{ has: eng }} }}] }}\n"));
        yaml.push_str(&format!("- deny: {{ or: [{{ mcp_tool: {{ equals: bad{i} }} }}, {{ mcp_method: {{ equals: m{i} }} }}] }}\n"));
    }
    yaml.push_str("- allow: { mcp_method: { in: [ping, tools/list] } }\n");
    yaml.push_str("- allow: { mcp_tool: { starts_with: free. } }\n");
    yaml.push_str("- deny: { not: { scope: { has: 'mcp:read' } } }\n");
    let big = policy(&yaml);
    assert!(matches!(big.index, Index::Keyed { .. }));
    let a = alice();
    let mut b = alice();
    b.groups.clear();
    let mut c = alice();
    c.scopes.clear();
    for p in [&a, &b, &c] {
        for (m, n) in [
            ("tools/call", Some("t3")),
            ("tools/call", Some("u39")),
            ("tools/call", Some("bad3")),
            ("tools/call", Some("free.x")),
            ("tools/call", Some("zzz")),
            ("tools/call", None),
            ("ping", None),
            ("m7", None),
            ("tools/list", None),
            ("other", Some("t3")),
        ] {
            let f = facts(Some(p), m, n);
            let (idx_a, idx_b) = big.index.lists(f.method, n, &big.none);
            let indexed: Vec<usize> = merge(&idx_a.allow, &idx_b.allow).collect();
            // The index only drops rules a full scan would find false.
            let full = Index::All(Lists::of(&big.rules, |_| true));
            let (fa, fb) = full.lists(f.method, n, &big.none);
            let all: Vec<usize> = merge(&fa.allow, &fb.allow).collect();
            assert!(indexed.iter().all(|i| all.contains(i)));
            let v1 = allowed(big.evaluate(&f));
            let v2 = verdict_by_scan(&big, &f);
            assert_eq!(v1, v2, "{m} {n:?}");
        }
    }
}

fn verdict_by_scan(p: &Policy, f: &Facts) -> bool {
    let mut cx = Ctx {
        facts: f,
        call: eval::Call::of(f.method),
        listing: false,
        table: None,
        retry_after: None,
    };
    let denied = p
        .rules
        .iter()
        .any(|r| r.deny && r.cond.eval(&mut cx) != Tri::False);
    !denied
        && p.rules
            .iter()
            .any(|r| !r.deny && r.cond.eval(&mut cx) == Tri::True)
}

#[test]
fn policy_is_shared_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<Policy>();
}

/// The fuzz seeds are valid policies (else the fuzzer starts far from the interesting code).
#[test]
fn fuzz_seeds_compile() {
    let shared: HashMap<String, Vec<RuleConfig>> = serde_yaml_ng::from_str(
        "base:\n  - allow: { groups: { has: eng } }\n  - deny: { mcp_tool: { equals: drop } }\nloop: [{ use: loop }]\n",
    )
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/policy_compile");
    for name in ["office_hours", "tools_args", "identity", "shared_and_rate"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(&text).unwrap();
        if let Err(e) = Policy::compile(&rules, &shared, "fuzz") {
            panic!("{name}: {e:?}");
        }
    }
}

/// A straightforward reference: the tree walked recursively with the plain
/// string comparisons for method, tool, prompt and header criteria (the
/// others as compiled); used with every rule in config order, no index and
/// no guards.
fn ref_eval(c: &Cond, cx: &mut Ctx) -> Tri {
    let f = cx.facts;
    match c {
        Cond::And(items) => {
            let mut out = Tri::True;
            for i in items.iter() {
                match ref_eval(i, cx) {
                    Tri::False => return Tri::False,
                    Tri::Unknown => out = Tri::Unknown,
                    Tri::True => {}
                }
            }
            out
        }
        Cond::Or(items) => {
            let mut out = Tri::False;
            for i in items.iter() {
                match ref_eval(i, cx) {
                    Tri::True => return Tri::True,
                    Tri::Unknown => out = Tri::Unknown,
                    Tri::False => {}
                }
            }
            out
        }
        Cond::Not(c) => match ref_eval(c, cx) {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        },
        Cond::Method(op) => eval::name_op(op, f.method.map_or("", Method::as_str)).into(),
        Cond::Tool(op) => (f.method == Some(Method::ToolsCall)
            && f.name.is_some_and(|n| eval::name_op(op, n)))
        .into(),
        Cond::Prompt(op) => (f.method == Some(Method::PromptsGet)
            && f.name.is_some_and(|n| eval::name_op(op, n)))
        .into(),
        Cond::Header(h) => {
            let values: Vec<bool> = f
                .headers
                .iter()
                .filter(|x| x.name.eq_ignore_ascii_case(&h.name))
                .map(|x| match h.op {
                    compile::ValueOp::Exists(e) => e,
                    _ => std::str::from_utf8(x.value).is_ok_and(|v| eval::str_op(&h.op, v)),
                })
                .collect();
            match values.first() {
                None => matches!(h.op, compile::ValueOp::Exists(false)).into(),
                Some(&v) if values.iter().all(|&x| x == v) => v.into(),
                Some(_) => Tri::Unknown,
            }
        }
        other => other.eval(cx),
    }
}

fn ref_verdict<'p>(p: &'p Policy, f: &Facts) -> Verdict<'p> {
    if p.rules.is_empty() {
        return Verdict::Allow { rule: None };
    }
    let mut cx = Ctx {
        facts: f,
        call: eval::Call::of(f.method),
        listing: false,
        table: None,
        retry_after: None,
    };
    for r in p.rules.iter().filter(|r| r.deny) {
        if ref_eval(&r.cond, &mut cx) != Tri::False {
            return p.deny(r, None);
        }
    }
    match p
        .rules
        .iter()
        .find(|r| !r.deny && ref_eval(&r.cond, &mut cx) == Tri::True)
    {
        Some(r) => Verdict::Allow {
            rule: Some(&r.name),
        },
        None => Verdict::Deny {
            rule: &p.default_rule,
            message: "no rule allowed it",
            retry_after_secs: None,
        },
    }
}

fn ref_visible_tool(p: &Policy, f: &Facts, name: &str) -> bool {
    if p.rules.is_empty() {
        return true;
    }
    let f = Facts {
        method: Some(Method::ToolsCall),
        name: Some(name),
        uri: None,
        arguments: None,
        ..*f
    };
    let mut cx = Ctx {
        facts: &f,
        call: eval::Call::of(f.method),
        listing: true,
        table: None,
        retry_after: None,
    };
    let denied = p
        .rules
        .iter()
        .any(|r| r.deny && ref_eval(&r.cond, &mut cx) == Tri::True);
    !denied
        && p.rules
            .iter()
            .any(|r| !r.deny && ref_eval(&r.cond, &mut cx) != Tri::False)
}

/// Generated policies (small, and large enough to be indexed) and facts: the
/// evaluator (index, guards, fast comparisons) gives the reference's verdicts.
#[test]
fn evaluate_agrees_with_reference() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    const LEAVES: &[&str] = &[
        "{ mcp_tool: { in: [t1, t2] } }",
        "{ mcp_tool: { equals: t3 } }",
        "{ mcp_tool: { starts_with: git. } }",
        "{ mcp_tool: { matches: '^t[0-9]$' } }",
        "{ mcp_method: { in: [tools/call, ping] } }",
        "{ mcp_method: { equals: prompts/get } }",
        "{ mcp_method: { starts_with: resources/ } }",
        "{ mcp_prompt: { equals: p1 } }",
        "{ mcp_resource: { starts_with: 'file:///srv/' } }",
        "{ mcp_resource: { equals: 'file:///srv/a' } }",
        "{ groups: { has: eng } }",
        "{ groups: { any: [ops, sre] } }",
        "{ header: { name: X-Tenant, in: [blocked, evil] } }",
        "{ header: { name: x-tenant, equals: acme } }",
        "{ header: { name: X-Tenant, exists: false } }",
        "{ header: { name: X-A, matches: '^v' } }",
        "{ header: { name: Accept-Encoding-Extra, exists: true } }",
        "{ argument: { pointer: /force, equals: true } }",
        "{ argument: { pointer: /repo, matches: '^acme/' } }",
        "{ argument: { pointer: /n, min: 5 } }",
    ];
    fn cond(rnd: &mut impl FnMut(usize) -> usize, depth: usize) -> String {
        let pick = if depth >= 2 { 9 } else { rnd(10) };
        match pick {
            0..=2 => {
                let n = rnd(4);
                let items: Vec<String> = (0..n).map(|_| cond(rnd, depth + 1)).collect();
                let op = if pick == 2 { "or" } else { "and" };
                format!("{{ {op}: [{}] }}", items.join(", "))
            }
            3 => format!("{{ not: {} }}", cond(rnd, depth + 1)),
            _ => LEAVES[rnd(LEAVES.len())].to_string(),
        }
    }
    let mut docs: Vec<Vec<u8>> = [
        r#"{"force":true,"repo":"acme/x","n":7}"#,
        r#"{"force":false,"repo":"evil/x","n":1}"#,
        r#"{"force":true,"force":false}"#,
        r#"{"repo":"acme/a","repo":"acme/b"}"#,
        r#"[]"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let tapes: Vec<Vec<simd_json::Node>> = docs
        .iter_mut()
        .map(|d| simd_json::to_tape(d).unwrap().0)
        .collect();
    let h = |name: &'static str, value: &'static [u8]| httparse::Header { name, value };
    let header_sets: Vec<Vec<httparse::Header>> = vec![
        vec![],
        vec![h("Host", b"h"), h("X-Tenant", b"acme")],
        vec![h("x-tenant", b"blocked")],
        vec![h("X-TENANT", b"evil"), h("X-Tenant", b"acme")],
        vec![h("X-Tenant", b"evil"), h("x-tenant", b"blocked")],
        vec![h("X-A", b"v1"), h("x-a", b"v2"), h("X-Tenanu", b"evil")],
        vec![h("X-Tenant", b"\xff"), h("ACCEPT-ENCODING-EXTRA", b"")],
    ];
    let methods = [
        "tools/call",
        "tools/list",
        "prompts/get",
        "resources/read",
        "resources/",
        "ping",
        "initialize",
        "tools/cal",
        "",
    ];
    let names = [
        None,
        Some("t1"),
        Some("t3"),
        Some("t9"),
        Some("git.push"),
        Some("p1"),
    ];
    let uris = [None, Some("file:///srv/a"), Some("file:///srv/../etc")];
    let a = alice();
    let mut b = alice();
    b.groups = vec!["sre".into()];
    let people = [Some(&a), Some(&b), None];
    let mut checked = 0;
    for round in 0..300 {
        let n = if round % 3 == 0 {
            17 + rnd(30)
        } else {
            1 + rnd(12)
        };
        let mut yaml = String::new();
        for _ in 0..n {
            let kind = if rnd(3) == 0 { "deny" } else { "allow" };
            yaml.push_str(&format!("- {kind}: {}\n", cond(&mut rnd, 0)));
        }
        let p = policy(&yaml);
        for _ in 0..40 {
            let f = Facts {
                principal: people[rnd(people.len())],
                method: method_of(methods[rnd(methods.len())]),
                name: names[rnd(names.len())],
                uri: uris[rnd(uris.len())],
                arguments: match rnd(tapes.len() + 1) {
                    0 => None,
                    i => Some(&tapes[i - 1][..]),
                },
                source_ip: "10.1.2.3".parse().unwrap(),
                now_unix: 1_767_607_200,
                headers: &header_sets[rnd(header_sets.len())],
                anomaly: None,
                content: &[],
            };
            assert_eq!(p.evaluate(&f), ref_verdict(&p, &f), "{yaml}");
            let tool = names[rnd(names.len())].unwrap_or("t2");
            assert_eq!(
                p.visible(&f, ItemKind::Tool, tool),
                ref_visible_tool(&p, &f, tool),
                "{yaml} {tool}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12_000);
}

#[test]
fn content_criterion() {
    let cfg: crate::config::screen::ScreenConfig =
        serde_yaml_ng::from_str("{ actions: { secrets: audit } }").unwrap();
    let screen = crate::screen::Screen::compile(&cfg).unwrap();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"k":"AKIAIOSFODNN7EXAMPLE"}}}"#;
    let found = screen.scan(body).unwrap();
    assert!(!found.is_empty());
    let with = Facts {
        content: &found,
        ..facts(None, "tools/call", Some("x"))
    };
    let without = facts(None, "tools/call", Some("x"));
    for cond in [
        "{ content: { detector: aws_key } }",
        "{ content: { group: secrets } }",
    ] {
        assert!(holds(cond, &with), "{cond}");
        assert!(!holds(cond, &without), "{cond}");
    }
    assert!(!holds("{ content: { detector: email } }", &with));
    assert!(!holds("{ content: { group: pii } }", &with));
    let p = policy(
        "[{ name: no-keys, deny: { content: { detector: aws_key } } }, { allow: { and: [] } }]",
    );
    assert!(matches!(
        p.evaluate(&with),
        Verdict::Deny {
            rule: "no-keys",
            ..
        }
    ));
    assert!(allowed(p.evaluate(&without)));
    // List items carry no content: a deny on content hides nothing.
    assert!(p.visible(&without, ItemKind::Tool, "x"));

    // Each criterion must be one the route's screen runs.
    assert!(p.unscreened_content(Some(&screen)).is_empty());
    assert_eq!(
        p.unscreened_content(None),
        vec!["content: detector \"aws_key\" needs the route's `screen` section"]
    );
    let custom = policy("[{ deny: { content: { group: custom } } }]");
    assert_eq!(
        custom.unscreened_content(Some(&screen)),
        vec!["content: the route's screen runs no group \"custom\""]
    );
    for (bad, want) in [
        ("{ content: {} }", "exactly one of detector and group"),
        (
            "{ content: { detector: a, group: pii } }",
            "exactly one of detector and group",
        ),
        ("{ content: { group: keys } }", "unknown group \"keys\""),
    ] {
        let e = errors(&format!("[{{ deny: {bad} }}]")).join("\n");
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn a_policy_says_whether_it_reads_arguments() {
    let without = policy(
        "- allow: { mcp_tool: { in: [a] } }\n- deny: { not: { mcp_method: { in: [ping] } } }",
    );
    assert!(!without.uses_arguments());
    let nested = policy(
        "- allow: { mcp_tool: { in: [a] } }\n- deny: { or: [ { mcp_tool: { in: [b] } }, { not: { argument: { pointer: /repo, matches: \"^x\" } } } ] }",
    );
    assert!(nested.uses_arguments());
}
