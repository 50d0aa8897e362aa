//! Request-head parsing (httparse, borrowed from the read buffer) plus the strict
//! framing rules of SECURITY.md. Produces a `RequestHead` or an `HttpError` that
//! says which status to answer with; it never allocates.

use super::{has_bare_lf, is_tchar, parse_content_length, trim_ows, Lower};
use crate::error::HttpError;

/// Limits that apply while parsing a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_target_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_target_bytes: 8 * 1024,
        }
    }
}

/// Methods portcullis forwards. Anything else is answered with 501.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Option<Method> {
        Some(match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
        }
    }
}

/// How the request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head borrowing from the read buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: Method,
    /// The path and query (origin-form; absolute-form is reduced to it). Never
    /// holds a fragment.
    pub path: &'b str,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub http11: bool,
    /// Host (from the Host header, or the authority of an absolute-form target).
    pub host: &'b str,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Length of the head in bytes, including the final CRLF CRLF.
    pub head_len: usize,
    pub headers: &'b [httparse::Header<'b>],
    /// The head's bytes, which `headers` point into
    /// (`http1::copy_header_lines` copies lines from them).
    pub raw: &'b [u8],
}

impl RequestHead<'_> {
    /// The value of the first header field named `name`.
    pub fn header(&self, name: Lower) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| super::name_is(h.name.as_bytes(), name.0))
            .map(|h| h.value)
    }
}

/// Parse one request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (read more, unless the buffer
/// has reached `max_header_bytes`, which `head_too_large` turns into an error).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    limits: &HeadLimits,
) -> Result<Option<RequestHead<'b>>, HttpError>
where
    'h: 'b,
{
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, headers) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) if is_version_only_error(buf) => {
            return Err(HttpError::BadVersion)
        }
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if buf.len() >= limits.max_header_bytes {
                return Err(head_too_large(buf, limits));
            }
            return Ok(None);
        }
    };
    if head_len > limits.max_header_bytes {
        return Err(head_too_large(buf, limits));
    }
    if has_bare_lf(&buf[..head_len]) {
        return Err(HttpError::BadRequest("bare CR or LF in request head"));
    }
    // httparse skips empty lines before the request line; we do not accept them
    // beyond the single CRLF RFC 9112 tolerates.
    if buf.starts_with(b"\r\n\r\n") {
        return Err(HttpError::BadRequest("empty lines before request line"));
    }
    let http11 = match req.version {
        Some(1) => true,
        Some(0) => false,
        _ => return Err(HttpError::BadVersion),
    };
    let method = method_of(req.method.unwrap_or(""))?;
    let target = req.path.unwrap_or("");
    if target.len() > limits.max_target_bytes {
        return Err(HttpError::UriTooLong);
    }
    // RFC 9112 §3.2: the request-target has no fragment (a client strips it);
    // forwarding one would leave the upstream to decide what it means.
    // (A byte search: `str::contains(char)` costs a few hundred instructions.)
    if target.as_bytes().contains(&b'#') {
        return Err(HttpError::BadRequest("fragment in request target"));
    }
    let headers: &'b [httparse::Header<'b>] = req.headers;

    let HeaderFacts {
        host,
        host_count,
        content_length,
        te,
        keep_alive,
        expect_continue,
    } = header_facts(headers, http11)?;
    let framing = framing(content_length, te.chunked()?, http11)?;
    // A body on GET or HEAD has no defined meaning and peers disagree on
    // whether to read it: never forward one.
    if matches!(method, Method::Get | Method::Head) && framing != Framing::None {
        return Err(HttpError::BadRequest("GET or HEAD with a body"));
    }

    // Request target: origin-form, or absolute-form whose authority must agree
    // with Host.
    let (path, target_host) = split_target(target)?;
    let host = choose_host(host, host_count, target_host, http11)?;
    if !valid_host(host) {
        return Err(HttpError::BadHost);
    }
    if has_dot_segment(path) {
        return Err(HttpError::BadRequest("dot segment in request path"));
    }
    Ok(Some(RequestHead {
        method,
        path,
        http11,
        host,
        framing,
        keep_alive,
        expect_continue,
        head_len,
        headers,
        raw: &buf[..head_len],
    }))
}

