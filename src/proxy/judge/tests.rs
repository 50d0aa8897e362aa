use super::*;
use crate::proxy::worker::Shared;
use std::sync::Arc;

fn worker_for(config: &str) -> Worker {
    let snap = crate::snapshot::from_text(config, std::path::Path::new("t.yaml")).unwrap();
    let shared_snap = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    Worker::new(0, Arc::new(Shared::new(1, None).unwrap()), shared_snap)
}

fn request(mcp: bool, framing: Framing) -> Request {
    Request {
        route: 0,
        mcp,
        method: crate::http1::Method::Post,
        framing,
        http11: true,
        keep_alive: true,
        expect_continue: false,
        id: Default::default(),
        mcp_head: Default::default(),
        principal: None,
        now_unix: 0,
        in_session: false,
    }
}

const CONFIG: &str = "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - { name: t, from: http://proxy.test/, to: http://127.0.0.1:9/, mcp: {} }\n";

/// Whatever the hold limit, a body that was not read whole never gets
/// a Permit on an MCP route: it cannot stream past judgement.
#[test]
fn an_unread_body_on_an_mcp_route_gets_no_permit() {
    let worker = worker_for(CONFIG);
    let snap = worker.snapshot();
    for framing in [Framing::Chunked, Framing::Length(10)] {
        let mut conn = Conn::detached("127.0.0.1:1".parse().unwrap(), false);
        let req = request(true, framing);
        let got = judge(&worker, &snap, &req, Body::Unread(framing), &mut conn);
        assert!(
            matches!(got, Err(HttpError::PayloadTooLarge)),
            "{framing:?}"
        );
        assert!(conn.up.is_empty(), "nothing framed for the upstream");
    }
}

#[test]
fn a_permit_frames_what_it_allows() {
    let worker = worker_for(CONFIG);
    let snap = worker.snapshot();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut conn = Conn::detached("127.0.0.1:1".parse().unwrap(), false);
    conn.buf.extend_from_slice(body);
    conn.buf.extend_from_slice(b"GET /next");
    let req = request(true, Framing::Length(body.len() as u64));
    let permit = judge(&worker, &snap, &req, Body::Buffered(body.len()), &mut conn).unwrap();
    assert_eq!(permit.unread(), None);
    let up = String::from_utf8(conn.up.clone()).unwrap();
    assert!(up.starts_with("Content-Length: 40\r\n\r\n{"), "{up}");
    assert_eq!(
        conn.buf, b"GET /next",
        "the body is consumed, the next request kept"
    );

    // A refused body is consumed too: it must never be read as a request.
    let bad = br#"{"jsonrpc":"2.0","id":1}"#;
    let mut conn = Conn::detached("127.0.0.1:1".parse().unwrap(), false);
    conn.buf.extend_from_slice(bad);
    let req = request(true, Framing::Length(bad.len() as u64));
    assert!(judge(&worker, &snap, &req, Body::Buffered(bad.len()), &mut conn).is_err());
    assert!(conn.buf.is_empty() && conn.up.is_empty());
}
