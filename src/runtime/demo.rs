//! `portcullis demo`: a small built-in MCP server (Streamable HTTP, JSON
//! responses, sessions) on loopback with portcullis in front of it, so a
//! newcomer sees a working setup with nothing installed: an embedded dev
//! issuer (an ephemeral ES256 key whose public half is inlined in the config),
//! two tokens (alice in engineering, bob in sales), and a policy file that is
//! watched, so edits take effect at once. The demo server runs on plain std
//! threads; it is a fixture, not part of the data plane.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Start the demo MCP server on 127.0.0.1 (ephemeral port); it serves `/mcp`.
pub fn start_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-mcp".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("demo-mcp-conn".into())
                    .spawn(move || serve(stream));
            }
        })?;
    Ok(addr)
}

/// The demo's dev issuer: an ephemeral ES256 key that mints tokens.
pub struct DevIssuer {
    pkcs8: Vec<u8>,
    /// Its public key as a JWK set (inlined in the demo configuration).
    pub jwks: String,
    pub issuer: String,
}

impl DevIssuer {
    pub fn new(listen: SocketAddr) -> Result<DevIssuer, String> {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate the dev issuer key")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "cannot load the dev issuer key")?;
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo",
            "alg": "ES256", "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        Ok(DevIssuer {
            pkcs8: pkcs8.as_ref().to_vec(),
            jwks: jwks.to_string(),
            issuer: format!("http://{listen}/demo-issuer"),
        })
    }

    /// A token for `sub` in `groups`, valid for 8 hours, for `audience`.
    pub fn token(&self, sub: &str, groups: &[&str], audience: &str) -> Result<String, String> {
        crate::identity::crypto::install();
        let now = crate::proxy::admit::unix_now();
        let claims = json!({"iss": self.issuer, "sub": sub, "aud": audience,
            "email": format!("{sub}@example.com"), "groups": groups, "scope": "mcp",
            "iat": now, "exp": now + 8 * 3600});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("demo".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .map_err(|e| format!("cannot sign a demo token: {e}"))
    }
}

