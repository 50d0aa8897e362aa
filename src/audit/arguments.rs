//! `params.arguments` in a record: rendered with token-like values
//! redacted (`audit_arguments: full`), or exactly as the hash's input.

use crate::mcp::jsonrpc::write_json_string;
use std::io::Write;

/// `params.arguments` in a record.
pub enum Arguments {
    /// Rendered JSON, token-like values redacted (`audit_arguments: full`).
    Json(String),
    /// The keyed hash of the arguments (`hash`), written as `"hmac-sha256:<hex>"`.
    Hash([u8; 32]),
}

/// Argument keys whose values are never written in full.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "api_key",
        "apikey",
        "cookie",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A string that looks like a bearer credential (a JWT, or a long opaque key).
fn token_like(s: &str) -> bool {
    let jwt = s.split('.').count() == 3
        && s.len() > 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    let prefixed = [
        "ghp_",
        "gho_",
        "github_pat_",
        "sk-",
        "xoxb-",
        "xoxp-",
        "AKIA",
        "Bearer ",
    ]
    .iter()
    .any(|p| s.starts_with(p));
    jwt || prefixed
}

/// `params.arguments` (simd-json tape nodes) as JSON, token-like values
/// (by key or by shape) replaced by `"[redacted]"`.
pub(crate) fn arguments_json(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>) {
    let _ = value(nodes, out, false, true);
}

/// `params.arguments` as JSON, nothing redacted (the input of the hash).
pub(crate) fn arguments_exact(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>) {
    let _ = value(nodes, out, false, false);
}

/// Write the value at `nodes[0]`; returns how many nodes it used.
fn value(nodes: &[simd_json::Node<'_>], out: &mut Vec<u8>, redact: bool, scan: bool) -> usize {
    use simd_json::{Node, StaticNode};
    let Some(first) = nodes.first() else {
        return 0;
    };
    match first {
        Node::String(s) => {
            if redact || (scan && token_like(s)) {
                out.extend_from_slice(b"\"[redacted]\"");
            } else {
                write_json_string(out, s);
            }
            1
        }
        Node::Static(st) => {
            if redact {
                out.extend_from_slice(b"\"[redacted]\"");
            } else {
                match st {
                    StaticNode::Null => out.extend_from_slice(b"null"),
                    StaticNode::Bool(b) => {
                        out.extend_from_slice(if *b { b"true" } else { b"false" })
                    }
                    StaticNode::I64(n) => {
                        let _ = write!(out, "{n}");
                    }
                    StaticNode::U64(n) => {
                        let _ = write!(out, "{n}");
                    }
                    StaticNode::F64(n) => {
                        let _ = write!(out, "{n:?}");
                    }
                }
            }
            1
        }
        Node::Array { len, .. } => {
            out.push(b'[');
            let mut i = 1;
            for k in 0..*len {
                if k > 0 {
                    out.push(b',');
                }
                i += value(&nodes[i..], out, redact, scan);
            }
            out.push(b']');
            i
        }
        Node::Object { len, .. } => {
            out.push(b'{');
            let mut i = 1;
            for k in 0..*len {
                if k > 0 {
                    out.push(b',');
                }
                let key = match nodes.get(i) {
                    Some(Node::String(key)) => *key,
                    _ => "",
                };
                write_json_string(out, key);
                out.push(b':');
                i += 1;
                i += value(&nodes[i..], out, redact || (scan && secret_key(key)), scan);
            }
            out.push(b'}');
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_keep_shape_and_hide_secrets() {
        let mut scratch = crate::mcp::jsonrpc::Scratch::default();
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"repo":"a/b","n":3,"f":1.5,"ok":true,"none":null,"list":[1,"two"],"api_token":"abc","nested":{"password":{"deep":"x"}},"jwt":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U","gh":"ghp_abcdef"}}}"#;
        let mut json = Vec::new();
        crate::mcp::jsonrpc::decode(&mut scratch, body, |m| {
            arguments_json(m.arguments.unwrap(), &mut json);
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["repo"], "a/b");
        assert_eq!(v["n"], 3);
        assert_eq!(v["f"], 1.5);
        assert_eq!(v["list"], serde_json::json!([1, "two"]));
        for secret in ["api_token", "jwt", "gh"] {
            assert_eq!(v[secret], "[redacted]", "{secret}");
        }
        assert_eq!(v["nested"]["password"]["deep"], "[redacted]");
    }
}
