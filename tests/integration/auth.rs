//! Authentication black-box: RFC 9728 metadata, 401/403 challenges, tokens
//! refused from the query string, and no token passthrough: the upstream
//! receives a portcullis-signed assertion, verifiable with the published
//! keys, and never the client's token.

use crate::harness::{exchange, ok_json, statuses, Proxy, Upstream};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "http://proxy.test/mcp";

fn keys_dir() -> String {
    format!("{}/tests/keys", env!("CARGO_MANIFEST_DIR"))
}

pub fn token(claims: serde_json::Value) -> String {
    portcullis::internal::identity::crypto::install();
    let pem = std::fs::read(format!("{}/rsa2048.pem", keys_dir())).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn claims(sub: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
        "exp": now() + 600, "iat": now(), "email": format!("{sub}@example.com"),
        "groups": ["engineering"],
    })
}

/// The identity section and an authenticated MCP route at /mcp, with `policy`.
pub fn config(policy: &str) -> String {
    let jwk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/rsa2048.pub.jwk.json", keys_dir())).unwrap(),
    )
    .unwrap();
    let mut jwk = jwk.as_object().unwrap().clone();
    jwk.insert("kid".into(), "k1".into());
    let jwks = serde_json::json!({ "keys": [jwk] });
    format!(
        "workers: 1\nlisten:\n  - address: 127.0.0.1:0\nidentity:\n  issuers:\n    - name: idp\n      issuer: {ISSUER}\n      jwks: {jwks}\nroutes:\n  - name: t\n    from: {AUDIENCE}\n    to: http://{{upstream}}/up\n    mcp: {{}}\n    auth: {{ issuers: [idp], scopes: [mcp] }}\n{policy}"
    )
}

pub fn post(token: Option<&str>, body: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy.test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn tokens_are_checked_and_never_passed_upstream() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::from_config(up.addr, &config(""));
    let metadata = "http://proxy.test/.well-known/oauth-protected-resource/mcp";

    // No token: 401 pointing at the metadata.
    let (resp, _) = exchange(proxy.addr, post(None, PING).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [401], "{resp}");
    let challenge = header(&resp, "www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{challenge}"
    );
    assert!(!challenge.contains("error="), "{challenge}");

    // A bad token: invalid_token.
    let mut forged = token(claims("alice", "mcp"));
    forged.push('x');
    for bad in [
        forged,
        token(
            serde_json::json!({"iss": ISSUER, "aud": "http://other/", "sub": "a", "scope": "mcp", "exp": now() + 60}),
        ),
        token(
            serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "scope": "mcp", "exp": now() - 60}),
        ),
        token(
            serde_json::json!({"iss": "https://evil.test", "aud": AUDIENCE, "sub": "a", "scope": "mcp", "exp": now() + 60}),
        ),
    ] {
        let (resp, _) = exchange(proxy.addr, post(Some(&bad), PING).as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [401], "{resp}");
        assert!(
            header(&resp, "www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{resp}"
        );
    }

    // A valid token without the scope: 403 insufficient_scope.
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&token(claims("alice", "read"))), PING).as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [403], "{resp}");
    let challenge = header(&resp, "www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"mcp\""),
        "{challenge}"
    );

    // Token in the query string: refused even when valid.
    let good = token(claims("alice", "mcp other"));
    let raw =
        post(Some(&good), PING).replace("POST /mcp ", &format!("POST /mcp?access_token={good} "));
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert!(resp.contains("error=\"invalid_request\""), "{resp}");
    // Two Authorization headers: ambiguous, refused.
    let raw = post(Some(&good), PING).replace(
        "Host: proxy.test\r\n",
        &format!("Host: proxy.test\r\nAuthorization: Bearer {good}\r\n"),
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert!(
        up.requests().is_empty(),
        "nothing refused reached the upstream"
    );

    // A valid token: forwarded with an assertion instead of the token, twice
    // on one connection (the second from the token cache).
    let raw = format!("{}{}", post(Some(&good), PING), post(Some(&good), PING)).replacen(
        "Host: proxy.test\r\n",
        "Host: proxy.test\r\nX-Portcullis-Identity: forged\r\n",
        1,
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200, 200], "{resp}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(
            !r.contains(&good),
            "the client's token reached the upstream: {r}"
        );
        assert!(!r.to_ascii_lowercase().contains("authorization"), "{r}");
        assert!(
            !r.contains("forged"),
            "a client-sent assertion header passed: {r}"
        );
    }
    let assertion = header(&reqs[0], "x-portcullis-identity").expect("assertion header");

    // The assertion verifies with the published keys.
    let (jwks_resp, _) = exchange(
        proxy.addr,
        b"GET /.well-known/portcullis/jwks.json HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&jwks_resp), [200], "{jwks_resp}");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(jwks_resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[format!("http://{}/up", up.addr)]);
    v.set_issuer(&["portcullis"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["idp"], ISSUER);
    assert_eq!(data.claims["email"], "alice@example.com");
}

#[test]
fn protected_resource_metadata_is_served() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::from_config(up.addr, &config(""));
    let get = |path: &str| {
        exchange(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            SHORT,
        )
        .0
    };
    let resp = get("/.well-known/oauth-protected-resource/mcp");
    assert_eq!(statuses(&resp), [200], "{resp}");
    let doc: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(doc["resource"], AUDIENCE);
    assert_eq!(doc["authorization_servers"], serde_json::json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], serde_json::json!(["mcp"]));
    assert_eq!(
        doc["bearer_methods_supported"],
        serde_json::json!(["header"])
    );
    // Nothing protected at the root or elsewhere.
    assert_eq!(
        statuses(&get("/.well-known/oauth-protected-resource")),
        [404]
    );
    assert_eq!(
        statuses(&get("/.well-known/oauth-protected-resource/other")),
        [404]
    );
    assert!(up.requests().is_empty());
}

