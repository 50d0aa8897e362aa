//! The pass-through path. `in_process`: every synchronous stage of one
//! request without I/O (head parse, route, upstream head, response head parse,
//! client head). `loopback`: one keep-alive request through a running proxy to
//! a minimal upstream, socket to socket.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::http1::parse::parse_request;
use portcullis::http1::response::parse_response;
use portcullis::snapshot::{self, SharedSnapshot};
use portcullis::upstream::relay::write_client_head;
use portcullis::upstream::request::{prepare, ClientFacts};
use portcullis::worker::{Shared, Worker};
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
    let snap = snapshot::from_text(&text, Path::new("bench.yaml")).unwrap();
    let shared_snap: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    let worker = Worker::new(0, Arc::new(Shared::default()), shared_snap.clone());
    let snap = shared_snap.load_full();
    let client = ClientFacts::new("127.0.0.1:40000".parse().unwrap(), false);
    let mut up = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    c.bench_function("pipeline/in_process", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let head = parse_request(black_box(REQUEST), &mut headers, &snap.head_limits)
                .unwrap()
                .unwrap();
            let req = prepare(&worker, &snap, &head, &client, &mut up)
                .ok()
                .unwrap();
            let mut rh = [httparse::EMPTY_HEADER; 64];
            let resp = parse_response(black_box(RESPONSE), &mut rh, false, 65536)
                .unwrap()
                .unwrap();
            write_client_head(&resp, req.id.as_bytes(), &mut out).unwrap();
            black_box((&up, &out));
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
    let snap = snapshot::from_text(&text, Path::new("bench.yaml")).unwrap();
    let running = portcullis::runtime::start(snap).unwrap();
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

criterion_group!(benches, in_process, loopback);
criterion_main!(benches);
