//! The request path. `in_process`: every synchronous stage of one plain
//! request without I/O (head parse, route, upstream head, response head parse,
//! client head). `in_process_zero_trust`: the same for an MCP `tools/call` of
//! 1 KiB with the full security path: bearer token (per-core cache hit),
//! identity assertion (cached), body decoded in full, header checks, a
//! 10-rule policy; `in_process_zero_trust_audited`: the same with the audit
//! record (arguments hashed, the route's default); `audit_arguments_tag`:
//! that hash alone. `loopback`: one keep-alive request through a running proxy
//! to a minimal upstream, socket to socket.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::from_text;
use portcullis::internal::http1::parse_response;
use portcullis::internal::proxy::write_client_head;
use portcullis::internal::proxy::Conn;
use portcullis::internal::proxy::{parse, Step};
use portcullis::internal::proxy::{Shared, Worker};
use portcullis::internal::SharedSnapshot;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

const CONFIG: &str = "workers: 1\nlisten:\n  - address: 127.0.0.1:0\nroutes:\n  - name: bench\n    from: http://bench.test/mcp\n    to: http://{upstream}/mcp\n    mcp: {}\n  - name: other\n    from: http://bench.test/other\n    to: http://{upstream}/other\n";
const REQUEST: &[u8] = b"POST /mcp HTTP/1.1\r\nHost: bench.test\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMcp-Session-Id: 2c5f1b0e9b7e4c5a\r\nContent-Length: 58\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{}}";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: 2c5f1b0e9b7e4c5a\r\nContent-Length: 37\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n";

fn in_process(c: &mut Criterion) {
    let text = CONFIG.replace("{upstream}", "127.0.0.1:9");
    let snap = from_text(&text, Path::new("bench.yaml")).unwrap();
    let shared_snap: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    let worker = Worker::new(
        0,
        Arc::new(Shared::new(1, None).unwrap()),
        shared_snap.clone(),
    );
    let snap = worker.snapshot();
    let mut conn = Conn::detached("127.0.0.1:40000".parse().unwrap(), false);
    conn.up.reserve(1024);
    let mut out = Vec::with_capacity(1024);
    c.bench_function("pipeline/in_process", |b| {
        b.iter(|| {
            conn.buf.clear();
            conn.buf.extend_from_slice(black_box(REQUEST));
            let Some((Step::Forward(req), _)) = parse(&worker, &snap, &mut conn).unwrap() else {
                panic!("not forwarded")
            };
            let mut rh = [portcullis::internal::http1::NO_HEADER; 64];
            let resp = parse_response(black_box(RESPONSE), &mut rh, false, 65536)
                .unwrap()
                .unwrap();
            write_client_head(&resp, req.id.as_bytes(), &mut out).unwrap();
            black_box((&conn.up, &out));
        })
    });
}

const SECURE_CONFIG: &str = r#"workers: 1
listen:
  - address: 127.0.0.1:0
identity:
  issuers:
    - name: idp
      issuer: https://idp.bench
      jwks: JWKS
routes:
  - name: bench
    from: http://bench.test/mcp
    to: http://127.0.0.1:9/mcp
    mcp: {}
    auth: { issuers: [idp], scopes: [mcp] }
    policy:
      - { name: r1, deny: { mcp_tool: { starts_with: delete_ } } }
      - { name: r2, deny: { argument: { pointer: /repo, matches: "^secret-" } } }
      - { name: r3, deny: { source_ip: { in: [10.66.0.0/16] } } }
      - { name: r4, deny: { claim: { path: suspended, equals: true } } }
      - { name: r5, deny: { mcp_resource: { starts_with: "file:///etc/" } } }
      - { name: r6, allow: { and: [ { groups: { has: admins } } ] } }
      - { name: r7, allow: { and: [ { groups: { has: sales } }, { mcp_tool: { in: [search] } } ] } }
      - { name: r8, allow: { and: [ { email: { ends_with: "@partner.example" } }, { mcp_method: { in: [tools/list] } } ] } }
      - { name: r9, allow: { mcp_method: { in: [initialize, notifications/initialized, ping, tools/list] } } }
      - { name: r10, allow: { and: [ { groups: { has: engineering } }, { mcp_tool: { in: [search_repositories, get_file_contents] } } ] } }
"#;

/// A 1 KiB `tools/call` that the 10-rule policy allows.
fn call_body() -> String {
    let pad = "x".repeat(860);
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"get_file_contents","arguments":{{"repo":"portcullis","path":"src/pipeline.rs","ref":"main","note":"{pad}"}}}}}}"#
    )
}

fn in_process_zero_trust(c: &mut Criterion) {
    zero_trust(c, "pipeline/in_process_zero_trust", false);
    zero_trust(c, "pipeline/in_process_zero_trust_audited", true);
    arguments_tag(c);
}

