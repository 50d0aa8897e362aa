//! Policy black-box: allowed and denied calls (JSON-RPC errors naming the
//! rule, with the request's id, on a connection that stays usable), batches
//! judged element by element, rate limits (429), and list results filtered
//! for JSON and SSE answers alike.

use crate::auth::{claims, config, post, token};
use crate::harness::{exchange, statuses, Proxy, Upstream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);

// Fixed windows restart at multiples of `per`: a day-long window keeps the
// rate-limit test clear of a boundary.
const POLICY: &str = r#"    policy:
      - name: engineers
        allow:
          and:
            - groups: { has: engineering }
            - mcp_method: { in: [ping, tools/list, tools/call] }
      - name: no-deletes
        deny: { mcp_tool: { starts_with: delete_ } }
        message: deleting is not allowed
      - name: secret-repos
        deny: { argument: { pointer: /repo, matches: "^secret-" } }
      - name: blocked-tenant
        deny: { header: { name: X-Tenant, equals: blocked } }
      - name: slow-down
        deny: { rate_limit: { requests: 5, per: 24h, key: principal_and_tool } }
"#;

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"search"},{"name":"delete_repo"},{"name":"get_file"}]}}"#;

/// Answers `tools/list` with three tools (as JSON, or as SSE when the
/// request asks for `text/event-stream` only), anything else with `{}`.
fn respond(request: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    if text.contains("\r\n\r\n[") {
        let body = format!(r#"[{{"jsonrpc":"2.0","id":1,"result":{{}}}},{TOOLS}]"#);
        return format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
    }
    if !text.contains("tools/list") {
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        return format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
    }
    if text.contains("Accept: text/event-stream\r\n") {
        let events = format!(": ping\n\nevent: message\ndata: {TOOLS}\n\n");
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [&events[..10], &events[10..40], &events[40..]] {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        return out;
    }
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{TOOLS}",
        TOOLS.len()
    )
    .into_bytes()
}

fn call(id: u32, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    )
}

fn body(resp: &str) -> serde_json::Value {
    let text = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[test]
fn calls_are_allowed_and_denied_by_rule() {
    let up = Upstream::start(respond);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));

    // Allowed, then denied (by name and by argument), then allowed again on
    // the same connection: the session stays usable.
    let raw = [
        post(Some(&alice), &call(1, "search", r#"{"repo":"public"}"#)),
        post(
            Some(&alice),
            &call(2, "delete_repo", r#"{"repo":"public"}"#),
        ),
        post(
            Some(&alice),
            &call(3, "get_file", r#"{"repo":"secret-plans"}"#),
        ),
        post(Some(&alice), &call(4, "get_file", r#"{"repo":"public"}"#)),
    ]
    .concat();
    let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200, 200, 200, 200], "{resp}");
    assert!(!closed);
    let answers: Vec<&str> = resp.split("HTTP/1.1 ").skip(1).collect();
    let denied = body(&format!("HTTP/1.1 {}", answers[1]));
    assert_eq!(denied["id"], 2);
    assert_eq!(denied["error"]["code"], -32003);
    let message = denied["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no-deletes") && message.contains("deleting is not allowed"),
        "{message}"
    );
    let denied = body(&format!("HTTP/1.1 {}", answers[2]));
    assert_eq!(denied["id"], 3);
    assert!(denied["error"]["message"]
        .as_str()
        .unwrap()
        .contains("secret-repos"));
    let forwarded = up.requests();
    assert_eq!(forwarded.len(), 2, "only the allowed calls were forwarded");
    assert!(forwarded
        .iter()
        .all(|r| !r.contains("delete_repo") && !r.contains("secret-")));

    // A header criterion reads the request's own headers.
    let raw = post(Some(&alice), &call(8, "search", "{}")).replace(
        "Host: proxy.test\r\n",
        "Host: proxy.test\r\nX-Tenant: blocked\r\n",
    );
    let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert!(
        body(&resp)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked-tenant"),
        "{resp}"
    );

    // Someone outside engineering: no rule allows it.
    let mut bob = claims("bob", "mcp");
    bob["groups"] = serde_json::json!(["sales"]);
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&token(bob)), &call(9, "search", "{}")).as_bytes(),
        SHORT,
    );
    let v = body(&resp);
    assert_eq!(v["id"], 9);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("t#default"),
        "{v}"
    );

    // A denied notification is answered like any notification: 202, no body.
    let note = r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#;
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), note).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [202], "{resp}");
    assert!(resp.contains("Content-Length: 0\r\n"), "{resp}");

    // A batch with one denied element is denied whole, each request answered.
    let batch = format!(
        "[{},{}]",
        call(5, "search", "{}"),
        call(6, "delete_repo", "{}")
    );
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), &batch).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    let v = body(&resp);
    let ids: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [5, 6]);
    assert_eq!(
        up.requests().len(),
        2,
        "no element of a denied batch is forwarded"
    );
}

