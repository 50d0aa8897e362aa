//! `portcullis audit`: select records from an audit log by principal, tool,
//! decision and time (compared as instants), or count them.

use std::io::Write;

/// What `portcullis audit` selects.
#[derive(Debug, Default)]
pub struct Query {
    /// `sub` or email of the principal.
    pub principal: Option<String>,
    /// Tool, prompt or resource (`target`).
    pub tool: Option<String>,
    pub decision: Option<String>,
    /// Records stamped at or after this instant (inclusive).
    pub since: Option<jiff::Timestamp>,
    /// Records stamped before this instant (exclusive: `--until T` and
    /// `--since T` split a log with no record in both).
    pub until: Option<jiff::Timestamp>,
}

/// Parse a `--since` / `--until` value: an RFC 3339 time with an offset.
pub fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
    s.parse().map_err(|e| {
        format!(
            "expected an RFC 3339 time with an offset, such as 2026-11-22T08:00:00Z \
             or 2026-11-22T10:00:00+02:00 ({e})"
        )
    })
}

impl Query {
    fn matches(&self, r: &serde_json::Value) -> bool {
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        if let Some(p) = &self.principal {
            let who = &r["principal"];
            if s(&who["sub"]).as_ref() != Some(p) && s(&who["email"]).as_ref() != Some(p) {
                return false;
            }
        }
        if self.tool.is_some() && s(&r["target"]) != self.tool {
            return false;
        }
        if self.decision.is_some() && s(&r["decision"]) != self.decision {
            return false;
        }
        self.in_window(r["time"].as_str())
    }

    /// Whether a record's `time` is within `since..until`, compared as
    /// instants (the records write UTC with microseconds, the bounds may have
    /// any offset and precision). With a bound, a record without a readable
    /// time is left out.
    fn in_window(&self, time: Option<&str>) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(t) = time.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
            return false;
        };
        self.since.is_none_or(|since| t >= since) && self.until.is_none_or(|until| t < until)
    }
}

/// What a query found.
#[derive(Debug, Default)]
pub struct Found {
    pub matched: u64,
    /// (target, decision) → count, sorted.
    pub counts: std::collections::BTreeMap<(String, String), u64>,
    /// Line numbers (1-based) of lines that are not records.
    pub bad_lines: Vec<u64>,
}

/// Read audit records from `input`; write the matching ones to `out`
/// (unless `summary_only`), and count them per target and decision.
pub fn query(
    input: impl std::io::BufRead,
    q: &Query,
    mut out: impl Write,
    summary_only: bool,
) -> std::io::Result<Found> {
    let mut found = Found::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) else {
            found.bad_lines.push(n as u64 + 1);
            continue;
        };
        if !r.is_object() || r["v"].as_u64().is_none() {
            found.bad_lines.push(n as u64 + 1);
            continue;
        }
        if !q.matches(&r) {
            continue;
        }
        found.matched += 1;
        let key = (
            r["target"]
                .as_str()
                .or(r["method"].as_str())
                .unwrap_or("-")
                .to_string(),
            r["decision"].as_str().unwrap_or("-").to_string(),
        );
        *found.counts.entry(key).or_default() += 1;
        if !summary_only {
            writeln!(out, "{line}")?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn queries_filter_and_count() {
        let log = r#"{"v":1,"time":"2026-11-22T10:00:00.000000Z","principal":{"sub":"alice","email":"a@x"},"method":"tools/call","target":"search","decision":"allowed"}
{"v":1,"time":"2026-11-22T11:00:00.000000Z","principal":{"sub":"bob","email":"b@x"},"method":"tools/call","target":"delete_repo","decision":"denied"}
not a record
{"v":1,"time":"2026-11-22T12:00:00.000000Z","principal":null,"method":"ping","target":null,"decision":"unauthenticated"}
{"v":1,"time":"2026-11-22T12:30:00.000000Z","principal":{"sub":"alice","email":"a@x"},"method":"tools/call","target":"search","decision":"allowed"}
"#;
        let run = |q: Query| {
            let mut out = Vec::new();
            let f = query(log.as_bytes(), &q, &mut out, false).unwrap();
            (f, String::from_utf8(out).unwrap())
        };
        let (f, out) = run(Query::default());
        assert_eq!(f.matched, 4);
        assert_eq!(f.bad_lines, [3]);
        assert_eq!(out.lines().count(), 4);
        assert_eq!(f.counts[&("search".to_string(), "allowed".to_string())], 2);
        assert_eq!(
            f.counts[&("ping".to_string(), "unauthenticated".to_string())],
            1
        );
        let (f, _) = run(Query {
            principal: Some("a@x".into()),
            ..Query::default()
        });
        assert_eq!(f.matched, 2);
        let (f, _) = run(Query {
            decision: Some("denied".into()),
            ..Query::default()
        });
        assert_eq!(f.matched, 1);
        let (f, _) = run(Query {
            tool: Some("search".into()),
            since: Some("2026-11-22T12:00:00Z".parse().unwrap()),
            ..Query::default()
        });
        assert_eq!(f.matched, 1);
        let (f, _) = run(Query {
            until: Some("2026-11-22T11:00:00.000000Z".parse().unwrap()),
            ..Query::default()
        });
        assert_eq!(f.matched, 1);
    }

    #[test]
    fn bad_times_are_refused_clearly() {
        assert!(parse_time("2026-11-22T10:00:00+02:00").is_ok());
        for bad in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-11-22T08:00:00",
            "2026-11-31T08:00:00Z",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    /// `--since` is inclusive and `--until` exclusive, both compared as
    /// instants whatever the offset or the digits of the fraction.
    #[test]
    fn time_bounds_are_instants() {
        let log = [
            r#"{"v":1,"time":"2026-01-01T00:00:00.000000Z","target":"at"}"#,
            r#"{"v":1,"time":"2026-01-01T00:00:01.000000Z","target":"after"}"#,
            r#"{"v":1,"time":"2026-01-01T01:30:00+01:00","target":"offset"}"#,
        ]
        .join("\n");
        let targets = |since: Option<&str>, until: Option<&str>| {
            let q = Query {
                since: since.map(|t| t.parse().unwrap()),
                until: until.map(|t| t.parse().unwrap()),
                ..Query::default()
            };
            let mut out = Vec::new();
            query(log.as_bytes(), &q, &mut out, false).unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["target"].to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
                .replace('"', "")
        };
        let rows = [
            (Some("2026-01-01T00:00:00Z"), None, "at after offset"),
            (Some("2026-01-01T00:00:00.000Z"), None, "at after offset"),
            (Some("2026-01-01T00:00:00.000001Z"), None, "after offset"),
            (None, Some("2026-01-01T00:00:00Z"), ""),
            (None, Some("2026-01-01T00:00:01Z"), "at"),
            (
                Some("2026-01-01T02:00:00+02:00"),
                Some("2026-01-01T00:30:00Z"),
                "at after",
            ),
            (Some("2026-01-01T00:30:00Z"), None, "offset"),
            (None, Some("2025-12-31T19:00:00.5-05:00"), "at"),
        ];
        for (since, until, want) in rows {
            assert_eq!(
                targets(since, until),
                want,
                "since {since:?} until {until:?}"
            );
        }
    }
}
