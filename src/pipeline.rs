//! The request path, stage by stage, for one client connection:
//!
//! ```text
//! wait_for_request ─► read_head (httparse + framing) ─► request::prepare (route,
//! headers) ─► send_request (pooled upstream, body streamed) ─► relay::response
//! (head + body streamed, SSE event by event) ─► keep-alive or close
//! ```
//!
//! Every local answer goes through `reject`. Every timeout closes the
//! connection, so a dropped in-flight read never loses request bytes.

use crate::error::HttpError;
use crate::gate;
use crate::http1::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http1::encode::{error_response, Detail};
use crate::http1::{parse_request, Framing};
use crate::mcp::jsonrpc::{Kind, Message, RpcId};
use crate::mcp::listfilter::{ListFilter, ListKind};
use crate::metrics::Decision;
use crate::policy::{Facts, Verdict};
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::stream::{read_more, write_all, ClientStream, UpstreamStream};
use crate::upstream::request::{prepare, ClientFacts, Reject, Request};
use crate::upstream::{connect, relay};
use crate::worker::{Worker, WorkerCounters};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::timeout;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Upper bound on header fields httparse is given room for.
pub const MAX_HEADERS: usize = 256;

/// Buffers and facts of one client connection, reused across its requests.
pub struct Conn {
    pub client: ClientFacts,
    /// Bytes read from the client and not yet consumed.
    pub buf: Vec<u8>,
    /// The upstream request being built / sent.
    pub up: Vec<u8>,
    /// Bytes read from the upstream.
    pub ubuf: Vec<u8>,
    /// Bytes being written to the client.
    pub out: Vec<u8>,
    pub served: u64,
    /// What judging the current request's body found.
    pub judged: Judged,
    /// What became of the current request (metrics).
    pub outcome: Outcome,
    /// A copy of the current request's head, kept for policies that read
    /// headers after the head was consumed (routes with a policy only).
    pub head_copy: Vec<u8>,
    /// The audit hash of the last session id seen on this connection.
    pub session_hash: SessionHash,
}

/// A connection's last `Mcp-Session-Id` and its keyed hash: a client sends
/// the same id on every request of its session, so it is hashed once.
#[derive(Default)]
pub struct SessionHash(Option<(Box<[u8]>, Rc<str>)>);

impl SessionHash {
    pub fn get(&mut self, id: &[u8], sink: &crate::audit::Sink) -> Rc<str> {
        match &self.0 {
            Some((last, hash)) if **last == *id => hash.clone(),
            _ => {
                let hash: Rc<str> = sink.hash(id).into();
                self.0 = Some((id.into(), hash.clone()));
                hash
            }
        }
    }
}

/// What became of one request: its route, the status the client got, and
/// how portcullis decided.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub route: Option<usize>,
    pub request_id: crate::worker::RequestId,
    /// Why it was refused ("" when forwarded).
    pub reason: &'static str,
    /// When the request went to the upstream, and how long its answer's
    /// head took (µs), with its status.
    pub upstream_sent: Option<Instant>,
    pub upstream: Option<(u16, u64)>,
    /// 0 until an answer is known.
    pub status: u16,
    pub decision: Decision,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            route: None,
            request_id: Default::default(),
            reason: "",
            upstream_sent: None,
            upstream: None,
            status: 0,
            decision: Decision::Failed,
        }
    }
}

/// Count a finished request in its route's metrics and write its audit
/// record; `bytes` are what the client connection carried for it (in, out).
fn record(
    worker: &Worker,
    snap: &Snapshot,
    conn: &mut Conn,
    client: &ClientStream,
    started: Instant,
    bytes: (u64, u64),
) {
    let outcome = &conn.outcome;
    let route = outcome
        .route
        .filter(|&i| i < snap.routes.all().len())
        .map(|i| snap.routes.get(i));
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if outcome.status != 0 {
        let metrics = route.map_or(&snap.unrouted, |r| &r.metrics);
        metrics.record(
            outcome.status,
            outcome.decision,
            conn.judged.method_slot,
            micros,
        );
    } else if route.is_none() {
        return; // the client left before a request could be read
    }
    if worker.shared.audit.is_none() {
        return;
    }
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    worker.audit(&crate::audit::Record {
        unix_micros,
        request_id: outcome.request_id.as_bytes(),
        worker: worker.id,
        client: conn.client.peer,
        tls: client.tls_info(),
        route: route.map(|r| r.name.as_str()),
        facts: &conn.judged.audit,
        decision: outcome.decision,
        reason: if outcome.status == 0 {
            "the client went away before the answer"
        } else {
            outcome.reason
        },
        status: outcome.status,
        latency_us: micros,
        upstream: outcome.upstream,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
    });
}

