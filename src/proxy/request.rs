//! Reading a request head: wait for its first byte (header or idle timeout),
//! read until it is complete, parse it strictly (`http1::parse`), then answer
//! it locally (`wellknown`) or admit it (`admit`) and write the upstream head
//! (`upstream::head`), all while the head is borrowed from the read buffer.

use crate::error::HttpError;
use crate::http1::{parse_request, Framing, Lower};
use crate::proxy::admit::{admit, request_id, Request};
use crate::proxy::conn::Conn;
use crate::proxy::reject::Reject;
use crate::proxy::stream::{read_after_idle, read_held, read_more, ClientStream, Held};
use crate::proxy::worker::Worker;
use crate::snapshot::route::Route;
use crate::snapshot::Snapshot;

/// Upper bound on header fields httparse is given room for.
pub(crate) const MAX_HEADERS: usize = 256;

/// What a parsed head leads to.
pub enum Step {
    Forward(Request),
    Refuse(Reject),
    /// Answered by portcullis itself (`wellknown`), the response in
    /// `conn.out`; whether the connection closes after it.
    Answered(bool),
    /// For the built-in authorization server (`handoff`).
    Authz(crate::proxy::handoff::Pending),
}

/// Wait for the first byte of the next request: `header_timeout` on a fresh
/// connection, `idle_timeout` between keep-alive requests.
/// The current snapshot is read for its limits, not held: the request that
/// comes is served by the snapshot current then.
pub(crate) async fn wait(worker: &Worker, client: &mut ClientStream, conn: &mut Conn) -> Waited {
    if !conn.buf.is_empty() {
        return Waited::Ready;
    }
    let (wait, max) = worker.peek_snapshot(|snap| {
        let wait = if conn.served == 0 {
            snap.limits.header_timeout.0
        } else {
            snap.limits.idle_timeout.0
        };
        (wait, snap.limits.max_header_bytes + 1)
    });
    match read_held(
        client,
        &mut conn.buf,
        max,
        wait,
        &conn.slot,
        &mut conn.canceller,
    )
    .await
    {
        Held::Read(Ok(n)) if n > 0 => Waited::Ready,
        Held::Read(_) => Waited::Gone,
        Held::LetGo(left) => Waited::Idle(left),
    }
}

/// What waiting for a request came to.
pub(crate) enum Waited {
    /// Bytes of it are in the connection's buffer.
    Ready,
    /// The held read was let go: wait up to this long more with [`idle`].
    Idle(std::time::Duration),
    /// Closed, failed or timed out.
    Gone,
}

/// After [`wait`] let its read go: wait up to `left` for the client's
/// next bytes, holding no buffer meanwhile. `false`: gone.
pub(crate) async fn idle(
    worker: &Worker,
    client: &mut ClientStream,
    conn: &mut Conn,
    left: std::time::Duration,
) -> bool {
    let max = worker.peek_snapshot(|snap| snap.limits.max_header_bytes + 1);
    matches!(read_after_idle(client, &mut conn.buf, max, left, &conn.slot).await, Ok(n) if n > 0)
}

/// Read until a complete head is parsed, then admit it. `Err(None)`: the
/// client went away, close without an answer.
pub(crate) async fn read_head(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
) -> Result<Step, Option<Reject>> {
    // Taken only when the head needs another read (most arrive in one).
    let mut due = None;
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
        if let Some((step, head_len)) = parse(worker, snap, conn).map_err(local)? {
            // The head is consumed whatever the outcome: a request answered
            // locally on a kept-alive connection must not be read again.
            conn.buf.drain(..head_len);
            return Ok(step);
        }
        let max = snap.limits.max_header_bytes + 1;
        let by = *due.get_or_insert_with(|| conn.slot.due_in(snap.limits.header_timeout.0));
        match conn
            .slot
            .by(by, read_more(client, &mut conn.buf, max))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
            Ok(Ok(_)) => {}
            Err(_) => return Err(local(HttpError::RequestTimeout)),
        }
    }
}

/// Parse the buffered head and, when complete, answer or admit it (with the
/// head's length). A plain function, so the header array lives on the stack
/// for this call only, not in every connection's future.
pub fn parse(
    worker: &Worker,
    snap: &Snapshot,
    conn: &mut Conn,
) -> Result<Option<(Step, usize)>, HttpError> {
    let mut headers = [crate::http1::NO_HEADER; MAX_HEADERS];
    let n = snap.head_limits.max_headers.clamp(1, MAX_HEADERS);
    let Some(head) = parse_request(&conn.buf, &mut headers[..n], &snap.head_limits)? else {
        return Ok(None);
    };
    let tls = conn.client.tls;
    if let Some(close) =
        crate::proxy::wellknown::answer(snap, &worker.shared.signer, &head, tls, &mut conn.out)
    {
        return Ok(Some((Step::Answered(close), head.head_len)));
    }
    let id = request_id(worker, &head);
    conn.outcome.request_id = id;
    match crate::proxy::handoff::claim(worker, snap, &head, tls, conn.client.peer.ip()) {
        Some(Ok(pending)) => return Ok(Some((Step::Authz(pending), head.head_len))),
        Some(Err(rej)) => return Ok(Some((Step::Refuse(Reject { id, ..rej }), head.head_len))),
        None => {}
    }
    let (route, req) = match admit(worker, snap, &head, (tls, conn.client.peer.ip()), id) {
        Ok(admitted) => admitted,
        Err(rej) => return Ok(Some((Step::Refuse(rej), head.head_len))),
    };
    conn.outcome.route = Some(req.route);
    if let Err(err) =
        crate::proxy::upstream::head::write(worker, route, &head, &conn.client, &req, &mut conn.up)
    {
        let rej = Reject {
            err,
            mcp: route.mcp,
            close: err.must_close() || head.framing != Framing::None || !head.keep_alive,
            id,
            detail: None,
            route: u32::try_from(route.index).ok(),
        };
        return Ok(Some((Step::Refuse(rej), head.head_len)));
    }
    if let Some(sink) = &worker.shared.audit {
        let a = &mut conn.judged.audit;
        a.principal = req.principal.clone();
        a.era = req.mcp_head.version;
        a.session = head
            .header(const { Lower::new("mcp-session-id") })
            .map(|s| conn.session_hash.get(s, sink));
    }
    if route.policy_reads_headers {
        conn.head_copy.clear();
        conn.head_copy.extend_from_slice(&conn.buf[..head.head_len]);
    }
    Ok(Some((Step::Forward(req), head.head_len)))
}

/// The header fields a route's policy reads (`header` criteria): the copied
/// head's, parsed into `space`, when it has such criteria, else none.
pub(crate) fn policy_headers<'h, 'b>(
    route: &Route,
    head_copy: &'b [u8],
    space: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> &'h [httparse::Header<'b>] {
    if route.policy_reads_headers {
        reparse_headers(head_copy, space)
    } else {
        &[]
    }
}

/// The header fields of a copied request head (for `header` criteria).
pub(crate) fn reparse_headers<'h, 'b>(
    head: &'b [u8],
    space: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> &'h [httparse::Header<'b>] {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, space) {
        Ok(httparse::Status::Complete(_)) => req.headers,
        _ => &[],
    }
}
