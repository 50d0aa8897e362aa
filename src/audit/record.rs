//! One audit record as a JSON line, written without `core::fmt`.

use super::{Arguments, Facts, TlsInfo, SCHEMA_VERSION};
use crate::http1::encode::push_u64;
use crate::mcp::jsonrpc::write_json_string;
use crate::metrics::Decision;
use crate::principal::Principal;
use std::io::Write;

/// Everything a record is built from.
pub struct Record<'a> {
    pub unix_micros: u64,
    pub request_id: &'a str,
    pub worker: usize,
    pub client: std::net::SocketAddr,
    /// What the TLS handshake settled (`None`: plain TCP).
    pub tls: Option<&'a TlsInfo>,
    pub route: Option<&'a str>,
    pub facts: &'a Facts,
    pub decision: Decision,
    pub reason: &'a str,
    pub status: u16,
    pub latency_us: u64,
    /// The upstream's status and the time to its answer's head (µs).
    pub upstream: Option<(u16, u64)>,
    /// Bytes read from and written to the client connection while this
    /// request was served (after TLS; a pipelined request read in the same
    /// read as an earlier one counts toward the earlier one).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Append `r` as one JSON line to `out`.
pub(crate) fn write_record(out: &mut Vec<u8>, r: &Record<'_>) {
    let f = r.facts;
    out.extend_from_slice(b"{\"v\":");
    push_u64(out, u64::from(SCHEMA_VERSION));
    out.extend_from_slice(b",\"time\":\"");
    write_time(out, r.unix_micros);
    out.extend_from_slice(b"\",\"request_id\":");
    write_json_string(out, r.request_id);
    out.extend_from_slice(b",\"worker\":");
    push_u64(out, r.worker as u64);
    out.extend_from_slice(b",\"client\":\"");
    write_addr(out, &r.client);
    match r.tls {
        None => out.extend_from_slice(b"\",\"tls\":false,\"tls_version\":null,\"sni\":null"),
        Some(tls) => {
            out.extend_from_slice(b"\",\"tls\":true,\"tls_version\":");
            write_json_string(out, tls.version);
            out.extend_from_slice(b",\"sni\":");
            opt_str(out, tls.sni.as_deref());
        }
    }
    out.extend_from_slice(b",\"route\":");
    opt_str(out, r.route);
    out.extend_from_slice(b",\"principal\":");
    match &f.principal {
        None => out.extend_from_slice(b"null"),
        Some(p) => out.extend_from_slice(p.record_json.get_or_init(|| {
            let mut json = Vec::with_capacity(128);
            write_principal(&mut json, p);
            json
        })),
    }
    out.extend_from_slice(b",\"era\":");
    if f.era == 0 {
        out.extend_from_slice(b"null");
    } else {
        let mut text = *b"\"0000-00-00\"";
        put_digits(&mut text[1..5], u64::from(f.era / 10_000));
        put_digits(&mut text[6..8], u64::from(f.era / 100 % 100));
        put_digits(&mut text[9..11], u64::from(f.era % 100));
        out.extend_from_slice(&text);
    }
    out.extend_from_slice(b",\"method\":");
    opt_str(out, f.method.as_deref());
    out.extend_from_slice(b",\"target\":");
    opt_str(out, f.target.as_deref());
    out.extend_from_slice(b",\"rpc_id\":");
    match &f.rpc_id {
        Some(id) => id.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"batch\":");
    push_u64(out, f.batch as u64);
    match &f.arguments {
        None => {}
        Some(Arguments::Json(json)) => {
            out.extend_from_slice(b",\"arguments\":");
            out.extend_from_slice(json.as_bytes());
        }
        Some(Arguments::Hash(tag)) => {
            out.extend_from_slice(b",\"arguments\":\"");
            write_tag(out, tag);
            out.push(b'"');
        }
    }
    for (key, found) in [("screen", &f.screen), ("anomalies", &f.anomalies)] {
        if let Some(found) = found {
            let _ = write!(out, ",\"{key}\":[{found}]");
        }
    }
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(r.decision.as_str().as_bytes());
    out.extend_from_slice(b"\",\"rule\":");
    opt_str(out, f.rule.as_deref());
    out.extend_from_slice(b",\"reason\":");
    write_json_string(out, r.reason);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"latency_us\":");
    push_u64(out, r.latency_us);
    match r.upstream {
        Some((status, us)) => {
            out.extend_from_slice(b",\"upstream_status\":");
            push_u64(out, u64::from(status));
            out.extend_from_slice(b",\"upstream_latency_us\":");
            push_u64(out, us);
        }
        None => out.extend_from_slice(b",\"upstream_status\":null,\"upstream_latency_us\":null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, r.bytes_out);
    out.extend_from_slice(b",\"session\":");
    opt_str(out, f.session.as_deref());
    out.extend_from_slice(b"}\n");
}

fn write_principal(out: &mut Vec<u8>, p: &Principal) {
    out.extend_from_slice(b"{\"issuer\":");
    write_json_string(out, &p.issuer_name);
    out.extend_from_slice(b",\"sub\":");
    write_json_string(out, &p.sub);
    out.extend_from_slice(b",\"email\":");
    opt_str(out, p.email.as_deref());
    out.extend_from_slice(b",\"groups\":[");
    for (i, g) in p.groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, g);
    }
    out.extend_from_slice(b"],\"client_id\":");
    opt_str(out, p.client_id.as_deref());
    out.push(b'}');
}

/// How a keyed hash is labelled in audit records.
pub(super) const TAG_PREFIX: &str = "hmac-sha256:";

