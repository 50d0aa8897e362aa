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

/// Whether the first bytes of an answer's body (as they came: perhaps
/// chunked, perhaps an event stream) are a JSON-RPC error: the first
/// object's top-level members are read, within the first 4 KiB, until
/// `error` (yes) or `result` (no). An answer whose first bytes come later
/// is taken as no error.
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
mod tests {
    use crate::error::HttpError;
    use crate::http1::Framing;
    use crate::principal::Principal;
    use crate::proxy::admit::Request;
    use crate::proxy::body::Body;
    use crate::proxy::conn::Conn;
    use crate::proxy::judge::judge;
    use crate::proxy::worker::{Shared, Worker};
    use std::rc::Rc;
    use std::sync::Arc;

    /// A route `r` with `auth` (the built-in authorization server) when
    /// `auth` is not empty, and a policy of `rule` then allow.
    fn config(auth: &str, rule: &str) -> String {
        let server = if auth.is_empty() {
            ""
        } else {
            "authorization_server: {issuer: 'http://127.0.0.1:8080', login: {dev_users: [{sub: a}]}}
store: {path: /tmp/portcullis-baseline-test.db}
"
        };
        format!(
            "listen: [{{address: 127.0.0.1:8080}}]
{server}behaviour: {{enumeration: {{window: 60s, distinct: 3}}}}
routes:
  - name: r
    from: http://127.0.0.1:8080/mcp
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
{auth}    policy:
      - {rule}
      - allow: {{ and: [] }}
"
        )
    }

    fn worker(text: &str) -> Worker {
        let snap = crate::snapshot::from_text(text, std::path::Path::new("t.yaml")).unwrap();
        let shared_snap = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
        Worker::new(0, Arc::new(Shared::new(1, None).unwrap()), shared_snap)
    }

    fn alice(iat: i64) -> Rc<Principal> {
        let mut claims = serde_json::Map::new();
        claims.insert("iat".into(), iat.into());
        Rc::new(Principal {
            issuer_name: "portcullis".into(),
            issuer: "http://127.0.0.1:8080".into(),
            sub: "alice".into(),
            email: None,
            groups: vec![],
            scopes: vec![],
            client_id: Some("agent".into()),
            exp: i64::MAX,
            claims,
        })
    }

