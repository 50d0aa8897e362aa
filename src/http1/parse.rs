//! Request-head parsing (httparse, borrowed from the read buffer) plus the strict
//! framing rules of SECURITY.md. Produces a `RequestHead` or an `HttpError` that
//! says which status to answer with; it never allocates.

use super::{has_bare_cr_or_lf, is_tchar, parse_content_length, trim_ows};
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
    /// The path and query (origin-form; absolute-form is reduced to it).
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
}

impl RequestHead<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Parse one request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (read more, unless the buffer
/// has reached `max_header_bytes`, which `head_too_large` turns into an error).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &HeadLimits,
) -> Result<Option<RequestHead<'b>>, HttpError>
where
    'h: 'b,
{
    let mut req = httparse::Request::new(headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::BadVersion),
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
    if has_bare_cr_or_lf(&buf[..head_len]) {
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
    let method_bytes = req.method.unwrap_or("").as_bytes();
    let method = match Method::from_bytes(method_bytes) {
        Some(m) => m,
        None if method_bytes == b"CONNECT" || method_bytes == b"TRACE" => {
            return Err(HttpError::MethodNotAllowed)
        }
        None => return Err(HttpError::NotImplemented("method not supported")),
    };
    let target = req.path.unwrap_or("");
    if target.len() > limits.max_target_bytes {
        return Err(HttpError::UriTooLong);
    }
    let headers: &'b [httparse::Header<'b>] = req.headers;

    let mut host: Option<&'b str> = None;
    let mut host_count = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut keep_alive = http11;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::BadRequest("invalid header name"));
        }
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(HttpError::BadRequest("CR, LF or NUL in a header value"));
        }
        if name.contains(&b'_')
            && (looks_like(name, b"content-length") || looks_like(name, b"transfer-encoding"))
        {
            return Err(HttpError::BadRequest("obfuscated framing header name"));
        }
        if h.name.eq_ignore_ascii_case("host") {
            host_count += 1;
            host = Some(std::str::from_utf8(trim_ows(h.value)).map_err(|_| HttpError::BadHost)?);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)
                .ok_or(HttpError::BadRequest("invalid Content-Length"))?;
            match content_length {
                Some(prev) if prev != n => {
                    return Err(HttpError::BadRequest("multiple differing Content-Length"))
                }
                _ => content_length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(HttpError::BadRequest("repeated Transfer-Encoding"));
            }
            if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::BadRequest(
                    "Transfer-Encoding other than chunked",
                ));
            }
            transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            expect_continue = http11;
        }
    }
    let framing = match (content_length, transfer_encoding) {
        (Some(_), true) => {
            return Err(HttpError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (None, true) if !http11 => {
            return Err(HttpError::BadRequest("Transfer-Encoding on HTTP/1.0"))
        }
        (None, true) => Framing::Chunked,
        (Some(0), false) | (None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    };

    // Request target: origin-form, or absolute-form whose authority must agree
    // with Host.
    let (path, target_host) = split_target(target)?;
    if host_count > 1 {
        return Err(HttpError::BadRequest("duplicate Host header"));
    }
    let host = match (host, target_host) {
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => {
            return Err(HttpError::BadRequest(
                "Host does not match the request target",
            ))
        }
        (Some(h), _) => h,
        (None, Some(t)) if !http11 => t,
        (None, _) => return Err(HttpError::BadRequest("missing Host header")),
    };
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
    }))
}

/// A head that did not fit: 414 when even the request line did not, else 431.
fn head_too_large(buf: &[u8], limits: &HeadLimits) -> HttpError {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i < limits.max_header_bytes => HttpError::HeadersTooLarge,
        _ => HttpError::UriTooLong,
    }
}

/// `Transfer_Encoding` and friends: names that a lenient peer might read as a
/// framing header once `_` is mapped to `-`.
fn looks_like(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
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
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.split('/').any(|seg| {
        let s = seg.as_bytes();
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
