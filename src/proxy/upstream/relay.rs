//! Relaying the upstream's response: head checked and rewritten (hop-by-hop
//! removed, request id added, framing chosen for this client), then the body
//! streamed as it arrives: Content-Length copied, chunked re-framed,
//! close-delimited turned into chunks for HTTP/1.1 clients. Each upstream read
//! is written (and flushed) to the client before the next read, so SSE events
//! are never held back.

use crate::error::HttpError;
use crate::http1::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http1::encode::push_u64;
use crate::http1::response::{parse_response, BodyKind, ResponseHead};
use crate::http1::Method;
use crate::mcp::listfilter::{filter_message, ListFilter, SseListFilter, Visible, MAX_LIST_BYTES};
use crate::mcp::sse::EndpointRewriter;
use crate::proxy::admit::Request;
use crate::proxy::conn::{Conn, Next};
use crate::proxy::stream::{read_more, write_all, ClientStream, UpstreamStream};
use crate::proxy::upstream::head::{dropped_in_response, ConnectionOptions};
use crate::proxy::worker::Worker;
use crate::snapshot::route::Route;
use crate::snapshot::Snapshot;
use body::{Reframe, Source};
use monoio::io::AsyncWriteRent;
use std::time::Duration;
use whole::{filter_events, filtered_json, strip_content_length};

mod body;
mod whole;

const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Facts of the response head that the body relay needs.
struct Head {
    body: BodyKind,
    upstream_keep_alive: bool,
    /// How long the upstream said it keeps an idle connection.
    keep_alive_timeout: Option<u64>,
    event_stream: bool,
    /// A `Content-Encoding` other than identity (a list answer in it cannot
    /// be filtered: it is refused).
    encoded: bool,
}