/// The outcome of judging a body, beyond pass or refuse.
#[derive(Default)]
pub struct Judged {
    /// What the local answer being built says beyond its error (ids, headers).
    pub detail: Option<Box<Detail>>,
    /// The list request whose answer is to be filtered.
    pub list: Option<ListFilter>,
    /// What the audit record says of the request (filled when audit is on).
    pub audit: crate::audit::Facts,
    /// The metrics slot of the body's (first) MCP method.
    pub method_slot: u8,
}

/// What happens to the connection after an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// Counts a request as in flight (graceful shutdown waits for these).
struct InFlight<'a>(&'a Worker);

impl<'a> InFlight<'a> {
    fn enter(w: &'a Worker) -> Self {
        w.in_flight.set(w.in_flight.get() + 1);
        InFlight(w)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// Serve one client connection until it closes, errs, idles out or the
/// worker shuts down.
pub async fn serve(worker: Rc<Worker>, mut client: ClientStream, peer: SocketAddr) {
    let mut conn = Conn {
        client: ClientFacts::new(peer, client.is_tls()),
        buf: Vec::with_capacity(4096),
        up: Vec::new(),
        ubuf: Vec::new(),
        out: Vec::new(),
        served: 0,
        judged: Judged::default(),
        outcome: Outcome::default(),
        head_copy: Vec::new(),
        session_hash: SessionHash::default(),
    };
    // The client's byte counts at the end of the previous request.
    let mut counted = (0, 0);
    loop {
        if !wait_for_request(&worker.snapshot(), &mut client, &mut conn).await {
            break;
        }
        // Loaded once the request has begun, so a connection idle across a
        // reload is served by the new snapshot.
        let snap = worker.snapshot();
        let started = Instant::now();
        conn.outcome = Outcome::default();
        conn.judged.audit = Default::default();
        conn.judged.method_slot = crate::metrics::method_slot(None);
        let next = {
            let _busy = InFlight::enter(&worker);
            // Boxed: the exchange's state (several KiB) exists only while a
            // request is served, so an idle keep-alive connection stays small.
            Box::pin(exchange(&worker, &snap, &mut client, &mut conn)).await
        };
        let bytes = (client.bytes_in - counted.0, client.bytes_out - counted.1);
        counted = (client.bytes_in, client.bytes_out);
        record(&worker, &snap, &mut conn, &client, started, bytes);
        conn.served += 1;
        release_idle(&mut conn);
        if next == Next::Close || worker.shared.shutting_down() {
            break;
        }
    }
    linger_close(&mut client, &mut conn).await;
}

/// Between requests a kept-alive connection holds only its read buffer: the
/// upstream read buffer, the upstream head and the client output are freed
/// (each exchange allocates them again), so idle connections stay small.
fn release_idle(conn: &mut Conn) {
    conn.ubuf = Vec::new();
    conn.up = Vec::new();
    conn.out = Vec::new();
    conn.head_copy = Vec::new();
}

/// Close the way RFC 9112 §9.6 asks: send FIN, then read and discard what the
/// client still sends for a moment. Closing with unread bytes in the receive
/// buffer would make the kernel send a reset, which can destroy the response
/// the client has not read yet (e.g. a 413 sent before its body).
async fn linger_close(client: &mut ClientStream, conn: &mut Conn) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_DRAIN: usize = 256 * 1024;
    if client.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < MAX_DRAIN {
        conn.buf.clear();
        match monoio::time::timeout_at(deadline.into(), read_more(client, &mut conn.buf, 16 * 1024))
            .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Wait for the first byte of the next request: `header_timeout` on a fresh
/// connection, `idle_timeout` between keep-alive requests.
async fn wait_for_request(snap: &Snapshot, client: &mut ClientStream, conn: &mut Conn) -> bool {
    if !conn.buf.is_empty() {
        return true;
    }
    let wait = if conn.served == 0 {
        snap.limits.header_timeout.0
    } else {
        snap.limits.idle_timeout.0
    };
    matches!(timeout(wait, read_more(client, &mut conn.buf, snap.limits.max_header_bytes + 1)).await, Ok(Ok(n)) if n > 0)
}

/// One request/response exchange.
async fn exchange(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
) -> Next {
    let req = match read_head(worker, snap, client, conn).await {
        Ok(Step::Forward(req)) => req,
        Ok(Step::Refuse(rej)) => return reject(client, conn, rej).await,
        Ok(Step::Answered(close)) => {
            conn.outcome.status = 200;
            conn.outcome.decision = Decision::Allowed;
            let sent = write_all(client, &mut conn.out).await;
            return if close || sent.is_err() {
                Next::Close
            } else {
                Next::KeepAlive
            };
        }
        Err(None) => return Next::Close,
        Err(Some(rej)) => return reject(client, conn, rej).await,
    };
    let route = snap.routes.get(req.route);
    conn.outcome.upstream_sent = Some(Instant::now());
    let upstream = match send_request(worker, snap, client, conn, &req).await {
        Ok(u) => u,
        Err(Some(err)) => {
            let close = err.must_close()
                || !req.keep_alive
                || (req.framing != Framing::None && !err.judged_whole_body());
            let detail = conn.judged.detail.take();
            return reject(
                client,
                conn,
                Reject {
                    err,
                    mcp: req.mcp,
                    close,
                    id: req.id,
                    detail,
                    route: u32::try_from(req.route).ok(),
                },
            )
            .await;
        }
        Err(None) => return Next::Close,
    };
    match relay::response(worker, snap, route, &req, client, upstream, conn).await {
        Ok(next) => next,
        Err(Some(err)) => {
            reject(
                client,
                conn,
                Reject {
                    err,
                    mcp: req.mcp,
                    close: true,
                    id: req.id,
                    detail: None,
                    route: u32::try_from(req.route).ok(),
                },
            )
            .await
        }
        Err(None) => Next::Close,
    }
}

/// What a parsed head leads to.
enum Step {
    Forward(Request),
    Refuse(Reject),
    /// Answered by portcullis itself (`wellknown`), the response in
    /// `conn.out`; whether the connection closes after it.
    Answered(bool),
}

/// Read until a complete head is parsed, then prepare the upstream request.
/// `Err(None)`: the client went away, close without an answer.
async fn read_head(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
) -> Result<Step, Option<Reject>> {
    // Taken only when the head needs another read (most arrive in one).
    let mut deadline = None;
    let local = |err: HttpError| {
        Some(Reject {
            err,
            mcp: false,
            close: true,
            id: Default::default(),
            detail: None,
            route: None,
        })
    };
    loop {
        let parsed = parse_and_prepare(worker, snap, conn).map_err(local)?;
        if let Some((prepared, head_len)) = parsed {
            // The head is consumed whatever the outcome: a request answered
            // locally on a kept-alive connection must not be read again.
            conn.buf.drain(..head_len);
            return Ok(prepared);
        }
        let max = snap.limits.max_header_bytes + 1;
        let until = *deadline.get_or_insert_with(|| Instant::now() + snap.limits.header_timeout.0);
        match monoio::time::timeout_at(until.into(), read_more(client, &mut conn.buf, max)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
            Ok(Ok(_)) => {}
            Err(_) => return Err(local(HttpError::RequestTimeout)),
        }
    }
}

/// A parsed head: what it leads to, and the head's length.
type Prepared = (Step, usize);

/// Parse the buffered head and, when complete, prepare the upstream request
/// (with its head length). A plain function, so the header array lives on the
/// stack for this call only, not in every connection's future.
fn parse_and_prepare(
    worker: &Worker,
    snap: &Snapshot,
    conn: &mut Conn,
) -> Result<Option<Prepared>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let n = snap.head_limits.max_headers.clamp(1, MAX_HEADERS);
    Ok(
        parse_request(&conn.buf, &mut headers[..n], &snap.head_limits)?.map(|head| {
            let step = match crate::wellknown::answer(snap, &head, conn.client.tls, &mut conn.out) {
                Some(close) => Step::Answered(close),
                None => match prepare(worker, snap, &head, &conn.client, &mut conn.up) {
                    Ok(req) => {
                        conn.outcome.route = Some(req.route);
                        conn.outcome.request_id = req.id;
                        if let Some(sink) = &worker.shared.audit {
                            let a = &mut conn.judged.audit;
                            a.principal = req.principal.clone();
                            a.era = req.mcp_head.version;
                            a.session = head
                                .header("mcp-session-id")
                                .map(|s| conn.session_hash.get(s, sink));
                        }
                        if snap.routes.get(req.route).policy_reads_headers {
                            conn.head_copy.clear();
                            conn.head_copy.extend_from_slice(&conn.buf[..head.head_len]);
                        }
                        Step::Forward(req)
                    }
                    Err(rej) => Step::Refuse(rej),
                },
            };
            (step, head.head_len)
        }),
    )
}

/// Answer locally; close when framing is in doubt or the error requires it.
pub async fn reject(client: &mut ClientStream, conn: &mut Conn, rej: Reject) -> Next {
    conn.outcome.status = rej.err.status();
    conn.outcome.decision = rej.err.decision();
    conn.outcome.reason = rej.err.reason();
    conn.outcome.request_id = rej.id;
    if let Some(route) = rej.route {
        conn.outcome.route = Some(route as usize);
    }
    conn.out.clear();
    error_response(
        &mut conn.out,
        rej.err,
        rej.mcp,
        rej.id.as_bytes(),
        rej.close,
        rej.detail.as_deref(),
    );
    if rej.err.status() >= 500 {
        tracing::warn!(peer = %conn.client.peer, status = rej.err.status(), reason = rej.err.reason(), "request failed");
    } else {
        tracing::debug!(peer = %conn.client.peer, status = rej.err.status(), reason = rej.err.reason(), "request rejected");
    }
    let _ = write_all(client, &mut conn.out).await;
    if rej.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Bodies up to this size are held whole in memory on plain routes (MCP
/// routes hold bodies up to the body limit: they are decoded in full).
const HELD_BODY_MAX: u64 = 64 * 1024;

/// Frame the request body for the upstream, connect (pooled or new) and send
/// head and body. A body held whole in memory makes the request replayable:
/// it is retried once on a fresh connection when a pooled one turns out to be
/// dead before any answer. Larger bodies are streamed.
async fn send_request(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
) -> Result<UpstreamStream, Option<HttpError>> {
    let route = snap.routes.get(req.route);
    let max_body = snap.limits.max_body_bytes;
    let hold = if req.mcp {
        max_body
    } else {
        HELD_BODY_MAX.min(max_body)
    };
    // `streaming`: the framing of a body still to come from the client.
    let streaming = match req.framing {
        Framing::None => {
            check_mcp_body(
                worker,
                route,
                req,
                &[],
                &conn.head_copy,
                &conn.client,
                &mut conn.judged,
            )?;
            conn.up.extend_from_slice(b"\r\n");
            None
        }
        Framing::Length(n) if n <= hold => {
            let n = n as usize;
            fill_body(snap, client, conn, req, n).await?;
            let judged = check_mcp_body(
                worker,
                route,
                req,
                &conn.buf[..n],
                &conn.head_copy,
                &conn.client,
                &mut conn.judged,
            );
            if judged.is_ok() {
                push_length(&mut conn.up, n as u64);
                conn.up.extend_from_slice(&conn.buf[..n]);
            }
            // Consumed either way: a refused body must not be read as a request.
            conn.buf.drain(..n);
            judged?;
            None
        }
        Framing::Length(n) => {
            push_length(&mut conn.up, n);
            Some(Framing::Length(n))
        }
        Framing::Chunked => match hold_chunked(snap, client, conn, req).await? {
            Some(data) => {
                check_mcp_body(
                    worker,
                    route,
                    req,
                    &data,
                    &conn.head_copy,
                    &conn.client,
                    &mut conn.judged,
                )?;
                push_length(&mut conn.up, data.len() as u64);
                conn.up.extend_from_slice(&data);
                None
            }
            None => {
                conn.up
                    .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                Some(Framing::Chunked)
            }
        },
    };
    let settings = &snap.upstream;
    let replayable = streaming.is_none();
    let mut pooled = worker.pool.take(&route.pool_key, replayable, worker.now());
    loop {
        let reused = pooled.is_some();
        let mut upstream = match pooled.take() {
            Some(u) => {
                WorkerCounters::bump(&worker.counters.upstream_reuses);
                u
            }
            None => {
                let u = connect(route, settings).await.map_err(Some)?;
                WorkerCounters::bump(&worker.counters.upstream_connects);
                u
            }
        };
        // A replayable request on a pooled connection waits for the first
        // bytes of the answer under the same timer as its write: a dead
        // connection shows as EOF or reset, and the request goes out again.
        let probe = reused && replayable;
        let limit = if probe {
            settings.response_header_timeout
        } else {
            snap.limits.write_timeout.0
        };
        let head = std::mem::take(&mut conn.up);
        let ubuf = &mut conn.ubuf;
        ubuf.clear();
        let sent = timeout(limit, async {
            let (res, head) = upstream.write_all(head).await;
            let got = match res {
                Ok(_) if probe => read_more(&mut upstream, ubuf, 64 * 1024).await.map(Some),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            };
            (got, head)
        })
        .await;
        let got = match sent {
            Ok((got, head)) => {
                conn.up = head;
                got
            }
            Err(_) => return Err(Some(HttpError::GatewayTimeout)),
        };
        match got {
            Err(_) | Ok(Some(0)) if probe => continue,
            Err(_) | Ok(Some(0)) => {
                return Err(Some(HttpError::BadGateway(
                    "upstream closed the connection",
                )))
            }
            Ok(_) => {}
        }
        if let Some(framing) = streaming {
            stream_body(snap, client, &mut upstream, conn, req, framing).await?;
        }
        conn.up.clear();
        return Ok(upstream);
    }
}

/// Decode a body on an MCP route in full (`mcp::jsonrpc`): every POST (an
/// empty one included) and any other request that carries a body. Each
/// message is checked against the head (`gate::message`) and judged by the
/// route's policy; one refused message refuses the whole body (a batch too).
/// A refusal is answered locally with the refused requests' ids
/// (`judged.detail`), never forwarded. A list request whose answer must be
/// filtered is noted in `judged.list`. MCP bodies never stream: they are
/// always held whole, so nothing reaches an upstream unread.
pub fn check_mcp_body(
    worker: &Worker,
    route: &Route,
    req: &Request,
    body: &[u8],
    head_copy: &[u8],
    client: &ClientFacts,
    judged: &mut Judged,
) -> Result<(), Option<HttpError>> {
    judged.list = None;
    if !req.mcp {
        return Ok(());
    }
    let policy = route.policy.as_ref();
    let mut header_space = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let headers = if route.policy_reads_headers {
        reparse_headers(head_copy, &mut header_space)
    } else {
        &[]
    };
    let base = Facts {
        principal: req.principal.as_deref(),
        method: "",
        name: None,
        uri: None,
        arguments: None,
        source_ip: client.peer.ip(),
        now_unix: req.now_unix,
        headers,
    };
    if body.is_empty() && req.method != crate::http1::Method::Post {
        // GET (listen stream) and DELETE (end session) carry no call: deny
        // rules apply to them, but they need no allow rule.
        let verdict = policy.map(|p| (p, p.evaluate(&base)));
        if let Some((p, Verdict::Deny { rule, message, .. })) = verdict {
            if !p.is_default_rule(rule) {
                judged.detail = Some(Box::new(Detail {
                    message: Some(format!("denied by policy rule {rule:?}: {message}")),
                    ..Detail::default()
                }));
                return Err(Some(HttpError::PolicyForbidden));
            }
        }
        if policy.is_some() && req.method == crate::http1::Method::Get {
            // A GET stream may carry list answers (legacy HTTP+SSE, or a
            // resumed stream): every one of them is filtered.
            judged.list = Some(ListFilter { wanted: Vec::new() });
        }
        return Ok(());
    }
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut scratch = worker.mcp_scratch.borrow_mut();
    let mut refused: Option<(HttpError, Option<String>, Option<u64>)> = None;
    let mut ids = Vec::new();
    let mut lists = Vec::new();
    let sink = worker.shared.audit.as_ref();
    let audit = &mut judged.audit;
    let slot = &mut judged.method_slot;
    let mut first = true;
    let decoded = crate::mcp::jsonrpc::decode(&mut scratch, body, |m| {
        if std::mem::take(&mut first) {
            *slot = crate::metrics::method_slot(m.method);
        }
        if let Some(sink) = sink {
            audit.batch += 1;
            if audit.batch == 1 {
                note_message(sink, route, m, audit);
            }
        }
        if m.kind == Some(Kind::Request) {
            if let Some(id) = m.id {
                if batch || ids.is_empty() {
                    ids.push(RpcId::from(id));
                }
            }
        }
        if refused.is_some() {
            return;
        }
        if let Err(e) = gate::message(m, &req.mcp_head, batch) {
            // Errors of one message name that message's id only.
            ids.clear();
            ids.extend(m.id.map(RpcId::from));
            refused = Some((e, None, None));
            return;
        }
        let (Some(p), Some(method), false) = (policy, m.method, m.kind == Some(Kind::Response))
        else {
            return;
        };
        let facts = Facts {
            method,
            name: m.name,
            uri: m.uri,
            arguments: m.arguments,
            ..base
        };
        let verdict = match p.evaluate(&facts) {
            // What the message reaches must be allowed too; the rule that
            // allowed the message itself is the one the audit names.
            allow @ Verdict::Allow { .. } => match implied(p, &facts, m) {
                Verdict::Allow { .. } => allow,
                deny => deny,
            },
            deny => deny,
        };
        match verdict {
            Verdict::Allow { rule } => {
                // The audit record names the rule that allowed the first
                // message; a deny anywhere in the batch replaces it.
                if let (Some(rule), Some(_), None) = (rule, sink, &audit.rule) {
                    audit.rule = Some(rule.into());
                }
                if let (Some(kind), Some(id)) = (ListKind::of_method(method), m.id) {
                    lists.push((kind, RpcId::from(id)));
                }
            }
            Verdict::Deny {
                rule,
                message,
                retry_after_secs,
            } => {
                let err = if retry_after_secs.is_some() {
                    HttpError::RateLimited
                } else {
                    HttpError::PolicyDenied
                };
                if sink.is_some() {
                    audit.rule = Some(rule.into());
                }
                refused = Some((
                    err,
                    Some(format!("denied by policy rule {rule:?}: {message}")),
                    retry_after_secs,
                ));
            }
        }
    });
    decoded.map_err(|e| {
        Some(HttpError::InvalidJsonRpc {
            code: e.code(),
            message: e.message(),
        })
    })?;
    let Some((mut err, message, retry_after)) = refused else {
        judged.list = (!lists.is_empty()).then_some(ListFilter { wanted: lists });
        return Ok(());
    };
    if err == HttpError::PolicyDenied && ids.is_empty() {
        // Only notifications were refused: nothing answers a notification.
        err = HttpError::NotificationDenied;
    } else if err == HttpError::PolicyDenied && req.mcp_head.legacy_post {
        // A legacy HTTP+SSE client ignores the body of a 200 (its answers
        // come on the GET stream): a 4xx is what it reports at once. The
        // error cannot go on that stream instead: it may be relayed by
        // another core, and this one holds nothing of it.
        err = HttpError::LegacyPolicyDenied;
    }
    let mut headers = Vec::new();
    if let Some(secs) = retry_after {
        headers.extend_from_slice(b"Retry-After: ");
        crate::http1::encode::push_u64(&mut headers, secs.max(1));
        headers.extend_from_slice(b"\r\n");
    }
    judged.detail = Some(Box::new(Detail {
        ids,
        batch,
        message,
        headers,
    }));
    Err(Some(err))
}

/// Copy what the audit record says of a body's (first) message.
fn note_message(
    sink: &crate::audit::Sink,
    route: &Route,
    m: &Message<'_>,
    audit: &mut crate::audit::Facts,
) {
    audit.method = m.method.map(Box::from);
    audit.target = m.name.or(m.uri).or(m.ref_name).or(m.ref_uri).map(Box::from);
    audit.rpc_id = m.id.map(RpcId::from);
    if audit.era == 0 {
        audit.era = m
            .protocol_version
            .and_then(|v| gate::parse_version(v.as_bytes()))
            .unwrap_or(0);
    }
    let Some(args) = m.arguments else { return };
    let mut text = Vec::with_capacity(512);
    match route.audit_arguments {
        crate::audit::Arguments::Omit => {}
        crate::audit::Arguments::Full => {
            crate::audit::arguments_json(args, &mut text);
            audit.arguments = String::from_utf8(text).ok();
        }
        crate::audit::Arguments::Hash => {
            crate::audit::arguments_exact(args, &mut text);
            audit.arguments = Some(format!("\"{}\"", sink.hash(&text)));
        }
    }
}

/// What a message reaches besides its own key, judged as if it were asked
/// for directly: the prompt or resource a `completion/complete` completes
/// (`prompts/get` / `resources/read`), and each resource a
/// `subscriptions/listen` subscribes to (`resources/subscribe`).
fn implied<'p>(p: &'p crate::policy::Policy, facts: &Facts<'_>, m: &Message<'_>) -> Verdict<'p> {
    let as_call = |method, name, uri| Facts {
        method,
        name,
        uri,
        arguments: None,
        ..*facts
    };
    if let Some(name) = m.ref_name {
        let v = p.evaluate(&as_call("prompts/get", Some(name), None));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    if let Some(uri) = m.ref_uri {
        let v = p.evaluate(&as_call("resources/read", None, Some(uri)));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    for uri in m.subscription_uris() {
        let v = p.evaluate(&as_call("resources/subscribe", None, Some(uri)));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    Verdict::Allow { rule: None }
}

/// The header fields of a copied request head (for `header` criteria).
pub fn reparse_headers<'h, 'b>(
    head: &'b [u8],
    space: &'h mut [httparse::Header<'b>],
) -> &'h [httparse::Header<'b>] {
    let mut req = httparse::Request::new(space);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => req.headers,
        _ => &[],
    }
}

/// Answer `Expect: 100-continue` before the first read of a body.
async fn send_continue(
    client: &mut ClientStream,
    req: &Request,
    sent: &mut bool,
) -> Result<(), Option<HttpError>> {
    if req.expect_continue && !*sent {
        *sent = true;
        let mut cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        write_all(client, &mut cont).await.map_err(|_| None)?;
    }
    Ok(())
}

/// Read more of a request body from the client within `body_timeout`.
/// `Err(None)`: the client went away.
async fn read_body(
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    max: usize,
) -> Result<(), Option<HttpError>> {
    match timeout(
        snap.limits.body_timeout.0,
        read_more(client, &mut conn.buf, max),
    )
    .await
    {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(None),
        Err(_) => Err(Some(HttpError::RequestTimeout)),
    }
}

/// Read until the whole Content-Length body of `n` bytes is in `conn.buf`.
async fn fill_body(
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
    n: usize,
) -> Result<(), Option<HttpError>> {
    let mut sent = false;
    while conn.buf.len() < n {
        send_continue(client, req, &mut sent).await?;
        read_body(snap, client, conn, n.max(64 * 1024)).await?;
    }
    Ok(())
}

/// The decoded chunked body, when held in memory: on MCP routes it is read
/// to its end (413 past the body limit); elsewhere only when it is already
/// complete in the buffer (`None`: stream it).
async fn hold_chunked(
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
) -> Result<Option<Vec<u8>>, Option<HttpError>> {
    let max_body = snap.limits.max_body_bytes;
    let max_raw = usize::try_from(max_body)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pos = 0;
    let mut sent = false;
    loop {
        while pos < conn.buf.len() {
            let p = decoder
                .decode(&conn.buf[pos..])
                .map_err(|e| Some(HttpError::BadRequest(e.reason())))?;
            data.extend_from_slice(&conn.buf[pos + p.data.start..pos + p.data.end]);
            pos += p.consumed;
            if data.len() as u64 > max_body {
                return Err(Some(HttpError::PayloadTooLarge));
            }
            if p.done {
                conn.buf.drain(..pos);
                return Ok(Some(data));
            }
        }
        if !req.mcp {
            return Ok(None);
        }
        if conn.buf.len() >= max_raw {
            return Err(Some(HttpError::PayloadTooLarge));
        }
        send_continue(client, req, &mut sent).await?;
        read_body(snap, client, conn, max_raw).await?;
    }
}

fn push_length(up: &mut Vec<u8>, n: u64) {
    up.extend_from_slice(b"Content-Length: ");
    crate::http1::encode::push_u64(up, n);
    up.extend_from_slice(b"\r\n\r\n");
}

/// Stream the rest of a request body from the client to the upstream,
/// re-framing chunked bodies, enforcing the body limit and body timeout.
async fn stream_body(
    snap: &Snapshot,
    client: &mut ClientStream,
    upstream: &mut UpstreamStream,
    conn: &mut Conn,
    req: &Request,
    framing: Framing,
) -> Result<(), Option<HttpError>> {
    send_continue(client, req, &mut false).await?;
    let limit = snap.limits.max_body_bytes;
    let mut decoder = ChunkedDecoder::new();
    let mut remaining = if let Framing::Length(n) = framing {
        n
    } else {
        0
    };
    let mut total = 0u64;
    let mut chunk = Vec::with_capacity(16 * 1024);
    loop {
        // Forward what the buffer holds.
        chunk.clear();
        let mut done = false;
        if framing == Framing::Chunked {
            let mut pos = 0;
            while pos < conn.buf.len() {
                let p = decoder
                    .decode(&conn.buf[pos..])
                    .map_err(|e| Some(HttpError::BadRequest(e.reason())))?;
                encode_chunk(&mut chunk, &conn.buf[pos + p.data.start..pos + p.data.end]);
                total += p.data.len() as u64;
                pos += p.consumed;
                if p.done {
                    chunk.extend_from_slice(LAST_CHUNK);
                    done = true;
                    break;
                }
            }
            conn.buf.drain(..pos);
        } else {
            let take = (conn.buf.len() as u64).min(remaining) as usize;
            chunk.extend_from_slice(&conn.buf[..take]);
            conn.buf.drain(..take);
            remaining -= take as u64;
            total += take as u64;
            done = remaining == 0;
        }
        if total > limit {
            return Err(Some(HttpError::PayloadTooLarge));
        }
        if !chunk.is_empty() {
            match timeout(snap.limits.write_timeout.0, write_all(upstream, &mut chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Some(HttpError::BadGateway(
                        "upstream closed the connection",
                    )))
                }
                Err(_) => return Err(Some(HttpError::GatewayTimeout)),
            }
        }
        if done {
            return Ok(());
        }
        read_body(snap, client, conn, 64 * 1024).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_keeps_only_its_read_buffer() {
        let mut conn = Conn {
            client: ClientFacts::new("127.0.0.1:1".parse().unwrap(), false),
            buf: Vec::with_capacity(4096),
            up: Vec::with_capacity(512),
            ubuf: Vec::with_capacity(4096),
            out: Vec::with_capacity(512),
            served: 1,
            judged: Judged::default(),
            outcome: Outcome::default(),
            head_copy: Vec::with_capacity(512),
            session_hash: SessionHash::default(),
        };
        // Pipelined bytes of the next request stay where they are.
        conn.buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        release_idle(&mut conn);
        assert_eq!(conn.buf, b"GET / HTTP/1.1\r\n");
        assert_eq!(conn.buf.capacity(), 4096);
        for (name, v) in [
            ("ubuf", &conn.ubuf),
            ("up", &conn.up),
            ("out", &conn.out),
            ("head_copy", &conn.head_copy),
        ] {
            assert_eq!(v.capacity(), 0, "{name} still holds memory");
        }
    }
}
