//! Admission, the zero-trust decision on the head: which route, whether the
//! head is well-formed MCP (`gate::head`), who is calling
//! (`auth::authenticate`, on routes with `auth`), and whether a legacy
//! session they name is theirs. Synchronous; nothing is written here (the
//! upstream head is `upstream::head`).

use crate::error::HttpError;
use crate::http1::{Framing, Lower, Method, RequestHead};
use crate::principal::Principal;
use crate::proxy::gate::{self, McpHead};
use crate::proxy::reject::Reject;
use crate::proxy::session::Binding;
use crate::proxy::worker::{RequestId, Worker};
use crate::snapshot::route::Route;
use crate::snapshot::Snapshot;
use std::rc::Rc;

/// The owned facts of one admitted request, taken from its borrowed head.
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
    /// The request named a legacy session (`Mcp-Session-Id`).
    pub in_session: bool,
}

impl Request {
    /// What every policy check of this request shares: the caller, where
    /// from, when, and the head's fields; no call yet.
    pub(crate) fn facts<'a>(
        &'a self,
        source_ip: std::net::IpAddr,
        headers: &'a [httparse::Header<'a>],
    ) -> crate::policy::Facts<'a> {
        crate::policy::Facts {
            principal: self.principal.as_deref(),
            method: None,
            name: None,
            uri: None,
            arguments: None,
            source_ip,
            now_unix: self.now_unix,
            headers,
            anomaly: None,
            content: &[],
        }
    }
}

/// The request id: the client's when well-formed, else a new one.
pub(crate) fn request_id(worker: &Worker, head: &RequestHead<'_>) -> RequestId {
    head.header(const { Lower::new("x-request-id") })
        .and_then(RequestId::keep)
        .unwrap_or_else(|| {
            let mut id = RequestId::default();
            worker.next_request_id(&mut id);
            id
        })
}

/// Admit a request: route → gate → authenticate → session. A refusal is
/// answered locally (and closes when a body would otherwise be left unread).
pub(crate) fn admit<'s>(
    worker: &Worker,
    snap: &'s Snapshot,
    head: &RequestHead<'_>,
    (tls, peer): (bool, std::net::IpAddr),
    id: RequestId,
) -> Result<(&'s Route, Request), Reject> {
    let refuse = |err: HttpError, mcp: bool, route: Option<&Route>| Reject {
        err,
        mcp,
        close: err.must_close() || head.framing != Framing::None || !head.keep_alive,
        id,
        detail: None,
        route: route.and_then(|r| u32::try_from(r.index).ok()),
    };
    let Some(route) = snap.routes.resolve(tls, head.host, head.path) else {
        return Err(refuse(HttpError::NoRoute, false, None));
    };
    // Refusals on a route are JSON-RPC errors on MCP routes; those of
    // authentication and sessions are always.
    let refuse_as = |err: HttpError, mcp: bool| refuse(err, mcp, Some(route));
    let refuse = |err: HttpError| refuse_as(err, route.mcp);
    if let Framing::Length(n) = head.framing {
        if n > snap.limits.max_body_bytes {
            return Err(refuse(HttpError::PayloadTooLarge));
        }
    }
    let mcp_head = if route.mcp {
        gate::head(route, head).map_err(refuse)?
    } else {
        McpHead::default()
    };
    let now_unix = if route.auth.is_some() || route.policy.is_some() || snap.behaviour.is_some() {
        unix_now()
    } else {
        0
    };
    let principal = match &route.auth {
        None => None,
        Some(auth) => Some(
            crate::proxy::auth::authenticate(worker, snap, auth, head, now_unix).map_err(|r| {
                if r.bad_token {
                    let p = r.principal.as_deref();
                    crate::proxy::baseline::refused(worker, snap, p, peer, now_unix);
                }
                Reject {
                    detail: Some(r.detail),
                    ..refuse_as(r.err, true)
                }
            })?,
        ),
    };
    let session = head.header(const { Lower::new("mcp-session-id") });
    if let (Some(p), Some(session)) = (&principal, session) {
        if worker.shared.sessions.check(&route.name, session, p) == Binding::Other {
            return Err(refuse_as(
                HttpError::Forbidden("this session belongs to another caller"),
                true,
            ));
        }
    }
    let req = Request {
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
        in_session: session.is_some(),
    };
    Ok((route, req))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
