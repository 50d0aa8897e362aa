//! `portcullis demo`: a small built-in MCP server (Streamable HTTP, JSON
//! responses, sessions) on loopback with portcullis in front of it, so a
//! newcomer sees a working setup with nothing installed. The demo server runs
//! on plain std threads; it is a fixture, not part of the data plane.

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

/// The configuration `portcullis demo` runs with.
pub fn config_text(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "workers: 1\nlisten:\n  - address: {listen}\nroutes:\n  - name: demo\n    from: http://{listen}/mcp\n    to: http://{upstream}/mcp\n    mcp: {{}}\n"
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
             "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}
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
