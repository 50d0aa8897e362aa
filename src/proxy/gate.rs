//! Admission checks on MCP routes that need no identity: `Origin` against the
//! route's own public origin and its allowed origins (present and not allowed
//! → 403; absent is fine: non-browser clients send none), the protocol era of each request, and in
//! the modern era (2026-07-28 and later) the `Mcp-Method` / `Mcp-Name`
//! headers against the body they mirror (missing or different → 400 with
//! JSON-RPC error -32020). Policy is always decided on the body, never on
//! these headers alone. It also tells a message POST of the legacy HTTP+SSE
//! transport from a Streamable HTTP one (`legacy_message_post`): their
//! clients read a refusal in different places.

// Versions are written as dates: 2026_07_28 reads better than 20_260_728.
#![allow(clippy::inconsistent_digit_grouping)]

use crate::error::HttpError;
use crate::http1::RequestHead;
use crate::mcp::jsonrpc::{Kind, Message};
use crate::mcp::method::Method;
use crate::snapshot::route::Route;

/// The first "modern" protocol revision: no sessions, `Mcp-Method`/`Mcp-Name`.
pub const MODERN: u32 = 2026_07_28;
/// The first revision without JSON-RPC batches.
pub(crate) const NO_BATCHES: u32 = 2025_06_18;

/// What the head of a request on an MCP route says about the protocol.
#[derive(Debug, Default, PartialEq)]
pub struct McpHead {
    /// `MCP-Protocol-Version` as YYYYMMDD; 0 when absent.
    pub version: u32,
    /// The mirrored headers, decoded (only when the client sent any).
    pub mirrors: Option<Box<Mirrors>>,
    /// A message POST of the legacy HTTP+SSE transport (2024-11-05), see
    /// `legacy_message_post`.
    pub legacy_post: bool,
}

#[derive(Debug, Default, PartialEq)]
pub struct Mirrors {
    pub method: Option<Box<str>>,
    pub name: Option<Box<str>>,
}

fn mismatch(message: &'static str) -> HttpError {
    HttpError::InvalidJsonRpc {
        code: -32020,
        message,
    }
}

/// Check the head of a request on an MCP route.
pub(crate) fn head(route: &Route, head: &RequestHead<'_>) -> Result<McpHead, HttpError> {
    // `Mcp-Session-Id` too must be unambiguous (it is bound to a principal).
    let [origin, version, method, name, session] = find_once(
        head,
        [
            "origin",
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            "mcp-session-id",
        ],
    )?;
    if let Some(origin) = origin {
        let same = route.public_origin.as_bytes().eq_ignore_ascii_case(origin);
        if !same
            && !route
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
        {
            return Err(HttpError::Forbidden("origin not allowed"));
        }
    }
    let version = match version {
        None => 0,
        Some(v) => parse_version(v).ok_or(HttpError::BadRequest("invalid MCP-Protocol-Version"))?,
    };
    let mirrors = if method.is_some() || name.is_some() {
        let decode = |v: Option<&[u8]>| -> Result<Option<Box<str>>, HttpError> {
            v.map(|v| decode_mirror(v).ok_or(mismatch("malformed Mcp-Method or Mcp-Name header")))
                .transpose()
        };
        Some(Box::new(Mirrors {
            method: decode(method)?,
            name: decode(name)?,
        }))
    } else {
        None
    };
    let legacy_post = head.method == crate::http1::Method::Post
        && session.is_none()
        && version < MODERN
        && legacy_message_post(head.path);
    Ok(McpHead {
        version,
        mirrors,
        legacy_post,
    })
}

/// Whether a POST's target is a message endpoint of the legacy HTTP+SSE
/// transport: the URL its server announced in the GET stream's `endpoint`
/// event, which names the session in its query (`?session_id=` in the Python
/// SDK, `?sessionId=` in the TypeScript one; the name is matched without
/// case). A Streamable HTTP POST names its session in `Mcp-Session-Id`
/// instead (the caller checks it is absent). The protocol version cannot
/// tell the two apart: the TypeScript SDK sends the version it negotiated
/// (2025-11-25) on the legacy transport too.
pub(crate) fn legacy_message_post(target: &str) -> bool {
    crate::http1::query_has_param(target, &["session_id", "sessionid"])
}

