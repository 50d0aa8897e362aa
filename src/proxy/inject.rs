//! The user's own token at a route's upstream service (issue 12), written
//! into the upstream head once the body is read (before judging frames it);
//! a request with no usable token is refused once judged. Tokens come from a
//! per-core cache (bounded, never past expiry, emptied when the control
//! plane says a connection changed); a miss asks the control plane, with a
//! timeout, over the hand-off channel. The request path never waits on a
//! refresh: the control plane refreshes ahead, in the background.
//! Keyed by (the caller's `sub`, the route): one user's token is never
//! sent on another's request.

use crate::authz::upstream::UpstreamAnswer;
use crate::error::HttpError;
use crate::http1::encode::Detail;
use crate::principal::Principal;
use crate::proxy::admit::Request;
use crate::proxy::conn::Conn;
use crate::proxy::handoff::Job;
use crate::proxy::worker::Worker;
use crate::snapshot::route::Route;
use std::collections::HashMap;
use std::time::Duration;
use zeroize::Zeroizing;

/// Entries per core; past it the cache starts over.
const CAPACITY: usize = 4096;
/// A cached token is not used in its last seconds (clocks, transit).
const MARGIN: i64 = 5;
/// How long a core waits for the control plane's answer on a miss.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The per-core cache: route index → sub → token, expiry.
#[derive(Default)]
pub struct UpstreamTokens {
    map: HashMap<usize, HashMap<String, (Zeroizing<String>, i64)>>,
    len: usize,
    /// `Shared::vault_epoch` when it was last emptied.
    epoch: u64,
}

impl UpstreamTokens {
    pub fn get(&mut self, epoch: u64, sub: &str, route: usize, now: i64) -> Option<&str> {
        if epoch != self.epoch {
            self.map.clear();
            self.len = 0;
            self.epoch = epoch;
        }
        let (token, expires) = self.map.get(&route)?.get(sub)?;
        (now + MARGIN < *expires).then_some(token.as_str())
    }

    pub fn insert(&mut self, sub: &str, route: usize, token: Zeroizing<String>, expires: i64) {
        if self.len >= CAPACITY {
            self.map.clear();
            self.len = 0;
        }
        let old = self
            .map
            .entry(route)
            .or_default()
            .insert(sub.to_string(), (token, expires));
        self.len += usize::from(old.is_none());
    }
}

/// What the lookup found for a request.
pub(crate) enum Found {
    /// The route takes no user token.
    Nothing,
    /// The token's header line is in the upstream head.
    Written,
    NotConnected(String),
    Unavailable,
}

/// Write the caller's token for this route into the upstream head `up`:
/// straight from the per-core cache (no copy), else as the control plane
/// answers.
pub(crate) async fn lookup(
    worker: &Worker,
    route: &Route,
    req: &Request,
    up: &mut Vec<u8>,
) -> Found {
    let (Some(_), Some(p)) = (
        route.auth.as_ref().and_then(|a| a.oauth2.as_ref()),
        &req.principal,
    ) else {
        return Found::Nothing;
    };
    let now = req.now_unix;
    let epoch = worker
        .shared
        .vault_epoch
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = worker
        .upstream_tokens
        .borrow_mut()
        .get(epoch, &p.sub, route.index, now)
    {
        write(route, t, up);
        return Found::Written;
    }
    ask(worker, route, p, now, up).await
}

async fn ask(worker: &Worker, route: &Route, p: &Principal, now: i64, up: &mut Vec<u8>) -> Found {
    let Some(control) = &worker.shared.control else {
        return Found::Unavailable;
    };
    let (tx, rx) = futures_channel::oneshot::channel();
    let job = Job::Upstream {
        user: p.sub.clone(),
        route: route.name.clone(),
        reply: tx,
    };
    if control.try_send(job).is_err() {
        return Found::Unavailable;
    }
    match monoio::time::timeout(LOOKUP_TIMEOUT, rx).await {
        Ok(Ok(UpstreamAnswer::Token { value, expires })) => {
            if now + MARGIN < expires {
                let epoch = worker
                    .shared
                    .vault_epoch
                    .load(std::sync::atomic::Ordering::Relaxed);
                let mut cache = worker.upstream_tokens.borrow_mut();
                let _ = cache.get(epoch, &p.sub, route.index, now); // empties a stale cache first
                write(route, &value, up);
                cache.insert(&p.sub, route.index, value, expires);
            } else {
                write(route, &value, up);
            }
            Found::Written
        }
        Ok(Ok(UpstreamAnswer::NotConnected { why, connect_url })) => Found::NotConnected(format!(
            "{why}: connect your account for this MCP server at {connect_url} and try again"
        )),
        _ => Found::Unavailable,
    }
}

