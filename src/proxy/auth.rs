//! Authentication on routes with `auth`: the bearer token from the one
//! `Authorization` header (never from the query string) is verified by
//! `identity` (through the per-core token cache) for the route's issuers and
//! audience, and must carry the route's scopes. Refusals carry the RFC 6750 /
//! RFC 9728 challenge: 401 with `resource_metadata` (and `invalid_token` when
//! a token was given), 403 `insufficient_scope` with the scopes.

use crate::error::HttpError;
use crate::http1::encode::Detail;
use crate::http1::RequestHead;
use crate::principal::Principal;
use crate::proxy::worker::{Worker, WorkerCounters};
use crate::snapshot::route::RouteAuth;
use crate::snapshot::Snapshot;
use std::io::Write;
use std::rc::Rc;

/// A refused request: the error and its challenge.
pub(crate) struct Refusal {
    pub err: HttpError,
    pub detail: Box<Detail>,
    /// A token was given and refused (invalid, or short of a scope), not
    /// merely missing: behaviour baselines count it.
    pub bad_token: bool,
    /// Whose verified token was short of a scope.
    pub principal: Option<Rc<Principal>>,
}

/// The caller of a request on an authenticated route.
pub(crate) fn authenticate(
    worker: &Worker,
    snap: &Snapshot,
    auth: &RouteAuth,
    head: &RequestHead<'_>,
    now: i64,
) -> Result<Rc<Principal>, Refusal> {
    if query_has_token(head.path) {
        return Err(refuse(
            auth,
            HttpError::BadRequest("access tokens are not accepted in the query string"),
            Some("invalid_request"),
        ));
    }
    let mut values = head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value);
    let Some(value) = values.next() else {
        return Err(refuse(
            auth,
            HttpError::Unauthorized("a bearer token is required"),
            None,
        ));
    };
    if values.next().is_some() {
        return Err(refuse(
            auth,
            HttpError::BadRequest("more than one Authorization header"),
            Some("invalid_request"),
        ));
    }
    let Some(token) = bearer(value) else {
        return Err(refuse(
            auth,
            HttpError::Unauthorized("a bearer token is required"),
            None,
        ));
    };
    let principal = verify_cached(worker, snap, auth, token, now)
        .map_err(|reason| refuse(auth, HttpError::Unauthorized(reason), Some("invalid_token")))?;
    if let Some(missing) = auth.scopes.iter().find(|s| !principal.has_scope(s)) {
        tracing::debug!(scope = %missing, "token lacks a required scope");
        return Err(Refusal {
            principal: Some(principal.clone()),
            ..refuse(
                auth,
                HttpError::InsufficientScope,
                Some("insufficient_scope"),
            )
        });
    }
    Ok(principal)
}

/// Verify through the per-core cache (positive and negative). Tokens of the
/// built-in authorization server are checked against its revoked grants on
/// every request, cached or not (one atomic load), so a revocation holds on
/// every core at once.
fn verify_cached(
    worker: &Worker,
    snap: &Snapshot,
    auth: &RouteAuth,
    token: &str,
    now: i64,
) -> Result<Rc<Principal>, &'static str> {
    let guard = auth.builtin.then(|| worker.shared.issued.load());
    let issued = guard.as_ref().and_then(|g| g.as_deref());
    let revoked = |p: &Principal| {
        issued
            .as_ref()
            .is_some_and(|i| *p.issuer_name == *i.issuer_name && i.is_revoked(p))
    };
    let mut cache = worker.token_cache_for(snap);
    if let Some(cache) = cache.as_deref() {
        if let Some(p) = cache.get(token, &auth.audience, now) {
            WorkerCounters::bump(&worker.counters.token_cache_hits);
            if revoked(&p) {
                return Err(crate::identity::AuthError::Revoked.reason());
            }
            return Ok(p);
        }
        WorkerCounters::bump(&worker.counters.token_cache_misses);
        if let Some(e) = cache.get_rejected(token, &auth.audience, now) {
            return Err(e.reason());
        }
    }
    let verified = match issued {
        Some(i) if i.claims_token(token) => i.verify(token, &auth.audience, now),
        _ => snap
            .identity
            .verify_for(&auth.issuers, token, &auth.audience, now),
    };
    match verified {
        Ok(p) => {
            let p = Rc::new(p);
            if let Some(cache) = cache.as_deref_mut() {
                cache.insert(token, &auth.audience, p.clone());
            }
            Ok(p)
        }
        // Not cached: a revoked grant is looked up again each time, and a
        // token of a grant revoked by mistake is not refused for longer.
        Err(e @ crate::identity::AuthError::Revoked) => Err(e.reason()),
        Err(e) => {
            if let Some(cache) = cache.as_deref_mut() {
                cache.insert_rejected(token, &auth.audience, now, e);
            }
            Err(e.reason())
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive). A token is ASCII (RFC 6750 §2.1, `b64token`).
fn bearer(value: &[u8]) -> Option<&str> {
    let value = crate::sys::ascii_str(value)?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// Whether the query string carries `access_token` (RFC 6750 §2.3), refused.
fn query_has_token(path: &str) -> bool {
    crate::http1::query_has_param(path, &["access_token"])
}

fn refuse(auth: &RouteAuth, err: HttpError, error: Option<&str>) -> Refusal {
    let mut headers = Vec::with_capacity(160);
    headers.extend_from_slice(b"WWW-Authenticate: Bearer ");
    if let Some(code) = error {
        let _ = write!(headers, "error=\"{code}\", ");
        if code != "insufficient_scope" {
            let _ = write!(headers, "error_description=\"{}\", ", err.reason());
        }
    }
    if !auth.scopes.is_empty() {
        let _ = write!(headers, "scope=\"{}\", ", auth.scopes.join(" "));
    }
    let _ = write!(headers, "resource_metadata=\"{}\"\r\n", auth.metadata_url);
    Refusal {
        err,
        detail: Box::new(Detail {
            headers,
            ..Detail::default()
        }),
        bad_token: matches!(error, Some("invalid_token" | "insufficient_scope")),
        principal: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_only_from_a_bearer_header() {
        assert_eq!(bearer(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer(b"bearer abc"), Some("abc"));
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a b",
            b"Bearerabc",
            "Bearer t\u{f6}ken".as_bytes(),
        ] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
        assert!(query_has_token("/mcp?access_token=x"));
        assert!(query_has_token("/mcp?a=1&ACCESS_TOKEN"));
        assert!(!query_has_token("/mcp?my_access_token=x"));
        assert!(!query_has_token("/mcp/access_token"));
    }
}