/// What the header fields say about host, framing and the connection.
struct HeaderFacts<'b> {
    host: Option<&'b str>,
    host_count: usize,
    content_length: Option<u64>,
    te: TeList,
    keep_alive: bool,
    expect_continue: bool,
}

/// Read the header fields that decide host, framing and the connection;
/// refuse obfuscated or conflicting ones.
fn header_facts<'b>(
    headers: &'b [httparse::Header<'b>],
    http11: bool,
) -> Result<HeaderFacts<'b>, HttpError> {
    let mut host: Option<&'b str> = None;
    let mut host_count = 0usize;
    let mut content_length: Option<u64> = None;
    let mut te = TeList::default();
    let mut keep_alive = http11;
    let mut expect_continue = false;
    for h in headers {
        // httparse has already checked that the name is a token and that the
        // value holds no CTL (so no CR, LF or NUL): the table tests prove it.
        // By length first: one comparison at most for most names.
        let name = h.name.as_bytes();
        let is = |exact: &[u8]| super::name_is(name, exact);
        match name.len() {
            4 if is(b"host") => {
                host_count += 1;
                // Only ASCII passes `valid_host` later.
                host = Some(crate::sys::ascii_str(trim_ows(h.value)).ok_or(HttpError::BadHost)?);
            }
            6 if is(b"expect") => {
                if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                    return Err(HttpError::ExpectationFailed);
                }
                expect_continue = http11;
            }
            10 if is(b"connection") => super::apply_connection(h.value, http11, &mut keep_alive),
            14 if is(b"content-length") => {
                let n = parse_content_length(h.value)
                    .ok_or(HttpError::BadRequest("invalid Content-Length"))?;
                if content_length.replace(n).is_some() {
                    return Err(HttpError::BadRequest("multiple Content-Length"));
                }
            }
            17 if is(b"transfer-encoding") => te.add(h.value)?,
            13..=32
                if looks_like(name, b"contentlength")
                    || name.len() >= 16 && looks_like(name, b"transferencoding") =>
            {
                return Err(HttpError::BadRequest("obfuscated framing header name"));
            }
            _ => {}
        }
    }
    Ok(HeaderFacts {
        host,
        host_count,
        content_length,
        te,
        keep_alive,
        expect_continue,
    })
}

/// How the body is framed: by Content-Length or chunked, never both (and
/// never chunked on HTTP/1.0).
fn framing(
    content_length: Option<u64>,
    transfer_encoding: bool,
    http11: bool,
) -> Result<Framing, HttpError> {
    match (content_length, transfer_encoding) {
        (Some(_), true) => Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        )),
        (None, true) if !http11 => Err(HttpError::BadRequest("Transfer-Encoding on HTTP/1.0")),
        (None, true) => Ok(Framing::Chunked),
        (Some(0), false) | (None, false) => Ok(Framing::None),
        (Some(n), false) => Ok(Framing::Length(n)),
    }
}

/// The request's method; CONNECT and TRACE are refused as not allowed, any
/// other unknown one as not implemented.
fn method_of(text: &str) -> Result<Method, HttpError> {
    let method_bytes = text.as_bytes();
    match Method::from_bytes(method_bytes) {
        Some(m) => Ok(m),
        None if method_bytes == b"CONNECT" || method_bytes == b"TRACE" => {
            Err(HttpError::MethodNotAllowed)
        }
        None => Err(HttpError::NotImplemented("method not supported")),
    }
}

/// The one host of a request: its Host header, which an absolute-form
/// target must agree with (HTTP/1.0 may name it in the target only).
fn choose_host<'b>(
    host: Option<&'b str>,
    host_count: usize,
    target_host: Option<&'b str>,
    http11: bool,
) -> Result<&'b str, HttpError> {
    if host_count > 1 {
        return Err(HttpError::BadRequest("duplicate Host header"));
    }
    match (host, target_host) {
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => Err(HttpError::BadRequest(
            "Host does not match the request target",
        )),
        (Some(h), _) => Ok(h),
        (None, Some(t)) if !http11 => Ok(t),
        (None, _) => Err(HttpError::BadRequest("missing Host header")),
    }
}

