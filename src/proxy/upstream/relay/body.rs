//! A response body on its way: where it is in its framing (`Source`), and
//! how its bytes pass from the upstream buffer to the client's output,
//! unchanged or rewritten, filtered, screened and chunk-framed (`Reframe`).

use super::*;

/// How body bytes pass from the upstream buffer to the client's output.
#[derive(Default)]
pub(super) struct Reframe {
    /// The legacy SSE `endpoint` event, rewritten to the public path.
    pub(super) rewriter: Option<EndpointRewriter>,
    /// A list request's answer on an event stream, filtered event by event.
    pub(super) sse_filter: Option<(ListFilter, SseListFilter)>,
    /// An event stream screened event by event (`screen`).
    pub(super) screen: Option<(
        std::sync::Arc<crate::screen::Screen>,
        crate::proxy::screen::Events,
    )>,
    pub(super) client_chunked: bool,
    /// Scratch for bytes being changed.
    pub(super) data: Vec<u8>,
    /// The answer's first bytes were read for a JSON-RPC error, when the
    /// baseline awaits it (`baseline::rpc_error`).
    pub(super) sniffed: bool,
}

impl Reframe {
    /// Move what the upstream buffer holds into `conn.out`: directly when
    /// the bytes pass unchanged, else through the rewriter, the filter and
    /// chunk framing. `Ok(true)` when the body ended; `Err`: why it broke.
    pub(super) fn take(
        &mut self,
        worker: &Worker,
        route: &Route,
        req: &Request,
        conn: &mut Conn,
        source: &mut Source,
    ) -> Result<bool, &'static str> {
        if !self.sniffed && !conn.ubuf.is_empty() && conn.judged.awaiting.is_some() {
            self.sniffed = true;
            conn.judged.rpc_error = crate::proxy::baseline::rpc_error(&conn.ubuf);
        }
        if self.rewriter.is_none()
            && self.sse_filter.is_none()
            && self.screen.is_none()
            && !self.client_chunked
        {
            return source
                .take(&mut conn.ubuf, &mut conn.out)
                .map_err(|_| BAD_FRAMING);
        }
        let done = source
            .take(&mut conn.ubuf, &mut self.data)
            .map_err(|_| BAD_FRAMING)?;
        if let Some(rw) = self.rewriter.as_mut() {
            let mut rewritten = Vec::with_capacity(self.data.len());
            rw.feed(&|url| route.public_url(url), &self.data, &mut rewritten);
            if done {
                rw.finish(&mut rewritten);
            }
            self.data = rewritten;
        }
        if let Some((filter, state)) = self.sse_filter.as_mut() {
            self.data = filter_events(worker, route, req, conn, state, filter, &self.data)
                .map_err(|_| LIST_TOO_LARGE)?;
            if done {
                state.finish(&mut self.data);
            }
        }
        if let Some((screen, events)) = self.screen.as_mut() {
            let mut screened = Vec::with_capacity(self.data.len());
            events
                .feed(
                    screen,
                    route.screen_counts.as_deref(),
                    &self.data,
                    &mut screened,
                    &mut conn.judged.audit.screen,
                )
                .map_err(|_| EVENT_TOO_LARGE)?;
            if done {
                events.finish(&mut screened);
            }
            self.data = screened;
        }
        if self.client_chunked {
            encode_chunk(&mut conn.out, &self.data);
            if done {
                conn.out.extend_from_slice(LAST_CHUNK);
            }
        } else {
            // An HTTP/1.0 client: the body ends when the connection closes.
            conn.out.extend_from_slice(&self.data);
        }
        self.data.clear();
        Ok(done)
    }
}

/// Where the response body is in its framing.
pub(super) enum Source {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// A close-delimited body whose upstream has closed.
    Ended,
}

impl Source {
    /// Where a body framed as `body` starts.
    pub(super) fn of(body: BodyKind) -> Source {
        match body {
            BodyKind::Empty => Source::Length(0),
            BodyKind::Length(n) => Source::Length(n),
            BodyKind::Chunked => Source::Chunked(ChunkedDecoder::new()),
            BodyKind::UntilClose => Source::UntilClose,
        }
    }

    /// Move body bytes from `buf` into `data`; `Ok(true)` when the body ended.
    /// Bytes past the end stay in `buf` (they make the connection unusable).
    pub(super) fn take(&mut self, buf: &mut Vec<u8>, data: &mut Vec<u8>) -> Result<bool, ()> {
        match self {
            Source::Length(remaining) => {
                let n = (buf.len() as u64).min(*remaining) as usize;
                data.extend_from_slice(&buf[..n]);
                buf.drain(..n);
                *remaining -= n as u64;
                Ok(*remaining == 0)
            }
            Source::Chunked(dec) => {
                let mut pos = 0;
                while pos < buf.len() && !dec.is_done() {
                    let p = dec.decode(&buf[pos..]).map_err(|_| ())?;
                    data.extend_from_slice(&buf[pos + p.data.start..pos + p.data.end]);
                    pos += p.consumed;
                }
                buf.drain(..pos);
                Ok(dec.is_done())
            }
            Source::UntilClose => {
                data.append(buf);
                Ok(false)
            }
            Source::Ended => Ok(true),
        }
    }
}
