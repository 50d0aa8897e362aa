//! Answers held whole or rewritten on the way: list answers filtered by
//! the caller's visibility test (the route's policy and its pinning), a JSON
//! answer read whole (bounded) to filter or screen it.

use super::*;

/// Call `f` with a visibility test for list items: the route's policy, on
/// the request's facts (no call, no arguments), and its pinning (the pinned
/// set loaded once; what is not pinned yet reported afterwards). A plain
/// function, so the header array lives on the stack for this call only.
pub(super) fn with_visible<R>(
    worker: &Worker,
    route: &Route,
    req: &Request,
    conn: &Conn,
    f: impl FnOnce(&mut dyn Visible) -> R,
) -> R {
    let mut space = [crate::http1::NO_HEADER; crate::proxy::request::MAX_HEADERS];
    let headers = crate::proxy::request::policy_headers(route, &conn.head_copy, &mut space);
    let base = req.facts(conn.client.peer.ip(), headers);
    let pinned = worker.shared.pins.load();
    let mut lister = crate::proxy::pin::Lister::new(route, &base, &pinned);
    let out = f(&mut lister);
    crate::proxy::pin::send(&worker.shared, std::mem::take(&mut lister.reports));
    out
}

/// A whole JSON list answer, filtered (`None`: pass it as it is).
pub(super) fn filter_body(
    worker: &Worker,
    route: &Route,
    req: &Request,
    conn: &Conn,
    filter: &ListFilter,
    body: &[u8],
) -> Option<Vec<u8>> {
    with_visible(worker, route, req, conn, |visible| {
        filter_message(filter, body, visible).map(|(body, _)| body)
    })
}

/// The next piece of an event stream, filtered.
pub(super) fn filter_events(
    worker: &Worker,
    route: &Route,
    req: &Request,
    conn: &Conn,
    state: &mut SseListFilter,
    filter: &ListFilter,
    data: &[u8],
) -> Result<Vec<u8>, ()> {
    let mut out = Vec::with_capacity(data.len());
    with_visible(worker, route, req, conn, |visible| {
        state.feed(filter, data, &mut out, visible)
    })?;
    Ok(out)
}

/// Remove the `Content-Length` line `write_client_head` wrote last.
pub(super) fn strip_content_length(out: &mut Vec<u8>) {
    const NAME: &[u8] = b"Content-Length: ";
    if let Some(at) = out.windows(NAME.len()).rposition(|w| w == NAME) {
        out.truncate(at);
    }
}

/// Relay a JSON answer to a list request: read it whole (bounded), keep the
/// items the caller may use, send it with its new length.
pub(super) async fn filtered_json(
    exchange: &Exchange<'_>,
    client: &mut ClientStream,
    mut upstream: UpstreamStream,
    conn: &mut Conn,
    head: Head,
    list: Option<ListFilter>,
) -> Result<Next, Option<HttpError>> {
    let Exchange {
        worker,
        snap,
        route,
        req,
    } = *exchange;
    let mut source = Source::of(head.body);
    let mut body = Vec::new();
    loop {
        let done = source
            .take(&mut conn.ubuf, &mut body)
            .map_err(|_| Some(HttpError::BadGateway(BAD_FRAMING)))?;
        if done {
            break;
        }
        if body.len() > MAX_LIST_BYTES {
            return Err(Some(HttpError::BadGateway(ANSWER_TOO_LARGE)));
        }
        conn.ubuf.clear();
        let limit = snap.upstream.read_timeout;
        match conn
            .slot
            .within(limit, read_more(&mut upstream, &mut conn.ubuf, READ_CHUNK))
            .await
        {
            Ok(Ok(0)) if matches!(source, Source::UntilClose) => source = Source::Ended,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                return Err(Some(HttpError::BadGateway(
                    "upstream closed the connection",
                )))
            }
            Err(_) => return Err(Some(HttpError::GatewayTimeout)),
        }
    }
    if conn.judged.awaiting.is_some() {
        conn.judged.rpc_error = crate::proxy::baseline::rpc_error(&body);
    }
    if let Some(new) = list
        .as_ref()
        .and_then(|f| filter_body(worker, route, req, conn, f, &body))
    {
        body = new;
    }
    if let Some(screen) = route.screen.as_deref().filter(|_| req.mcp) {
        let screened = crate::proxy::screen::message(
            screen,
            route.screen_counts.as_deref(),
            &body,
            crate::screen::Direction::Response,
            &mut conn.judged.audit.screen,
        );
        if let crate::proxy::screen::Screened::Changed(new) = screened {
            body = new;
        }
    }
    if matches!(head.body, BodyKind::Length(_)) {
        strip_content_length(&mut conn.out);
    }
    let keep_client = req.keep_alive && !worker.shared.shutting_down();
    if head.body != BodyKind::Empty {
        conn.out.extend_from_slice(b"Content-Length: ");
        push_u64(&mut conn.out, body.len() as u64);
        conn.out.extend_from_slice(b"\r\n");
    }
    if !keep_client {
        conn.out.extend_from_slice(b"Connection: close\r\n");
    }
    conn.out.extend_from_slice(b"\r\n");
    conn.out.extend_from_slice(&body);
    let limit = snap.limits.write_timeout.0;
    match conn
        .slot
        .within(limit, write_all(client, &mut conn.out))
        .await
    {
        Ok(Ok(())) => {}
        _ => return Err(None),
    }
    pool_or_drop(worker, snap, route, &head, &source, upstream, conn);
    Ok(if keep_client {
        Next::KeepAlive
    } else {
        Next::Close
    })
}