/// httparse reports a space inside the target as a bad version; only a
/// well-formed request line with an unsupported `HTTP/x.y` deserves 505.
fn is_version_only_error(buf: &[u8]) -> bool {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (_, _, version, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    rest.is_none()
        && version.is_some_and(|v| {
            v.len() == 8
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit()
        })
}

/// A head that did not fit: 414 when even the request line did not, else 431.
fn head_too_large(buf: &[u8], limits: &HeadLimits) -> HttpError {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i < limits.max_header_bytes => HttpError::HeadersTooLarge,
        _ => HttpError::UriTooLong,
    }
}

/// `Transfer_Encoding`, `Content--Length` and friends: names that a lenient
/// peer might read as a framing header once separators are normalised.
/// `canonical` is the lower-case name without separators.
fn looks_like(name: &[u8], canonical: &[u8]) -> bool {
    let mut letters = name.iter().filter(|&&b| b != b'-' && b != b'_');
    canonical
        .iter()
        .all(|&c| letters.next().is_some_and(|b| b.to_ascii_lowercase() == c))
        && letters.next().is_none()
}

/// The transfer codings of all Transfer-Encoding fields, in order.
#[derive(Default)]
struct TeList {
    codings: usize,
    chunked_at: Option<usize>,
    chunked_count: usize,
}

impl TeList {
    /// Add one field value: a comma-separated list of `token *( OWS ";" OWS
    /// parameter )`. Anything else is malformed (400).
    fn add(&mut self, value: &[u8]) -> Result<(), HttpError> {
        let malformed = HttpError::BadRequest("malformed Transfer-Encoding");
        for element in value.split(|&b| b == b',') {
            let element = trim_ows(element);
            if element.is_empty() {
                return Err(malformed);
            }
            let mut parts = element.split(|&b| b == b';');
            let coding = trim_ows(parts.next().unwrap_or_default());
            if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                return Err(malformed);
            }
            let has_params = parts.next().is_some();
            if coding.eq_ignore_ascii_case(b"chunked") {
                if has_params {
                    return Err(HttpError::NotImplemented(
                        "transfer coding parameters not supported",
                    ));
                }
                self.chunked_count += 1;
                self.chunked_at = Some(self.codings);
            }
            self.codings += 1;
        }
        Ok(())
    }

    /// `Ok(true)` when the body is chunked (and nothing else); 400 when chunked
    /// is repeated or not final; 501 for codings portcullis does not decode.
    fn chunked(&self) -> Result<bool, HttpError> {
        match (self.codings, self.chunked_at) {
            (0, _) => Ok(false),
            _ if self.chunked_count > 1 => {
                Err(HttpError::BadRequest("chunked applied more than once"))
            }
            (n, Some(i)) if i + 1 != n => Err(HttpError::BadRequest(
                "chunked is not the final transfer coding",
            )),
            (n, None) if n > 0 => Err(HttpError::BadRequest("Transfer-Encoding without chunked")),
            (1, Some(0)) => Ok(true),
            _ => Err(HttpError::NotImplemented("transfer coding not supported")),
        }
    }
}

fn split_target(target: &str) -> Result<(&str, Option<&str>), HttpError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or(HttpError::BadRequest("unsupported request target form"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        _ => return Err(HttpError::BadRequest("absolute-form target without a path")),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadRequest("invalid authority in request target"));
    }
    Ok((path, Some(authority)))
}

