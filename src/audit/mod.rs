//! The audit log: exactly one JSON line per request (schema version 1, see
//! README "Audit"), including refused, malformed and timed-out ones.
//!
//! Off the request path: each worker appends its records to its own buffer
//! (`Worker::audit_buf`) and hands full buffers (and, every 100 ms, partial
//! ones) to one writer thread through a bounded channel. When the writer
//! cannot keep up, `on_overflow: block` (the default) makes the worker wait,
//! so no record is lost: the worker's thread stops in the hand-over, and
//! every connection on it with it, until the writer takes the buffer (shown
//! by `blocked` and `blocked_micros`); `drop` drops the buffer and counts its
//! records. On shutdown every worker hands over what it holds, then the
//! writer writes everything and stops. SIGUSR1 reopens the file (logrotate).

pub(crate) mod query;

use crate::config::audit::{AuditConfig, Overflow};
use crate::mcp::jsonrpc::write_json_string;
use crate::metrics::Decision;
use crate::principal::Principal;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Schema version written in every record (`"v"`).
pub(crate) const SCHEMA_VERSION: u32 = 1;
/// A worker hands its buffer over once it holds this much.
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;
/// What a TLS handshake settled, for the audit record.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<Box<str>>,
}

/// The process's audit sink: the channel to the writer and its counters.
pub struct Sink {
    tx: SyncSender<(Vec<u8>, u64)>,
    overflow: Overflow,
    key: ring::hmac::Key,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
    /// Records handed to the writer, and records its writes failed to store.
    pub accepted: AtomicU64,
    pub failed: Arc<AtomicU64>,
    pub reopen: Arc<AtomicBool>,
    /// `block`: workers waiting for the writer right now, and the time all
    /// of them have waited in total (µs).
    pub blocked: AtomicU64,
    pub blocked_micros: AtomicU64,
    /// When a wait was last logged (µs since `started`): once per 10 s.
    last_warned: AtomicU64,
    started: std::time::Instant,
}

impl Sink {
    /// Open the file and start the writer thread.
    pub fn start(config: &AuditConfig) -> std::io::Result<(Sink, std::thread::JoinHandle<()>)> {
        let out = Output::open(&config.path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(config.buffers.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let key_bytes = match &config.hash_key {
            Some(k) => k.as_bytes().to_vec(),
            None => {
                let mut k = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| std::io::Error::other("no randomness for the audit hash key"))?;
                k.to_vec()
            }
        };
        let writer = Writer {
            out,
            path: config.path.clone(),
            fsync: config.fsync,
            written: written.clone(),
            failed: failed.clone(),
            reopen: reopen.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Sink {
                tx,
                overflow: config.on_overflow,
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes),
                written,
                dropped: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                failed,
                reopen,
                blocked: AtomicU64::new(0),
                blocked_micros: AtomicU64::new(0),
                last_warned: AtomicU64::new(0),
                started: std::time::Instant::now(),
            },
            handle,
        ))
    }

    /// Hand a buffer of `lines` complete records to the writer.
    pub fn send(&self, buf: Vec<u8>, lines: u64) {
        if buf.is_empty() {
            return;
        }
        // Counted before the hand-over so the backlog never reads negative.
        self.accepted.fetch_add(lines, Ordering::Relaxed);
        let sent = match self.overflow {
            Overflow::Block => match self.tx.try_send((buf, lines)) {
                Ok(()) => true,
                Err(TrySendError::Full(batch)) => self.wait_for_writer(batch),
                Err(TrySendError::Disconnected(_)) => false,
            },
            Overflow::Drop => match self.tx.try_send((buf, lines)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            self.accepted.fetch_sub(lines, Ordering::Relaxed);
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// `block` with `buffers` buffers already waiting: stop this worker's
    /// thread until the writer takes one (counted while it lasts, and logged
    /// once per 10 s).
    fn wait_for_writer(&self, batch: (Vec<u8>, u64)) -> bool {
        let start = std::time::Instant::now();
        let now = u64::try_from((start - self.started).as_micros()).unwrap_or(u64::MAX);
        let last = self.last_warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000_000)
            && self
                .last_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                backlog = self.backlog(),
                "the audit writer is behind: a worker stops until it catches up (on_overflow: block)"
            );
        }
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(batch).is_ok();
        self.blocked.fetch_sub(1, Ordering::Relaxed);
        let waited = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.blocked_micros.fetch_add(waited, Ordering::Relaxed);
        sent
    }

    /// Records handed to the writer and not yet written (or failed).
    pub fn backlog(&self) -> u64 {
        let done = self.written.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.accepted.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Tell the writer to finish (after every worker has handed over);
    /// `false` while the channel is full (try again).
    pub fn finish(&self) -> bool {
        !matches!(
            self.tx.try_send((Vec::new(), 0)),
            Err(TrySendError::Full(_))
        )
    }

    /// The HMAC-SHA256 of `data` under the audit key.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::hmac::sign(&self.key, data).as_ref());
        out
    }

    /// `hmac-sha256:<hex>` of `data` under the audit key.
    pub fn hash(&self, data: &[u8]) -> String {
        let mut out = Vec::with_capacity(12 + 64);
        write_tag(&mut out, &self.tag(data));
        String::from_utf8(out).unwrap_or_default()
    }
}

