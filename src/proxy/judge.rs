//! Judgement: the only place a `Permit` is made, and nothing is sent
//! upstream without one.
//!
//! On MCP routes the body is decoded in full (`mcp::jsonrpc`): every POST
//! (an empty one included) and any other request that carries a body. Each
//! message is checked against the head (`gate::message`) and judged by the
//! route's policy; one refused message refuses the whole body (a batch too),
//! answered locally with the refused requests' ids (`judged.detail`). A list
//! request whose answer must be filtered is noted in `judged.list`. A body
//! not held whole cannot be judged, so it is refused: an MCP body can never
//! stream past judgement.

use crate::error::HttpError;
use crate::http1::encode::Detail;
use crate::http1::Framing;
use crate::mcp::jsonrpc::{Kind, Message, RpcId};
use crate::mcp::listfilter::{ListFilter, ListKind};
use crate::mcp::method::Method;
use crate::policy::{Facts, Policy, Verdict};
use crate::proxy::admit::Request;
use crate::proxy::baseline;
use crate::proxy::body::{push_length, Body};
use crate::proxy::conn::{Conn, Judged};
use crate::proxy::gate;
use crate::proxy::request::{policy_headers, MAX_HEADERS};
use crate::proxy::screen::of_message;
use crate::proxy::worker::Worker;
use crate::screen::{Direction, Finding};
use crate::snapshot::route::Route;
use crate::snapshot::Snapshot;

/// Leave to send one request upstream, made only by [`judge`]: the upstream
/// head in `conn.up` is complete with its framing, and a body still to
/// stream from the client (plain routes only) is named here.
pub struct Permit {
    unread: Option<Framing>,
}

impl Permit {
    /// The framing of the body still to come from the client, if any.
    pub fn unread(&self) -> Option<Framing> {
        self.unread
    }
}

/// Judge a request and its body; on success the upstream head in
/// `conn.up` is finished with the body's framing (and a held body).
pub fn judge(
    worker: &Worker,
    snap: &Snapshot,
    req: &Request,
    body: Body,
    conn: &mut Conn,
) -> Result<Permit, HttpError> {
    let route = snap.routes.get(req.route);
    conn.judged.list = None;
    let held: &[u8] = match &body {
        Body::Empty | Body::Unread(_) => &[],
        Body::Buffered(n) => &conn.buf[..*n],
        Body::Decoded(data) => data,
    };
    // Content screening reads the body before the policy (`content`
    // criteria), and acts on what it found once the policy allowed it.
    let screen = route
        .screen
        .as_deref()
        .filter(|_| req.mcp && !held.is_empty());
    let scanned = screen.map(|s| crate::proxy::screen::scan(s, held, Direction::Request));
    let findings = match &scanned {
        Some(Ok(f)) => &f[..],
        _ => &[],
    };
    let verdict = match &body {
        _ if !req.mcp => Ok(()),
        Body::Unread(_) => Err(HttpError::PayloadTooLarge),
        _ => {
            let mut space = [crate::http1::NO_HEADER; MAX_HEADERS];
            let headers = policy_headers(route, &conn.head_copy, &mut space);
            let judge = Judge::new(worker, snap, req, conn.client.peer.ip(), headers);
            judge.body(held, findings, &mut conn.judged)
        }
    };
    let (verdict, replaced) =
        crate::proxy::screen::request(route, req, held, scanned, verdict, &mut conn.judged);
    let up = &mut conn.up;
    match (&body, verdict) {
        (Body::Empty, Ok(())) => up.extend_from_slice(b"\r\n"),
        (Body::Buffered(_) | Body::Decoded(_), Ok(())) if replaced.is_some() => {
            let new = replaced.as_deref().unwrap_or_default();
            push_length(up, new.len() as u64);
            up.extend_from_slice(new);
        }
        (Body::Buffered(n), Ok(())) => {
            push_length(up, *n as u64);
            up.extend_from_slice(&conn.buf[..*n]);
        }
        (Body::Decoded(data), Ok(())) => {
            push_length(up, data.len() as u64);
            up.extend_from_slice(data);
        }
        (Body::Unread(Framing::Length(n)), Ok(())) => push_length(up, *n),
        (Body::Unread(_), Ok(())) => up.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n"),
        (_, Err(e)) => {
            // Consumed either way: a refused body must not be read as a request.
            if let Body::Buffered(n) = body {
                conn.buf.drain(..n);
            }
            return Err(e);
        }
    }
    let unread = match body {
        Body::Buffered(n) => {
            conn.buf.drain(..n);
            None
        }
        Body::Unread(framing) => Some(framing),
        Body::Empty | Body::Decoded(_) => None,
    };
    Ok(Permit { unread })
}

