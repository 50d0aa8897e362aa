//! Upstream response heads: parsed with httparse and judged as strictly as
//! requests. An upstream response with invalid framing becomes a 502 and the
//! upstream connection is closed.

use super::{has_bare_lf, parse_content_length, trim_ows};
use crate::error::HttpError;

/// How the upstream response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Ends when the upstream closes the connection.
    UntilClose,
}

/// The facts of an upstream response head that the relay needs.
#[derive(Debug)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub body: BodyKind,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
    pub event_stream: bool,
    /// A `Content-Encoding` other than identity.
    pub encoded: bool,
    /// `Keep-Alive: timeout=N` announced by the upstream, in seconds.
    pub keep_alive_timeout: Option<u64>,
    pub head_len: usize,
    pub headers: &'b [httparse::Header<'b>],
    /// The head's bytes, which `headers` point into
    /// (`http1::copy_header_lines` copies lines from them).
    pub raw: &'b [u8],
}

pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    request_was_head: bool,
    max_bytes: usize,
) -> Result<Option<ResponseHead<'b>>, HttpError>
where
    'h: 'b,
{
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut resp, buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
            return Err(HttpError::BadGateway("upstream response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::BadGateway("malformed upstream response")),
    };
    if has_bare_lf(&buf[..head_len]) {
        return Err(HttpError::BadGateway("bare CR or LF in upstream response"));
    }
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut event_stream = false;
    let mut keep_alive_timeout = None;
    let mut encoded = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        // `name_is` compares lengths first: a field is compared with at
        // most one or two of these names (a case-blind comparison each cost
        // a few dozen instructions).
        let is = |lower: &[u8]| super::name_is(n, lower);
        if is(b"content-length") {
            let n = parse_content_length(h.value)
                .ok_or(HttpError::BadGateway("invalid upstream Content-Length"))?;
            if length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadGateway("differing upstream Content-Length"));
            }
            length = Some(n);
        } else if is(b"transfer-encoding") {
            if te {
                return Err(HttpError::BadGateway("repeated upstream Transfer-Encoding"));
            }
            te = true;
            chunked = trim_ows(h.value).eq_ignore_ascii_case(b"chunked");
        } else if is(b"connection") {
            super::apply_connection(h.value, http11, &mut keep_alive);
        } else if is(b"keep-alive") {
            keep_alive_timeout = h
                .value
                .split(|&b| b == b',')
                .map(trim_ows)
                .find_map(|p| p.strip_prefix(b"timeout=").and_then(parse_content_length));
        } else if is(b"content-type") {
            let v = trim_ows(h.value);
            event_stream = v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream");
        } else if is(b"content-encoding") {
            encoded |= !trim_ows(h.value).eq_ignore_ascii_case(b"identity");
        }
    }
    let body = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        BodyKind::Empty
    } else if te && length.is_some() {
        return Err(HttpError::BadGateway(
            "upstream sent Content-Length and Transfer-Encoding",
        ));
    } else if te && !chunked {
        return Err(HttpError::BadGateway(
            "unsupported upstream Transfer-Encoding",
        ));
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        keep_alive = false;
        BodyKind::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        body,
        keep_alive,
        event_stream,
        encoded,
        keep_alive_timeout,
        head_len,
        headers: resp.headers,
        raw: &buf[..head_len],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Facts = (u16, BodyKind, bool, bool);

    fn parse(raw: &[u8], head: bool) -> Result<Option<Facts>, HttpError> {
        let mut h = [crate::http1::NO_HEADER; 32];
        parse_response(raw, &mut h, head, 16384)
            .map(|r| r.map(|r| (r.status, r.body, r.keep_alive, r.event_stream)))
    }

    #[test]
    fn framing_table() {
        use BodyKind::*;
        let cases: &[(&[u8], bool, Option<Facts>)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, Some((200, Length(5), true, false))),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n", false, Some((200, Chunked, true, true))),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Some((200, UntilClose, false, false))),
            (b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", false, Some((202, Length(0), true, false))),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, Some((204, Empty, true, false))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Some((200, Empty, true, false))),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false, Some((200, Length(5), false, false))),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n", false, Some((200, Length(5), false, false))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false, None),
        ];
        let mut h = [crate::http1::NO_HEADER; 8];
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: max=100, timeout=5\r\nContent-Length: 0\r\n\r\n",
            &mut h,
            false,
            1024,
        );
        assert_eq!(r.unwrap().unwrap().keep_alive_timeout, Some(5));
        for (raw, head, want) in cases {
            assert_eq!(
                parse(raw, *head).unwrap(),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                parse(raw, false).is_err(),
                "accepted {}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