enum Output {
    Stdout,
    File(std::fs::File),
}

impl Output {
    fn open(path: &std::path::Path) -> std::io::Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Output::File)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                )
            })
    }
}

struct Writer {
    out: Output,
    path: PathBuf,
    fsync: bool,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<(Vec<u8>, u64)>) {
        loop {
            let (buf, lines) = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_reopen();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.maybe_reopen();
            if buf.is_empty() {
                return; // finish: everything before it is written
            }
            let result = match &mut self.out {
                Output::Stdout => std::io::stdout().lock().write_all(&buf),
                Output::File(f) => {
                    f.write_all(&buf)
                        .and_then(|()| if self.fsync { f.sync_data() } else { Ok(()) })
                }
            };
            match result {
                Ok(()) => {
                    self.written.fetch_add(lines, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(lines, Ordering::Relaxed);
                    tracing::error!(error = %e, records = lines, "audit write failed");
                }
            }
        }
    }

    fn maybe_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::Relaxed) {
            match Output::open(&self.path) {
                Ok(o) => {
                    self.out = o;
                    tracing::info!(path = %self.path.display(), "audit log reopened");
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log reopen failed, keeping the old file")
                }
            }
        }
    }
}

/// What one request's record says beyond the connection's facts.
#[derive(Default)]
pub struct Facts {
    pub principal: Option<std::rc::Rc<Principal>>,
    /// `MCP-Protocol-Version` or `_meta` version, YYYYMMDD (0: none).
    pub era: u32,
    pub method: Option<std::borrow::Cow<'static, str>>,
    /// Tool or prompt name, or resource URI.
    pub target: Option<Box<str>>,
    pub rpc_id: Option<crate::mcp::jsonrpc::RpcId>,
    pub batch: usize,
    /// `params.arguments` as the route's `audit_arguments` asks.
    pub arguments: Option<Arguments>,
    pub rule: Option<Box<str>>,
    pub session: Option<std::rc::Rc<str>>,
    /// Content screening's findings, rendered JSON objects joined by commas
    /// (detector, pointer, count, direction, action; never the matched text).
    pub screen: Option<String>,
    /// Behaviour signals raised, rendered JSON objects joined by commas
    /// (signal and score).
    pub anomalies: Option<String>,
}

/// `params.arguments` in a record.
pub enum Arguments {
    /// Rendered JSON, token-like values redacted (`audit_arguments: full`).
    Json(String),
    /// The keyed hash of the arguments (`hash`), written as `"hmac-sha256:<hex>"`.
    Hash([u8; 32]),
}