/// What judging one request's messages needs: the route's policy and the
/// facts every message shares.
pub(crate) struct Judge<'a> {
    worker: &'a Worker,
    route: &'a Route,
    req: &'a Request,
    policy: Option<&'a Policy>,
    base: Facts<'a>,
    /// Behaviour baselines' settings, when requests are scored.
    behaviour: Option<&'a crate::behaviour::Settings>,
}

/// What the messages of one body add up to while they are judged.
#[derive(Default)]
struct Tally {
    batch: bool,
    /// The ids a local answer names: every request of a batch, else the
    /// one request (or the refused message's).
    ids: Vec<RpcId>,
    /// List requests whose answers are to be filtered.
    lists: Vec<(ListKind, RpcId)>,
    refused: Option<Refused>,
}

/// The first refusal in a body: its error, message and `Retry-After`.
struct Refused {
    err: HttpError,
    message: Option<String>,
    retry_after: Option<u64>,
}

impl<'a> Judge<'a> {
    pub(crate) fn new(
        worker: &'a Worker,
        snap: &'a Snapshot,
        req: &'a Request,
        source_ip: std::net::IpAddr,
        headers: &'a [httparse::Header<'a>],
    ) -> Judge<'a> {
        let route = snap.routes.get(req.route);
        Judge {
            worker,
            route,
            req,
            policy: route.policy.as_ref(),
            base: req.facts(source_ip, headers),
            behaviour: snap.behaviour.as_deref(),
        }
    }

    /// Judge a held MCP body: `Err` refuses it, `judged` says why and what
    /// the answer carries.
    pub(crate) fn body(
        &self,
        body: &[u8],
        findings: &[Finding],
        judged: &mut Judged,
    ) -> Result<(), HttpError> {
        if body.is_empty() && self.req.method != crate::http1::Method::Post {
            return self.without_call(judged);
        }
        // The ids go back into `judged`: its room is reused, request after
        // request.
        let mut ids = std::mem::take(&mut judged.ids);
        ids.clear();
        let mut tally = Tally {
            batch: body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
            ids,
            ..Tally::default()
        };
        let mut scratch = self.worker.mcp_scratch.borrow_mut();
        let mut index = 0;
        let visit = |m: &Message<'_>| {
            if index == 0 {
                judged.method_slot = crate::metrics::method_slot(m.method);
            }
            let content = of_message(findings, tally.batch, index);
            self.message(m, content, &mut tally, judged);
            index += 1;
        };
        // `params.arguments` is read by `argument` criteria and the audit.
        let audited = self.worker.shared.audit.is_some()
            && self.route.audit_arguments != crate::config::audit::Arguments::Omit;
        if self.route.policy_reads_arguments || audited {
            crate::mcp::jsonrpc::decode(&mut scratch, body, visit)
        } else {
            crate::mcp::jsonrpc::decode_without_arguments(&mut scratch, body, visit)
        }
        .map_err(|e| HttpError::InvalidJsonRpc {
            code: e.code(),
            message: e.message(),
        })?;
        let Some(refused) = tally.refused.take() else {
            // A pinning route watches every answer's events for
            // `list_changed` notifications (`relay`: event streams only).
            judged.list =
                (!tally.lists.is_empty() || self.route.pin.is_some()).then_some(ListFilter {
                    wanted: tally.lists,
                });
            judged.ids = tally.ids;
            judged.batch = tally.batch;
            return Ok(());
        };
        Err(answer(
            refused,
            tally,
            (self.route, self.req.mcp_head.legacy_post),
            judged,
        ))
    }

    /// GET (listen stream) and DELETE (end session) carry no call: deny
    /// rules apply to them, but they need no allow rule.
    fn without_call(&self, judged: &mut Judged) -> Result<(), HttpError> {
        let verdict = self.policy.map(|p| (p, p.evaluate(&self.base)));
        if let Some((p, Verdict::Deny { rule, message, .. })) = verdict {
            if !p.is_default_rule(rule) {
                judged.detail = Some(Box::new(Detail {
                    message: Some(format!("denied by policy rule {rule:?}: {message}")),
                    ..Detail::default()
                }));
                return Err(HttpError::PolicyForbidden);
            }
        }
        if (self.policy.is_some() || self.route.pin.is_some())
            && self.req.method == crate::http1::Method::Get
        {
            // A GET stream may carry list answers (legacy HTTP+SSE, or a
            // resumed stream): every one of them is filtered.
            judged.list = Some(ListFilter { wanted: Vec::new() });
        }
        Ok(())
    }

    /// One message of the body: noted for the audit record, checked against
    /// the head, judged by the policy. After a refusal only ids are noted.
    fn message(
        &self,
        m: &Message<'_>,
        content: &[Finding],
        tally: &mut Tally,
        judged: &mut Judged,
    ) {
        let sink = self.worker.shared.audit.as_ref();
        if let Some(sink) = sink {
            judged.audit.batch += 1;
            if judged.audit.batch == 1 {
                let scratch = &mut self.worker.audit_scratch.borrow_mut();
                note_message(sink, self.route, m, scratch, &mut judged.audit);
            }
        }
        if m.kind == Some(Kind::Request) {
            if let Some(id) = m.id {
                if tally.batch || tally.ids.is_empty() {
                    tally.ids.push(RpcId::from(id));
                }
            }
        }
        if tally.refused.is_some() {
            return;
        }
        if let Err(err) = gate::message(m, &self.req.mcp_head, tally.batch) {
            // Errors of one message name that message's id only.
            tally.ids.clear();
            tally.ids.extend(m.id.map(RpcId::from));
            tally.refused = Some(Refused {
                err,
                message: None,
                retry_after: None,
            });
            return;
        }
        if self.pinned(m, tally) {
            return;
        }
        let (Some(method), false) = (m.method, m.kind == Some(Kind::Response)) else {
            return;
        };
        let mut facts = Facts {
            method: Some(method),
            name: m.name,
            uri: m.uri,
            arguments: m.arguments,
            content,
            ..self.base
        };
        let scored = match self.behaviour {
            Some(s) if m.kind == Some(Kind::Request) => Some(baseline::score(
                self.worker,
                s,
                self.route,
                &facts,
                m,
                judged,
            )),
            _ => None,
        };
        facts.anomaly = scored.as_ref().map(|s| &s.scores);
        let v = match self.policy {
            Some(p) => verdict(p, &facts, m),
            None => Verdict::Allow { rule: None },
        };
        if let Some(scored) = &scored {
            baseline::settle(self.worker, scored, &v, facts.now_unix, judged);
        }
        if self.policy.is_some() {
            self.apply(v, m, method, tally, judged);
        }
    }

    /// Note a message's verdict: what the audit record names, the list to
    /// filter, or the body's refusal.
    fn apply(
        &self,
        v: Verdict<'_>,
        m: &Message<'_>,
        method: Method<'_>,
        tally: &mut Tally,
        judged: &mut Judged,
    ) {
        let sink = self.worker.shared.audit.as_ref();
        match v {
            Verdict::Allow { rule } => {
                // The audit record names the rule that allowed the first
                // message; a deny anywhere in the batch replaces it.
                if let (Some(rule), Some(_), None) = (rule, sink, &judged.audit.rule) {
                    judged.audit.rule = Some(rule.into());
                }
                if let (Some(kind), Some(id)) = (ListKind::of_method(method), m.id) {
                    tally.lists.push((kind, RpcId::from(id)));
                }
            }
            Verdict::Deny {
                rule,
                message,
                retry_after_secs,
            } => {
                if sink.is_some() {
                    judged.audit.rule = Some(rule.into());
                }
                tally.refused = Some(Refused {
                    err: if retry_after_secs.is_some() {
                        HttpError::RateLimited
                    } else {
                        HttpError::PolicyDenied
                    },
                    message: Some(format!("denied by policy rule {rule:?}: {message}")),
                    retry_after: retry_after_secs,
                });
            }
            Verdict::StepUp { rule, message } => {
                if sink.is_some() {
                    judged.audit.rule = Some(rule.into());
                }
                tally.refused = Some(Refused {
                    err: HttpError::StepUp,
                    message: Some(format!(
                        "authorize again: step-up required by policy rule {rule:?}: {message}"
                    )),
                    retry_after: None,
                });
            }
        }
    }
}