/// `portcullis demo`: its printed tokens work as the demo policy says.
#[test]
fn the_demo_shows_zero_trust() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let demo = portcullis::demo::start(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let addr = demo.running.addresses[0];
    let ask = |token: &str, body: &str| {
        let raw = post(Some(token), body).replace("Host: proxy.test", &format!("Host: {addr}"));
        let (resp, _) = exchange(addr, raw.as_bytes(), SHORT);
        serde_json::from_str::<serde_json::Value>(resp.split("\r\n\r\n").nth(1).unwrap_or(""))
            .unwrap()
    };
    let tools = |v: serde_json::Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let add = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}"#;
    assert_eq!(tools(ask(&demo.alice, list)), ["echo", "add"]);
    assert_eq!(tools(ask(&demo.bob, list)), ["echo"]);
    assert_eq!(ask(&demo.alice, add)["result"]["content"][0]["text"], "5");
    assert_eq!(ask(&demo.bob, add)["error"]["code"], -32003);
    let text = portcullis::demo::instructions(&demo);
    assert!(text.contains(&demo.alice) && text.contains(&demo.bob));
    demo.running.shutdown();
    demo.running.join();
    let _ = std::fs::remove_dir_all(demo.config_path.parent().unwrap());
}

/// `upstream_auth`: a static credential or an assertion in `Authorization`
/// replaces the client's token; a malformed choice is a config error.
#[test]
fn upstream_credentials_replace_the_token() {
    let up = Upstream::start(ok_json);
    let good = token(claims("alice", "mcp"));
    for (extra, want) in [
        (
            "    upstream_auth: { static: { header: X-Api-Key, value: s3cret } }\n",
            "X-Api-Key: s3cret\r\n",
        ),
        (
            "    upstream_auth: { assertion: { header: Authorization } }\n",
            "Authorization: Bearer ey",
        ),
    ] {
        let proxy = Proxy::from_config(up.addr, &config(extra));
        let (resp, _) = exchange(proxy.addr, post(Some(&good), PING).as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [200], "{resp}");
        let r = up.requests().pop().unwrap();
        assert!(r.contains(want), "{want:?} missing: {r}");
        assert!(!r.contains(&good), "the client's token passed: {r}");
    }
    let text = config("    upstream_auth: { none: true, static: { header: X, value: y } }\n")
        .replace("{upstream}", "127.0.0.1:9");
    let errs = portcullis::from_text(&text, std::path::Path::new("t.yaml"))
        .err()
        .expect("two credentials must be refused");
    assert!(
        errs.to_string().contains("one of assertion, static, none"),
        "{errs}"
    );
}

