//! The admin listener (`admin: { address: 127.0.0.1:9901 }`), separate from
//! traffic, on its own std thread: `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` (503 while draining) and `/config` (the active snapshot's
//! summary, no secrets). Answers are small and built per scrape; nothing here
//! touches the request path.

use crate::proxy::worker::Shared;
use crate::snapshot::{SharedSnapshot, Snapshot};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Bind the admin address and serve it on a thread; returns the bound address.
pub(crate) fn start(
    address: SocketAddr,
    snapshot: SharedSnapshot,
    shared: Arc<Shared>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on admin address {address}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "admin listening");
    std::thread::Builder::new()
        .name("portcullis-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if shared.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let _ = answer(stream, &snapshot.load(), &shared);
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, snap: &Snapshot, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut stream, 431, "text/plain", "request too large\n");
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method != b"GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n");
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(&[]);
    match path {
        b"/healthz" => respond(&mut stream, 200, "text/plain", "ok\n"),
        b"/readyz" if shared.shutting_down() => {
            respond(&mut stream, 503, "text/plain", "draining\n")
        }
        // A worker stopped by a slow audit disk serves nothing: a load
        // balancer should send its traffic elsewhere until it goes on.
        b"/readyz" if audit_blocked(shared) => respond(
            &mut stream,
            503,
            "text/plain",
            "audit writer behind: workers stopped\n",
        ),
        b"/readyz" => respond(&mut stream, 200, "text/plain", "ready\n"),
        b"/metrics" => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4",
            &metrics(snap, shared),
        ),
        b"/config" => respond(&mut stream, 200, "application/json", &config(snap)),
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &str) -> std::io::Result<()> {
    let reason = crate::http1::encode::reason_phrase(status);
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The Prometheus exposition of every counter.
pub(crate) fn metrics(snap: &Snapshot, shared: &Shared) -> String {
    let mut out = String::with_capacity(4096);
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    let _ = writeln!(out, "# TYPE portcullis_connections_active gauge");
    let _ = writeln!(
        out,
        "portcullis_connections_active {}",
        load(&shared.connections)
    );
    let _ = writeln!(out, "# TYPE portcullis_ready gauge");
    let _ = writeln!(
        out,
        "portcullis_ready {}",
        u8::from(!shared.shutting_down())
    );
    let _ = writeln!(out, "# TYPE portcullis_workers gauge");
    let _ = writeln!(
        out,
        "portcullis_workers{{driver=\"io_uring\"}} {}",
        load(&shared.uring_workers)
    );
    let _ = writeln!(
        out,
        "portcullis_workers{{driver=\"epoll\"}} {}",
        load(&shared.epoll_workers)
    );
    let _ = writeln!(out, "# TYPE portcullis_reloads_total counter");
    let _ = writeln!(
        out,
        "portcullis_reloads_total{{outcome=\"ok\"}} {}",
        load(&shared.reloads)
    );
    let _ = writeln!(
        out,
        "portcullis_reloads_total{{outcome=\"failed\"}} {}",
        load(&shared.reload_failures)
    );
    let sum = |f: fn(&crate::proxy::worker::WorkerCounters) -> &std::sync::atomic::AtomicU64| {
        shared.sum(f)
    };
    series(
        &mut out,
        "portcullis_token_cache_lookups_total",
        "counter",
        &[
            ("result=\"hit\"", sum(|c| &c.token_cache_hits)),
            ("result=\"miss\"", sum(|c| &c.token_cache_misses)),
        ],
    );
    series(
        &mut out,
        "portcullis_upstream_connections_total",
        "counter",
        &[
            ("kind=\"new\"", sum(|c| &c.upstream_connects)),
            ("kind=\"reused\"", sum(|c| &c.upstream_reuses)),
        ],
    );
    series(
        &mut out,
        "portcullis_upstream_idle_connections",
        "gauge",
        &[("", sum(|c| &c.upstream_idle))],
    );
    snap.identity.render_metrics(&mut out);
    if let Some(c) = &shared.authz_counters {
        c.render(&mut out);
    }
    if let Some(a) = &shared.audit {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        series(
            &mut out,
            "portcullis_audit_records_total",
            "counter",
            &[
                ("outcome=\"written\"", n(&a.written)),
                ("outcome=\"dropped\"", n(&a.dropped)),
                ("outcome=\"failed\"", n(&a.failed)),
            ],
        );
        series(
            &mut out,
            "portcullis_audit_backlog_records",
            "gauge",
            &[("", a.backlog())],
        );
        series(
            &mut out,
            "portcullis_audit_blocked_workers",
            "gauge",
            &[("", n(&a.blocked))],
        );
        // Seconds, not a whole number: written here rather than by `series`.
        let _ = writeln!(
            out,
            "# TYPE portcullis_audit_blocked_seconds_total counter\nportcullis_audit_blocked_seconds_total {}",
            n(&a.blocked_micros) as f64 / 1e6
        );
    }
    let _ = writeln!(out, "# TYPE portcullis_requests_total counter");
    let _ = writeln!(out, "# TYPE portcullis_decisions_total counter");
    let _ = writeln!(out, "# TYPE portcullis_request_duration_seconds histogram");
    for r in snap.routes.all() {
        r.metrics.render(&r.name, &mut out);
    }
    if snap.routes.all().iter().any(|r| r.screen_counts.is_some()) {
        let _ = writeln!(out, "# HELP portcullis_screen_findings_total Content screening findings (string values with matches) per route, direction, detector and action.\n# TYPE portcullis_screen_findings_total counter");
        for r in snap.routes.all() {
            if let Some(c) = &r.screen_counts {
                c.render(&r.name, &mut out);
            }
        }
    }
    if snap.behaviour.is_some() {
        let _ = writeln!(out, "# HELP portcullis_anomalies_total Requests that raised a behaviour anomaly signal (score at least behaviour.report_above), per route and signal.\n# TYPE portcullis_anomalies_total counter");
        let names = crate::behaviour::SIGNALS.map(crate::behaviour::Signal::name);
        for r in snap.routes.all() {
            r.metrics.render_anomalies(&r.name, &names, &mut out);
        }
    }
    if snap.routes.all().iter().any(|r| r.pin.is_some()) {
        let _ = writeln!(out, "# HELP portcullis_pin_changes_total Changes of pinned definitions (tool pinning) per route, kind and change.\n# TYPE portcullis_pin_changes_total counter");
        for r in snap.routes.all() {
            if let Some(p) = &r.pin {
                p.counts.render_changes(&r.name, &mut out);
            }
        }
        let _ = writeln!(out, "# HELP portcullis_pin_flagged_total Definitions whose strings carry injection markers, per route and kind.\n# TYPE portcullis_pin_flagged_total counter");
        for r in snap.routes.all() {
            if let Some(p) = &r.pin {
                p.counts.render_flagged(&r.name, &mut out);
            }
        }
    }
    snap.unrouted.render("", &mut out);
    out
}

/// The active configuration's summary: no credentials, no keys.
pub(crate) fn config(snap: &Snapshot) -> String {
    let routes: Vec<serde_json::Value> = snap
        .routes
        .all()
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "from": r.public.to_string(),
                "to": r.upstream.to_string(),
                "mcp": r.mcp,
                "auth": r.auth.as_ref().map(|a| serde_json::json!({
                    "issuers": a.issuer_urls,
                    "scopes": a.scopes,
                })),
                "policy": r.policy.is_some(),
                "pin": r.pin.as_ref().map(|p| p.describe()),
            })
        })
        .collect();
    let listeners: Vec<serde_json::Value> = snap
        .listeners
        .iter()
        .map(|l| serde_json::json!({"address": l.address.to_string(), "tls": l.tls.is_some()}))
        .collect();
    serde_json::json!({
        "generation": snap.generation,
        "workers": snap.workers,
        "listeners": listeners,
        "routes": routes,
    })
    .to_string()
}

/// One Prometheus metric: its TYPE line, then a line per label set (`""`:
/// no labels) and value.
fn series(out: &mut String, name: &str, kind: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Whether a worker is stopped right now waiting for the audit writer.
fn audit_blocked(shared: &Shared) -> bool {
    shared
        .audit
        .as_ref()
        .is_some_and(|a| a.blocked.load(Ordering::Relaxed) > 0)
}
