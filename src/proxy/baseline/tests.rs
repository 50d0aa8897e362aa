//! Behaviour baselines on the request path, judged for real.

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
        baseline_key: Default::default(),
        record_json: Default::default(),
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
    let mut conn = Conn::detached("10.0.0.1:1".parse().unwrap(), false);
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

#[test]
fn upstream_errors_and_json_rpc_errors_add_to_the_streak() {
    let text = config(
        "",
        "{ name: calm, deny: { anomaly: { signals: [denial_streak], above: 0.99 } } }",
    )
    .replace("distinct: 3}}", "distinct: 3}, denial_streak: 2}");
    let w = worker(&text);
    let answer = |upstream: Option<(u16, u64)>, rpc_error: bool, status: u16| {
        let (got, mut conn) = read(&w, "file:///a", NOW, None);
        assert_eq!(got, Ok(()));
        assert!(conn.judged.awaiting.is_some(), "settled once answered");
        conn.outcome.upstream = upstream;
        conn.outcome.status = status;
        conn.judged.rpc_error = rpc_error;
        super::answered(&w, &conn);
    };
    // A good answer, a 4xx: nothing counted.
    answer(Some((200, 0)), false, 200);
    answer(Some((404, 0)), false, 404);
    // A 5xx, then a JSON-RPC error in a 200.
    answer(Some((503, 0)), false, 503);
    answer(Some((200, 0)), true, 200);
    let (got, _) = read(&w, "file:///a", NOW, None);
    assert_eq!(got, Err(HttpError::PolicyDenied));
}

#[test]
fn an_unreachable_upstream_adds_to_the_streak_and_a_good_answer_ends_it() {
    let text = config("", "{ allow: { and: [] } }")
        .replace("distinct: 3}}", "distinct: 3}, denial_streak: 2}");
    let w = worker(&text);
    let streak = |w: &Worker| {
        let (_, conn) = read(w, "file:///a", NOW, None);
        let key = conn.judged.awaiting.unwrap();
        (w.baselines.borrow_mut().observe(
            &w.shared.behaviour,
            w.snapshot().behaviour.as_deref().unwrap(),
            &crate::behaviour::Event {
                key,
                now: NOW,
                ip: "10.0.0.1".parse().unwrap(),
                tool: None,
                item: None,
                principal: None,
            },
        ))
        .get(crate::behaviour::Signal::DenialStreak)
    };
    let (_, mut conn) = read(&w, "file:///a", NOW, None);
    conn.outcome.status = 502; // no answer: the upstream refused to connect
    super::answered(&w, &conn);
    assert_eq!(streak(&w), 0.5);
    let (_, mut conn) = read(&w, "file:///a", NOW, None);
    conn.outcome.upstream = Some((200, 0));
    conn.outcome.status = 200;
    super::answered(&w, &conn);
    assert_eq!(streak(&w), 0.0);
}

#[test]
fn json_rpc_errors_are_seen_in_an_answers_first_bytes() {
    use super::rpc_error;
    assert!(rpc_error(
        br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"not found"}}"#
    ));
    assert!(rpc_error(
        b"5a\r\n{\"id\": 1, \"error\" : {\"code\": -32601}, \"jsonrpc\": \"2.0\"}\r\n"
    ));
    assert!(rpc_error(
        b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":1}}\n\n"
    ));
    // An error nested in a result, or named in a string, is not one.
    assert!(!rpc_error(
        br#"{"jsonrpc":"2.0","id":1,"result":{"error":"x"}}"#
    ));
    assert!(!rpc_error(br#"{"id":"error","x":{"error":1},"result":{}}"#));
    assert!(!rpc_error(br#"{"s":"a \"error\": b","result":1}"#));
    assert!(!rpc_error(b""));
    assert!(!rpc_error(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"res"));
}