impl Judge<'_> {
    /// Tool pinning of one message (a pinning route): a pinned list's
    /// request is noted for filtering when no policy will note it; a call
    /// to an item not approved under `enforce` is refused (`true`).
    fn pinned(&self, m: &Message<'_>, tally: &mut Tally) -> bool {
        let (Some(pin), Some(method), Some(Kind::Request)) =
            (self.route.pin.as_deref(), m.method, m.kind)
        else {
            return false;
        };
        if let (None, Some(list), Some(id)) = (self.policy, ListKind::of_method(method), m.id) {
            if pin.list_mode(list) != crate::config::pin::PinMode::Off {
                tally.lists.push((list, RpcId::from(id)));
            }
        }
        let shared = &self.worker.shared;
        let refused = crate::proxy::pin::refused_call(self.route, shared, method, m.name, m.uri);
        let Some(why) = refused else {
            return false;
        };
        tally.refused = Some(Refused {
            err: HttpError::PolicyDenied,
            message: Some(why),
            retry_after: None,
        });
        true
    }
}

/// The policy's verdict on a message: what the message reaches must be
/// allowed too; the rule that allowed the message itself is the one the
/// audit names.
fn verdict<'p>(p: &'p Policy, facts: &Facts<'_>, m: &Message<'_>) -> Verdict<'p> {
    match p.evaluate(facts) {
        allow @ Verdict::Allow { .. } => match implied(p, facts, m) {
            Verdict::Allow { .. } => allow,
            deny => deny,
        },
        deny => deny,
    }
}

