//! Building the upstream request head from a client's head: route, path
//! rewrite, hop-by-hop removal, X-Forwarded-*, request id. Synchronous and
//! allocation-free (it writes into a reused buffer).

use crate::error::HttpError;
use crate::http1::encode::Detail;
use crate::http1::{trim_ows, Framing, Method, RequestHead};
use crate::principal::Principal;
use crate::proxy::gate::{self, McpHead};
use crate::proxy::session::Binding;
use crate::proxy::worker::{RequestId, Worker};
use crate::snapshot::route::{RouteAuth, UpstreamCredential};
use crate::snapshot::Snapshot;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;

/// The owned facts of one request, taken from its borrowed head.
pub struct Request {
    pub route: usize,
    pub mcp: bool,
    pub method: Method,
    pub framing: Framing,
    pub http11: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub id: RequestId,
    /// Protocol facts of the head (MCP routes).
    pub mcp_head: McpHead,
    /// The verified caller (routes with `auth`).
    pub principal: Option<Rc<Principal>>,
    /// Unix seconds when the request was admitted (0 when no stage needed it).
    pub now_unix: i64,
}

/// A request answered locally.
pub struct Reject {
    pub err: HttpError,
    pub mcp: bool,
    pub close: bool,
    pub id: RequestId,
    pub detail: Option<Box<Detail>>,
    /// The route's index, when the request got as far as one (u32 keeps
    /// this error value small).
    pub route: Option<u32>,
}

