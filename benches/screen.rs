//! Content screening (issue 14, goal ≤ 1 µs per KiB of result with every
//! built-in detector on). Two realistic `tools/call` results of about
//! 16 KiB: `text`, one text content block (a file with code, logs, a table
//! and prose, its newlines and quotes escaped in JSON), and `structured`,
//! 60 issue records as `structuredContent` (many short strings, numbers,
//! timestamps, URLs, a few e-mail addresses). For each: `scan` with every
//! built-in, `scan` with none (the JSON walk alone), and `redact` of a copy
//! holding an AWS key and an e-mail address in every KiB. Each benchmark
//! prints the body's size; time per KiB = time / (size / 1024).
//!
//! With `SCREEN_ITERS=n` set, each benchmark body runs `n` times outside
//! criterion (only the one named `SCREEN_ONLY`, if set), for
//! `perf stat -e cycles,instructions`: cycles per run are the difference
//! between two runs with different `n`, divided by the difference (on a
//! shared machine cycles move less than wall time).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::internal::screen::{Mask, Screen, ScreenConfig};
use serde_json::json;
use std::hint::black_box;

const PARAGRAPH: &str = "The deployment finished at 2024-05-17T12:34:56Z with 3 warnings. \
Build #48213 took 412 seconds; see https://ci.example.com/builds/48213 for the \"full\" log. \
You can re-run it from the pipeline page; ignore the flaky test in tests/net.rs if it fails again.\n\
```rust\nfn main() {\n    let items: Vec<u32> = (0..1024).collect();\n    println!(\"{}\", items.iter().sum::<u32>());\n}\n```\n\
| id | name | created | size |\n|----|------|---------|------|\n\
| 1712345678901 | report-q1.pdf | 2024-04-05 | 183,221 |\n| 1712345679902 | notes.md | 2024-04-06 | 4,096 |\n\
2024-05-17 12:34:56.789 INFO  server: listening on 0.0.0.0:8080 (pid 31337) — ready\n\
Commit 3f2a9c1d: Fix the race in the connection pool; refs #2211. Reviewed-by: A. Smith.\n";

/// A `tools/call` result with one text block of about `kib` KiB.
fn text_result(kib: usize, secret_every_kib: bool) -> Vec<u8> {
    let mut text = String::new();
    while text.len() < kib * 1024 {
        text.push_str(PARAGRAPH);
        if secret_every_kib {
            text.push_str("aws_access_key_id = AKIAIOSFODNN7EXAMPLE; owner: ops@example.com\n");
        }
    }
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 42,
        "result": {"content": [{"type": "text", "text": text}], "isError": false}
    }))
    .unwrap()
}

/// A `tools/call` result with `n` issue records as structured content.
fn structured_result(n: usize) -> Vec<u8> {
    let issues: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "number": 4000 + i,
                "title": format!("Connection pool leaks sockets under load ({i})"),
                "state": if i % 3 == 0 { "closed" } else { "open" },
                "url": format!("https://github.com/acme/web/issues/{}", 4000 + i),
                "user": {"login": format!("dev{i}"), "id": 1_000_000 + i},
                "labels": ["bug", "p2"],
                "created_at": "2024-05-17T12:34:56Z",
                "comments": i % 7,
                "assignee": if i % 10 == 0 { json!("alice@example.com") } else { json!(null) },
                "body": "Steps: run the load test for 10 minutes; sockets in TIME_WAIT grow to 28231.",
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 43,
        "result": {
            "content": [{"type": "text", "text": format!("{n} issues")}],
            "structuredContent": {"issues": issues}
        }
    }))
    .unwrap()
}

/// `SCREEN_ITERS` and `SCREEN_ONLY`, when set.
fn iters() -> Option<(u64, String)> {
    let n = std::env::var("SCREEN_ITERS").ok()?.parse().ok()?;
    Some((n, std::env::var("SCREEN_ONLY").unwrap_or_default()))
}

fn run<T>(c: &mut Criterion, name: &str, bytes: usize, mut body: impl FnMut() -> T) {
    eprintln!("screen/{name}: {bytes} bytes");
    match iters() {
        Some((n, only)) => {
            if only.is_empty() || name == only {
                for _ in 0..n {
                    black_box(body());
                }
            }
        }
        None => {
            let mut group = c.benchmark_group("screen");
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_function(name, |b| b.iter(&mut body));
            group.finish();
        }
    }
}

fn bench(c: &mut Criterion) {
    let every = Screen::compile(&ScreenConfig::default()).unwrap();
    let none = Screen::compile(&serde_yaml_ng::from_str("detectors: []").unwrap()).unwrap();
    let bodies = [
        ("text", text_result(16, false), text_result(16, true)),
        ("structured", structured_result(60), structured_result(60)),
    ];
    for (name, clean, dirty) in &bodies {
        assert!(every.scan(clean).is_ok());
        run(c, &format!("{name}/scan_all_builtins"), clean.len(), || {
            every.scan(black_box(clean)).unwrap()
        });
        run(c, &format!("{name}/scan_no_detectors"), clean.len(), || {
            none.scan(black_box(clean)).unwrap()
        });
        let findings = every.scan(dirty).unwrap();
        if *name == "text" {
            assert!(findings
                .iter()
                .any(|f| &*f.detector == "aws_key" && f.count >= 16));
        }
        let mut out = Vec::with_capacity(dirty.len());
        run(c, &format!("{name}/redact_all"), dirty.len(), || {
            out.clear();
            every.redact(black_box(dirty), Mask::ALL, &mut out).unwrap()
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
