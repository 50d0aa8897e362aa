use super::*;

#[test]
fn reports_every_cross_field_error_with_a_line() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/mcp
    to: http://127.0.0.1:9000/mcp
  - name: a
    from: https://mcp.example.com/x
    to: http://127.0.0.1:9000/mcp
";
    let errs = from_text(text, Path::new("c.yaml"))
        .err()
        .expect("must fail")
        .0;
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{msgs:#?}");
    assert!(msgs[0].contains("used twice"), "{msgs:#?}");
    assert!(msgs[0].starts_with("c.yaml:8:"), "{msgs:#?}");
    assert!(msgs[1].starts_with("c.yaml:8:"), "{msgs:#?}");
    assert!(msgs[1].contains("no listener has tls"), "{msgs:#?}");
}

/// `upstream_auth.oauth2`: every endpoint configured, or `discover`
/// with none of them.
#[test]
fn upstream_oauth2_endpoints_are_configured_or_discovered() {
    let text = |oauth2: &str| {
        format!(
            "listen: [{{address: 127.0.0.1:8080}}]
authorization_server: {{issuer: 'http://127.0.0.1:8080', login: {{dev_users: [{{sub: a}}]}}}}
store: {{path: /tmp/portcullis-snapshot-test.db}}
vault: {{keys: [{{id: k1, key: '{}'}}]}}
routes:
  - name: gh
    from: http://127.0.0.1:8080/gh
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
    upstream_auth: {{oauth2: {oauth2}}}
",
            "ab".repeat(32)
        )
    };
    let errors = |oauth2: &str| -> Vec<String> {
        match from_text(&text(oauth2), Path::new("c.yaml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.message.clone()).collect(),
        }
    };
    assert_eq!(errors("{discover: true}"), Vec::<String>::new());
    assert_eq!(
        errors("{discover: true, client_id: pre-registered, scopes: [repo]}"),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("{client_id: c, authorization_url: 'https://gh/a', token_url: 'https://gh/t'}"),
        Vec::<String>::new()
    );
    let e = errors("{client_id: c}");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("oauth2.authorization_url is required (or discover: true)"));
    assert!(e[1].contains("oauth2.token_url is required"));
    let e = errors("{authorization_url: 'https://gh/a', token_url: 'https://gh/t'}");
    assert!(
        e.len() == 1 && e[0].contains("oauth2.client_id is required"),
        "{e:?}"
    );
    let e = errors("{discover: true, token_url: 'https://gh/t', issuer: 'https://gh'}");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("oauth2.token_url comes from the upstream's metadata with discover: true")
    );
    assert!(e[1].contains("oauth2.issuer comes from"));
}

#[test]
fn missing_certificate_files_are_errors() {
    let text = "\
listen:
  - address: 127.0.0.1:8443
    tls:
      certificates:
        - { cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem }
routes:
  - name: a
    from: https://127.0.0.1:8443/mcp
    to: http://127.0.0.1:9000/mcp
";
    let errs = from_text(text, Path::new("c.yaml"))
        .err()
        .expect("must fail")
        .0;
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains("/nonexistent/c.pem"),
        "{}",
        errs[0]
    );
    assert_eq!(errs[0].line, Some(5));
}

#[test]
fn screen_errors_are_located_and_a_valid_screen_is_compiled() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {}
    screen: { custom: [{ name: acme_id, regex: 'ACME-[0-9' }] }
  - name: b
    from: http://127.0.0.1:8080/b
    to: http://127.0.0.1:9000/mcp
    screen: {}
";
    let errs = from_text(text, Path::new("c.yaml"))
        .err()
        .expect("must fail")
        .0;
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{msgs:#?}");
    assert!(
        msgs[0].starts_with(
            "c.yaml:8:5: route \"a\": screen: custom detector \"acme_id\": invalid regex"
        ),
        "{msgs:#?}"
    );
    assert!(msgs[1].starts_with("c.yaml:12:5: route \"b\""), "{msgs:#?}");
    assert!(msgs[1].contains("needs an MCP route"), "{msgs:#?}");
    let ok = text
        .replace("'ACME-[0-9'", "'ACME-[0-9]+'")
        .replace("    screen: {}", "    mcp: {}\n    screen: {}");
    let snap = from_text(&ok, Path::new("c.yaml")).unwrap();
    assert!(snap.routes.all().iter().all(|r| r.screen.is_some()));
}

#[test]
fn content_criteria_must_name_what_the_screen_runs() {
    let route = |screen: &str, content: &str| {
        format!(
            "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
{screen}    policy:
      - deny: {{ content: {content} }}
"
        )
    };
    let err = |text: &str| -> Vec<String> {
        match from_text(text, Path::new("c.yaml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    };
    let msgs = err(&route("", "{ detector: aws_key }"));
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert!(
            msgs[0].starts_with("c.yaml:8:5: route \"a\": content: detector \"aws_key\" needs the route's `screen` section"),
            "{msgs:#?}"
        );
    let custom = "    screen: { custom: [{ name: acme_id, regex: 'ACME-[0-9]+' }] }\n";
    let msgs = err(&route(custom, "{ detector: acme_idd }"));
    assert!(
        msgs.len() == 1 && msgs[0].contains("the route's screen runs no detector \"acme_idd\""),
        "{msgs:#?}"
    );
    assert!(err(&route(custom, "{ detector: acme_id }")).is_empty());
    assert!(err(&route(custom, "{ group: custom }")).is_empty());
    assert!(err(&route("    screen: {}\n", "{ group: secrets }")).is_empty());
}

#[test]
fn pinning_needs_an_mcp_route_and_the_store() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {}
    pin: { tools: enforce }
  - name: b
    from: http://127.0.0.1:8080/b
    to: http://127.0.0.1:9000/mcp
    pin: { prompts: record }
";
    let errs = from_text(text, Path::new("c.yaml"))
        .err()
        .expect("must fail")
        .0;
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{msgs:#?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("route \"b\": pin needs an MCP route")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("pin keeps the pinned definitions in the store")),
        "{msgs:#?}"
    );
    let bad_mode = text.replace("tools: enforce", "tools: strict");
    let errs = from_text(&bad_mode, Path::new("c.yaml"))
        .err()
        .expect("must fail")
        .0;
    assert!(errs[0].to_string().contains("strict"), "{}", errs[0]);
    let ok = text
        .replace(
            "    pin: { prompts: record }",
            "    mcp: {}\n    pin: { prompts: record }",
        )
        .replace("routes:", "store: { path: /tmp/pins.db }\nroutes:");
    let snap = from_text(&ok, Path::new("c.yaml")).unwrap();
    let a = snap.routes.get(0).pin.as_deref().unwrap();
    assert_eq!(
        a.mode(crate::pin::Kind::Tool),
        crate::config::pin::PinMode::Enforce
    );
    assert_eq!(
        a.mode(crate::pin::Kind::Prompt),
        crate::config::pin::PinMode::Off
    );
    assert!(snap.pin_store.is_some());
    let summary = snap.summary();
    assert!(summary.contains("(mcp; pin: tools enforce)"), "{summary}");
    assert!(summary.contains("(mcp; pin: prompts record)"), "{summary}");
    // Every kind off: no pinning, and the store is then unused.
    let off = ok
        .replace("pin: { tools: enforce }", "pin: {}")
        .replace("pin: { prompts: record }", "pin: { tools: off }");
    let snap = from_text(&off, Path::new("c.yaml")).unwrap();
    assert!(snap.routes.all().iter().all(|r| r.pin.is_none()) && snap.pin_store.is_none());
}
