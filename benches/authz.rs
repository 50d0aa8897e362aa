//! The built-in authorization server's token endpoint on one thread, with the
//! embedded store (SQLite, WAL, synchronous=FULL: every refresh is one
//! durable write transaction): a refresh-token grant per iteration, each
//! presenting the refresh token the previous one returned (rotation), as
//! `Server::handle` answers it on a control-plane thread. Issue 11's goal:
//! >= 2,000 requests/s on one core.
//!
//!     cargo bench --bench authz

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::internal::authz::{compile_settings, Call, Server, Verb};
use portcullis::internal::store::{Grant, SqliteStore, Store};
use std::path::Path;
use std::sync::Arc;

fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().try_into().unwrap()
}

fn token_endpoint(c: &mut Criterion) {
    for full_sync in [true, false] {
        refresh(c, full_sync);
    }
}

fn refresh(c: &mut Criterion, full_sync: bool) {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-authz-{}-{full_sync}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "listen: [{{address: 127.0.0.1:8080}}]
authorization_server:
  issuer: http://127.0.0.1:8080
  login: {{dev_users: [{{sub: alice}}]}}
  clients: {{registered: [{{client_id: bench, redirect_uris: ['http://127.0.0.1/cb']}}]}}
store: {{path: {}/state.db}}
routes:
  - {{name: mcp, from: http://127.0.0.1:8080/mcp, to: http://127.0.0.1:9/mcp, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
",
        dir.display()
    );
    let cfg = portcullis::config::parse(&text, Path::new("bench.yaml")).unwrap();
    let settings = compile_settings(
        cfg.authorization_server.as_ref().unwrap(),
        cfg.store.as_ref(),
        cfg.vault.as_ref(),
        &cfg.routes,
        &dir,
    )
    .unwrap();
    let mut store = SqliteStore::open_with(dir.join("state.db"), full_sync).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let grant = Grant {
        id: "bench-grant".into(),
        user: "alice".into(),
        claims: r#"{"sub":"alice","email":"alice@example.com","groups":["engineering"]}"#.into(),
        client_id: "bench".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        resource: "http://127.0.0.1:8080/mcp".into(),
        scopes: vec![],
        created: now,
        expires: now + 86_400,
        revoked: false,
    };
    store.create_grant(&grant, Some(&sha256("rt-0"))).unwrap();
    let server = Server::new(&settings, Box::new(store), &[7u8; 32], Arc::default()).unwrap();
    let mut rt = "rt-0".to_string();
    let call = |rt: &str| Call {
        verb: Verb::Post,
        path: "/token".into(),
        query: String::new(),
        headers: vec![("content-type", "application/x-www-form-urlencoded".into())],
        body: format!("grant_type=refresh_token&client_id=bench&refresh_token={rt}").into_bytes(),
        peer: [127, 0, 0, 1].into(),
        tls: false,
    };
    let name = if full_sync {
        "token/refresh_rotation/sync_full"
    } else {
        "token/refresh_rotation/sync_normal"
    };
    c.bench_function(name, |b| {
        b.iter(|| {
            let answer = server.handle(&settings, &call(&rt));
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            rt = v["refresh_token"].as_str().unwrap().to_string();
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, token_endpoint);
criterion_main!(benches);
