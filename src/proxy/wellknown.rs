//! Documents portcullis serves itself, on any listener, before routing:
//! RFC 9728 protected resource metadata for each authenticated route
//! (`/.well-known/oauth-protected-resource` + the route's path), and the
//! public keys of its identity assertions (`/.well-known/portcullis/jwks.json`)
//! so upstreams can verify them.

use crate::http1::encode::push_u64;
use crate::http1::{Framing, Method, RequestHead};
use crate::mcp::jsonrpc::write_json_string;
use crate::snapshot::Snapshot;

pub(crate) const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";
pub(crate) const ASSERTION_JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";

/// Write the answer to a well-known request into `out` and return whether
/// the connection closes after it; `None` when `head` is not one.
pub(crate) fn answer(
    snap: &Snapshot,
    signer: &crate::identity::AssertionSigner,
    head: &RequestHead<'_>,
    tls: bool,
    out: &mut Vec<u8>,
) -> Option<bool> {
    // The prefix first: it holds no `?`, and most paths do not start so.
    if !head.path.starts_with("/.well-known/") {
        return None;
    }
    let path = head.path.split('?').next().unwrap_or("");
    let body = if path == ASSERTION_JWKS_PATH {
        Some(signer.jwks_json())
    } else if let Some(resource) = path.strip_prefix(METADATA_PREFIX) {
        if !resource.is_empty() && !resource.starts_with('/') {
            return None;
        }
        metadata(
            snap,
            tls,
            head.host,
            if resource.is_empty() { "/" } else { resource },
        )
    } else {
        return None;
    };
    let close = head.framing != Framing::None || !head.keep_alive;
    let (status, body) = match (head.method, body) {
        (Method::Get, Some(b)) => (200, b),
        (Method::Get, None) => (404, r#"{"error":"no protected resource here"}"#.to_string()),
        _ => (405, r#"{"error":"method not allowed"}"#.to_string()),
    };
    out.clear();
    out.extend_from_slice(match status {
        200 => b"HTTP/1.1 200 OK\r\n".as_slice(),
        404 => b"HTTP/1.1 404 Not Found\r\n",
        _ => b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n",
    });
    out.extend_from_slice(
        b"Content-Type: application/json\r\nCache-Control: max-age=300\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: ",
    );
    push_u64(out, body.len() as u64);
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(close)
}

/// RFC 9728 metadata of the authenticated route serving `resource` on `host`.
fn metadata(snap: &Snapshot, tls: bool, host: &str, resource: &str) -> Option<String> {
    let route = snap.routes.resolve(tls, host, resource)?;
    let auth = route.auth.as_ref()?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"resource\":");
    write_json_string(&mut out, &auth.audience);
    out.extend_from_slice(b",\"authorization_servers\":");
    list(&mut out, &auth.issuer_urls);
    if !auth.scopes.is_empty() {
        out.extend_from_slice(b",\"scopes_supported\":");
        list(&mut out, &auth.scopes);
    }
    out.extend_from_slice(b",\"bearer_methods_supported\":[\"header\"],\"resource_name\":");
    write_json_string(&mut out, &route.name);
    out.push(b'}');
    String::from_utf8(out).ok()
}

fn list(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, s);
    }
    out.push(b']');
}
