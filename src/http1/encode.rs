//! Bytes portcullis writes itself: local error responses and the small pieces
//! of heads it adds. Nothing here reads input.

use crate::error::HttpError;
use crate::mcp::jsonrpc::{write_json_string, RpcId};

/// JSON-RPC error code for calls refused by portcullis (policy, rate limit,
/// authentication); the HTTP status tells them apart.
pub(crate) const REFUSED: i32 = -32003;

/// What a local answer says beyond its `HttpError`.
#[derive(Debug, Default)]
pub struct Detail {
    /// Ids of the refused JSON-RPC requests: the error echoes them (a batch
    /// gets an array with one error per id).
    pub ids: Vec<RpcId>,
    pub batch: bool,
    /// Replaces the error's reason in the body.
    pub message: Option<String>,
    /// Extra header lines, each ending in CRLF.
    pub headers: Vec<u8>,
}

/// Standard reason phrase for the statuses portcullis produces itself.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        500 => "Internal Server Error",
        _ => "Error",
    }
}

/// Append a decimal number without allocating (two digits a step, `itoa`).
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A complete local error response. On an MCP route the body is a JSON-RPC
/// error object (with the request's id when it is known, else null), else a
/// short JSON object. `close` adds `Connection: close`.
pub(crate) fn error_response(
    out: &mut Vec<u8>,
    err: HttpError,
    mcp: bool,
    request_id: &[u8],
    close: bool,
    detail: Option<&Detail>,
) {
    let status = err.status();
    let mut body = Vec::with_capacity(128);
    let message = detail
        .and_then(|d| d.message.as_deref())
        .unwrap_or(err.reason());
    if status == 202 {
        // A refused notification: answered like any notification, no body.
    } else if mcp {
        let code = match err {
            HttpError::InvalidJsonRpc { code, .. } => code,
            HttpError::GatewayTimeout => -32001,
            HttpError::PolicyDenied
            | HttpError::LegacyPolicyDenied
            | HttpError::RateLimited
            | HttpError::Unauthorized(_)
            | HttpError::Forbidden(_)
            | HttpError::InsufficientScope
            | HttpError::UpstreamNotConnected
            | HttpError::StepUp
            | HttpError::PolicyForbidden => REFUSED,
            _ => -32000,
        };
        let ids = detail.map_or(&[][..], |d| &d.ids[..]);
        let batch = detail.is_some_and(|d| d.batch) && !ids.is_empty();
        if batch {
            body.push(b'[');
        }
        for i in 0..ids.len().max(1) {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
            match ids.get(i) {
                Some(id) => id.write_json(&mut body),
                None => body.extend_from_slice(b"null"),
            }
            body.extend_from_slice(b",\"error\":{\"code\":");
            let _ = std::io::Write::write_fmt(&mut body, format_args!("{code}"));
            body.extend_from_slice(b",\"message\":");
            write_json_string(&mut body, message);
            body.extend_from_slice(b"}}");
            if !batch {
                break;
            }
        }
        if batch {
            body.push(b']');
        }
    } else {
        body.extend_from_slice(b"{\"error\":{\"status\":");
        push_u64(&mut body, u64::from(status));
        body.extend_from_slice(b",\"message\":");
        write_json_string(&mut body, message);
        body.extend_from_slice(b"}}");
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: ",
    );
    push_u64(out, body.len() as u64);
    if !request_id.is_empty() {
        out.extend_from_slice(b"\r\nX-Request-Id: ");
        out.extend_from_slice(request_id);
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(d) = detail {
        out.extend_from_slice(&d.headers);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            HttpError::BadGateway("upstream refused"),
            true,
            b"abc",
            false,
            None,
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains("X-Request-Id: abc"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["message"], "upstream refused");
        assert_eq!(v["jsonrpc"], "2.0");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
