//! Black-box tests of a running proxy: forwarding rules, local answers that
//! must not desynchronise the connection (SECURITY.md item 8), upstream
//! failures, limits and timeouts.

use crate::harness::{exchange, ok_json, read_all, statuses, Proxy, Upstream};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);

#[test]
fn forwards_with_rewritten_headers() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "");
    let (resp, _) = exchange(
        proxy.addr,
        b"POST /mcp?x=1 HTTP/1.1\r\nHost: proxy.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nUpgrade: websocket\r\nProxy-Authorization: Basic x\r\nX-Request-Id: client.id-1\r\nMcp-Session-Id: abc\r\nAccept: application/json, text/event-stream\r\nContent-Length: 30\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"n\"}",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(resp.contains("X-Request-Id: client.id-1\r\n"), "{resp}");
    assert!(
        !resp.contains("upstream-id"),
        "upstream's request id must be replaced: {resp}"
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert!(r.starts_with("POST /mcp?x=1 HTTP/1.1\r\n"), "{r}");
    assert!(r.contains(&format!("Host: {}\r\n", up.addr)), "{r}");
    assert!(
        r.contains("X-Forwarded-For: 127.0.0.1\r\n") && !r.contains("6.6.6.6"),
        "{r}"
    );
    assert!(
        r.contains("X-Forwarded-Host: proxy.test\r\n") && !r.contains("evil"),
        "{r}"
    );
    assert!(r.contains("X-Forwarded-Proto: http\r\n"), "{r}");
    assert!(r.contains("X-Request-Id: client.id-1\r\n"), "{r}");
    assert!(r.contains("Mcp-Session-Id: abc\r\n"), "{r}");
    assert!(
        r.contains("Accept: application/json, text/event-stream\r\n"),
        "{r}"
    );
    for gone in [
        "X-Secret",
        "Keep-Alive",
        "Upgrade",
        "Proxy-Authorization",
        "Connection",
    ] {
        assert!(!r.contains(gone), "{gone} must not be forwarded: {r}");
    }
    assert!(
        r.ends_with("Content-Length: 30\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"n\"}"),
        "{r}"
    );
}

#[test]
fn generates_a_request_id_when_the_client_sends_a_bad_one() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "");
    let (resp, _) = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: proxy.test\r\nX-Request-Id: bad id\r\n\r\n",
        SHORT,
    );
    let id = resp
        .lines()
        .find_map(|l| l.strip_prefix("X-Request-Id: "))
        .expect("id echoed");
    assert_eq!(id.len(), 24, "{resp}");
    assert!(up.requests()[0].contains(&format!("X-Request-Id: {id}\r\n")));
}

/// SECURITY.md item 8: a local answer before the body is read must never let
/// the body be parsed as the next request.
#[test]
fn local_answers_never_parse_the_body_as_a_request() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "limits: { max_body_bytes: 100 }");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n";
    // No route for this host: 404, body never read, connection closed.
    let raw = format!(
        "POST /x HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [404], "{resp}");
    assert!(
        closed,
        "connection must close after a local answer with an unread body"
    );
    // Body too large: 413 before reading it.
    let raw =
        format!("POST /x HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1000\r\n\r\n{smuggled}");
    let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [413], "{resp}");
    assert!(closed);
    // Chunked body growing past the limit while streamed.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&[b'a'; 64]).unwrap();
    s.write_all(b"\r\n40\r\n").unwrap();
    s.write_all(&[b'b'; 64]).unwrap();
    s.write_all(format!("\r\n0\r\n\r\n{smuggled}").as_bytes())
        .unwrap();
    let (resp, closed) = read_all(&mut s, SHORT);
    assert_eq!(statuses(&resp), [413], "{resp}");
    assert!(closed);
    // A bad chunk: 400 and close, never resynchronised.
    let raw = format!("POST /x HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n{smuggled}");
    let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert!(closed);
    assert!(
        up.requests().iter().all(|r| !r.contains("/smuggled")),
        "{:?}",
        up.requests()
    );
}