/// Append the token's header line to the upstream head (before judging
/// writes the framing).
fn write(route: &Route, token: &str, up: &mut Vec<u8>) {
    if let Some(o) = route.auth.as_ref().and_then(|a| a.oauth2.as_ref()) {
        up.extend_from_slice(&o.prefix);
        up.extend_from_slice(token.as_bytes());
        up.extend_from_slice(b"\r\n");
    }
}

/// The refusal of a judged request that has no usable token: a JSON-RPC
/// error naming its requests' ids, saying where to connect.
pub(crate) fn refuse(conn: &mut Conn, found: Found) -> HttpError {
    match found {
        Found::NotConnected(message) => {
            conn.judged.detail = Some(Box::new(Detail {
                ids: std::mem::take(&mut conn.judged.ids),
                batch: conn.judged.batch,
                message: Some(message),
                headers: Vec::new(),
            }));
            HttpError::UpstreamNotConnected
        }
        _ => HttpError::BadGateway("the user's upstream token is unavailable"),
    }
}

/// The upstream answered 401/403 to a request carrying the user's token:
/// the token is no good there. The connection is marked disconnected (the
/// control plane, told without waiting; every core forgets its copy), and
/// the agent gets portcullis's own answer: reconnect through portcullis.
pub(crate) fn upstream_refused(
    worker: &Worker,
    route: &Route,
    req: &Request,
    conn: &mut Conn,
    status: u16,
) -> HttpError {
    tracing::warn!(route = %route.name, status, "the upstream refused a user's token");
    if let (Some(control), Some(p)) = (&worker.shared.control, &req.principal) {
        let _ = control.try_send(Job::Refused {
            user: p.sub.clone(),
            route: route.name.clone(),
            status,
        });
    }
    let url = worker
        .snapshot()
        .authz
        .as_ref()
        .map(|s| s.url("/.portcullis/connections"))
        .unwrap_or_default();
    refuse(
        conn,
        Found::NotConnected(format!(
            "the upstream service refused your account's token (HTTP {status}): connect your account for this MCP server again at {url} and try again"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_users_apart_and_never_serves_past_expiry_or_an_epoch() {
        let mut c = UpstreamTokens::default();
        c.insert("alice", 0, Zeroizing::new("tok-a".into()), 1_000);
        c.insert("bob", 0, Zeroizing::new("tok-b".into()), 1_000);
        c.insert("alice", 1, Zeroizing::new("tok-a1".into()), 1_000);
        assert_eq!(c.get(0, "alice", 0, 900), Some("tok-a"));
        assert_eq!(c.get(0, "bob", 0, 900), Some("tok-b"));
        assert_eq!(c.get(0, "alice", 1, 900), Some("tok-a1"));
        assert_eq!(c.get(0, "carol", 0, 900), None);
        // Not in its last MARGIN seconds, never past expiry.
        assert_eq!(c.get(0, "alice", 0, 1_000 - MARGIN), None);
        assert_eq!(c.get(0, "alice", 0, 2_000), None);
        // A new epoch (a connection went away somewhere): all forgotten.
        assert_eq!(c.get(1, "bob", 0, 900), None);
        assert_eq!(c.len, 0);
        for i in 0..CAPACITY + 1 {
            c.insert(&format!("u{i}"), 0, Zeroizing::new("t".into()), 1_000);
        }
        assert!(c.len <= CAPACITY);
    }
}