/// `hmac-sha256:<hex>`.
pub(super) fn write_tag(out: &mut Vec<u8>, tag: &[u8; 32]) {
    out.extend_from_slice(TAG_PREFIX.as_bytes());
    crate::sys::push_hex(out, tag);
}

/// A client address as `ip:port` (`[ip]:port` for IPv6), like `Display`.
fn write_addr(out: &mut Vec<u8>, addr: &std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 3339 UTC with microseconds, from microseconds since the epoch.
/// Now, as audit records write their `time`.
pub(crate) fn now_rfc3339() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut out = Vec::with_capacity(32);
    write_time(&mut out, micros);
    // Digits and ASCII punctuation only: the lossy reading never replaces.
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn write_time(out: &mut Vec<u8>, unix_micros: u64) {
    let secs = unix_micros / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Made whole, then appended in one piece.
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut text[0..4], y.clamp(0, 9999) as u64);
    put_digits(&mut text[5..7], m as u64);
    put_digits(&mut text[8..10], d as u64);
    put_digits(&mut text[11..13], rem / 3600);
    put_digits(&mut text[14..16], rem / 60 % 60);
    put_digits(&mut text[17..19], rem % 60);
    put_digits(&mut text[20..26], unix_micros % 1_000_000);
    out.extend_from_slice(&text);
}

/// The last `dst.len()` decimal digits of `v`, zero-padded, into `dst`.
fn put_digits(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let mut out = Vec::new();
        write_time(&mut out, 1_795_315_404_123_456);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-22T02:43:24.123456Z"
        );
        let mut out = Vec::new();
        write_time(&mut out, 951_782_400_000_000); // leap day 2000
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn records_are_json_with_every_field() {
        let facts = Facts {
            era: 20_250_618,
            method: Some("tools/call".into()),
            target: Some("get \"file\"".into()),
            batch: 1,
            arguments: Some(Arguments::Hash([0xab; 32])),
            ..Facts::default()
        };
        for (client, shown) in [
            ("10.0.255.7:40000", "10.0.255.7:40000"),
            ("[::1]:8443", "[::1]:8443"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ] {
            let mut out = Vec::new();
            write_record(
                &mut out,
                &Record {
                    unix_micros: 1_795_315_404_123_456,
                    request_id: "r-1",
                    worker: 3,
                    client: client.parse().unwrap(),
                    tls: None,
                    route: Some("mcp"),
                    facts: &facts,
                    decision: Decision::Allowed,
                    reason: "",
                    status: 200,
                    latency_us: u64::MAX,
                    upstream: Some((502, 0)),
                    bytes_in: 1024,
                    bytes_out: 10,
                },
            );
            assert_eq!(out.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["client"], shown);
            assert_eq!(v["v"], 1);
            assert_eq!(v["worker"], 3);
            assert_eq!(v["tls"], false);
            assert_eq!(v["era"], "2025-06-18");
            assert_eq!(v["method"], "tools/call");
            assert_eq!(v["target"], "get \"file\"");
            assert_eq!(v["arguments"], format!("hmac-sha256:{}", "ab".repeat(32)));
            assert_eq!(v["decision"], "allowed");
            assert_eq!(v["latency_us"], u64::MAX);
            assert_eq!(
                (
                    v["upstream_status"].clone(),
                    v["upstream_latency_us"].clone()
                ),
                (502.into(), 0.into())
            );
            assert_eq!(
                (v["bytes_in"].clone(), v["bytes_out"].clone()),
                (1024.into(), 10.into())
            );
            assert_eq!(v["session"], serde_json::Value::Null);
        }
    }

    #[test]
    fn principal_tls_and_tag_read_back_the_same_every_time() {
        let mut p = Principal::for_tests("al\"ice");
        p.email = Some("alice@example.com".into());
        p.groups = vec!["eng".into(), "on\\call".into()];
        p.client_id = Some("agent-1".into());
        let mut tag = [0u8; 32];
        for (i, b) in tag.iter_mut().enumerate() {
            *b = (i * 8 + 1) as u8;
        }
        let facts = Facts {
            principal: Some(std::rc::Rc::new(p)),
            arguments: Some(Arguments::Hash(tag)),
            ..Facts::default()
        };
        let tls = TlsInfo {
            version: "TLSv1.3",
            sni: Some("mcp.example".into()),
        };
        let record = Record {
            unix_micros: 0,
            request_id: "r-2",
            worker: 0,
            client: "127.0.0.1:1".parse().unwrap(),
            tls: Some(&tls),
            route: None,
            facts: &facts,
            decision: Decision::Denied,
            reason: "no rule",
            status: 403,
            latency_us: 7,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
        };
        let (mut first, mut second) = (Vec::new(), Vec::new());
        write_record(&mut first, &record);
        // The second time the principal comes from its memo.
        write_record(&mut second, &record);
        assert_eq!(first, second);
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            v["principal"],
            serde_json::json!({"issuer": "idp", "sub": "al\"ice",
                "email": "alice@example.com", "groups": ["eng", "on\\call"],
                "client_id": "agent-1"})
        );
        assert_eq!(
            (v["tls"].clone(), v["tls_version"].clone()),
            (true.into(), "TLSv1.3".into())
        );
        assert_eq!(v["sni"], "mcp.example");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(v["arguments"], format!("hmac-sha256:{hex}"));
        assert_eq!(v["era"], serde_json::Value::Null);
        assert_eq!(v["upstream_status"], serde_json::Value::Null);
    }
}