/// A request target with a fragment is answered 400 and never forwarded.
#[test]
fn fragment_in_target_is_refused() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "");
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /mcp#frag HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert!(resp.contains("fragment in request target"), "{resp}");
    assert!(closed, "a malformed head closes the connection");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

#[test]
fn no_route_without_body_keeps_the_connection() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::start(
        up.addr,
        "  - name: t\n    from: http://proxy.test/mcp\n    to: http://{upstream}/mcp\n",
        "",
    );
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /other HTTP/1.1\r\nHost: proxy.test\r\n\r\nGET /mcp/a HTTP/1.1\r\nHost: proxy.test\r\n\r\nGET /mcp HTTP/1.1\r\nHost: proxy.test:80\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [404, 200, 200], "{resp}");
    assert!(!closed);
    assert!(
        resp.contains("\"status\":404"),
        "plain routes answer plain JSON errors: {resp}"
    );
}

/// Chunked bodies arriving in pieces: held whole and sent with
/// Content-Length on MCP routes (they are decoded in full), streamed and
/// re-chunked on plain routes. Extensions and trailers never pass.
#[test]
fn chunked_request_bodies_are_held_or_streamed() {
    let plain = "  - name: t\n    from: http://proxy.test/\n    to: http://{upstream}/\n";
    let mcp =
        "  - name: t\n    from: http://proxy.test/\n    to: http://{upstream}/\n    mcp: {}\n";
    for (routes, want_tail) in [
        (
            plain,
            "Transfer-Encoding: chunked\r\n\r\n11\r\n{\"jsonrpc\":\"2.0\",\r\nd\r\n\"method\":\"n\"}\r\n0\r\n\r\n",
        ),
        (mcp, "Content-Length: 30\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"n\"}"),
    ] {
        let up = Upstream::start(ok_json);
        let proxy = Proxy::start(up.addr, routes, "");
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
        let (cont, _) = read_all(&mut s, SHORT);
        assert_eq!(cont, "HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"11;ext=1\r\n{\"jsonrpc\":\"2.0\",\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"d\r\n\"method\":\"n\"}\r\n0\r\nTrailer: x\r\n\r\n").unwrap();
        let (resp, _) = read_all(&mut s, SHORT);
        assert_eq!(statuses(&resp), [200], "{resp}");
        let r = &up.requests()[0];
        assert!(
            !r.contains("Expect") && !r.contains("ext=1") && !r.contains("Trailer"),
            "{r}"
        );
        assert!(r.ends_with(want_tail), "{r:?}");
    }
}

/// A pooled upstream connection that the upstream closed while idle is never
/// used: the request goes out on a fresh one, even when its body arrives
/// after its head.
#[test]
fn stale_pooled_connections_are_not_used() {
    fn answer_then_close(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    }
    let up = Upstream::start(answer_then_close);
    for routes in [
        "  - { name: t, from: http://proxy.test/, to: http://{upstream}/ }\n",
        "  - { name: t, from: http://proxy.test/, to: http://{upstream}/, mcp: {} }\n",
    ] {
        let proxy = Proxy::start(up.addr, routes, "");
        let (resp, _) = exchange(
            proxy.addr,
            b"GET /warm HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
            SHORT,
        );
        assert_eq!(statuses(&resp), [200], "{resp}");
        // The upstream closes its idle connections.
        up.close_idle();
        std::thread::sleep(Duration::from_millis(100));
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 30\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"n\"}")
            .unwrap();
        let (resp, _) = read_all(&mut s, SHORT);
        assert_eq!(statuses(&resp), [200], "{resp}");
    }
}

#[test]
fn upstream_failures_become_json_rpc_errors() {
    fn both_framings(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec()
    }
    fn switching(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            .to_vec()
    }
    for respond in [both_framings as fn(&[u8]) -> Vec<u8>, switching] {
        let up = Upstream::start(respond);
        let proxy = Proxy::mcp(up.addr, "");
        let (resp, _) = exchange(
            proxy.addr,
            b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
            SHORT,
        );
        assert_eq!(statuses(&resp), [502], "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["error"]["code"], -32000);
    }
    // Nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::mcp(dead, "");
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [502], "{resp}");
    assert!(resp.contains("\"jsonrpc\":\"2.0\""), "{resp}");
    assert!(
        !closed,
        "an upstream failure does not cost the client its connection"
    );
}