fn with_session(_: &[u8]) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: sess-1\r\nContent-Length: 2\r\n\r\n{}".to_vec()
}

/// A legacy session belongs to the principal it was minted for: another
/// caller presenting its id is refused, whatever token they hold.
#[test]
fn sessions_are_bound_to_their_principal() {
    let up = Upstream::start(with_session);
    let proxy = Proxy::from_config(up.addr, &config(""));
    let (alice, bob) = (token(claims("alice", "mcp")), token(claims("bob", "mcp")));
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), PING).as_bytes(), SHORT);
    assert!(resp.contains("Mcp-Session-Id: sess-1"), "{resp}");
    let in_session = |t: &str| {
        post(Some(t), PING).replace(
            "Host: proxy.test\r\n",
            "Host: proxy.test\r\nMcp-Session-Id: sess-1\r\n",
        )
    };
    let (resp, _) = exchange(proxy.addr, in_session(&bob).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [403], "{resp}");
    assert!(resp.contains("another caller"), "{resp}");
    let (resp, _) = exchange(proxy.addr, in_session(&alice).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert_eq!(
        up.requests().len(),
        2,
        "bob's request never reached the upstream"
    );
}

/// An answer that repeats the id of a session portcullis does not know (its
/// binding was lost: a restart, or its slot taken) binds nothing: whoever
/// presents the id first cannot take the session over from its owner.
#[test]
fn a_repeated_unknown_session_is_not_bound_to_whoever_presents_it() {
    let up = Upstream::start(with_session);
    let proxy = Proxy::from_config(up.addr, &config(""));
    let (alice, bob) = (token(claims("alice", "mcp")), token(claims("bob", "mcp")));
    let in_session = |t: &str| {
        post(Some(t), PING).replace(
            "Host: proxy.test\r\n",
            "Host: proxy.test\r\nMcp-Session-Id: sess-1\r\n",
        )
    };
    // sess-1 was minted for alice before this proxy started: unknown here.
    let (resp, _) = exchange(proxy.addr, in_session(&bob).as_bytes(), SHORT);
    assert_eq!(
        statuses(&resp),
        [200],
        "unknown sessions are forwarded: {resp}"
    );
    let (resp, _) = exchange(proxy.addr, in_session(&alice).as_bytes(), SHORT);
    assert_eq!(
        statuses(&resp),
        [200],
        "bob did not take sess-1 over: {resp}"
    );
}

/// A reload that stops trusting an issuer takes effect on kept-alive
/// connections too, and a token verified on an older snapshot never lands
/// in the cache of the new one. (Found in review.)
#[test]
fn a_reload_revokes_trust_on_idle_connections_and_in_the_cache() {
    use crate::harness::read_all;
    use std::io::Write;
    let up = Upstream::start(ok_json);
    let old = config("").replace("{upstream}", &up.addr.to_string());
    let new = old.replace("issuer: https://idp.test", "issuer: https://other.test");
    let snap = portcullis::from_text(&old, std::path::Path::new("a.yaml")).unwrap();
    let running = portcullis::start(snap).unwrap();
    let addr = running.addresses[0];
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(post(Some(&token(claims("alice", "mcp"))), PING).as_bytes())
        .unwrap();
    assert_eq!(statuses(&read_all(&mut idle, SHORT).0), [200]);

    let snap = portcullis::from_text(&new, std::path::Path::new("b.yaml")).unwrap();
    running.snapshot.store(std::sync::Arc::new(snap));
    let (resp, _) = exchange(
        addr,
        post(Some(&token(claims("bob", "mcp"))), PING).as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [401], "{resp}");
    let carol = token(claims("carol", "mcp"));
    idle.write_all(post(Some(&carol), PING).as_bytes()).unwrap();
    let (stale, _) = read_all(&mut idle, SHORT);
    let (fresh, _) = exchange(addr, post(Some(&carol), PING).as_bytes(), SHORT);
    running.shutdown();
    running.join();
    assert_eq!(
        statuses(&stale),
        [401],
        "judged on the old snapshot: {stale}"
    );
    assert_eq!(
        statuses(&fresh),
        [401],
        "served from a poisoned cache: {fresh}"
    );
}
