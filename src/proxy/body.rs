//! Request bodies: held whole in memory when bounded (always on MCP routes,
//! which are decoded in full before anything is sent), else left to stream
//! to the upstream once judged, re-framed, under the body limit and the body
//! timeout. `Expect: 100-continue` is answered before the first body read.

use crate::error::HttpError;
use crate::http1::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http1::Framing;
use crate::proxy::admit::Request;
use crate::proxy::conn::Conn;
use crate::proxy::stream::{read_more, write_all, ClientStream, UpstreamStream};
use crate::snapshot::Snapshot;

/// Bodies up to this size are held whole in memory on plain routes (MCP
/// routes hold bodies up to the body limit: they are decoded in full).
const HELD_BODY_MAX: u64 = 64 * 1024;

/// A request body, as far as it was read before judging.
pub enum Body {
    /// The request has none.
    Empty,
    /// Whole: the first `n` bytes of `conn.buf`.
    Buffered(usize),
    /// Whole, decoded from its chunked framing (consumed from `conn.buf`).
    Decoded(Vec<u8>),
    /// Still to come from the client, in this framing. Never on MCP routes.
    Unread(Framing),
}

/// Read the body as far as it is held: on MCP routes to its end (413 past
/// the body limit); on plain routes when it is small, or chunked and already
/// complete in the buffer.
pub(crate) async fn read(
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
) -> Result<Body, Option<HttpError>> {
    let max_body = snap.limits.max_body_bytes;
    let hold = if req.mcp {
        max_body
    } else {
        HELD_BODY_MAX.min(max_body)
    };
    Ok(match req.framing {
        Framing::None => Body::Empty,
        Framing::Length(n) if n <= hold => {
            fill_body(snap, client, conn, req, n as usize).await?;
            Body::Buffered(n as usize)
        }
        Framing::Length(n) => Body::Unread(Framing::Length(n)),
        Framing::Chunked => match hold_chunked(snap, client, conn, req).await? {
            Some(data) => Body::Decoded(data),
            None => Body::Unread(Framing::Chunked),
        },
    })
}

/// End the upstream head with the framing of a held body of `n` bytes.
pub(crate) fn push_length(up: &mut Vec<u8>, n: u64) {
    up.extend_from_slice(b"Content-Length: ");
    crate::http1::encode::push_u64(up, n);
    up.extend_from_slice(b"\r\n\r\n");
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
    match conn
        .slot
        .within(
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

/// Stream the rest of a request body from the client to the upstream,
/// re-framing chunked bodies, enforcing the body limit and body timeout.
pub(crate) async fn stream(
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
            let limit = snap.limits.write_timeout.0;
            match conn
                .slot
                .within(limit, write_all(upstream, &mut chunk))
                .await
            {
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