#[test]
fn close_delimited_responses_are_rechunked_and_keep_the_client() {
    fn until_close(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nCLOSE".to_vec()
    }
    let up = Upstream::start(until_close);
    let proxy = Proxy::mcp(up.addr, "");
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\nGET /y HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200, 200], "{resp}");
    assert!(
        resp.contains("Transfer-Encoding: chunked\r\n\r\n5\r\nCLOSE\r\n0\r\n\r\n"),
        "{resp:?}"
    );
    assert!(!closed);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        2,
        "a close-delimited upstream connection is never reused"
    );
}

#[test]
fn upstream_connections_are_pooled() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "");
    for _ in 0..3 {
        let (resp, _) = exchange(
            proxy.addr,
            b"GET /x HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
            SHORT,
        );
        assert_eq!(statuses(&resp), [200], "{resp}");
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn slow_heads_time_out_with_408() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "limits: { header_timeout: 300ms }");
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: pro").unwrap();
    let (resp, closed) = read_all(&mut s, Duration::from_secs(3));
    assert_eq!(statuses(&resp), [408], "{resp}");
    assert!(closed);
    // A connection that never sends a byte is simply closed.
    let mut idle = TcpStream::connect(proxy.addr).unwrap();
    let (resp, closed) = read_all(&mut idle, Duration::from_secs(3));
    assert!(resp.is_empty() && closed);
}

#[test]
fn connection_limits_are_enforced() {
    let up = Upstream::start(ok_json);
    let per_listener = "workers: 2\nlisten:\n  - { address: 127.0.0.1:0, max_connections: 2 }\nroutes:\n  - { name: t, from: http://proxy.test/, to: http://{upstream}/ }\n";
    for proxy in [
        Proxy::mcp(up.addr, "limits: { max_connections: 2 }"),
        Proxy::from_config(up.addr, per_listener),
    ] {
        check_limit_of_two(&proxy);
    }
}

fn check_limit_of_two(proxy: &Proxy) {
    let a = TcpStream::connect(proxy.addr).unwrap();
    let b = TcpStream::connect(proxy.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert!(
        resp.is_empty() && closed,
        "third connection must be refused: {resp}"
    );
    drop((a, b));
    std::thread::sleep(Duration::from_millis(100));
    let (resp, _) = exchange(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "slots are released: {resp}");
}

#[test]
fn epoll_driver_serves_the_same() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "runtime: { driver: epoll }");
    let (resp, closed) = exchange(
        proxy.addr,
        b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 30\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"n\"}GET /y HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200, 200], "{resp}");
    assert!(!closed);
}

#[test]
fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    fn slow(_: &[u8]) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(600));
        ok_json(&[])
    }
    let up = Upstream::start(slow);
    let proxy = Proxy::mcp(up.addr, "shutdown_timeout: 5s");
    let addr = proxy.addr;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let stopper = std::thread::spawn(move || drop(proxy));
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        TcpStream::connect(addr).is_err(),
        "no new connections once shutting down"
    );
    let (resp, closed) = read_all(&mut s, Duration::from_secs(3));
    assert_eq!(
        statuses(&resp),
        [200],
        "in-flight request completes: {resp}"
    );
    assert!(resp.contains("Connection: close"), "{resp}");
    assert!(closed);
    stopper.join().unwrap();
}

#[test]
fn a_taken_port_is_an_error_not_a_shared_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = format!("workers: 1\nlisten:\n  - address: {addr}\nroutes:\n  - {{ name: t, from: http://proxy.test/, to: http://127.0.0.1:9/ }}\n");
    let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    let err = portcullis::start(snap)
        .err()
        .expect("must refuse a port in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // A second portcullis on the same port is refused too, though both would
    // use SO_REUSEPORT.
    let up = Upstream::start(ok_json);
    let first = Proxy::mcp(up.addr, "");
    let text = format!("workers: 1\nlisten:\n  - address: {}\nroutes:\n  - {{ name: t, from: http://proxy.test/, to: http://127.0.0.1:9/ }}\n", first.addr);
    let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    assert!(portcullis::start(snap).is_err());
}