/// The local answer to a refused body: its error, with the ids it names and
/// `Retry-After` in `judged.detail`.
fn answer(
    refused: Refused,
    tally: Tally,
    (route, legacy_post): (&Route, bool),
    judged: &mut Judged,
) -> HttpError {
    let Tally { ids, batch, .. } = tally;
    let err = denied(refused.err, &ids, legacy_post);
    let mut headers = Vec::new();
    if err == HttpError::StepUp {
        baseline::challenge(route, &mut headers);
    }
    if let Some(secs) = refused.retry_after {
        headers.extend_from_slice(b"Retry-After: ");
        crate::http1::encode::push_u64(&mut headers, secs.max(1));
        headers.extend_from_slice(b"\r\n");
    }
    judged.detail = Some(Box::new(Detail {
        ids,
        batch,
        message: refused.message,
        headers,
    }));
    err
}
/// The refusal a body's answer carries: a policy denial of notifications
/// only is answered 202 (nothing answers a notification), and one on a
/// legacy HTTP+SSE message POST with a 4xx.
pub(crate) fn denied(err: HttpError, ids: &[RpcId], legacy_post: bool) -> HttpError {
    match err {
        HttpError::PolicyDenied if ids.is_empty() => HttpError::NotificationDenied,
        // A legacy HTTP+SSE client ignores the body of a 200 (its answers
        // come on the GET stream): a 4xx is what it reports at once. The
        // error cannot go on that stream instead: it may be relayed by
        // another core, and this one holds nothing of it.
        HttpError::PolicyDenied if legacy_post => HttpError::LegacyPolicyDenied,
        other => other,
    }
}

/// Copy what the audit record says of a body's (first) message.
fn note_message(
    sink: &crate::audit::Sink,
    route: &Route,
    m: &Message<'_>,
    scratch: &mut Vec<u8>,
    audit: &mut crate::audit::Facts,
) {
    use crate::audit::Arguments;
    audit.method = m.method.map(|m| match m.named_str() {
        Some(name) => name.into(),
        None => String::from(m.as_str()).into(),
    });
    audit.target = m.name.or(m.uri).or(m.ref_name).or(m.ref_uri).map(Box::from);
    audit.rpc_id = m.id.map(RpcId::from);
    if audit.era == 0 {
        audit.era = m
            .protocol_version
            .and_then(|v| gate::parse_version(v.as_bytes()))
            .unwrap_or(0);
    }
    let Some(args) = m.arguments else { return };
    match route.audit_arguments {
        crate::config::audit::Arguments::Omit => {}
        crate::config::audit::Arguments::Full => {
            let mut text = Vec::with_capacity(512);
            crate::audit::arguments_json(args, &mut text);
            audit.arguments = String::from_utf8(text).ok().map(Arguments::Json);
        }
        // The bytes as sent; written out again only when they cannot be
        // found in the body (an empty object, or not an object).
        crate::config::audit::Arguments::Hash => {
            let tag = match m.arguments_raw() {
                Some(raw) => sink.tag(raw),
                None => {
                    scratch.clear();
                    crate::audit::arguments_exact(args, scratch);
                    sink.tag(scratch)
                }
            };
            audit.arguments = Some(Arguments::Hash(tag));
        }
    }
}

/// What a message reaches besides its own key, judged as if it were asked
/// for directly: the prompt or resource a `completion/complete` completes
/// (`prompts/get` / `resources/read`), and each resource a
/// `subscriptions/listen` subscribes to (`resources/subscribe`).
fn implied<'p>(p: &'p crate::policy::Policy, facts: &Facts<'_>, m: &Message<'_>) -> Verdict<'p> {
    let as_call = |method, name, uri| Facts {
        method: Some(method),
        name,
        uri,
        arguments: None,
        ..*facts
    };
    if let Some(name) = m.ref_name {
        let v = p.evaluate(&as_call(Method::PromptsGet, Some(name), None));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    if let Some(uri) = m.ref_uri {
        let v = p.evaluate(&as_call(Method::ResourcesRead, None, Some(uri)));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    for uri in m.subscription_uris() {
        let v = p.evaluate(&as_call(Method::ResourcesSubscribe, None, Some(uri)));
        if !matches!(v, Verdict::Allow { .. }) {
            return v;
        }
    }
    Verdict::Allow { rule: None }
}

#[cfg(test)]
mod tests;
