//! List filtering that must not fail open (found in review): compressed
//! answers, answers whose id the server changed, SSE with CR line ends,
//! list answers on GET streams; and resource URIs with encoded separators.

use crate::auth::{claims, config, post, token};
use crate::harness::{exchange, statuses, Proxy, Upstream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);
const TOOLS_BODY: &str = r#"{"tools":[{"name":"search"},{"name":"delete_repo"}]}"#;
const POLICY: &str = r#"    policy:
      - allow: { mcp_method: { in: [tools/list, tools/call] } }
      - deny: { mcp_tool: { equals: delete_repo } }
"#;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// gzip with one stored (uncompressed) deflate block: valid gzip any client inflates.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x01];
    let len = data.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn gzip_upstream(req: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(req);
    let id = if text.contains("\"id\":7") { "7" } else { "1" };
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{TOOLS_BODY}}}"#);
    let gz = gzip_stored(body.as_bytes());
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    out.extend_from_slice(&gz);
    out
}

#[test]
fn compressed_list_answers_are_refused_and_never_asked_for() {
    let up = Upstream::start(gzip_upstream);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    // httpx (the Python MCP client) sends Accept-Encoding: gzip by default.
    let raw = post(
        Some(&alice),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
    )
    .replace("Content-Type:", "Accept-Encoding: gzip\r\nContent-Type:");
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [502], "fail closed: {resp}");
    assert!(!resp.contains("delete_repo"), "{resp}");
    let forwarded = up.requests();
    assert!(
        forwarded
            .iter()
            .all(|r| !r.to_ascii_lowercase().contains("accept-encoding")),
        "compression is not asked for where lists are filtered: {forwarded:?}"
    );
}

/// A JavaScript server parses ids as doubles: 2^53+1 comes back as 2^53.
fn js_upstream(_: &[u8]) -> Vec<u8> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":9007199254740992,"result":{TOOLS_BODY}}}"#);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn list_answers_are_filtered_whatever_their_id() {
    let up = Upstream::start(js_upstream);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    let raw = post(
        Some(&alice),
        r#"{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/list"}"#,
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(
        !resp.contains("delete_repo"),
        "a denied tool was listed (answer id not matched): {resp}"
    );
}

/// SSE with CR line endings (allowed by the SSE grammar).
fn sse_cr_upstream(_: &[u8]) -> Vec<u8> {
    let events = format!(
        "id: 1\revent: message\rdata: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{TOOLS_BODY}}}\r\r: next event\r\r"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{events}",
        events.len()
    )
    .into_bytes()
}

#[test]
fn sse_list_answers_with_cr_line_ends_are_filtered() {
    let up = Upstream::start(sse_cr_upstream);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    let raw = post(
        Some(&alice),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(
        !resp.contains("delete_repo"),
        "a denied tool was listed (CR-delimited SSE not filtered): {resp}"
    );
}

/// A legacy HTTP+SSE stream (or a resumed one) carries answers on GET.
fn get_stream_upstream(_: &[u8]) -> Vec<u8> {
    let events = format!(
        "event: endpoint\ndata: /messages?sessionId=1\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{TOOLS_BODY}}}\n\n"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{events}",
        events.len()
    )
    .into_bytes()
}

#[test]
fn list_answers_on_get_streams_are_filtered() {
    let up = Upstream::start(get_stream_upstream);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    let raw = format!(
        "GET /mcp HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {alice}\r\nAccept: text/event-stream\r\nLast-Event-ID: 3\r\n\r\n"
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(
        resp.contains("sessionId=1") && resp.contains("\"search\""),
        "{resp}"
    );
    assert!(!resp.contains("delete_repo"), "{resp}");
}

fn ok(_: &[u8]) -> Vec<u8> {
    let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn encoded_separators_do_not_escape_a_resource_prefix() {
    let up = Upstream::start(ok);
    let policy = "    policy:\n      - allow: { mcp_resource: { starts_with: [\"file:///srv/public/\"] } }\n";
    let proxy = Proxy::from_config(up.addr, &config(policy));
    let alice = token(claims("alice", "mcp"));
    let read = |uri: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#
        )
    };
    // The literal form is caught...
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&alice), &read("file:///srv/public/../secret.txt")).as_bytes(),
        SHORT,
    );
    assert!(resp.contains("-32003"), "{resp}");
    // ...the percent-encoded slash is not.
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&alice), &read("file:///srv/public/..%2fsecret.txt")).as_bytes(),
        SHORT,
    );
    assert!(
        resp.contains("-32003"),
        "..%2f escaped the allowed prefix and was forwarded: {resp}"
    );
    for uri in [
        "file:///srv/public/..%5csecret",
        "file:///srv/public/%252e%252e/secret",
    ] {
        let (resp, _) = exchange(proxy.addr, post(Some(&alice), &read(uri)).as_bytes(), SHORT);
        assert!(resp.contains("-32003"), "{uri}: {resp}");
    }
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&alice), &read("file:///srv/public/a%20b.txt")).as_bytes(),
        SHORT,
    );
    assert!(
        !resp.contains("-32003"),
        "an ordinary escape is fine: {resp}"
    );
}
