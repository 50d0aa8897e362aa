//! The admin listener: health, readiness, the configuration summary, and
//! metrics that count requests per route by status, decision and latency.

use crate::auth::{claims, config, post, token};
use crate::harness::{exchange, ok_json, statuses, Proxy, Upstream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(400);

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
        SHORT,
    )
    .0
}

#[test]
fn admin_serves_health_config_and_metrics() {
    let up = Upstream::start(ok_json);
    let policy = "    policy:\n      - allow: { mcp_method: { equals: ping } }\n";
    let text = config(policy).replace(
        "workers: 1\n",
        "workers: 1\nadmin: { address: 127.0.0.1:0 }\n",
    );
    let proxy = Proxy::from_config(up.addr, &text);
    let admin = proxy.admin().expect("admin listener");
    let alice = token(claims("alice", "mcp"));
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}"#;
    for (raw, status) in [
        (post(Some(&alice), ping), 200),
        (post(Some(&alice), ping), 200),
        (post(Some(&alice), call), 200), // denied by policy: a JSON-RPC error
        (post(None, ping), 401),
        (
            post(Some(&alice), ping).replace("Host: proxy.test", "Host: other.test"),
            404,
        ),
    ] {
        let (resp, _) = exchange(proxy.addr, raw.as_bytes(), SHORT);
        assert_eq!(statuses(&resp), [status], "{resp}");
    }

    assert!(get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(admin, "/readyz").starts_with("HTTP/1.1 200"));
    let cfg = get(admin, "/config");
    let v: serde_json::Value = serde_json::from_str(cfg.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v["routes"][0]["name"], "t");
    assert_eq!(v["routes"][0]["policy"], true);
    assert!(!cfg.contains("keys"), "no key material: {cfg}");

    let m = get(admin, "/metrics");
    for line in [
        "portcullis_requests_total{route=\"t\",status=\"2xx\"} 3",
        "portcullis_requests_total{route=\"t\",status=\"4xx\"} 1",
        "portcullis_decisions_total{route=\"t\",decision=\"allowed\"} 2",
        "portcullis_decisions_total{route=\"t\",decision=\"denied\"} 1",
        "portcullis_decisions_total{route=\"t\",decision=\"unauthenticated\"} 1",
        "portcullis_requests_total{route=\"\",status=\"4xx\"} 1",
        "portcullis_request_duration_seconds_count{route=\"t\"} 4",
        "portcullis_token_cache_lookups_total{result=\"hit\"} 2",
        "portcullis_token_cache_lookups_total{result=\"miss\"} 1",
        "portcullis_ready 1",
        "portcullis_mcp_requests_total{route=\"t\",method=\"ping\"} 2",
        "portcullis_mcp_requests_total{route=\"t\",method=\"tools/call\"} 1",
        "portcullis_mcp_requests_total{route=\"t\",method=\"none\"} 1",
    ] {
        assert!(
            m.contains(&format!("{line}\n")),
            "missing {line:?} in:\n{m}"
        );
    }
    // Two pings went upstream: on a new connection or a pooled one, both
    // counted; the pool gauge is set by the worker's 100 ms tick.
    std::thread::sleep(Duration::from_millis(250));
    let m = get(admin, "/metrics");
    let value = |series: &str| -> u64 {
        let line = m
            .lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .unwrap_or_else(|| panic!("missing {series} in:\n{m}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let new = value("portcullis_upstream_connections_total{kind=\"new\"}");
    let reused = value("portcullis_upstream_connections_total{kind=\"reused\"}");
    assert!(new >= 1 && new + reused >= 2, "new {new}, reused {reused}");
    assert!(value("portcullis_upstream_idle_connections") <= new);
    assert_eq!(value("portcullis_jwks_keys{issuer=\"idp\"}"), 1, "{m}");
    assert!(get(admin, "/nope").starts_with("HTTP/1.1 404"));
}