/// The state kept per connection while it waits: the future of
/// `proxy::serve`, which is all of a plain connection's task (about 1.2 KiB
/// in release builds, 1.4 KiB in debug: a turn's state, the held read and
/// the exchange, is boxed and lives only while a request is awaited and
/// served; an idle wait uses the worker's coarse clock, not a 640-byte
/// monoio timer; ≤ 2 KiB per idle connection in all is a goal, see
/// loadtest/memory.py). A guard against scratch arrays, timers or big
/// values creeping into it; header arrays belong on the stack of the
/// synchronous parse calls.
#[test]
fn connection_future_stays_small() {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let tcp = monoio::net::TcpStream::from_std(std_stream).unwrap();
        let text = "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - { name: t, from: http://proxy.test/, to: http://127.0.0.1:9/ }\n";
        let snap = portcullis::from_text(text, std::path::Path::new("t.yaml")).unwrap();
        let shared_snap = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(snap));
        let worker = std::rc::Rc::new(portcullis::internal::proxy::Worker::new(0, std::sync::Arc::new(portcullis::internal::proxy::Shared::new(1, None).unwrap()), shared_snap));
        let fut = portcullis::internal::proxy::serve(worker, portcullis::internal::proxy::ClientStream::plain(tcp), "127.0.0.1:1".parse().unwrap(), ());
        let size = std::mem::size_of_val(&fut);
        eprintln!("proxy::serve future: {size} bytes");
        assert!(size <= 1440, "a connection's future is {size} bytes");
    });
}

