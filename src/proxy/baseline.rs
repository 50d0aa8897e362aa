//! Behaviour baselines on the request path (`behaviour`): each request
//! message of a judged MCP body is counted in this core's table and scored
//! before the policy sees it; signals at `report_above` go to the audit
//! record and the route's counters (once per request each); the verdict,
//! the upstream's answer (`answered`) and refused tokens (`refused`) then
//! feed `denial_streak` and `step_up`.

use crate::behaviour::{Event, Outcome, Scores, Settings};
use crate::mcp::jsonrpc::Message;
use crate::mcp::method::Method;
use crate::policy::{Facts, Verdict};
use crate::principal::Principal;
use crate::proxy::conn::{Conn, Judged};
use crate::proxy::worker::Worker;
use crate::snapshot::route::Route;
use crate::snapshot::Snapshot;
use std::io::Write;
use std::net::IpAddr;

/// One message's scores and whose they are.
pub(crate) struct Scored {
    pub key: u64,
    pub scores: Scores,
}

/// Count and score one request message (`facts` without its scores yet).
pub(crate) fn score(
    worker: &Worker,
    settings: &Settings,
    route: &Route,
    facts: &Facts<'_>,
    m: &Message<'_>,
    judged: &mut Judged,
) -> Scored {
    let x = &worker.shared.behaviour;
    let key = x.key(facts.principal, facts.source_ip);
    let (tool, item) = match m.method {
        Some(Method::ToolsCall) => (m.name, None),
        Some(Method::PromptsGet) => (None, m.name),
        _ => (None, m.uri),
    };
    let ev = Event {
        key,
        now: facts.now_unix,
        ip: facts.source_ip,
        tool,
        item,
        principal: facts.principal,
    };
    let scores = worker.baselines.borrow_mut().observe(x, settings, &ev);
    if scores.values.iter().any(|v| *v >= settings.report_above) {
        report(worker, settings, route, &scores, judged);
    }
    Scored { key, scores }
}

/// Count and note the raised signals not yet reported for this request.
#[inline(never)]
fn report(worker: &Worker, settings: &Settings, route: &Route, s: &Scores, judged: &mut Judged) {
    for (signal, score) in s.raised(settings.report_above) {
        let bit = 1u8 << signal.index();
        if judged.raised & bit != 0 {
            continue;
        }
        judged.raised |= bit;
        route.metrics.anomaly(signal.index());
        if worker.shared.audit.is_some() {
            let out = judged.audit.anomalies.get_or_insert_with(String::new);
            if !out.is_empty() {
                out.push(',');
            }
            use std::fmt::Write as _;
            let _ = write!(
                out,
                "{{\"signal\":\"{}\",\"score\":{:.2}}}",
                signal.name(),
                score
            );
        }
    }
}

/// Tell the baseline how the message was judged: a refusal at once; an
/// allowed message once its answer is known (`answered`).
pub(crate) fn settle(
    worker: &Worker,
    scored: &Scored,
    verdict: &Verdict<'_>,
    now: i64,
    judged: &mut Judged,
) {
    let outcome = match verdict {
        Verdict::Allow { .. } => {
            judged.awaiting = Some(scored.key);
            return;
        }
        Verdict::Deny { .. } => Outcome::Denied,
        Verdict::StepUp { .. } => Outcome::SteppedUp,
    };
    worker
        .baselines
        .borrow_mut()
        .settle(scored.key, outcome, now);
}

/// The end of an exchange whose request the baseline awaits: the
/// upstream's answer ends the caller's streak, or (a 5xx, no answer, a
/// JSON-RPC error) adds to it. Another 4xx, or a client gone, tells nothing.
pub(crate) fn answered(worker: &Worker, conn: &Conn) {
    let Some(key) = conn.judged.awaiting else {
        return;
    };
    let o = &conn.outcome;
    let outcome = match o.upstream {
        Some((status, _)) if status >= 500 || conn.judged.rpc_error => Outcome::UpstreamError,
        Some((status, _)) if status < 400 => Outcome::Answered,
        None if matches!(o.status, 502 | 504) => Outcome::UpstreamError,
        _ => return,
    };
    // `now` only dates step-ups: none here.
    worker.baselines.borrow_mut().settle(key, outcome, 0);
}

/// A token refused on a route (invalid for it, or short of a scope), with
/// behaviour baselines on: counted for its caller when the token was
/// verified (its scopes fell short), else for the client's address, when
/// that address is already a known caller (an unverified token must not
/// make callers up and push real ones out).
pub(crate) fn refused(
    worker: &Worker,
    snap: &Snapshot,
    principal: Option<&Principal>,
    ip: IpAddr,
    now: i64,
) {
    let Some(s) = snap.behaviour.as_deref() else {
        return;
    };
    let key = worker.shared.behaviour.key(principal, ip);
    let mut table = worker.baselines.borrow_mut();
    match principal {
        Some(_) => table.refused(s, key, now),
        None => table.settle(key, Outcome::AuthFailed, now),
    }
}

/// Whether the first bytes of an answer's body (its first read from the
/// upstream as it came: perhaps chunked, perhaps an event stream) are a
/// JSON-RPC error: the first object's top-level members are read, within
/// the first 4 KiB, until `error` (yes) or `result` (no).
pub(crate) fn rpc_error(body: &[u8]) -> bool {
    let body = &body[..body.len().min(4096)];
    let Some(start) = body.iter().position(|b| *b == b'{') else {
        return false;
    };
    let (mut depth, mut i) = (0u32, start);
    while i < body.len() {
        match body[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return false;
                }
            }
            b'"' => {
                let from = i + 1;
                i = from;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 {
                    let rest = body.get(i + 1..).unwrap_or_default();
                    let key = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
                    match (key, body.get(from..i)) {
                        (true, Some(b"error")) => return true,
                        (true, Some(b"result")) => return false,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The challenge of a step-up refusal (RFC 9470 style): the client must
/// send the user through authorization again, as for a missing token.
pub(crate) fn challenge(route: &Route, headers: &mut Vec<u8>) {
    let Some(auth) = &route.auth else { return };
    headers.extend_from_slice(
        b"WWW-Authenticate: Bearer error=\"insufficient_user_authentication\", \
          error_description=\"unusual activity: the user must authorize again\", ",
    );
    if !auth.scopes.is_empty() {
        let _ = write!(headers, "scope=\"{}\", ", auth.scopes.join(" "));
    }
    let _ = write!(headers, "resource_metadata=\"{}\"\r\n", auth.metadata_url);
}

#[cfg(test)]
mod tests;