/// reg-name / IPv4 / [IPv6], optional :port, ASCII only.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// `.` or `..` path segments (also percent-encoded) would let a request escape
/// its route's prefix once the upstream normalises the path.
fn has_dot_segment(path: &str) -> bool {
    // The target holds no `#` (refused before); the query is not a path.
    let path = path.as_bytes();
    let path = &path[..memchr::memchr(b'?', path).unwrap_or(path.len())];
    path.split(|&b| b == b'/').any(|s| {
        let mut dots = 0;
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'.' {
                i += 1;
            } else if s[i] == b'%'
                && s.len() >= i + 3
                && s[i + 1] == b'2'
                && (s[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(raw: &[u8]) -> Result<Framing, u16> {
        let mut headers = [crate::http1::NO_HEADER; 32];
        let limits = HeadLimits {
            max_header_bytes: 1024,
            max_headers: 32,
            max_target_bytes: 256,
        };
        match parse_request(raw, &mut headers, &limits) {
            Ok(Some(h)) => Ok(h.framing),
            Ok(None) => Err(0),
            Err(e) => Err(e.status()),
        }
    }

    /// SECURITY.md, HTTP/1.1 framing items 1-7 and 12, one row per attack.
    #[test]
    fn security_framing_table() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(300));
        let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: y\r\n".repeat(40));
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(1100)
        );
        let rows: Vec<(&str, &[u8], Result<Framing, u16>)> = vec![
            ("plain GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None)),
            ("POST with length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Ok(Framing::Length(5))),
            ("POST chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked)),
            ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", Err(400)),
            ("absolute-form agreeing with Host", b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None)),
            // 1: CL and TE together
            ("CL + TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
            // 2: CL values
            ("differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Err(400)),
            ("repeated CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Err(400)),
            ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err(400)),
            ("empty CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", Err(400)),
            ("signed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Err(400)),
            ("hex CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", Err(400)),
            ("CL with inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", Err(400)),
            ("CL junk", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", Err(400)),
            ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Err(400)),
            // 3: TE forms
            ("TE gzip only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Err(400)),
            ("TE chunked not final", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Err(400)),
            ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
            ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Err(501)),
            ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
            ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", Err(400)),
            ("leading whitespace line", b"POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", Err(400)),
            ("TE \\x0b", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", Err(400)),
            ("TE \\x0c", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0c\r\n\r\n", Err(400)),
            ("TE \\xa0", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \xa0chunked\r\n\r\n", Err(400)),
            ("TE \\x85", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x85\r\n\r\n", Err(400)),
            ("TE quoted", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Err(400)),
            ("TE chunked;x", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x\r\n\r\n", Err(501)),
            ("TE ,chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", Err(400)),
            ("Transfer_Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", Err(400)),
            ("Content_Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n", Err(400)),
            ("non-token name", b"POST / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", Err(400)),
            // 5: head line syntax
            ("bare CR in head", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", Err(400)),
            ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", Err(400)),
            ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", Err(400)),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Err(400)),
            ("empty field name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", Err(400)),
            ("line without colon", b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", Err(400)),
            ("whitespace before first header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", Err(400)),
            // 6: request line
            ("lower-case method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", Err(501)),
            ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Err(405)),
            ("TRACE", b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", Err(405)),
            ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err(505)),
            ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Err(505)),
            ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("CTL in target", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("NUL in target", b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("over-long target", long_target.as_bytes(), Err(414)),
            ("dot segment", b"GET /mcp/../admin HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("encoded dot segment", b"GET /mcp/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("fragment", b"GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("fragment after query", b"GET /x?a=1#f HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("empty fragment", b"GET /x# HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("fragment in absolute-form", b"GET http://a/x#f HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            ("encoded hash", b"GET /x%23f HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None)),
            // 7: Host
            ("missing Host", b"GET / HTTP/1.1\r\n\r\n", Err(400)),
            ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(400)),
            ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Err(400)),
            ("Host disagreeing with target", b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            // GET/HEAD bodies
            ("GET with CL", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", Err(400)),
            ("GET with CL 0", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Ok(Framing::None)),
            // 12: limits
            ("too many headers", many_headers.as_bytes(), Err(400)),
            ("head too large", big_head.as_bytes(), Err(431)),
            ("bad Expect", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", Err(417)),
            ("incomplete", b"GET / HTTP/1.1\r\nHost: a\r\n", Err(0)),
        ];
        let mut failures = Vec::new();
        for (name, raw, want) in rows {
            let got = verdict(raw);
            if got != want {
                failures.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// RFC 9112 §3.2: a request target never carries a fragment.
    #[test]
    fn fragment_is_refused_with_its_reason() {
        let mut headers = [crate::http1::NO_HEADER; 4];
        let raw = b"POST /mcp#top HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        let err = parse_request(raw, &mut headers, &HeadLimits::default()).unwrap_err();
        assert_eq!(err, HttpError::BadRequest("fragment in request target"));
    }
}