/// POST bodies on MCP routes are decoded in full: what is not valid JSON-RPC
/// is answered 400 with the JSON-RPC error and never forwarded.
#[test]
fn invalid_json_rpc_is_refused_on_mcp_routes() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, "");
    let post = |body: &str| {
        let raw = format!("POST /mcp HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        exchange(proxy.addr, raw.as_bytes(), SHORT).0
    };
    for (body, code) in [
        ("{not json", -32700),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
            -32600,
        ),
        (r#"[]"#, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"delete_all"}}"#,
            -32600,
        ),
    ] {
        let resp = post(body);
        assert_eq!(statuses(&resp), [400], "{body}: {resp}");
        let v: serde_json::Value =
            serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}: {resp}");
        assert_eq!(v["jsonrpc"], "2.0");
    }
    // An empty POST and a body on another method are not passed unread.
    for raw in [
        "POST /mcp HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        "DELETE /mcp HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [400], "{raw:?}: {resp}");
        assert!(resp.contains("\"code\":-32700"), "{resp}");
    }
    assert!(
        up.requests().is_empty(),
        "nothing invalid was forwarded: {:?}",
        up.requests()
    );
    // A DELETE without a body (session end) passes.
    let (resp, _) = exchange(
        proxy.addr,
        b"DELETE /mcp HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
    up.received.lock().unwrap().clear();
    let resp = post(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert_eq!(up.requests().len(), 1);
    // Plain HTTP routes are not MCP: their bodies pass as they are.
    let plain = Proxy::start(
        up.addr,
        "  - { name: t, from: http://proxy.test/, to: http://{upstream}/ }\n",
        "",
    );
    let (resp, _) = exchange(
        plain.addr,
        b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 9\r\n\r\n{not json",
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
}

/// `Origin` against the route's allowed origins; modern-era `Mcp-Method` /
/// `Mcp-Name` against the body (-32020, with the request's id); a refused
/// body leaves the kept-alive connection usable.
#[test]
fn origin_and_mirrored_headers_are_checked() {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::start(
        up.addr,
        "  - name: t\n    from: http://proxy.test/\n    to: http://{upstream}/\n    mcp: { allowed_origins: [\"https://app.example.com\"] }\n",
        "",
    );
    let call = r#"{"jsonrpc":"2.0","id":"req-7","method":"tools/call","params":{"name":"search","arguments":{}}}"#;
    let post = |headers: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: proxy.test\r\n{headers}Content-Length: {}\r\n\r\n{call}",
            call.len()
        )
    };
    let (resp, _) = exchange(
        proxy.addr,
        post("Origin: https://evil.example\r\n").as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [403], "{resp}");
    let (resp, _) = exchange(
        proxy.addr,
        post("Origin: https://app.example.com\r\n").as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
    // The route's own origin is always allowed.
    let (resp, _) = exchange(
        proxy.addr,
        post("Origin: http://proxy.test\r\n").as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");

    let modern = "MCP-Protocol-Version: 2026-07-28\r\n";
    for (headers, status) in [
        (
            format!("{modern}Mcp-Method: tools/call\r\nMcp-Name: search\r\n"),
            200,
        ),
        (
            format!("{modern}Mcp-Method: tools/call\r\nMcp-Name: =?base64?c2VhcmNo?=\r\n"),
            200,
        ),
        (
            format!("{modern}Mcp-Method: tools/call\r\nMcp-Name: delete_all\r\n"),
            400,
        ),
        (
            format!("{modern}Mcp-Method: tools/list\r\nMcp-Name: search\r\n"),
            400,
        ),
        (format!("{modern}Mcp-Name: search\r\n"), 400),
        // Legacy era: not required, checked when present.
        ("MCP-Protocol-Version: 2025-06-18\r\n".to_string(), 200),
        (
            "Mcp-Method: tools/call\r\nMcp-Name: other\r\n".to_string(),
            400,
        ),
    ] {
        // Two requests on one connection: the refused one must not break the next.
        let raw = format!("{}{}", post(&headers), post(""));
        let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [status, 200], "{headers:?}: {resp}");
        if status == 400 {
            assert!(resp.contains("\"code\":-32020"), "{headers:?}: {resp}");
            assert!(
                resp.contains("\"id\":\"req-7\""),
                "the request's id is echoed: {resp}"
            );
        }
        assert!(!closed, "{headers:?}: {resp}");
    }
    // A repeated mirrored header is refused before the body is read: the
    // connection closes so the body is never taken for a request.
    let twice =
        format!("{modern}Mcp-Method: tools/call\r\nMcp-Method: tools/call\r\nMcp-Name: search\r\n");
    let (resp, closed) = exchange(
        proxy.addr,
        format!("{}{}", post(&twice), post("")).as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert!(closed);
    let forwarded = up.requests();
    assert!(
        forwarded
            .iter()
            .all(|r| !r.contains("delete_all") && !r.contains("Name: other")),
        "a mismatched request reached the upstream: {forwarded:?}"
    );
}

/// A kept-alive connection idle past the hold (its read cancelled and its
/// buffer freed) still gets the next request whole: sent at once, in
/// pieces around the moment the hold ends, or pipelined two at a time.
#[test]
fn idle_connections_lose_nothing_when_their_read_is_let_go() {
    for driver in ["io_uring", "epoll"] {
        idle_connection_on(driver);
    }
}

fn idle_connection_on(driver: &str) {
    let up = Upstream::start(ok_json);
    let proxy = Proxy::mcp(up.addr, &format!("runtime: {{ driver: {driver} }}"));
    let req = b"POST /mcp HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"n\"}";
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Reads until `want` answers in all have come.
    let (mut got, mut answers) = (Vec::new(), 0);
    let mut read_until = |s: &mut TcpStream, want: usize| {
        let mut chunk = [0u8; 4096];
        while String::from_utf8_lossy(&got).matches("\"ok\"").count() < want {
            let n = std::io::Read::read(s, &mut chunk).unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    // The hold ends 100 to 200 ms into a wait (the worker's coarse clock).
    for pause_ms in [0u64, 20, 95, 105, 150, 195, 205, 300] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        // The head in two writes a few milliseconds apart.
        s.write_all(&req[..20]).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        s.write_all(&req[20..]).unwrap();
        answers += 1;
        read_until(&mut s, answers);
    }
    std::thread::sleep(Duration::from_millis(250));
    s.write_all(&[&req[..], &req[..]].concat()).unwrap();
    answers += 2;
    read_until(&mut s, answers);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(statuses(&text), vec![200; answers], "{driver}: {text}");
    assert_eq!(up.requests().len(), answers, "{driver}");
}
