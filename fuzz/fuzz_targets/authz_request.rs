//! The authorization server on arbitrary requests: the form/query parser
//! (repeated parameters refused, percent-encoding checked) and every
//! endpoint through `Server::handle` with a real embedded store. Never a
//! panic, never a 5xx, never a redirect answering a POST to an OAuth
//! endpoint, and a parsed form never holds a name twice.
//! Input: byte 0 picks the endpoint and method, then query, NUL, body, NUL,
//! cookie header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::internal::authz::{compile_settings, Call, Form, Server, Settings, Verb};
use portcullis::internal::store::SqliteStore;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const PATHS: [&str; 10] = [
    "/.well-known/oauth-authorization-server",
    "/register",
    "/authorize",
    "/token",
    "/revoke",
    "/.portcullis/login",
    "/.portcullis/callback",
    "/.portcullis/consent",
    "/.well-known/openid-configuration",
    "/.portcullis/nothing",
];

fn server() -> &'static (Settings, Server) {
    static SERVER: OnceLock<(Settings, Server)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-authz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "listen: [{{address: 127.0.0.1:8080}}]
authorization_server:
  issuer: http://127.0.0.1:8080
  login: {{dev_users: [{{sub: alice}}]}}
  clients:
    dynamic_registration: true
    metadata_documents: {{enabled: false}}
    registered:
      - {{client_id: pub, redirect_uris: ['http://127.0.0.1/cb']}}
      - {{client_id: conf, client_secret: s3cret, redirect_uris: ['https://app.example/cb']}}
store: {{path: {}/state.db}}
routes:
  - {{name: a, from: http://127.0.0.1:8080/a, to: http://127.0.0.1:9/mcp, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
  - {{name: b, from: http://127.0.0.1:8080/b, to: http://127.0.0.1:9/mcp, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
",
            dir.display()
        );
        let cfg = portcullis::config::parse(&text, Path::new("fuzz.yaml")).unwrap();
        let settings = compile_settings(
            cfg.authorization_server.as_ref().unwrap(),
            cfg.store.as_ref(),
            cfg.vault.as_ref(),
            &cfg.routes,
            &dir,
        )
        .unwrap();
        let store = SqliteStore::open_with(dir.join("state.db"), false).unwrap();
        let server = Server::new(&settings, Box::new(store), &[7u8; 32], Arc::default()).unwrap();
        (settings, server)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0);
    let query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let cookie = parts.next().unwrap_or_default();
    if let Ok(form) = Form::parse(query) {
        let _ = form.get("client_id");
    }
    let verb = match pick >> 4 {
        0..=6 => Verb::Post,
        7..=12 => Verb::Get,
        13 => Verb::Options,
        14 => Verb::Head,
        _ => Verb::Other,
    };
    let path = PATHS[(pick & 0x0f) as usize % PATHS.len()];
    let mut headers = vec![(
        "content-type",
        if pick & 1 == 0 { "application/x-www-form-urlencoded" } else { "application/json" }.to_string(),
    )];
    if !cookie.is_empty() {
        headers.push(("cookie", String::from_utf8_lossy(cookie).into_owned()));
    }
    let call = Call {
        verb,
        path: path.into(),
        query: String::from_utf8_lossy(query).into_owned(),
        headers,
        body: body.to_vec(),
        peer: [127, 0, 0, (pick % 250) + 1].into(),
        tls: false,
    };
    let (settings, server) = server();
    let answer = server.handle(settings, &call);
    assert!(answer.status < 500, "{} {path}: {}", answer.status, String::from_utf8_lossy(&answer.body));
    if verb == Verb::Post && matches!(path, "/register" | "/token" | "/revoke") {
        assert!(!(300..400).contains(&answer.status), "a redirect answered an OAuth POST");
    }
});
