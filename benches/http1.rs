//! Request-head parsing and framing decisions, response-head parsing, and the
//! chunked decoder: the per-request HTTP/1.1 work of the data plane; and the
//! MCP JSON-RPC envelope decode of a 1 KiB `tools/call`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::internal::http1::parse_response;
use portcullis::internal::http1::{decode_all, encode_chunk, LAST_CHUNK};
use portcullis::internal::http1::{parse_request, HeadLimits};
use std::hint::black_box;

const SMALL_GET: &[u8] =
    b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

fn mcp_post_head() -> Vec<u8> {
    b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nUser-Agent: python-httpx/0.28.1\r\nAccept: application/json, text/event-stream\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nMcp-Session-Id: 2c5f1b0e9b7e4c5aa2b1c3d4e5f60718\r\nMcp-Protocol-Version: 2025-06-18\r\nAuthorization: Bearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl\r\nContent-Length: 1024\r\n\r\n".to_vec()
}

fn heads(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let post = mcp_post_head();
    let mut g = c.benchmark_group("request_head");
    for (name, raw) in [("small_get", SMALL_GET), ("mcp_post", post.as_slice())] {
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut headers = [portcullis::internal::http1::NO_HEADER; 64];
                let head = parse_request(black_box(raw), &mut headers, &limits)
                    .unwrap()
                    .unwrap();
                black_box(head.framing);
            })
        });
    }
    g.finish();
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: 2c5f1b0e9b7e4c5a\r\nDate: Sat, 21 Nov 2026 23:00:00 GMT\r\nContent-Length: 210\r\n\r\n";
    c.bench_function("response_head", |b| {
        b.iter(|| {
            let mut headers = [portcullis::internal::http1::NO_HEADER; 64];
            black_box(
                parse_response(black_box(resp), &mut headers, false, 65536)
                    .unwrap()
                    .unwrap()
                    .body,
            );
        })
    });
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..8 {
        encode_chunk(&mut body, &[b'x'; 128]);
    }
    body.extend_from_slice(LAST_CHUNK);
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("decode_8x128", |b| {
        b.iter(|| black_box(decode_all(black_box(&body)).unwrap()))
    });
    g.finish();
}

fn mcp_decode(c: &mut Criterion) {
    use portcullis::internal::mcp::{decode, decode_without_arguments, Scratch};
    let padding = "x".repeat(880);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"name":"search_repositories","arguments":{{"query":"{padding}","page":1}},"_meta":{{"progressToken":7}}}}}}"#
    );
    assert!((1000..1100).contains(&body.len()), "{}", body.len());
    let mut scratch = Scratch::default();
    let mut g = c.benchmark_group("mcp");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode_tools_call_1k", |b| {
        b.iter(|| {
            let mut name_len = 0;
            decode(&mut scratch, black_box(body.as_bytes()), |m| {
                name_len = m.name.map_or(0, str::len)
            })
            .unwrap();
            black_box(name_len)
        })
    });
    // The same body when no one reads its arguments (`quick`, no simd-json).
    g.bench_function("decode_without_arguments_tools_call_1k", |b| {
        b.iter(|| {
            let mut name_len = 0;
            decode_without_arguments(&mut scratch, black_box(body.as_bytes()), |m| {
                name_len = m.name.map_or(0, str::len)
            })
            .unwrap();
            black_box(name_len)
        })
    });
    g.finish();
}

criterion_group!(benches, heads, chunked, mcp_decode);
criterion_main!(benches);
