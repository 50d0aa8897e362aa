//! Behaviour baselines on the request path (`behaviour`): each request
//! message of a judged MCP body is counted in this core's table and scored
//! before the policy sees it; signals at `report_above` go to the audit
//! record and the route's counters (once per request each); the verdict
//! then feeds `denial_streak` and `step_up`.

use crate::behaviour::{Event, Outcome, Scores, Settings};
use crate::mcp::jsonrpc::Message;
use crate::mcp::method::Method;
use crate::policy::{Facts, Verdict};
use crate::proxy::conn::Judged;
use crate::proxy::worker::Worker;
use crate::snapshot::route::Route;
use std::io::Write;

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

/// Tell the baseline how the message was judged.
pub(crate) fn settle(worker: &Worker, scored: &Scored, verdict: &Verdict<'_>, now: i64) {
    let outcome = match verdict {
        Verdict::Allow { .. } => Outcome::Allowed,
        Verdict::Deny { .. } => Outcome::Denied,
        Verdict::StepUp { .. } => Outcome::SteppedUp,
    };
    worker
        .baselines
        .borrow_mut()
        .settle(scored.key, outcome, now);
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