/// A message POST of the legacy HTTP+SSE transport (to the endpoint its
/// server announced, session in the query, no `Mcp-Session-Id`) is answered
/// 403 when denied: its clients ignore the body of a 200. A Streamable HTTP
/// POST keeps its 200 (also with a session query but an `Mcp-Session-Id`).
#[test]
fn denied_legacy_message_posts_answer_403() {
    let up = Upstream::start(respond);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    let to = |target: &str, extra: &str, body: &str| {
        post(Some(&alice), body)
            .replacen("POST /mcp ", &format!("POST {target} "), 1)
            .replace(
                "Host: proxy.test\r\n",
                &format!("Host: proxy.test\r\n{extra}"),
            )
    };
    let delete = call(2, "delete_repo", "{}");
    // Python and TypeScript SDK endpoints (any case), the version header the
    // TypeScript SDK sends after negotiating: all legacy. Denied, then an
    // allowed call on the same connection.
    for (i, target) in [
        "/mcp/messages/?session_id=0f3a",
        "/mcp/message?sessionId=abc-1",
        "/mcp/message?x=1&sessionid=abc",
    ]
    .into_iter()
    .enumerate()
    {
        for extra in ["", "MCP-Protocol-Version: 2025-11-25\r\n"] {
            // A tool of its own each time: clear of the `slow-down` limit.
            let allowed = call(3, &format!("search_{i}"), "{}");
            let raw = [to(target, extra, &delete), to(target, extra, &allowed)].concat();
            let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
            assert_eq!(statuses(&resp), [403, 200], "{target} {extra}: {resp}");
            assert!(!closed, "{resp}");
            let answers: Vec<&str> = resp.split("HTTP/1.1 ").skip(1).collect();
            let denied = body(&format!("HTTP/1.1 {}", answers[0]));
            assert_eq!(denied["id"], 2);
            assert_eq!(denied["error"]["code"], -32003);
            assert!(denied["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-deletes"));
        }
    }
    // Streamable HTTP: no session query, or an Mcp-Session-Id: 200 as before.
    for (target, extra) in [
        ("/mcp", ""),
        ("/mcp?tenant=a", ""),
        ("/mcp/messages/?session_id=0f3a", "Mcp-Session-Id: s-1\r\n"),
        ("/mcp", "MCP-Protocol-Version: 2024-11-05\r\n"),
    ] {
        let (resp, _) = exchange(proxy.addr, to(target, extra, &delete).as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [200], "{target} {extra}: {resp}");
        assert_eq!(body(&resp)["error"]["code"], -32003);
    }
    assert!(up.requests().iter().all(|r| !r.contains("delete_repo")));
}

#[test]
fn rate_limits_answer_429() {
    let up = Upstream::start(respond);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let carol = token(claims("carol", "mcp"));
    let mut statuses_seen = Vec::new();
    for i in 0..7 {
        let (resp, _) = exchange(
            proxy.addr,
            post(Some(&carol), &call(i, "search", "{}")).as_bytes(),
            SHORT,
        );
        statuses_seen.push(statuses(&resp)[0]);
        if i == 6 {
            assert!(resp.contains("Retry-After: "), "{resp}");
            assert!(body(&resp)["error"]["message"]
                .as_str()
                .unwrap()
                .contains("slow-down"));
        }
    }
    assert_eq!(statuses_seen, [200, 200, 200, 200, 200, 429, 429]);
    // Another tool has its own budget (key: principal_and_tool).
    let (resp, _) = exchange(
        proxy.addr,
        post(Some(&carol), &call(8, "get_file", "{}")).as_bytes(),
        SHORT,
    );
    assert_eq!(statuses(&resp), [200], "{resp}");
}

#[test]
fn list_results_show_only_usable_items() {
    let up = Upstream::start(respond);
    let proxy = Proxy::from_config(up.addr, &config(POLICY));
    let alice = token(claims("alice", "mcp"));
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), list).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    let names: Vec<String> = body(&resp)["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["search", "get_file"]);

    let sse = post(Some(&alice), list).replace(
        "Content-Type:",
        "Accept: text/event-stream\r\nContent-Type:",
    );
    let (resp, _) = exchange(proxy.addr, sse.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(resp.contains(": ping\n\n"), "other events pass: {resp}");
    assert!(
        resp.contains("\"search\"") && resp.contains("\"get_file\""),
        "{resp}"
    );
    assert!(
        !resp.contains("delete_repo"),
        "a denied tool was listed: {resp}"
    );

    // A list request inside a batch is filtered too.
    let batch = format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"ping"}},{list}]"#);
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), &batch).as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [200], "{resp}");
    let v = body(&resp);
    assert_eq!(v[0]["id"], 1);
    let names: Vec<&str> = v[1]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search", "get_file"], "{resp}");
}

