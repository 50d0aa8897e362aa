//! The upstream request head, written from the client's head into a reused
//! buffer: the rewritten path, the upstream's `Host`, the client's
//! end-to-end headers (hop-by-hop, framing and client credentials removed),
//! `X-Forwarded-*`, the request id, and portcullis's own credential for the
//! upstream. Synchronous and allocation-free.

use crate::error::HttpError;
use crate::http1::{name_is, trim_ows, RequestHead};
use crate::principal::Principal;
use crate::proxy::admit::Request;
use crate::proxy::conn::ClientFacts;
use crate::proxy::worker::Worker;
use crate::snapshot::route::{Route, RouteAuth, UpstreamCredential};

/// Headers never copied from the client: hop-by-hop ones, framing (portcullis
/// frames the upstream request itself), and those it sets itself.
fn dropped(name: &str) -> bool {
    let n = name.as_bytes();
    let is = |s: &str| name_is(n, s.as_bytes());
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
pub(crate) fn dropped_in_response(name: &str) -> bool {
    let n = name.as_bytes();
    let is = |s: &str| name_is(n, s.as_bytes());
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
pub(crate) struct ConnectionOptions<'b> {
    names: [&'b [u8]; 16],
    len: usize,
}

impl<'b> ConnectionOptions<'b> {
    /// `None` when more than 16 options are listed. Inlined, so the
    /// options are built where the caller keeps them, not copied there.
    #[inline(always)]
    pub(crate) fn collect(headers: &[httparse::Header<'b>]) -> Option<Self> {
        let mut opts = ConnectionOptions {
            names: [&[]; 16],
            len: 0,
        };
        for h in headers
            .iter()
            .filter(|h| name_is(h.name.as_bytes(), b"connection"))
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

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Write the upstream request head into `up`, without its framing header and
/// final CRLF (sending adds those once the body is judged).
pub(crate) fn write(
    worker: &Worker,
    route: &Route,
    head: &RequestHead<'_>,
    client: &ClientFacts,
    req: &Request,
    up: &mut Vec<u8>,
) -> Result<(), HttpError> {
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
    let oauth2 = route
        .auth
        .as_ref()
        .and_then(|a| a.oauth2.as_ref())
        .map(|o| o.config.header.as_str());
    let strip = |name: &str| {
        name_is(name.as_bytes(), b"x-portcullis-identity")
            || oauth2.is_some_and(|h| name.eq_ignore_ascii_case(h))
            || (route.auth.is_some()
                && (name.eq_ignore_ascii_case("authorization")
                    || injected.is_some_and(|h| name.eq_ignore_ascii_case(h))))
            || (route.policy.is_some() && name.eq_ignore_ascii_case("accept-encoding"))
    };
    let options = ConnectionOptions::collect(head.headers)
        .ok_or(HttpError::BadRequest("too many Connection options"))?;

    up.clear();
    up.extend_from_slice(head.method.as_str().as_bytes());
    up.push(b' ');
    route.rewrite_path(head.path, up);
    up.extend_from_slice(&route.version_and_host);
    crate::http1::copy_header_lines(head.raw, head.headers, up, |h| {
        !(dropped(h.name) || options.contains(h.name) || strip(h.name))
    });
    up.extend_from_slice(&client.forwarded_for);
    up.extend_from_slice(if client.tls {
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: "
    } else {
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: "
    });
    up.extend_from_slice(head.host.as_bytes());
    up.extend_from_slice(b"\r\nX-Request-Id: ");
    up.extend_from_slice(req.id.as_bytes());
    up.extend_from_slice(b"\r\n");
    if let (Some(auth), Some(p)) = (&route.auth, &req.principal) {
        credential(worker, auth, p, req, up);
    }
    Ok(())
}

/// Append the upstream's credential for an authenticated caller.
fn credential(
    worker: &Worker,
    auth: &RouteAuth,
    principal: &Principal,
    req: &Request,
    up: &mut Vec<u8>,
) {
    match &auth.upstream {
        UpstreamCredential::Assertion {
            header,
            audience,
            bearer,
        } => {
            let request_id = req.id.as_str();
            let jwt = worker.assertions.borrow_mut().get_or_sign(
                &worker.shared.signer,
                principal,
                audience,
                req.now_unix,
                request_id,
            );
            up.extend_from_slice(header.as_bytes());
            up.extend_from_slice(if *bearer { b": Bearer " } else { b": " });
            up.extend_from_slice(jwt.as_bytes());
            up.extend_from_slice(b"\r\n");
        }
        UpstreamCredential::Static(line) => up.extend_from_slice(line),
        UpstreamCredential::None => {}
    }
}
