//! The audit log: exactly one parseable record per request, whatever its
//! outcome, all flushed at shutdown, with the fields right.

use crate::auth::{claims, config, post, token};
use crate::harness::{exchange, ok_json, statuses, Proxy, Upstream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn one_record_per_request_under_load() {
    let up = Upstream::start(ok_json);
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&log);
    let policy = "    audit_arguments: full\n    policy:\n      - allow: { mcp_method: { in: [ping, tools/call] } }\n      - name: no-deletes\n        deny: { mcp_tool: { starts_with: delete_ } }\n";
    let text = config(policy)
        .replace(
            "workers: 1\n",
            &format!("workers: 2\naudit: {{ path: {} }}\n", log.display()),
        )
        .replace("{upstream}", &up.addr.to_string());
    let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    let running = portcullis::start(snap).unwrap();
    let addr = running.addresses[0];
    let alice = token(claims("alice", "mcp"));
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let delete = r#"{"jsonrpc":"2.0","id":"d-1","method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"a","token":"s3cret"}}}"#;
    // Four kinds, each sent by its own thread 40 times, concurrently.
    let close = |raw: String| {
        raw.replace(
            "Host: proxy.test\r\n",
            "Host: proxy.test\r\nConnection: close\r\n",
        )
    };
    let kinds: Vec<String> = vec![
        close(post(Some(&alice), ping)),
        close(post(Some(&alice), delete)),
        close(post(None, ping)),
        close(post(Some(&alice), "{not json")),
    ];
    let kind_lengths: Vec<usize> = kinds.iter().map(String::len).collect();
    let per_kind = 40;
    let threads: Vec<_> = kinds
        .into_iter()
        .map(|raw| {
            std::thread::spawn(move || {
                for _ in 0..per_kind {
                    let _ = exchange(addr, raw.as_bytes(), SHORT);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    running.shutdown();
    running.join();

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        records.len(),
        4 * per_kind,
        "exactly one record per request"
    );
    let count = |decision: &str, status: u64| {
        records
            .iter()
            .filter(|r| r["decision"] == decision && r["status"] == status)
            .count()
    };
    assert_eq!(count("allowed", 200), per_kind);
    assert_eq!(count("denied", 200), per_kind);
    assert_eq!(count("unauthenticated", 401), per_kind);
    assert_eq!(count("invalid", 400), per_kind);
    let denied = records.iter().find(|r| r["decision"] == "denied").unwrap();
    assert_eq!(denied["v"], 1);
    assert_eq!(denied["route"], "t");
    assert_eq!(denied["principal"]["sub"], "alice");
    assert_eq!(
        denied["principal"]["groups"],
        serde_json::json!(["engineering"])
    );
    assert_eq!(denied["method"], "tools/call");
    assert_eq!(denied["target"], "delete_repo");
    assert_eq!(denied["rpc_id"], "d-1");
    assert_eq!(denied["rule"], "no-deletes");
    assert_eq!(denied["arguments"]["repo"], "a");
    assert_eq!(denied["arguments"]["token"], "[redacted]");
    assert!(!text.contains("s3cret"), "a secret reached the audit log");
    assert!(!text.contains(&alice), "a token reached the audit log");
    assert_eq!(
        denied["upstream_status"],
        serde_json::Value::Null,
        "a denied call never reached it"
    );
    let allowed = records.iter().find(|r| r["decision"] == "allowed").unwrap();
    assert_eq!(allowed["upstream_status"], 200);
    assert_eq!(allowed["rule"], "t#1", "the rule that allowed it");
    // One request per connection: the bytes in are exactly the request's,
    // the bytes out the whole response (its head and ok_json's body).
    assert_eq!(allowed["bytes_in"], kind_lengths[0] as u64, "{allowed}");
    let out = allowed["bytes_out"].as_u64().unwrap();
    assert!(out > 100 && out < 1000, "{allowed}");
    assert_eq!(allowed["tls"], false);
    assert_eq!(allowed["tls_version"], serde_json::Value::Null);
    assert_eq!(allowed["sni"], serde_json::Value::Null);
    assert!(
        allowed["upstream_latency_us"].as_u64().is_some(),
        "{allowed}"
    );
    let time = denied["time"].as_str().unwrap();
    assert!(time.len() == 27 && time.ends_with('Z'), "{time}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer that cannot keep up (its file is a pipe nobody reads yet):
/// `drop` keeps serving and counts what it drops; `block` waits and loses
/// nothing. Either way records written + dropped = requests.
#[test]
fn overflow_blocks_or_drops_and_counts() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    for mode in ["drop", "block"] {
        let up = Upstream::start(ok_json);
        let dir =
            std::env::temp_dir().join(format!("portcullis-audit-{}-{mode}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("audit.pipe");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Hold the read end without reading: the writer's pipe fills and blocks.
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let text = config("")
            .replace(
                "workers: 1\n",
                &format!(
                    "workers: 1\naudit: {{ path: {}, on_overflow: {mode}, buffers: 1 }}\n",
                    fifo.display()
                ),
            )
            .replace("{upstream}", &up.addr.to_string());
        let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
        let running = portcullis::start(snap).unwrap();
        let addr = running.addresses[0];
        let alice = token(claims("alice", "mcp"));
        let raw = post(Some(&alice), r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).replace(
            "Host: proxy.test\r\n",
            "Host: proxy.test\r\nConnection: close\r\n",
        );
        // Enough records to fill the pipe (64 KiB) and the channel many times.
        let n = 600;
        let client = std::thread::spawn(move || {
            let mut ok = 0;
            for _ in 0..n {
                let (resp, _) = exchange(addr, raw.as_bytes(), Duration::from_secs(5));
                ok += usize::from(resp.starts_with("HTTP/1.1 200"));
            }
            ok
        });
        // Drain the pipe only once the client is done (drop) or after a while (block).
        let (start_draining, drain_now) = std::sync::mpsc::channel::<()>();
        let drain = std::thread::spawn(move || {
            let _ = drain_now.recv();
            let mut all = Vec::new();
            let mut buf = [0u8; 65536];
            let mut idle = 0;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        all.extend_from_slice(&buf[..k]);
                        idle = 0;
                    }
                    Err(_) => {
                        idle += 1;
                        if idle > 3000 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            all
        });
        let sink_of = running.shared.clone();
        let sink = || sink_of.audit.as_ref().unwrap();
        if mode == "block" {
            // The workers wait for the writer: let it go after a while.
            std::thread::sleep(Duration::from_millis(500));
            // The pipe is full by now (or soon): records wait for the writer.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while sink().backlog() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "block: no backlog while the writer is stuck"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            start_draining.send(()).unwrap();
        }
        let served = client.join().unwrap();
        if mode == "drop" {
            start_draining.send(()).unwrap();
        }
        assert_eq!(served, n, "{mode}: every request was served");
        running.shutdown();
        let shared = running.shared.clone();
        running.join();
        let dropped = shared
            .audit
            .as_ref()
            .unwrap()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        let lines = String::from_utf8(drain.join().unwrap())
            .unwrap()
            .lines()
            .count() as u64;
        assert_eq!(sink().backlog(), 0, "{mode}: nothing left behind");
        assert_eq!(
            sink().failed.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{mode}: no write failed"
        );
        match mode {
            "drop" => {
                assert!(dropped > 0, "drop: the slow writer made records drop");
                assert_eq!(
                    lines + dropped,
                    n as u64,
                    "drop: written + dropped = requests"
                );
            }
            _ => {
                assert_eq!(dropped, 0, "block: nothing dropped");
                assert_eq!(lines, n as u64, "block: every record written");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// SIGTERM's path under load (`Running::shutdown`): requests in flight are
/// answered, none fails, and every answered request has its record.
#[test]
fn shutdown_under_load_answers_in_flight_and_flushes_every_record() {
    use std::io::{BufRead, BufReader, Read, Write};
    let up = Upstream::start(ok_json);
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}-term", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&log);
    let text = config("")
        .replace(
            "workers: 1\n",
            &format!("workers: 2\naudit: {{ path: {} }}\n", log.display()),
        )
        .replace("{upstream}", &up.addr.to_string());
    let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    let running = portcullis::start(snap).unwrap();
    let addr = running.addresses[0];
    let raw = post(
        Some(&token(claims("alice", "mcp"))),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let raw = raw.clone();
            std::thread::spawn(move || {
                let (mut answered, mut failed) = (0u64, 0u64);
                'conn: loop {
                    let Ok(s) = std::net::TcpStream::connect(addr) else {
                        break;
                    };
                    let mut c = BufReader::new(s);
                    loop {
                        if c.get_mut().write_all(raw.as_bytes()).is_err() {
                            break 'conn;
                        }
                        let mut status = String::new();
                        if c.read_line(&mut status).unwrap_or(0) == 0 {
                            break 'conn; // closed between requests: nothing was in flight
                        }
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if c.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        let complete = c.read_exact(&mut body).is_ok();
                        if status.starts_with("HTTP/1.1 200") && complete {
                            answered += 1;
                        } else {
                            failed += 1;
                        }
                        if status.contains("Connection: close") {
                            continue 'conn;
                        }
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    running.shutdown();
    running.join();
    let (mut answered, mut failed) = (0, 0);
    for c in clients {
        let (a, f) = c.join().unwrap();
        answered += a;
        failed += f;
    }
    assert!(answered > 0);
    assert_eq!(failed, 0, "an in-flight request failed during shutdown");
    let records = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
    assert_eq!(records, answered, "every answered request has its record");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portcullis audit --since/--until` compares instants, not strings: a
/// record stamped exactly at `--since` is in, one exactly at `--until` is
/// out, offsets count, and a time that is not RFC 3339 is an error.
#[test]
fn audit_command_compares_times_as_instants() {
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}-query", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let record = |time: &str, target: &str| {
        format!(
            r#"{{"v":1,"time":"{time}","principal":null,"method":"tools/call","target":"{target}","decision":"allowed"}}"#
        )
    };
    std::fs::write(
        &log,
        [
            record("2025-12-31T23:59:59.999999Z", "before"),
            record("2026-01-01T00:00:00.000000Z", "at"),
            record("2026-01-01T01:00:00.000000Z", "after"),
        ]
        .join("\n"),
    )
    .unwrap();
    let audit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("audit")
            .arg(&log)
            .args(args)
            .output()
            .unwrap();
        let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["target"].to_string())
            .collect();
        (
            out.status.code(),
            targets.join(" ").replace('"', ""),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let rows: &[(&[&str], &str)] = &[
        (&["--since", "2026-01-01T00:00:00Z"], "at after"),
        (&["--until", "2026-01-01T00:00:00Z"], "before"),
        (&["--since", "2026-01-01T02:00:00+02:00"], "at after"),
        (&["--until", "2025-12-31T19:00:00.5-05:00"], "before at"),
        (
            &[
                "--since",
                "2025-12-31T23:59:59.999999Z",
                "--until",
                "2026-01-01T00:00:00.000001Z",
            ],
            "before at",
        ),
    ];
    for (args, want) in rows {
        let (code, got, err) = audit(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(got, *want, "{args:?}");
    }
    for bad in [
        "yesterday",
        "2026-01-01",
        "2026-01-01T00:00:00",
        "2026-13-01T00:00:00Z",
    ] {
        let (code, got, err) = audit(&["--since", bad]);
        assert_eq!(code, Some(2), "--since {bad}: {got} {err}");
        assert!(
            err.contains("--since") && err.contains(bad) && err.contains("RFC 3339"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An answer the upstream breaks after its head was relayed is audited as
/// failed, with why, and the status the client got; a client that leaves
/// mid-body keeps the upstream's verdict (allowed, no reason).
#[test]
fn responses_cut_off_mid_body_are_failed() {
    use std::io::{Read, Write};
    // Content-Length 100, 10 bytes, then the connection closes.
    fn closes(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n01234CLOSE"
            .to_vec()
    }
    // Content-Length 100, 10 bytes, then silence (the connection stays open).
    fn stalls(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n0123456789"
            .to_vec()
    }
    // A chunk, then a chunk size that is not hexadecimal (in the same read:
    // nothing was relayed yet, so it is still answered 502).
    fn bad_chunk(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec()
    }
    // An event stream with one event, then quiet (a listen stream): past
    // `read_timeout` it ends with the upstream's verdict, not as a failure.
    fn quiet_stream(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n15\r\nevent: ping\ndata: 1\n\n\r\n"
            .to_vec()
    }
    // 8 MiB: more than the sockets hold, so the proxy is still writing when
    // the client leaves.
    fn large(_: &[u8]) -> Vec<u8> {
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8388608\r\n\r\n"
                .to_vec();
        out.resize(out.len() + 8 * 1024 * 1024, b'x');
        out
    }
    let ups = [
        ("closes", Upstream::start(closes)),
        ("stalls", Upstream::start(stalls)),
        ("bad-chunk", Upstream::start(bad_chunk)),
        ("large", Upstream::start(large)),
        ("quiet-stream", Upstream::start(quiet_stream)),
    ];
    // The same bad chunk a moment after the head and the first chunk.
    let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let late_addr = late.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = late.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        std::thread::sleep(Duration::from_millis(300));
        let _ = c.write_all(b"zz\r\n");
        std::thread::sleep(Duration::from_secs(3));
    });
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}-cut", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&log);
    let routes: String = ups
        .iter()
        .map(|(name, up)| (*name, up.addr))
        .chain([("late-bad-chunk", late_addr)])
        .map(|(name, addr)| {
            format!(
                "  - {{ name: {name}, from: http://proxy.test/{name}, to: http://{addr}/, mcp: {{}} }}\n"
            )
        })
        .collect();
    let proxy = Proxy::start(
        ups[0].1.addr,
        &routes,
        &format!(
            "audit: {{ path: {} }}\nupstream: {{ read_timeout: 1s }}",
            log.display()
        ),
    );
    let get = |name: &str| format!("GET /{name} HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
    for (name, status) in [
        ("closes", 200),
        ("stalls", 200),
        ("late-bad-chunk", 200),
        ("bad-chunk", 502),
        ("quiet-stream", 200),
    ] {
        let (resp, closed) = exchange(proxy.addr, get(name).as_bytes(), Duration::from_secs(3));
        assert_eq!(statuses(&resp), [status], "{name}: {resp}");
        assert!(closed, "{name}: the connection is closed after it");
    }
    // The client reads the head and a little of the body, then leaves.
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.write_all(get("large").as_bytes()).unwrap();
    let mut some = [0u8; 4096];
    assert!(s.read(&mut some).unwrap() > 0);
    drop(s);
    // The proxy notices on a write; it has written everything by 2 s at most.
    std::thread::sleep(Duration::from_millis(500));
    drop(proxy);

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |route: &str| {
        let found: Vec<_> = records.iter().filter(|r| r["route"] == route).collect();
        assert_eq!(found.len(), 1, "{route}: {records:?}");
        found[0].clone()
    };
    for (route, reason, status) in [
        ("closes", "upstream closed mid-body", 200),
        ("stalls", "upstream timed out mid-body", 200),
        ("late-bad-chunk", "invalid upstream response framing", 200),
        ("bad-chunk", "invalid upstream response framing", 502),
    ] {
        let r = of(route);
        assert_eq!(r["decision"], "failed", "{r}");
        assert_eq!(r["reason"], reason, "{r}");
        assert_eq!(r["status"], status, "the status the client got: {r}");
        assert_eq!(r["upstream_status"], 200, "{r}");
    }
    for route in ["large", "quiet-stream"] {
        let r = of(route);
        assert_eq!(r["decision"], "allowed", "{r}");
        assert_eq!(r["reason"], "", "{r}");
        assert_eq!(r["status"], 200, "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `on_overflow: block` with a writer that cannot write (its file is a pipe
/// nobody reads yet), measured: once `buffers` buffers wait for the writer,
/// a worker's thread stops in its next hand-over. No connection on it is
/// served, a new one neither, until the writer catches up; then everything
/// goes on and no record is lost. The workers share the writer: with two,
/// both stop. Shutdown waits for the writer too. The numbers are printed:
/// `cargo test --test integration block_stops -- --nocapture`.
#[test]
fn block_stops_the_workers_until_the_writer_catches_up() {
    for workers in [1, 2] {
        block_stall(workers);
    }
}

fn block_stall(workers: usize) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Instant;
    const STALL: Duration = Duration::from_millis(1500);

    let up = Upstream::start(ok_json);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-audit-{}-stall-{workers}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("audit.pipe");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // The pipe is read only while `reading` is set.
    let reading = Arc::new(AtomicBool::new(false));
    let lines = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let drain = {
        let (reading, lines, done) = (reading.clone(), lines.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                if !reading.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match reader.read(&mut buf) {
                    Ok(0) => break, // the writer closed: everything is in
                    Ok(k) => {
                        let n = buf[..k].iter().filter(|&&b| b == b'\n').count();
                        lines.fetch_add(n, SeqCst);
                    }
                    Err(_) if done.load(SeqCst) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    };
    let text = config("")
        .replace(
            "workers: 1\n",
            &format!(
                "workers: {workers}\nadmin: {{ address: 127.0.0.1:0 }}\naudit: {{ path: {}, on_overflow: block, buffers: 1 }}\n",
                fifo.display()
            ),
        )
        .replace("{upstream}", &up.addr.to_string());
    let snap = portcullis::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    let running = portcullis::start(snap).unwrap();
    let (addr, admin) = (running.addresses[0], running.admin.unwrap());
    let metric = |name: &str| -> f64 {
        let (text, _) = exchange(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n",
            Duration::from_secs(2),
        );
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    let raw = post(
        Some(&token(claims("alice", "mcp"))),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    )
    .replace(
        "Host: proxy.test\r\n",
        "Host: proxy.test\r\nConnection: close\r\n",
    );
    // One request after the other, each on a new connection, until `stop`.
    let served = Arc::new(AtomicUsize::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (served, slowest, stop, raw) =
            (served.clone(), slowest.clone(), stop.clone(), raw.clone());
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                let t = Instant::now();
                let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                    break;
                };
                use std::io::Write;
                if s.write_all(raw.as_bytes()).is_err() {
                    break;
                }
                let (resp, _) = crate::harness::read_all(&mut s, Duration::from_secs(30));
                if !resp.starts_with("HTTP/1.1 200") {
                    break;
                }
                served.fetch_add(1, SeqCst);
                slowest.fetch_max(t.elapsed().as_millis() as u64, SeqCst);
            }
        })
    };
    // Stalled: no request served for 300 ms.
    let wait_for_stall = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = served.load(SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            let after = served.load(SeqCst);
            if after == before && after > 0 {
                return after;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the worker never stopped"
            );
        }
    };

    // 1. The writer is stuck: the worker stops.
    let stalled_after = wait_for_stall("block");
    let backlog = running.shared.audit.as_ref().unwrap().backlog();
    // The admin listener has a thread of its own: it answers, and says so.
    let blocked_workers = metric("portcullis_audit_blocked_workers");
    // A worker that had handed over all it held serves on until its next
    // hand-over (at most 100 ms after its next request): give it requests.
    let request = |raw: String| {
        std::thread::spawn(move || {
            let (resp, _) = exchange(addr, raw.as_bytes(), Duration::from_secs(30));
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            Instant::now()
        })
    };
    let mut nudges = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("portcullis_audit_blocked_workers") < workers as f64 {
        assert!(Instant::now() < deadline, "a worker never stopped");
        nudges.push(request(raw.clone()));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A load balancer is told to look elsewhere.
    let (ready, _) = exchange(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("audit writer behind"), "{ready}");
    // New connections are not served either while the writer is stuck
    // (with two workers the kernel spreads them over both).
    let probes: Vec<_> = (0..2 * workers).map(|_| request(raw.clone())).collect();
    let probed = Instant::now();
    std::thread::sleep(STALL);
    assert!(
        probes.iter().all(|p| !p.is_finished()),
        "a request was served while the writer was stuck"
    );
    let released = Instant::now();
    reading.store(true, SeqCst);
    let answered: Vec<Instant> = probes.into_iter().map(|p| p.join().unwrap()).collect();
    let nudged = nudges.len();
    for n in nudges {
        n.join().unwrap();
    }
    let probe_latency = answered.iter().map(|a| *a - probed).min().unwrap();
    let after_release = answered.iter().map(|a| *a - released).max().unwrap();
    // It goes on: more requests are served.
    let resumed_at = served.load(SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.load(SeqCst) < resumed_at + 50 {
        assert!(Instant::now() < deadline, "the worker did not resume");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ready, _) = exchange(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "ready again once it goes on: {ready}"
    );
    let blocked_seconds = metric("portcullis_audit_blocked_seconds_total");
    let slowest_ms = slowest.load(SeqCst);
    eprintln!(
        "block, {workers} worker(s): stopped after {stalled_after} requests (backlog {backlog} \
         records, portcullis_audit_blocked_workers {blocked_workers}, {nudged} more requests to \
         stop them all); requests on new \
         connections waited at least {probe_latency:?}, all answered within {after_release:?} \
         after the writer was let go; slowest request {slowest_ms} ms; \
         portcullis_audit_blocked_seconds_total {blocked_seconds}"
    );
    // At the first stall the worker serving the load shows as stopped (with
    // two, the other may still be serving: the nudges above stop it too,
    // and the loop only ended once the gauge counted every worker).
    assert!(
        blocked_workers >= 1.0,
        "a stopped worker shows: {blocked_workers}"
    );
    assert!(probe_latency >= STALL, "{probe_latency:?}");
    assert!(after_release < Duration::from_secs(2), "{after_release:?}");
    assert!(slowest_ms >= STALL.as_millis() as u64, "{slowest_ms}");
    assert!(blocked_seconds >= STALL.as_secs_f64(), "{blocked_seconds}");

    // 2. Stuck again, then SIGTERM's path: shutdown waits for the writer.
    reading.store(false, SeqCst);
    wait_for_stall("block, second time");
    stop.store(true, SeqCst);
    let t = Instant::now();
    let shared = running.shared.clone();
    let stopper = std::thread::spawn(move || {
        running.shutdown();
        running.join();
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !stopper.is_finished(),
        "shutdown did not wait for the writer"
    );
    reading.store(true, SeqCst);
    stopper.join().unwrap();
    let shutdown_took = t.elapsed();
    load.join().unwrap();
    done.store(true, SeqCst);
    drain.join().unwrap();
    let sink = shared.audit.as_ref().unwrap();
    let requests = served.load(SeqCst) + 2 * workers + nudged;
    eprintln!(
        "block, {workers} worker(s): shutdown with the writer stuck took {shutdown_took:?} (released after 1 s); \
         {requests} requests answered, {} records written, {} dropped",
        lines.load(SeqCst),
        sink.dropped.load(SeqCst)
    );
    assert_eq!(sink.dropped.load(SeqCst), 0);
    assert_eq!(sink.backlog(), 0);
    assert_eq!(lines.load(SeqCst), requests, "no record lost");
    let _ = std::fs::remove_dir_all(&dir);
}
