//! Hot reload: snapshots swapped under continuous load lose no request, an
//! invalid file keeps the running snapshot, and the watcher notices edits.

use crate::harness::{ok_json, Upstream};
use portcullis::internal::runtime::reload::{self, Outcome, Reloader};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(upstream: SocketAddr, version: usize) -> String {
    format!(
        "workers: 2\nlisten:\n  - address: 127.0.0.1:0\nroutes:\n  - name: r\n    from: http://proxy.test/\n    to: http://{upstream}/v{version}\n"
    )
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("config.yaml")
}

/// Send keep-alive GETs until `stop`; count answers that are not 200.
fn client(addr: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = conn.get_or_insert_with(|| BufReader::new(TcpStream::connect(addr).unwrap()));
        let sent = c
            .get_mut()
            .write_all(b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
        let mut status = String::new();
        let good =
            sent.is_ok() && c.read_line(&mut status).is_ok() && status.starts_with("HTTP/1.1 200");
        let mut length = 0;
        loop {
            let mut line = String::new();
            if c.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        let read = c.read_exact(&mut body).is_ok();
        if good && read {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
    }
}

fn last_path(up: &Upstream) -> String {
    let reqs = up.requests();
    let last = reqs.last().cloned().unwrap_or_default();
    last.split(' ').nth(1).unwrap_or("").to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn reload_under_load_fails_no_request() {
    let up = Upstream::start(ok_json);
    let path = temp_file("load");
    write(&path, &config(up.addr, 0));
    let running = portcullis::start(portcullis::load(&path).unwrap()).unwrap();
    let addr = running.addresses[0];
    let mut reloader = Reloader::new(&path, running.snapshot.clone(), running.shared.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || client(addr, stop, ok, failed))
        })
        .collect();
    assert_eq!(reloader.check(false), Outcome::Unchanged);
    for version in 1..=30 {
        std::thread::sleep(Duration::from_millis(20));
        write(&path, &config(up.addr, version));
        assert_eq!(reloader.check(false), Outcome::Swapped);
    }
    // An invalid file is refused and the running snapshot stays.
    std::thread::sleep(Duration::from_millis(20));
    write(&path, "listen: [\n");
    assert_eq!(reloader.check(false), Outcome::Failed);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "too few requests: {ok:?}");
    assert_eq!(last_path(&up), "/v30/x");
    assert_eq!(running.shared.reloads.load(Ordering::Relaxed), 30);
    assert_eq!(running.shared.reload_failures.load(Ordering::Relaxed), 1);
    running.shutdown();
    running.join();
}

#[test]
fn the_watcher_picks_up_an_edit() {
    let up = Upstream::start(ok_json);
    let path = temp_file("watch");
    write(&path, &config(up.addr, 0));
    let running = portcullis::start(portcullis::load(&path).unwrap()).unwrap();
    let addr = running.addresses[0];
    let _sighup = reload::start(&path, running.snapshot.clone(), running.shared.clone()).unwrap();
    write(&path, &config(up.addr, 7));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if last_path(&up) == "/v7/x" {
            break;
        }
        assert!(Instant::now() < deadline, "the edit was not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }
    running.shutdown();
    running.join();
}

/// `log: { format: json }` makes every log line a JSON object; a bad level
/// is a located configuration error.
#[test]
fn logs_can_be_json_and_levels_are_checked() {
    use std::io::BufRead;
    let path = temp_file("log");
    let body = config("127.0.0.1:9".parse().unwrap(), 0);
    std::fs::write(
        &path,
        format!("log: {{ format: json, level: info }}\n{body}"),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("PORTCULLIS_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO", "{first}");
    std::fs::write(&path, format!("log:\n  level: \"=nope[\"\n{body}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.yaml:2:") && err.contains("log.level"),
        "{err}"
    );
}