/// Everything a record is built from.
pub struct Record<'a> {
    pub unix_micros: u64,
    pub request_id: &'a [u8],
    pub worker: usize,
    pub client: std::net::SocketAddr,
    /// What the TLS handshake settled (`None`: plain TCP).
    pub tls: Option<&'a TlsInfo>,
    pub route: Option<&'a str>,
    pub facts: &'a Facts,
    pub decision: Decision,
    pub reason: &'a str,
    pub status: u16,
    pub latency_us: u64,
    /// The upstream's status and the time to its answer's head (µs).
    pub upstream: Option<(u16, u64)>,
    /// Bytes read from and written to the client connection while this
    /// request was served (after TLS; a pipelined request read in the same
    /// read as an earlier one counts toward the earlier one).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Append `r` as one JSON line to `out`.
pub(crate) fn write_record(out: &mut Vec<u8>, r: &Record<'_>) {
    let f = r.facts;
    out.extend_from_slice(b"{\"v\":");
    write_u64(out, u64::from(SCHEMA_VERSION));
    out.extend_from_slice(b",\"time\":\"");
    write_time(out, r.unix_micros);
    out.extend_from_slice(b"\",\"request_id\":");
    write_json_string(out, std::str::from_utf8(r.request_id).unwrap_or(""));
    out.extend_from_slice(b",\"worker\":");
    write_u64(out, r.worker as u64);
    out.extend_from_slice(b",\"client\":\"");
    write_addr(out, &r.client);
    out.extend_from_slice(if r.tls.is_some() {
        b"\",\"tls\":true"
    } else {
        b"\",\"tls\":false"
    });
    out.extend_from_slice(b",\"tls_version\":");
    opt_str(out, r.tls.map(|t| t.version));
    out.extend_from_slice(b",\"sni\":");
    opt_str(out, r.tls.and_then(|t| t.sni.as_deref()));
    out.extend_from_slice(b",\"route\":");
    opt_str(out, r.route);
    out.extend_from_slice(b",\"principal\":");
    match &f.principal {
        None => out.extend_from_slice(b"null"),
        Some(p) => write_principal(out, p),
    }
    out.extend_from_slice(b",\"era\":");
    if f.era == 0 {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
        write_time_digits(out, u64::from(f.era / 10_000), 4);
        out.push(b'-');
        write_time_digits(out, u64::from(f.era / 100 % 100), 2);
        out.push(b'-');
        write_time_digits(out, u64::from(f.era % 100), 2);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"method\":");
    opt_str(out, f.method.as_deref());
    out.extend_from_slice(b",\"target\":");
    opt_str(out, f.target.as_deref());
    out.extend_from_slice(b",\"rpc_id\":");
    match &f.rpc_id {
        Some(id) => id.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"batch\":");
    write_u64(out, f.batch as u64);
    match &f.arguments {
        None => {}
        Some(Arguments::Json(json)) => {
            out.extend_from_slice(b",\"arguments\":");
            out.extend_from_slice(json.as_bytes());
        }
        Some(Arguments::Hash(tag)) => {
            out.extend_from_slice(b",\"arguments\":\"");
            write_tag(out, tag);
            out.push(b'"');
        }
    }
    for (key, found) in [("screen", &f.screen), ("anomalies", &f.anomalies)] {
        if let Some(found) = found {
            let _ = write!(out, ",\"{key}\":[{found}]");
        }
    }
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(r.decision.as_str().as_bytes());
    out.extend_from_slice(b"\",\"rule\":");
    opt_str(out, f.rule.as_deref());
    out.extend_from_slice(b",\"reason\":");
    write_json_string(out, r.reason);
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"latency_us\":");
    write_u64(out, r.latency_us);
    match r.upstream {
        Some((status, us)) => {
            out.extend_from_slice(b",\"upstream_status\":");
            write_u64(out, u64::from(status));
            out.extend_from_slice(b",\"upstream_latency_us\":");
            write_u64(out, us);
        }
        None => out.extend_from_slice(b",\"upstream_status\":null,\"upstream_latency_us\":null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, r.bytes_out);
    out.extend_from_slice(b",\"session\":");
    opt_str(out, f.session.as_deref());
    out.extend_from_slice(b"}\n");
}

fn write_principal(out: &mut Vec<u8>, p: &Principal) {
    out.extend_from_slice(b"{\"issuer\":");
    write_json_string(out, &p.issuer_name);
    out.extend_from_slice(b",\"sub\":");
    write_json_string(out, &p.sub);
    out.extend_from_slice(b",\"email\":");
    opt_str(out, p.email.as_deref());
    out.extend_from_slice(b",\"groups\":[");
    for (i, g) in p.groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, g);
    }
    out.extend_from_slice(b"],\"client_id\":");
    opt_str(out, p.client_id.as_deref());
    out.push(b'}');
}