    /// Judge one `resources/read` of `uri` at `now` for `principal`.
    fn read(
        w: &Worker,
        uri: &str,
        now: i64,
        principal: Option<Rc<Principal>>,
    ) -> (Result<(), HttpError>, Conn) {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#
        );
        let mut conn = Conn::new("10.0.0.1:1".parse().unwrap(), false);
        conn.begin();
        conn.buf.extend_from_slice(body.as_bytes());
        let req = Request {
            route: 0,
            mcp: true,
            method: crate::http1::Method::Post,
            framing: Framing::Length(body.len() as u64),
            http11: true,
            keep_alive: true,
            expect_continue: false,
            id: Default::default(),
            mcp_head: Default::default(),
            principal,
            now_unix: now,
            in_session: false,
        };
        let snap = w.snapshot();
        let got = judge(w, &snap, &req, Body::Buffered(body.len()), &mut conn).map(|_| ());
        (got, conn)
    }

    const NOW: i64 = 1_767_607_200;

    #[test]
    fn an_enumeration_is_scored_counted_and_denied() {
        let w = worker(&config(
            "",
            "{ name: no-enum, deny: { anomaly: { signals: [enumeration], above: 0.9 } } }",
        ));
        for i in 0..2 {
            assert!(read(&w, &format!("file:///{i}"), NOW, None).0.is_ok());
        }
        let (got, conn) = read(&w, "file:///2", NOW, None);
        assert_eq!(got, Err(HttpError::PolicyDenied));
        let message = conn.judged.detail.unwrap().message.unwrap();
        assert!(message.contains("no-enum"), "{message}");
        let snap = w.snapshot();
        let mut out = String::new();
        snap.routes.all()[0].metrics.render_anomalies(
            "r",
            &crate::behaviour::SIGNALS.map(crate::behaviour::Signal::name),
            &mut out,
        );
        assert_eq!(
            out,
            "portcullis_anomalies_total{route=\"r\",signal=\"enumeration\"} 1\n"
        );
    }

    #[test]
    fn a_step_up_answers_401_until_a_newer_token() {
        let w = worker(&config(
            "    auth: {issuers: [portcullis]}\n",
            "{ name: reauth, step_up: { anomaly: { signals: [enumeration], above: 0.9 } } }",
        ));
        let token = alice(NOW - 600);
        for i in 0..2 {
            let (got, _) = read(&w, &format!("file:///{i}"), NOW, Some(token.clone()));
            assert!(got.is_ok());
        }
        let (got, conn) = read(&w, "file:///2", NOW, Some(token.clone()));
        assert_eq!(got, Err(HttpError::StepUp));
        assert_eq!(HttpError::StepUp.status(), 401);
        let detail = conn.judged.detail.unwrap();
        let headers = String::from_utf8(detail.headers.clone()).unwrap();
        assert!(
            headers.starts_with(
                "WWW-Authenticate: Bearer error=\"insufficient_user_authentication\", "
            ) && headers.contains(
                "resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp\""
            ),
            "{headers}"
        );
        // Calm again, same token: still refused.
        let (got, _) = read(&w, "file:///0", NOW + 300, Some(token));
        assert_eq!(got, Err(HttpError::StepUp));
        // A token issued after the refusal goes on.
        let (got, _) = read(&w, "file:///0", NOW + 301, Some(alice(NOW + 200)));
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn scores_need_the_behaviour_section_and_step_up_needs_auth() {
        let errors = |text: String| -> Vec<String> {
            match crate::snapshot::from_text(&text, std::path::Path::new("t.yaml")) {
                Ok(_) => vec![],
                Err(e) => e.0.iter().map(|e| e.message.clone()).collect(),
            }
        };
        let no_section = config(
            "",
            "{ deny: { anomaly: { signals: [burst], above: 0.5 } } }",
        )
        .replace("behaviour: {enumeration: {window: 60s, distinct: 3}}\n", "");
        let e = errors(no_section);
        assert!(
            e.iter()
                .any(|m| m.contains("need the top-level behaviour section")),
            "{e:?}"
        );
        let e = errors(config(
            "",
            "{ step_up: { anomaly: { signals: [burst], above: 0.5 } } }",
        ));
        assert!(
            e.iter()
                .any(|m| m.contains("step_up rules need a route with auth")),
            "{e:?}"
        );
        let bad = config("", "{ allow: { and: [] } }").replace("distinct: 3", "distinct: 1");
        let e = errors(bad);
        assert!(
            e.iter()
                .any(|m| m.contains("behaviour.enumeration.distinct")),
            "{e:?}"
        );
    }

    #[test]
    fn a_reload_keeps_the_baselines() {
        use crate::behaviour::{Event, Signal};
        let text = "listen:\n  - address: 127.0.0.1:0\nbehaviour: { warmup_requests: 1, warmup: 1 }\nroutes:\n  - { name: t, from: http://proxy.test/, to: http://127.0.0.1:9/, mcp: {} }\n";
        let path = std::path::Path::new("t.yaml");
        let snap = crate::snapshot::from_text(text, path).unwrap();
        let shared_snap = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
        let worker = Worker::new(
            0,
            Arc::new(Shared::new(1, None).unwrap()),
            shared_snap.clone(),
        );
        let first = worker.snapshot();
        let s = first.behaviour.as_deref().unwrap();
        let ev = Event {
            key: 42,
            now: NOW,
            ip: "10.0.0.1".parse().unwrap(),
            tool: Some("search"),
            item: None,
            principal: None,
        };
        worker
            .baselines
            .borrow_mut()
            .observe(&worker.shared.behaviour, s, &ev);
        let changed = text.replace("warmup: 1", "warmup: 1, denial_streak: 2");
        shared_snap.store(Arc::new(
            crate::snapshot::from_text(&changed, path).unwrap(),
        ));
        let second = worker.snapshot();
        assert_ne!(first.generation, second.generation);
        let s2 = second.behaviour.as_deref().unwrap();
        assert_eq!(s2.denial_streak, 2, "the new settings apply");
        let again = worker.baselines.borrow_mut().observe(
            &worker.shared.behaviour,
            s2,
            &Event { now: NOW + 1, ..ev },
        );
        assert_eq!(
            again.get(Signal::NewTool),
            0.0,
            "still known after the reload"
        );
        assert_eq!(worker.baselines.borrow().get(42).unwrap().requests(), 2);
    }
}
