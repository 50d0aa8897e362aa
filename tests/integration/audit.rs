//! The audit log: exactly one parseable record per request, whatever its
//! outcome, all flushed at shutdown, with the fields right.

use crate::auth::{claims, config, post, token};
use crate::harness::{exchange, ok_json, Upstream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn one_record_per_request_under_load() {
    let up = Upstream::start(ok_json);
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&log);
    let policy = "    audit_arguments: full\n    policy:\n      - allow: { mcp_method: { in: [ping, tools/call] } }\n      - name: no-deletes\n        deny: { mcp_tool: { starts_with: delete_ } }\n";
    let text = config(policy)
        .replace(
            "workers: 1\n",
            &format!("workers: 2\naudit: {{ path: {} }}\n", log.display()),
        )
        .replace("{upstream}", &up.addr.to_string());
    let snap = portcullis::snapshot::from_text(&text, std::path::Path::new("t.yaml")).unwrap();
    let running = portcullis::runtime::start(snap).unwrap();
    let addr = running.addresses[0];
    let alice = token(claims("alice", "mcp"));
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let delete = r#"{"jsonrpc":"2.0","id":"d-1","method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"a","token":"s3cret"}}}"#;
    // Four kinds, each sent by its own thread 40 times, concurrently.
    let close = |raw: String| {
        raw.replace(
            "Host: proxy.test\r\n",
            "Host: proxy.test\r\nConnection: close\r\n",
        )
    };
    let kinds: Vec<String> = vec![
        close(post(Some(&alice), ping)),
        close(post(Some(&alice), delete)),
        close(post(None, ping)),
        close(post(Some(&alice), "{not json")),
    ];
    let per_kind = 40;
    let threads: Vec<_> = kinds
        .into_iter()
        .map(|raw| {
            std::thread::spawn(move || {
                for _ in 0..per_kind {
                    let _ = exchange(addr, raw.as_bytes(), SHORT);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    running.shutdown();
    running.join();

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        records.len(),
        4 * per_kind,
        "exactly one record per request"
    );
    let count = |decision: &str, status: u64| {
        records
            .iter()
            .filter(|r| r["decision"] == decision && r["status"] == status)
            .count()
    };
    assert_eq!(count("allowed", 200), per_kind);
    assert_eq!(count("denied", 200), per_kind);
    assert_eq!(count("unauthenticated", 401), per_kind);
    assert_eq!(count("invalid", 400), per_kind);
    let denied = records.iter().find(|r| r["decision"] == "denied").unwrap();
    assert_eq!(denied["v"], 1);
    assert_eq!(denied["route"], "t");
    assert_eq!(denied["principal"]["sub"], "alice");
    assert_eq!(
        denied["principal"]["groups"],
        serde_json::json!(["engineering"])
    );
    assert_eq!(denied["method"], "tools/call");
    assert_eq!(denied["target"], "delete_repo");
    assert_eq!(denied["rpc_id"], "d-1");
    assert_eq!(denied["rule"], "no-deletes");
    assert_eq!(denied["arguments"]["repo"], "a");
    assert_eq!(denied["arguments"]["token"], "[redacted]");
    assert!(!text.contains("s3cret"), "a secret reached the audit log");
    assert!(!text.contains(&alice), "a token reached the audit log");
    let time = denied["time"].as_str().unwrap();
    assert!(time.len() == 27 && time.ends_with('Z'), "{time}");
    let _ = std::fs::remove_dir_all(&dir);
}