/// Headers that may appear at most once each (a second copy is ambiguous),
/// found in one pass; `names` in lower case.
fn find_once<'b, const N: usize>(
    head: &RequestHead<'b>,
    names: [&str; N],
) -> Result<[Option<&'b [u8]>; N], HttpError> {
    let mut found = [None; N];
    for h in head.headers {
        let n = h.name.len();
        for (i, name) in names.iter().enumerate() {
            if n == name.len()
                && crate::http1::name_is(h.name.as_bytes(), name.as_bytes())
                && found[i].replace(h.value).is_some()
            {
                return Err(HttpError::BadRequest(
                    "a header that must appear once is repeated",
                ));
            }
        }
    }
    Ok(found)
}

/// `YYYY-MM-DD` as the number YYYYMMDD.
pub(crate) fn parse_version(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?;
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    Some(num(0..4)? * 10_000 + num(5..7)? * 100 + num(8..10)?)
}

/// A mirrored header value: plain visible ASCII, or `=?base64?…?=` wrapping
/// the UTF-8 bytes of a value that is not.
pub fn decode_mirror(v: &[u8]) -> Option<Box<str>> {
    if let Some(inner) = v
        .strip_prefix(b"=?base64?")
        .and_then(|r| r.strip_suffix(b"?="))
    {
        let bytes = base64_decode(inner)?;
        return String::from_utf8(bytes).ok().map(String::into_boxed_str);
    }
    if v.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        return std::str::from_utf8(v).ok().map(Box::from);
    }
    None
}