/// The configuration `portcullis demo` runs with: one authenticated MCP
/// route with a policy.
pub fn config_text(
    listen: SocketAddr,
    upstream: SocketAddr,
    issuer: &DevIssuer,
    store: &std::path::Path,
) -> String {
    format!(
        r#"# The portcullis demo configuration. It is watched: edit the policy below
# and save, and the next request is judged by the new rules.
workers: 1
listen:
  - address: {listen}
# portcullis is also the OAuth 2.1 authorization server of MCP clients here:
# they discover it from the route's 401, register (dynamic registration or a
# client metadata document), log in on the development login page (alice or
# bob, no password: loopback only) and consent; their tokens are for this
# route only.
authorization_server:
  issuer: http://{listen}
  login:
    dev_users:
      - {{ sub: alice, email: alice@example.com, groups: [engineering] }}
      - {{ sub: bob, email: bob@example.com, groups: [sales] }}
  clients:
    dynamic_registration: true
    registered:
      - {{ client_id: demo-cli, name: Demo CLI, redirect_uris: ["http://127.0.0.1/callback", "http://localhost/callback"] }}
store:
  path: {store}
identity:
  issuers:
    - name: demo
      issuer: {iss}
      jwks: {jwks}
routes:
  - name: demo
    from: http://{listen}/mcp
    to: http://{upstream}/mcp
    mcp: {{}}
    auth: {{ issuers: [demo, portcullis], scopes: [mcp] }}
    policy:
      - name: engineering-all-tools
        allow: {{ groups: {{ has: engineering }} }}
      - name: sales-echo-only
        allow:
          and:
            - groups: {{ has: sales }}
            - or:
                - mcp_method: {{ in: [initialize, notifications/initialized, ping, tools/list] }}
                - mcp_tool: {{ equals: echo }}
      - name: no-deletes
        deny: {{ mcp_tool: {{ starts_with: delete_ }} }}
        message: deleting is not allowed through portcullis
"#,
        iss = issuer.issuer,
        jwks = issuer.jwks,
        store = store.display(),
    )
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        let mut session: Option<String> = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("mcp-session-id") {
                    session = Some(value.trim().to_string());
                }
            }
        }
        let mut body = vec![0u8; length.min(4 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = path.split('?').next().unwrap_or("");
        let (status, extra, payload) = if path != "/mcp" {
            (
                404,
                String::new(),
                json!({"error": "not found"}).to_string(),
            )
        } else {
            match method.as_str() {
                "POST" => match serde_json::from_slice::<Value>(&body) {
                    Ok(v) => respond(&v, session),
                    Err(_) => (
                        400,
                        String::new(),
                        rpc_error(Value::Null, -32700, "parse error").to_string(),
                    ),
                },
                "DELETE" => (200, String::new(), String::new()),
                _ => (405, "Allow: POST, DELETE\r\n".into(), String::new()),
            }
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
            if status < 300 { "OK" } else { "Error" },
            payload.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(payload.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

fn respond(v: &Value, session: Option<String>) -> (u16, String, String) {
    let is_initialize = v.get("method").and_then(Value::as_str) == Some("initialize");
    let session_header = if is_initialize {
        format!(
            "Mcp-Session-Id: demo-{}\r\n",
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        )
    } else {
        session
            .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
            .unwrap_or_default()
    };
    let answer = match v {
        Value::Array(batch) => {
            let out: Vec<Value> = batch.iter().filter_map(handle).collect();
            if out.is_empty() {
                None
            } else {
                Some(Value::Array(out))
            }
        }
        single => handle(single),
    };
    match answer {
        Some(a) => (200, session_header, a.to_string()),
        None => (202, session_header, String::new()),
    }
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Answer one JSON-RPC message; `None` for notifications.
fn handle(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            let version =
                if ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"].contains(&version) {
                    version
                } else {
                    "2025-06-18"
                };
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "portcullis-demo", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "A demo MCP server behind portcullis. Try the echo and add tools."
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "echo", "description": "Echo a text back.",
             "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
            {"name": "add", "description": "Add two numbers.",
             "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
            {"name": "delete_everything", "description": "Pretend to delete everything (portcullis's policy stops it).",
             "inputSchema": {"type": "object", "properties": {}}}
        ]}),
        "tools/call" => {
            let args = params.get("arguments").cloned().unwrap_or(Value::Null);
            match params.get("name").and_then(Value::as_str) {
                Some("echo") => text_result(
                    args.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                Some("add") => match (
                    args.get("a").and_then(Value::as_f64),
                    args.get("b").and_then(Value::as_f64),
                ) {
                    (Some(a), Some(b)) => text_result(format!("{}", a + b)),
                    _ => return Some(rpc_error(id, -32602, "add needs numbers a and b")),
                },
                Some("delete_everything") => {
                    text_result("the demo server would have deleted everything".into())
                }
                _ => return Some(rpc_error(id, -32602, "unknown tool")),
            }
        }
        _ => return Some(rpc_error(id, -32601, "method not found")),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn text_result(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

/// A started demo: the proxy, and what to tell the user.
pub struct Demo {
    pub running: crate::runtime::Running,
    pub config_path: std::path::PathBuf,
    pub url: String,
    pub upstream: SocketAddr,
    pub alice: String,
    pub bob: String,
}

/// Start the demo server, write the demo configuration (watched for edits)
/// and start portcullis on `listen`.
pub fn start(listen: SocketAddr) -> Result<Demo, String> {
    if listen.port() == 0 {
        return Err("the demo needs a fixed port (tokens name the URL as their audience)".into());
    }
    let upstream = start_server().map_err(|e| format!("cannot start the demo MCP server: {e}"))?;
    let issuer = DevIssuer::new(listen)?;
    let url = format!("http://{listen}/mcp");
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config_path = dir.join("portcullis.yaml");
    std::fs::write(
        &config_path,
        config_text(listen, upstream, &issuer, &dir.join("state.db")),
    )
    .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let snap = crate::snapshot::load(&config_path).map_err(|e| e.to_string())?;
    let running = crate::runtime::start(snap).map_err(|e| e.to_string())?;
    Ok(Demo {
        running,
        url: url.clone(),
        upstream,
        alice: issuer.token("alice", &["engineering"], &url)?,
        bob: issuer.token("bob", &["sales"], &url)?,
        config_path,
    })
}

/// What `portcullis demo` prints: the tokens and commands to try.
pub fn instructions(d: &Demo) -> String {
    let call = |token: &str, body: &str| {
        format!(
            "curl -s {url} -H \"Authorization: Bearer ${token}\" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -d '{body}'",
            url = d.url
        )
    };
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let add = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}"#;
    let delete = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_everything","arguments":{}}}"#;
    format!(
        "portcullis demo is running.
  MCP endpoint (through portcullis): {url}
  demo MCP server (upstream):        http://{upstream}/mcp
  policy (watched, edit and save):   {config}

Two tokens from the demo's own issuer (valid 8 hours):
  export ALICE={alice}   # group engineering
  export BOB={bob}   # group sales

Try it:
  # no token: 401 with the protected resource metadata URL
  curl -si {url} -d '{{}}' | grep -i www-authenticate
  curl -s http://{listen}/.well-known/oauth-protected-resource/mcp
  # alice sees echo and add; delete_everything is hidden by the no-deletes rule
  {alice_list}
  # bob (sales) sees only echo; his add is denied by the policy, naming the rule
  {bob_list}
  {bob_add}
  # alice's add works; her delete_everything is denied
  {alice_add}
  {alice_delete}
  # a real MCP client that does OAuth itself (discovery, registration, PKCE;
  # log in as alice or bob in the browser it opens, then allow it):
  npx @modelcontextprotocol/inspector --cli {url} --transport http --method tools/list
  # a real MCP client, with a token:
  npx @modelcontextprotocol/inspector --cli {url} --transport http --header \"Authorization: Bearer $ALICE\" --method tools/list

Press Ctrl-C to stop.",
        url = d.url,
        upstream = d.upstream,
        config = d.config_path.display(),
        alice = d.alice,
        bob = d.bob,
        listen = d.running.addresses.first().map_or(String::new(), |a| a.to_string()),
        alice_list = call("ALICE", list),
        bob_list = call("BOB", list),
        bob_add = call("BOB", add),
        alice_add = call("ALICE", add),
        alice_delete = call("ALICE", delete),
    )
}