/// Headers never copied from the client: hop-by-hop ones, framing (portcullis
/// frames the upstream request itself), and those it sets itself.
fn dropped(name: &str) -> bool {
    let n = name.as_bytes();
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 => is("te"),
        4 => is("host"),
        6 => is("expect"),
        7 => is("trailer") || is("upgrade"),
        9 => is("forwarded"),
        10 => is("connection") || is("keep-alive"),
        12 => is("x-request-id"),
        14 => is("content-length"),
        15 => is("x-forwarded-for"),
        16 => is("proxy-connection") || is("x-forwarded-host"),
        17 => is("transfer-encoding") || is("x-forwarded-proto"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Headers a response never carries to the client.
pub fn dropped_in_response(name: &str) -> bool {
    let n = name.as_bytes();
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        12 => is("x-request-id"),
        14 => is("content-length"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// The option names listed in Connection headers (they are hop-by-hop too).
pub struct ConnectionOptions<'b> {
    names: [&'b [u8]; 16],
    len: usize,
}

impl<'b> ConnectionOptions<'b> {
    /// `None` when more than 16 options are listed.
    pub fn collect(headers: &[httparse::Header<'b>]) -> Option<Self> {
        let mut opts = ConnectionOptions {
            names: [&[]; 16],
            len: 0,
        };
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        {
            for token in h
                .value
                .split(|&b| b == b',')
                .map(trim_ows)
                .filter(|t| !t.is_empty())
            {
                if opts.len == opts.names.len() {
                    return None;
                }
                opts.names[opts.len] = token;
                opts.len += 1;
            }
        }
        Some(opts)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// What is known of the client connection, computed once per connection.
pub struct ClientFacts {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The complete `X-Forwarded-For: <ip>\r\n` line.
    pub forwarded_for: Vec<u8>,
}

impl ClientFacts {
    pub fn new(peer: SocketAddr, tls: bool) -> ClientFacts {
        let mut forwarded_for = Vec::with_capacity(64);
        let _ = write!(forwarded_for, "X-Forwarded-For: {}\r\n", peer.ip());
        ClientFacts {
            peer,
            tls,
            forwarded_for,
        }
    }
}

/// Resolve the route and write the upstream request head into `up`, without
/// its framing header and final CRLF (the forwarder adds those).
pub fn prepare(
    worker: &Worker,
    snap: &Snapshot,
    head: &RequestHead<'_>,
    client: &ClientFacts,
    up: &mut Vec<u8>,
) -> Result<Request, Reject> {
    let tls = client.tls;
    let id = head
        .header("x-request-id")
        .and_then(RequestId::keep)
        .unwrap_or_else(|| {
            let mut id = RequestId::default();
            worker.next_request_id(&mut id);
            id
        });
    let has_body = head.framing != Framing::None;
    let reject = |err: HttpError, mcp: bool| Reject {
        err,
        mcp,
        close: err.must_close() || has_body || !head.keep_alive,
        id,
        detail: None,
        route: None,
    };
    let Some(route) = snap.routes.resolve(tls, head.host, head.path) else {
        return Err(reject(HttpError::NoRoute, false));
    };
    let reject = |err: HttpError, mcp: bool| Reject {
        route: u32::try_from(route.index).ok(),
        ..reject(err, mcp)
    };
    if let Framing::Length(n) = head.framing {
        if n > snap.limits.max_body_bytes {
            return Err(reject(HttpError::PayloadTooLarge, route.mcp));
        }
    }
    let mcp_head = if route.mcp {
        gate::head(route, head).map_err(|e| reject(e, true))?
    } else {
        McpHead::default()
    };
    let now_unix = if route.auth.is_some() || route.policy.is_some() {
        unix_now()
    } else {
        0
    };
    let principal = match &route.auth {
        None => None,
        Some(auth) => Some(
            crate::proxy::auth::authenticate(worker, snap, auth, head, now_unix).map_err(|r| {
                Reject {
                    detail: Some(r.detail),
                    ..reject(r.err, true)
                }
            })?,
        ),
    };
    if let (Some(p), Some(session)) = (&principal, head.header("mcp-session-id")) {
        if worker.shared.sessions.check(&route.name, session, p) == Binding::Other {
            return Err(reject(
                HttpError::Forbidden("this session belongs to another caller"),
                true,
            ));
        }
    }
    // The client's credentials and any header portcullis injects itself
    // never pass on an authenticated route (no token passthrough).
    let injected = route.auth.as_ref().and_then(|a| match &a.upstream {
        UpstreamCredential::Assertion { header, .. } => Some(header.as_str()),
        UpstreamCredential::Static(line) => std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split(':').next()),
        UpstreamCredential::None => None,
    });
    // The default assertion header is never taken from a client, on any
    // route (an upstream behind several routes must be able to trust it).
    // Where lists are filtered, answers must come uncompressed.
    let strip = |name: &str| {
        name.eq_ignore_ascii_case("x-portcullis-identity")
            || (route.auth.is_some()
                && (name.eq_ignore_ascii_case("authorization")
                    || injected.is_some_and(|h| name.eq_ignore_ascii_case(h))))
            || (route.policy.is_some() && name.eq_ignore_ascii_case("accept-encoding"))
    };
    let options = ConnectionOptions::collect(head.headers).ok_or_else(|| {
        reject(
            HttpError::BadRequest("too many Connection options"),
            route.mcp,
        )
    })?;

    up.clear();
    up.extend_from_slice(head.method.as_str().as_bytes());
    up.push(b' ');
    route.rewrite_path(head.path, up);
    up.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    up.extend_from_slice(route.upstream_authority.as_bytes());
    up.extend_from_slice(b"\r\n");
    for h in head.headers {
        if dropped(h.name) || options.contains(h.name) || strip(h.name) {
            continue;
        }
        up.extend_from_slice(h.name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(&client.forwarded_for);
    up.extend_from_slice(if tls {
        b"X-Forwarded-Proto: https\r\n"
    } else {
        b"X-Forwarded-Proto: http\r\n"
    });
    up.extend_from_slice(b"X-Forwarded-Host: ");
    up.extend_from_slice(head.host.as_bytes());
    up.extend_from_slice(b"\r\nX-Request-Id: ");
    up.extend_from_slice(id.as_bytes());
    up.extend_from_slice(b"\r\n");
    if let (Some(auth), Some(p)) = (&route.auth, &principal) {
        credential(worker, auth, p, &id, now_unix, up).map_err(|err| reject(err, true))?;
    }

    Ok(Request {
        route: route.index,
        mcp: route.mcp,
        method: head.method,
        framing: head.framing,
        http11: head.http11,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
        id,
        mcp_head,
        principal,
        now_unix,
    })
}

/// Append the upstream's credential for an authenticated caller.
fn credential(
    worker: &Worker,
    auth: &RouteAuth,
    principal: &Principal,
    id: &RequestId,
    now: i64,
    up: &mut Vec<u8>,
) -> Result<(), HttpError> {
    match &auth.upstream {
        UpstreamCredential::Assertion {
            header,
            audience,
            bearer,
        } => {
            let signer = crate::proxy::auth::signer().ok_or(HttpError::ServiceUnavailable)?;
            let request_id = std::str::from_utf8(id.as_bytes()).unwrap_or("");
            let jwt = worker
                .assertions
                .borrow_mut()
                .get_or_sign(signer, principal, audience, now, request_id);
            up.extend_from_slice(header.as_bytes());
            up.extend_from_slice(if *bearer { b": Bearer " } else { b": " });
            up.extend_from_slice(jwt.as_bytes());
            up.extend_from_slice(b"\r\n");
        }
        UpstreamCredential::Static(line) => up.extend_from_slice(line),
        UpstreamCredential::None => {}
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