/// Standard base64 with padding, strict: no whitespace, canonical last bits.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        // The bits under the padding must be zero (canonical encoding).
        if n & ((1 << (8 * pad as u32)) - 1) != 0 {
            return None;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Check one decoded message against the head: era, batches, mirrors.
pub fn message(m: &Message<'_>, head: &McpHead, batch: bool) -> Result<(), HttpError> {
    let body_version = match m.protocol_version {
        None => 0,
        Some(v) => parse_version(v.as_bytes()).ok_or(HttpError::InvalidJsonRpc {
            code: -32602,
            message: "invalid params: malformed protocol version in _meta",
        })?,
    };
    if body_version != 0 && head.version != 0 && body_version != head.version {
        return Err(mismatch(
            "MCP-Protocol-Version header does not match the body",
        ));
    }
    let version = head.version.max(body_version);
    if batch && version >= NO_BATCHES {
        return Err(HttpError::InvalidJsonRpc {
            code: -32600,
            message: "invalid request: batches are not allowed in this protocol version",
        });
    }
    let modern = version >= MODERN;
    let mirrors = head.mirrors.as_deref();
    let sent_method = mirrors.and_then(|h| h.method.as_deref());
    let sent_name = mirrors.and_then(|h| h.name.as_deref());
    if mirrors.is_some() && batch {
        return Err(mismatch("Mcp-Method and Mcp-Name cannot describe a batch"));
    }
    let name = match m.method {
        Some(Method::ToolsCall | Method::PromptsGet) => m.name,
        Some(Method::ResourcesRead) => m.uri,
        _ => None,
    };
    let required = modern && m.kind == Some(Kind::Request);
    match (sent_method, m.method) {
        (Some(h), Some(b)) if h != b.as_str() => {
            return Err(mismatch("Mcp-Method does not match the body"))
        }
        (Some(_), None) => return Err(mismatch("Mcp-Method sent for a message without a method")),
        (None, Some(_)) if required => return Err(mismatch("Mcp-Method header is required")),
        _ => {}
    }
    match (sent_name, name) {
        (Some(h), Some(b)) if h != b => Err(mismatch("Mcp-Name does not match the body")),
        (Some(_), None) => Err(mismatch("Mcp-Name sent for a method that names nothing")),
        (None, Some(_)) if required => Err(mismatch("Mcp-Name header is required")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_mirrors_decode() {
        assert_eq!(parse_version(b"2026-07-28"), Some(2026_07_28));
        assert_eq!(parse_version(b"2025-03-26"), Some(2025_03_26));
        for bad in [
            &b"2026-7-28"[..],
            b"2026-07-2x",
            b"",
            b"20260728",
            b"+026-07-28",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
        assert_eq!(decode_mirror(b"tools/call").as_deref(), Some("tools/call"));
        // "héllo" in UTF-8, base64.
        assert_eq!(
            decode_mirror(b"=?base64?aMOpbGxv?=").as_deref(),
            Some("h\u{e9}llo")
        );
        for bad in [
            &b"=?base64?aMOpbGx?="[..],
            b"=?base64?aMOpbGy=?=",
            b"caf\xc3\xa9",
            b"a\tb",
        ] {
            assert_eq!(decode_mirror(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn legacy_message_posts_name_their_session_in_the_query() {
        for legacy in [
            "/messages/?session_id=0f3a",
            "/message?sessionId=abc",
            "/mcp/message?sessionid=abc",
            "/m?a=1&SESSION_ID=x",
            "/m?session_id",
        ] {
            assert!(legacy_message_post(legacy), "{legacy}");
        }
        for streamable in [
            "/mcp",
            "/mcp?tenant=a",
            "/mcp?my_session_id=1",
            "/session_id=1",
            "/m?x=session_id",
        ] {
            assert!(!legacy_message_post(streamable), "{streamable}");
        }
    }

    fn msg<'a>(method: &'a str, name: Option<&'a str>, version: Option<&'a str>) -> Message<'a> {
        Message {
            kind: Some(Kind::Request),
            method: Some(Method::parse(method)),
            name,
            protocol_version: version,
            ..Message::default()
        }
    }

    fn head_with(version: u32, method: Option<&str>, name: Option<&str>) -> McpHead {
        McpHead {
            version,
            mirrors: (method.is_some() || name.is_some()).then(|| {
                Box::new(Mirrors {
                    method: method.map(Box::from),
                    name: name.map(Box::from),
                })
            }),
            legacy_post: false,
        }
    }

    #[test]
    fn modern_requests_must_mirror_their_body() {
        let call = msg("tools/call", Some("search"), None);
        let code = |r: Result<(), HttpError>| match r {
            Ok(()) => 0,
            Err(HttpError::InvalidJsonRpc { code, .. }) => code,
            Err(e) => panic!("{e}"),
        };
        let cases: &[(McpHead, bool, i32)] = &[
            (
                head_with(MODERN, Some("tools/call"), Some("search")),
                false,
                0,
            ),
            (
                head_with(MODERN, Some("tools/call"), Some("delete")),
                false,
                -32020,
            ),
            (
                head_with(MODERN, Some("tools/list"), Some("search")),
                false,
                -32020,
            ),
            (head_with(MODERN, None, Some("search")), false, -32020),
            (head_with(MODERN, Some("tools/call"), None), false, -32020),
            // Legacy era: not required, but checked when sent.
            (head_with(2025_06_18, None, None), false, 0),
            (
                head_with(0, Some("tools/call"), Some("other")),
                false,
                -32020,
            ),
            // Batches only before 2025-06-18 (and never with mirrors).
            (head_with(0, None, None), true, 0),
            (head_with(2025_03_26, None, None), true, 0),
            (head_with(2025_06_18, None, None), true, -32600),
            (
                head_with(0, Some("tools/call"), Some("search")),
                true,
                -32020,
            ),
        ];
        for (i, (head, batch, want)) in cases.iter().enumerate() {
            assert_eq!(code(message(&call, head, *batch)), *want, "case {i}");
        }
        // The body's _meta version makes the request modern too.
        let modern_body = msg("tools/call", Some("search"), Some("2026-07-28"));
        assert_eq!(
            code(message(&modern_body, &head_with(0, None, None), false)),
            -32020
        );
        assert_eq!(
            code(message(
                &modern_body,
                &head_with(2025_11_25, None, None),
                false
            )),
            -32020,
            "header and body versions differ"
        );
        let ping = msg("ping", None, None);
        assert_eq!(
            code(message(
                &ping,
                &head_with(MODERN, Some("ping"), None),
                false
            )),
            0
        );
    }
}