/// Relay the response. `Err(Some(e))`: nothing was sent to the client yet, the
/// caller answers `e`; `Err(None)`: the exchange broke after the head was sent,
/// the caller closes (when the upstream broke it, `broken` has marked the
/// request failed; a client that left keeps the upstream's verdict).
pub(crate) async fn response(
    worker: &Worker,
    snap: &Snapshot,
    route: &Route,
    req: &Request,
    client: &mut ClientStream,
    mut upstream: UpstreamStream,
    conn: &mut Conn,
) -> Result<Next, Option<HttpError>> {
    let head = read_head(worker, route, snap, req, &mut upstream, conn).await?;
    // A list answer to filter: a JSON body is filtered whole, an event
    // stream event by event (its length changes, so it is re-framed).
    let list = list_to_filter(route, req, &head, conn);
    // Content screening reads every answer of the route the same way.
    let screen = route.screen.as_ref().filter(|_| req.mcp);
    if (list.is_some() || screen.is_some()) && head.encoded {
        return Err(Some(HttpError::BadGateway(
            "a compressed answer cannot be filtered or screened",
        )));
    }
    let whole = list.is_some() || (screen.is_some() && head.body != BodyKind::Empty);
    if whole && !head.event_stream {
        let exchange = Exchange {
            worker,
            snap,
            route,
            req,
        };
        return filtered_json(&exchange, client, upstream, conn, head, list).await;
    }
    let changes = list.is_some() || (screen.is_some() && head.event_stream);
    let (client_chunked, keep_client) = finish_head(worker, req, &head, changes, conn);
    let mut body = Reframe {
        screen: screen
            .filter(|_| head.event_stream)
            .map(|s| (s.clone(), crate::proxy::screen::Events::default())),
        rewriter: (head.event_stream
            && req.method == Method::Get
            && route.public.path != route.upstream.path
            && client_chunked)
            .then(EndpointRewriter::default),
        sse_filter: list.map(|l| (l, SseListFilter::default())),
        client_chunked,
        ..Reframe::default()
    };
    let mut source = Source::of(head.body);
    // `out` holds the head until the first write.
    let mut head_sent = false;
    loop {
        let done = body
            .take(worker, route, req, conn, &mut source)
            .map_err(|reason| broken(route, conn, head_sent, reason))?;
        if !conn.out.is_empty() {
            let limit = snap.limits.write_timeout.0;
            match conn
                .slot
                .within(limit, write_all(client, &mut conn.out))
                .await
            {
                Ok(Ok(())) => head_sent = true,
                _ => return Err(None),
            }
            if head.event_stream && client.is_tls() && client.flush().await.is_err() {
                return Err(None);
            }
        }
        if done {
            break;
        }
        match read_body(snap, route, client, &mut upstream, conn, head.event_stream).await {
            Ok(Ok(0)) if matches!(source, Source::UntilClose) => source = Source::Ended,
            Ok(Ok(n)) if n > 0 => {}
            // Upstream closed or stalled mid-body: the client cannot be told
            // with a status any more; closing tells it.
            Ok(_) => return Err(broken(route, conn, head_sent, "upstream closed mid-body")),
            // An event stream may be quiet for long (a listen stream): one
            // that outlasts `read_timeout` ends as every stream does, with
            // the upstream's verdict, not as a failure.
            Err(Stalled::Upstream) if head.event_stream => {
                tracing::debug!(route = %route.name, "event stream quiet past read_timeout, closing");
                return Err(None);
            }
            Err(Stalled::Upstream) => {
                return Err(broken(
                    route,
                    conn,
                    head_sent,
                    "upstream timed out mid-body",
                ))
            }
            Err(Stalled::ClientLeft) => return Err(None),
        }
    }
    pool_or_drop(worker, snap, route, &head, &source, upstream, conn);
    Ok(if keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Finish the client's head in `conn.out` (written by `read_head`) with the
/// framing chosen for this client; returns (chunked, keep the connection).
fn finish_head(
    worker: &Worker,
    req: &Request,
    head: &Head,
    filtered: bool,
    conn: &mut Conn,
) -> (bool, bool) {
    if filtered && matches!(head.body, BodyKind::Length(_)) {
        strip_content_length(&mut conn.out);
    }
    let client_chunked =
        req.http11 && (filtered || matches!(head.body, BodyKind::Chunked | BodyKind::UntilClose));
    let keep_client = req.keep_alive
        && req.http11
        && !worker.shared.shutting_down()
        && (client_chunked
            || (!filtered && matches!(head.body, BodyKind::Empty | BodyKind::Length(_))));
    if client_chunked {
        conn.out
            .extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_client {
        conn.out.extend_from_slice(b"Connection: close\r\n");
    }
    conn.out.extend_from_slice(b"\r\n");
    (client_chunked, keep_client)
}

/// What judging noted to filter in this answer, when the route filters
/// (a policy, or pinning). A pinning route also watches answers that are no
/// list's for `list_changed` notifications: those come on event streams only.
fn list_to_filter(
    route: &Route,
    req: &Request,
    head: &Head,
    conn: &mut Conn,
) -> Option<ListFilter> {
    conn.judged.list.take().filter(|l| {
        (route.policy.is_some() || route.pin.is_some())
            && (!l.wanted.is_empty() || head.event_stream || req.method == Method::Get)
    })
}

/// Why a wait for more of the body ended without bytes.
enum Stalled {
    /// The upstream sent nothing within `read_timeout`.
    Upstream,
    /// The client left a quiet event stream.
    ClientLeft,
}

/// Read more of the body from the upstream into `conn.ubuf`.
async fn read_body(
    snap: &Snapshot,
    route: &Route,
    client: &ClientStream,
    upstream: &mut UpstreamStream,
    conn: &mut Conn,
    event_stream: bool,
) -> Result<std::io::Result<usize>, Stalled> {
    conn.ubuf.clear();
    let read_due = conn.slot.due_in(snap.upstream.read_timeout);
    let read = read_more(upstream, &mut conn.ubuf, READ_CHUNK);
    // A stream may stay quiet for minutes: notice a client that left and
    // close the upstream stream with it (MCP cancellation). The check is
    // armed only once the stream has been quiet for a moment: with io_uring
    // it is an operation of its own, cancelled whenever an event comes
    // first, which would double the cost of every event on a busy stream.
    // The moment is told by the connection's coarse deadline, like the read
    // timeout: an event costs no timer.
    let check_due = event_stream
        .then(|| conn.slot.due_in(CLIENT_CHECK_AFTER))
        .filter(|check| *check < read_due);
    let Some(check_due) = check_due else {
        return conn
            .slot
            .by(read_due, read)
            .await
            .map_err(|_| Stalled::Upstream);
    };
    let mut read = std::pin::pin!(read);
    if let Ok(got) = conn.slot.by(check_due, read.as_mut()).await {
        return Ok(got);
    }
    monoio::select! {
        got = conn.slot.by(read_due, read) => got.map_err(|_| Stalled::Upstream),
        () = client_gone(client) => {
            tracing::debug!(route = %route.name, "client left the event stream, closing upstream");
            Err(Stalled::ClientLeft)
        }
    }
}

const BAD_FRAMING: &str = "invalid upstream response framing";
const LIST_TOO_LARGE: &str = "list result too large to filter";
const ANSWER_TOO_LARGE: &str = "answer too large to filter or screen";
const EVENT_TOO_LARGE: &str = "event too large to screen";

/// The upstream broke its answer. Before the client's head went out (bad
/// framing in the first bytes) a 502 still answers it; after, the client can
/// only learn of it by the close (`None`), and the request counts as failed
/// with `reason` (its status stays the one the client got).
fn broken(
    route: &Route,
    conn: &mut Conn,
    head_sent: bool,
    reason: &'static str,
) -> Option<HttpError> {
    if !head_sent {
        return Some(HttpError::BadGateway(reason));
    }
    conn.outcome.decision = crate::metrics::Decision::Failed;
    conn.outcome.reason = reason;
    tracing::warn!(peer = %conn.client.peer, route = %route.name, status = conn.outcome.status, reason, "response cut off");
    None
}

/// What one exchange's relay works within.
#[derive(Clone, Copy)]
struct Exchange<'a> {
    worker: &'a Worker,
    snap: &'a Snapshot,
    route: &'a Route,
    req: &'a Request,
}

/// Give a cleanly finished upstream connection back to the pool.
fn pool_or_drop(
    worker: &Worker,
    snap: &Snapshot,
    route: &Route,
    head: &Head,
    source: &Source,
    upstream: UpstreamStream,
    conn: &mut Conn,
) {
    let clean = matches!(source, Source::Length(0) | Source::Chunked(_)) && conn.ubuf.is_empty();
    if head.upstream_keep_alive && clean && !worker.shared.shutting_down() {
        // Give the connection back a second before the upstream's own
        // announced keep-alive timeout, so neither side races the other.
        let announced = head
            .keep_alive_timeout
            .map_or(Duration::MAX, |t| Duration::from_secs(t.saturating_sub(1)));
        let keep = snap.upstream.pool_idle_timeout.min(announced);
        let max = snap.upstream.pool_max_idle;
        worker
            .pool
            .put(route.pool_key, upstream, max, keep, worker.now());
    }
    conn.ubuf.clear();
}

/// A complete upstream head, of `len` bytes.
enum Parsed {
    /// The final response; the client head is written into `conn.out`.
    Final(Head, usize),
    /// An interim 1xx response, skipped.
    Interim(usize),
}

/// Parse the buffered upstream head (`None` when incomplete). A plain
/// function, so the header array lives on the stack for this call only.
fn parse_head(
    worker: &Worker,
    route: &Route,
    req: &Request,
    conn: &mut Conn,
) -> Result<Option<Parsed>, Option<HttpError>> {
    let mut headers = [crate::http1::NO_HEADER; crate::proxy::request::MAX_HEADERS];
    let head = parse_response(
        &conn.ubuf,
        &mut headers,
        req.method == Method::Head,
        MAX_RESPONSE_HEAD,
    )
    .map_err(Some)?;
    let Some(r) = head else { return Ok(None) };
    if r.status == 101 {
        return Err(Some(HttpError::BadGateway("upstream switched protocols")));
    }
    if r.status < 200 {
        return Ok(Some(Parsed::Interim(r.head_len)));
    }
    if matches!(r.status, 401 | 403) && route.auth.as_ref().is_some_and(|a| a.oauth2.is_some()) {
        // The upstream refused the user's own token there: its challenge
        // is not the agent's business; portcullis answers with its own.
        return Err(Some(crate::proxy::inject::upstream_refused(
            worker, route, req, conn, r.status,
        )));
    }
    write_client_head(&r, req.id.as_bytes(), &mut conn.out)?;
    conn.outcome.status = r.status;
    conn.outcome.upstream = conn.outcome.upstream_sent.map(|t| {
        (
            r.status,
            u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
        )
    });
    conn.outcome.decision = crate::metrics::Decision::Allowed;
    let minted = (200..300).contains(&r.status) && !req.in_session;
    if let (Some(p), true) = (&req.principal, minted) {
        // A session minted for an authenticated caller is theirs alone.
        if let Some(h) = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("mcp-session-id"))
        {
            worker.shared.sessions.bind(&route.name, h.value, p);
        }
    }
    let head = Head {
        body: r.body,
        upstream_keep_alive: r.keep_alive,
        keep_alive_timeout: r.keep_alive_timeout,
        event_stream: r.event_stream,
        encoded: r.encoded,
    };
    Ok(Some(Parsed::Final(head, r.head_len)))
}

/// How long an event stream may be quiet before each wait for its next
/// event also watches for the client leaving.
const CLIENT_CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves only when the client has closed (or reset) its connection; a
/// client that sends bytes instead is not "gone" and this never resolves.
/// Only a poll for readiness: no client bytes are consumed. (A TLS client's
/// socket is hidden behind the TLS stream; its departure shows on the next
/// write.)
async fn client_gone(client: &ClientStream) {
    if let Some(tcp) = client.plain_tcp() {
        if tcp.readable(false).await.is_ok() && crate::sys::peek(tcp) == crate::sys::Peek::Closed {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Read and check the response head (skipping interim 1xx responses) and
/// write the client's head, without framing and final CRLF, into `conn.out`.
async fn read_head(
    worker: &Worker,
    route: &Route,
    snap: &Snapshot,
    req: &Request,
    upstream: &mut UpstreamStream,
    conn: &mut Conn,
) -> Result<Head, Option<HttpError>> {
    // Taken only when the head needs another read.
    let mut due = None;
    loop {
        let parsed = parse_head(worker, route, req, conn)?;
        match parsed {
            Some(Parsed::Final(head, len)) => {
                conn.ubuf.drain(..len);
                return Ok(head);
            }
            Some(Parsed::Interim(interim_len)) => {
                conn.ubuf.drain(..interim_len);
                continue;
            }
            None => {}
        }
        let by =
            *due.get_or_insert_with(|| conn.slot.due_in(snap.upstream.response_header_timeout));
        match conn
            .slot
            .by(
                by,
                read_more(upstream, &mut conn.ubuf, MAX_RESPONSE_HEAD + 1),
            )
            .await
        {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                return Err(Some(HttpError::BadGateway(
                    "upstream closed the connection",
                )))
            }
            Err(_) => return Err(Some(HttpError::GatewayTimeout)),
        }
    }
}

/// Write the client's response head for upstream head `r` into `out`, without
/// framing of chunked bodies and without the final CRLF: status line, the
/// upstream's end-to-end headers, the request id, Content-Length when known.
pub fn write_client_head(
    r: &ResponseHead<'_>,
    request_id: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Option<HttpError>> {
    let options = ConnectionOptions::collect(r.headers).ok_or(Some(HttpError::BadGateway(
        "too many upstream Connection options",
    )))?;
    out.clear();
    // httparse takes exactly three digits for the status.
    let digit = |d: u16| b'0' + (r.status / d % 10) as u8;
    let mut line = *b"HTTP/1.1 000 ";
    line[9..12].copy_from_slice(&[digit(100), digit(10), digit(1)]);
    out.extend_from_slice(&line);
    out.extend_from_slice(r.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    crate::http1::copy_header_lines(r.raw, r.headers, out, |h| {
        let keep_length = r.body == BodyKind::Empty
            && r.status != 204
            && crate::http1::name_is(h.name.as_bytes(), b"content-length");
        !((dropped_in_response(h.name) && !keep_length) || options.contains(h.name))
    });
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(request_id);
    if let BodyKind::Length(n) = r.body {
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_u64(out, n);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}