/// What a message reaches besides its own key is judged too: the resource a
/// completion completes, every resource a subscription listens to.
#[test]
fn completions_and_subscriptions_are_judged_by_what_they_reach() {
    let up = Upstream::start(respond);
    let policy = r#"    policy:
      - allow: { mcp_method: { in: [completion/complete, subscriptions/listen] } }
      - allow: { mcp_resource: { starts_with: "file:///public/" } }
"#;
    let proxy = Proxy::from_config(up.addr, &config(policy));
    let alice = token(claims("alice", "mcp"));
    let ask = |body: &str| {
        let (resp, _) = exchange(proxy.addr, post(Some(&alice), body).as_bytes(), SHORT);
        resp
    };
    let complete = |uri: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{{"ref":{{"type":"ref/resource","uri":"{uri}"}},"argument":{{"name":"p","value":"a"}}}}}}"#
        )
    };
    let listen = |uris: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"subscriptions/listen","params":{{"notifications":{{"resourceSubscriptions":[{uris}]}}}}}}"#
        )
    };
    assert!(!ask(&complete("file:///public/{p}")).contains("-32003"));
    assert!(ask(&complete("file:///etc/{p}")).contains("-32003"));
    assert!(!ask(&listen(r#""file:///public/a","file:///public/b""#)).contains("-32003"));
    assert!(ask(&listen(r#""file:///public/a","file:///etc/passwd""#)).contains("-32003"));
    assert!(
        up.requests().iter().all(|r| !r.contains("/etc/")),
        "nothing outside was forwarded"
    );
}

/// GET and DELETE carry no call: deny rules apply, no allow rule is needed.
#[test]
fn get_and_delete_obey_deny_rules_only() {
    let up = Upstream::start(respond);
    let policy = r#"    policy:
      - allow: { mcp_method: { equals: tools/list } }
      - name: blocked
        deny: { header: { name: X-Block, exists: true } }
"#;
    let proxy = Proxy::from_config(up.addr, &config(policy));
    let alice = token(claims("alice", "mcp"));
    for method in ["GET", "DELETE"] {
        let raw = |extra: &str| {
            format!("{method} /mcp HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {alice}\r\n{extra}\r\n")
        };
        let (resp, _) = exchange(proxy.addr, raw("").as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [200], "{method}: {resp}");
        let (resp, _) = exchange(proxy.addr, raw("X-Block: 1\r\n").as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [403], "{method}: {resp}");
        assert!(resp.contains("blocked"), "{resp}");
    }
}

/// The README's way to refuse listen streams and session ends: a deny rule on
/// the empty method (a request without a JSON-RPC body has none).
#[test]
fn a_deny_rule_on_the_empty_method_refuses_get_and_delete() {
    let up = Upstream::start(respond);
    let policy = r#"    policy:
      - name: no-streams
        deny: { mcp_method: { equals: "" } }
      - allow: { mcp_method: { in: [initialize, tools/list] } }
"#;
    let proxy = Proxy::from_config(up.addr, &config(policy));
    let alice = token(claims("alice", "mcp"));
    for method in ["GET", "DELETE"] {
        let raw = format!(
            "{method} /mcp HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {alice}\r\n\r\n"
        );
        let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [403], "{method}: {resp}");
        assert!(resp.contains("no-streams"), "{resp}");
    }
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let (resp, _) = exchange(proxy.addr, post(Some(&alice), list).as_bytes(), SHORT);
    assert_eq!(
        statuses(&resp),
        [200],
        "a call with a method is not caught: {resp}"
    );
}

/// A request content screening blocks is answered like a policy denial: a
/// JSON-RPC error with its id (200), 403 on a legacy message POST, and 202
/// for a notification (nothing answers one); none reaches the upstream.
/// The `content` criterion sees what screening found in that message.
#[test]
fn screening_refusals_answer_like_denials() {
    let up = Upstream::start(respond);
    let screen = "    screen: { actions: { email: audit } }\n    policy:\n      - name: no-email\n        deny: { content: { detector: email } }\n      - allow: { and: [] }\n";
    let proxy = Proxy::from_config(up.addr, &config(screen));
    let alice = token(claims("alice", "mcp"));
    let key = r#""-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----""#;
    let notification = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":{key}}}}}"#
    );
    let request = call(7, "store", &format!(r#"{{"text":{key}}}"#));
    let legacy = post(Some(&alice), &request).replacen(
        "POST /mcp ",
        "POST /mcp/messages/?session_id=0f3a ",
        1,
    );
    let with_email = call(8, "send", r#"{"to":"x@y.example"}"#);
    let raw = [
        post(Some(&alice), &notification),
        post(Some(&alice), &request),
        legacy,
        post(Some(&alice), &with_email),
        post(Some(&alice), &call(9, "send", r#"{"to":"nobody"}"#)),
    ]
    .concat();
    let (resp, closed) = exchange(proxy.addr, raw.as_bytes(), SHORT);
    assert_eq!(statuses(&resp), [202, 200, 403, 200, 200], "{resp}");
    assert!(!closed, "{resp}");
    let answers: Vec<&str> = resp.split("HTTP/1.1 ").skip(1).collect();
    let refused = body(&format!("HTTP/1.1 {}", answers[1]));
    assert_eq!(refused["id"], 7);
    assert_eq!(
        refused["error"]["message"],
        "refused by content screening: private_key found in the request"
    );
    let denied = body(&format!("HTTP/1.1 {}", answers[3]));
    assert_eq!(denied["id"], 8);
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-email"),
        "{denied}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("nobody"));
    assert!(!resp.contains("MIIEvQ") && !resp.contains("x@y.example"));
}