/// The keyed hash the audit writes for a call's arguments by default
/// (HMAC-SHA256 under the sink's key), of the arguments of `call_body`: the
/// largest single part of what an audited request costs.
fn arguments_tag(c: &mut Criterion) {
    let config: portcullis::config::audit::AuditConfig =
        serde_json::from_value(serde_json::json!({"path": "/dev/null"})).unwrap();
    let sink = portcullis::internal::audit::Sink::start(&config).unwrap().0;
    let body = call_body();
    let args = &body[body.find(r#"{"repo""#).unwrap()..body.len() - 2];
    assert!(args.starts_with('{') && args.ends_with('}'), "{args}");
    c.bench_function("pipeline/audit_arguments_tag", |b| {
        b.iter(|| sink.tag(black_box(args.as_bytes())))
    });
}

/// The zero-trust path; `audited`: plus what auditing adds on the request
/// path (the session id and arguments hashed, the facts copied, the record
/// written to the worker's buffer, full buffers handed to a writer thread
/// writing to /dev/null).
fn zero_trust(c: &mut Criterion, name: &str, audited: bool) {
    use portcullis::internal::proxy::judge;
    use portcullis::internal::proxy::Body;
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let jwk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{keys}/rsa2048.pub.jwk.json")).unwrap(),
    )
    .unwrap();
    let mut jwk = jwk.as_object().unwrap().clone();
    jwk.insert("kid".into(), "k1".into());
    let text = SECURE_CONFIG.replace("JWKS", &serde_json::json!({ "keys": [jwk] }).to_string());
    let snap = from_text(&text, Path::new("bench.yaml")).unwrap();
    let shared_snap: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    let audit = audited.then(|| {
        let config: portcullis::config::audit::AuditConfig =
            serde_json::from_value(serde_json::json!({"path": "/dev/null"})).unwrap();
        portcullis::internal::audit::Sink::start(&config).unwrap().0
    });
    let shared = Arc::new(Shared::new(1, audit).unwrap());
    let worker = Worker::new(0, shared, shared_snap.clone());
    let snap = worker.snapshot();
    let now = portcullis::internal::proxy::unix_now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": "https://idp.bench", "aud": "http://bench.test/mcp",
        "sub": "alice", "scope": "mcp", "groups": ["engineering"], "email": "alice@example.com",
        "iat": now, "exp": now + 3600});
    portcullis::internal::identity::crypto::install();
    let pem = std::fs::read(format!("{keys}/rsa2048.pem")).unwrap();
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let body = call_body();
    assert!((1000..1100).contains(&body.len()), "{}", body.len());
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer {token}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: 2c5f1b0e9b7e4c5a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let request = request.as_bytes();
    let mut conn = Conn::detached("127.0.0.1:40000".parse().unwrap(), false);
    conn.up.reserve(4096);
    conn.head_copy.reserve(2048);
    let mut out = Vec::with_capacity(1024);
    c.bench_function(name, |b| {
        b.iter(|| {
            // What `serve` does between requests, then the stages in order.
            conn.begin();
            conn.buf.clear();
            conn.buf.extend_from_slice(black_box(request));
            let Some((Step::Forward(req), head_len)) = parse(&worker, &snap, &mut conn).unwrap()
            else {
                panic!("not forwarded")
            };
            conn.buf.drain(..head_len);
            let body = Body::Buffered(conn.buf.len());
            judge(&worker, &snap, &req, body, &mut conn).ok().unwrap();
            let mut rh = [portcullis::internal::http1::NO_HEADER; 64];
            let resp = parse_response(black_box(RESPONSE), &mut rh, false, 65536)
                .unwrap()
                .unwrap();
            write_client_head(&resp, req.id.as_bytes(), &mut out).unwrap();
            if worker.shared.audit.is_some() {
                worker.audit(&portcullis::internal::audit::Record {
                    unix_micros: 1_763_800_000_000_000,
                    request_id: req.id.as_str(),
                    worker: 0,
                    client: conn.client.peer,
                    tls: None,
                    route: Some("bench"),
                    facts: &conn.judged.audit,
                    decision: portcullis::internal::Decision::Allowed,
                    reason: "",
                    status: 200,
                    latency_us: 180,
                    upstream: Some((200, 120)),
                    bytes_in: request.len() as u64,
                    bytes_out: 200,
                });
            }
            black_box((&conn.up, &out));
        })
    });
}

/// A minimal keep-alive upstream answering every request with `RESPONSE`.
fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    // Requests have a 58-byte body after their head.
                    while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        if pending.len() < i + 4 + 58 {
                            break;
                        }
                        pending.drain(..i + 4 + 58);
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn loopback(c: &mut Criterion) {
    let up = upstream();
    let text = CONFIG.replace("{upstream}", &up.to_string());
    let snap = from_text(&text, Path::new("bench.yaml")).unwrap();
    let running = portcullis::start(snap).unwrap();
    let mut client = TcpStream::connect(running.addresses[0]).unwrap();
    client.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 4096];
    c.bench_function("pipeline/loopback_keepalive", |b| {
        b.iter(|| {
            client.write_all(REQUEST).unwrap();
            let mut got = 0;
            // Response: head + 37-byte body; read until the body is complete.
            loop {
                got += client.read(&mut buf[got..]).unwrap();
                if let Some(i) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                    if got >= i + 4 + 37 {
                        break;
                    }
                }
            }
            black_box(got);
        })
    });
    drop(client);
    running.shutdown();
    running.join();
}

criterion_group!(benches, in_process, in_process_zero_trust, loopback);
criterion_main!(benches);