/// `hmac-sha256:<hex>`.
fn write_tag(out: &mut Vec<u8>, tag: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"hmac-sha256:");
    for &b in tag {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
}

/// `n` in decimal, without `core::fmt` (a record writes several).
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Pushed one by one: a call to `memcpy` costs more than a few digits.
    out.reserve(digits.len() - i);
    for &d in &digits[i..] {
        out.push(d);
    }
}

/// A client address as `ip:port` (`[ip]:port` for IPv6), like `Display`.
fn write_addr(out: &mut Vec<u8>, addr: &std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(octet));
            }
            out.push(b':');
            write_u64(out, u64::from(a.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 3339 UTC with microseconds, from microseconds since the epoch.
/// Now, as audit records write their `time`.
pub(crate) fn now_rfc3339() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut out = Vec::with_capacity(32);
    write_time(&mut out, micros);
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) fn write_time(out: &mut Vec<u8>, unix_micros: u64) {
    let secs = unix_micros / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let digits = write_time_digits;
    digits(out, y.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    digits(out, m as u64, 2);
    out.push(b'-');
    digits(out, d as u64, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem / 60 % 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, unix_micros % 1_000_000, 6);
    out.push(b'Z');
}

/// `v` in exactly `width` decimal digits (digits by hand: a record writes
/// several).
fn write_time_digits(out: &mut Vec<u8>, v: u64, width: u32) {
    for k in (0..width).rev() {
        out.push(b'0' + (v / 10u64.pow(k) % 10) as u8);
    }
}

/// Argument keys whose values are never written in full.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "api_key",
        "apikey",
        "cookie",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A string that looks like a bearer credential (a JWT, or a long opaque key).
fn token_like(s: &str) -> bool {
    let jwt = s.split('.').count() == 3
        && s.len() > 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    let prefixed = [
        "ghp_",
        "gho_",
        "github_pat_",
        "sk-",
        "xoxb-",
        "xoxp-",
        "AKIA",
        "Bearer ",
    ]
    .iter()
    .any(|p| s.starts_with(p));
    jwt || prefixed
}

/// `params.arguments` (simd-json tape nodes) as JSON, token-like values
/// (by key or by shape) replaced by `"[redacted]"`.
pub(crate) fn arguments_json(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>) {
    let _ = value(nodes, out, false, true);
}

/// `params.arguments` as JSON, nothing redacted (the input of the hash).
pub(crate) fn arguments_exact(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>) {
    let _ = value(nodes, out, false, false);
}

/// Write the value at `nodes[0]`; returns how many nodes it used.
fn value(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>, redact: bool, scan: bool) -> usize {
    use simd_json::{Node, StaticNode};
    let Some(first) = nodes.first() else {
        return 0;
    };
    match first {
        Node::String(s) => {
            if redact || (scan && token_like(s)) {
                out.extend_from_slice(b"\"[redacted]\"");
            } else {
                write_json_string(out, s);
            }
            1
        }
        Node::Static(st) => {
            if redact {
                out.extend_from_slice(b"\"[redacted]\"");
            } else {
                match st {
                    StaticNode::Null => out.extend_from_slice(b"null"),
                    StaticNode::Bool(b) => {
                        out.extend_from_slice(if *b { b"true" } else { b"false" })
                    }
                    StaticNode::I64(n) => {
                        let _ = write!(out, "{n}");
                    }
                    StaticNode::U64(n) => {
                        let _ = write!(out, "{n}");
                    }
                    StaticNode::F64(n) => {
                        let _ = write!(out, "{n:?}");
                    }
                }
            }
            1
        }
        Node::Array { len, .. } => {
            out.push(b'[');
            let mut i = 1;
            for k in 0..*len {
                if k > 0 {
                    out.push(b',');
                }
                i += value(&nodes[i..], out, redact, scan);
            }
            out.push(b']');
            i
        }
        Node::Object { len, .. } => {
            out.push(b'{');
            let mut i = 1;
            for k in 0..*len {
                if k > 0 {
                    out.push(b',');
                }
                let key = match nodes.get(i) {
                    Some(Node::String(key)) => *key,
                    _ => "",
                };
                write_json_string(out, key);
                out.push(b':');
                i += 1;
                i += value(&nodes[i..], out, redact || (scan && secret_key(key)), scan);
            }
            out.push(b'}');
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let mut out = Vec::new();
        write_time(&mut out, 1_795_315_404_123_456);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-22T02:43:24.123456Z"
        );
        let mut out = Vec::new();
        write_time(&mut out, 951_782_400_000_000); // leap day 2000
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn records_are_json_with_every_field() {
        let facts = Facts {
            era: 20_250_618,
            method: Some("tools/call".into()),
            target: Some("get \"file\"".into()),
            batch: 1,
            arguments: Some(Arguments::Hash([0xab; 32])),
            ..Facts::default()
        };
        for (client, shown) in [
            ("10.0.255.7:40000", "10.0.255.7:40000"),
            ("[::1]:8443", "[::1]:8443"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ] {
            let mut out = Vec::new();
            write_record(
                &mut out,
                &Record {
                    unix_micros: 1_795_315_404_123_456,
                    request_id: b"r-1",
                    worker: 3,
                    client: client.parse().unwrap(),
                    tls: None,
                    route: Some("mcp"),
                    facts: &facts,
                    decision: Decision::Allowed,
                    reason: "",
                    status: 200,
                    latency_us: u64::MAX,
                    upstream: Some((502, 0)),
                    bytes_in: 1024,
                    bytes_out: 10,
                },
            );
            assert_eq!(out.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["client"], shown);
            assert_eq!(v["v"], 1);
            assert_eq!(v["worker"], 3);
            assert_eq!(v["tls"], false);
            assert_eq!(v["era"], "2025-06-18");
            assert_eq!(v["method"], "tools/call");
            assert_eq!(v["target"], "get \"file\"");
            assert_eq!(v["arguments"], format!("hmac-sha256:{}", "ab".repeat(32)));
            assert_eq!(v["decision"], "allowed");
            assert_eq!(v["latency_us"], u64::MAX);
            assert_eq!(
                (
                    v["upstream_status"].clone(),
                    v["upstream_latency_us"].clone()
                ),
                (502.into(), 0.into())
            );
            assert_eq!(
                (v["bytes_in"].clone(), v["bytes_out"].clone()),
                (1024.into(), 10.into())
            );
            assert_eq!(v["session"], serde_json::Value::Null);
        }
    }

    #[test]
    fn arguments_keep_shape_and_hide_secrets() {
        let mut scratch = crate::mcp::jsonrpc::Scratch::default();
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"repo":"a/b","n":3,"f":1.5,"ok":true,"none":null,"list":[1,"two"],"api_token":"abc","nested":{"password":{"deep":"x"}},"jwt":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U","gh":"ghp_abcdef"}}}"#;
        let mut json = Vec::new();
        crate::mcp::jsonrpc::decode(&mut scratch, body, |m| {
            arguments_json(m.arguments.unwrap(), &mut json);
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["repo"], "a/b");
        assert_eq!(v["n"], 3);
        assert_eq!(v["f"], 1.5);
        assert_eq!(v["list"], serde_json::json!([1, "two"]));
        for secret in ["api_token", "jwt", "gh"] {
            assert_eq!(v[secret], "[redacted]", "{secret}");
        }
        assert_eq!(v["nested"]["password"]["deep"], "[redacted]");
    }
}
