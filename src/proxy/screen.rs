//! Content screening on the data plane (issue 14): a route's `screen` run on
//! every JSON-RPC body it judges (requests: a secret in a tool's arguments is
//! the exfiltration case) and on every answer it relays (results, resource
//! contents, prompt messages: a JSON body whole, an event stream event by
//! event, never holding more than one event). What it found goes into the
//! audit record (detector, JSON pointer, count, never the matched text);
//! `redact` rewrites the matches inside their strings, `block` replaces the
//! message with a JSON-RPC error naming the detector.

use crate::error::HttpError;
use crate::http1::encode::Detail;
use crate::mcp::sse::{event_end, join_event, split_event};
use crate::metrics::ScreenCounts;
use crate::proxy::admit::Request;
use crate::proxy::conn::Judged;
use crate::screen::{Direction, Finding, Outcome, Screen};
use crate::snapshot::route::Route;
use serde_json::Value;

/// Largest message (body or event) screened; a longer one is refused.
const MAX_SCREENED: usize = crate::mcp::listfilter::MAX_LIST_BYTES;

/// Most audit text of findings kept for one exchange.
const MAX_AUDIT: usize = 16 * 1024;

/// What screening made of one message.
pub(crate) enum Screened {
    /// Send it as it is.
    Same,
    /// Send this instead (redacted, or the error replacing a blocked one).
    Changed(Vec<u8>),
    /// Refused (a request): the detector that blocked it.
    Blocked(std::sync::Arc<str>),
    /// Refused (a request) because it could not be screened: why.
    Unscreened(String),
}

/// Screen one JSON-RPC body (a message or a batch) going `direction`;
/// findings are appended to `audit` (rendered JSON objects).
pub(crate) fn message(
    screen: &Screen,
    counts: Option<&ScreenCounts>,
    body: &[u8],
    direction: Direction,
    audit: &mut Option<String>,
) -> Screened {
    match scan(screen, body, direction) {
        Ok(findings) => apply(screen, counts, body, &findings, direction, audit),
        Err(instead) => instead,
    }
}

/// The findings in one body, in document order; `Err` says what to do
/// instead when it cannot be screened.
pub(crate) fn scan(
    screen: &Screen,
    body: &[u8],
    direction: Direction,
) -> Result<Vec<Finding>, Screened> {
    if body.len() > MAX_SCREENED {
        return Err(refused(
            body,
            direction,
            "message too large to screen".into(),
        ));
    }
    match screen.scan(body) {
        Ok(f) => Ok(f),
        // Not JSON (a server's plain-text error, say): nothing to screen in
        // strings we cannot find; a request was decoded already.
        Err(crate::screen::JsonError::Utf8 | crate::screen::JsonError::Syntax(_)) => Ok(Vec::new()),
        Err(e) => Err(refused(
            body,
            direction,
            format!("cannot be screened ({e:?})"),
        )),
    }
}

/// The route's actions on what [`scan`] found in `body`: noted in `audit`
/// and the metrics, then redacted, blocked or passed.
pub(crate) fn apply(
    screen: &Screen,
    counts: Option<&ScreenCounts>,
    body: &[u8],
    findings: &[Finding],
    direction: Direction,
    audit: &mut Option<String>,
) -> Screened {
    if findings.is_empty() {
        return Screened::Same;
    }
    match decided(screen, counts, findings, direction, audit) {
        Outcome::Pass => Screened::Same,
        Outcome::Redact(mask) => {
            let mut out = Vec::with_capacity(body.len());
            match screen.redact(body, mask, &mut out) {
                Ok(_) => Screened::Changed(out),
                Err(e) => refused(body, direction, format!("cannot be redacted ({e:?})")),
            }
        }
        Outcome::Block { detector } => match direction {
            Direction::Request => Screened::Blocked(detector),
            Direction::Response => Screened::Changed(withheld(
                body,
                &format!("portcullis withheld this answer: content screening found {detector}"),
            )),
        },
    }
}

/// The route's content screening of a judged request body, on what its
/// scan found: noted in the audit record whatever the verdict; when the
/// policy allowed the body, the body to send instead (redacted) or a
/// refusal naming the detector (the JSON-RPC error answers every request
/// of the body). A body the policy refused is not rewritten.
pub(crate) fn request(
    route: &Route,
    req: &Request,
    held: &[u8],
    scanned: Option<Result<Vec<Finding>, Screened>>,
    verdict: Result<(), HttpError>,
    judged: &mut Judged,
) -> (Result<(), HttpError>, Option<Vec<u8>>) {
    let (screen, counts) = (route.screen.as_deref(), route.screen_counts.as_deref());
    let audit = &mut judged.audit.screen;
    let screened = match (screen, scanned, &verdict) {
        (Some(screen), Some(Ok(found)), Ok(())) => {
            apply(screen, counts, held, &found, Direction::Request, audit)
        }
        (Some(screen), Some(Ok(found)), Err(_)) => {
            decided(screen, counts, &found, Direction::Request, audit);
            Screened::Same
        }
        (_, Some(Err(instead)), _) => instead,
        _ => Screened::Same,
    };
    let why = match (&verdict, screened) {
        (Ok(()), Screened::Changed(new)) => return (verdict, Some(new)),
        (Ok(()), Screened::Blocked(detector)) => format!("{detector} found in the request"),
        (Ok(()), Screened::Unscreened(why)) => why,
        _ => return (verdict, None),
    };
    let err = crate::proxy::judge::denied(
        HttpError::PolicyDenied,
        &judged.ids,
        req.mcp_head.legacy_post,
    );
    judged.detail = Some(Box::new(Detail {
        ids: judged.ids.clone(),
        batch: judged.batch,
        message: Some(format!("refused by content screening: {why}")),
        headers: Vec::new(),
    }));
    (Err(err), None)
}

/// The findings of message `index` of a body (all of them unless it is a
/// batch, whose pointers start with the message's index).
pub(crate) fn of_message(findings: &[Finding], batch: bool, index: usize) -> &[Finding] {
    if !batch {
        return findings;
    }
    let index_of = |f: &Finding| {
        f.pointer
            .get(1..)
            .and_then(|p| p.split('/').next())
            .and_then(|n| n.parse::<usize>().ok())
    };
    let start = findings.partition_point(|f| index_of(f).is_some_and(|i| i < index));
    let len = findings[start..]
        .iter()
        .take_while(|f| index_of(f) == Some(index))
        .count();
    &findings[start..start + len]
}

/// What the route's actions make of `findings`, noted in the audit record
/// and the metrics.
fn decided(
    screen: &Screen,
    counts: Option<&ScreenCounts>,
    findings: &[Finding],
    direction: Direction,
    audit: &mut Option<String>,
) -> Outcome {
    let outcome = screen.decide(findings, direction);
    if !findings.is_empty() {
        note(audit, screen, counts, findings, direction, &outcome);
    }
    outcome
}

fn refused(body: &[u8], direction: Direction, why: String) -> Screened {
    match direction {
        Direction::Request => Screened::Unscreened(why),
        Direction::Response => Screened::Changed(withheld(
            body,
            &format!("portcullis withheld this answer: {why}"),
        )),
    }
}

/// A JSON-RPC error answering each request `body` answered (same ids), or
/// one with a null id.
fn withheld(body: &[u8], message: &str) -> Vec<u8> {
    let error = |id: &Value| serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32003, "message": message}});
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let out = match &v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter_map(|m| m.get("id"))
                .map(error)
                .collect(),
        ),
        m => error(m.get("id").unwrap_or(&Value::Null)),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Findings as audit JSON: `{"direction", "detector", "pointer", "count",
/// "action"}`, each with its own detector's action (`block` only on the one
/// that refused the message).
fn note(
    audit: &mut Option<String>,
    screen: &Screen,
    counts: Option<&ScreenCounts>,
    findings: &[Finding],
    direction: Direction,
    outcome: &Outcome,
) {
    let dir = match direction {
        Direction::Request => "request",
        Direction::Response => "response",
    };
    let text = audit.get_or_insert_with(String::new);
    for (i, f) in findings.iter().enumerate() {
        use crate::screen::Action;
        let action = match (screen.actions().for_finding(f, direction), outcome) {
            (Action::Block, _) => "block",
            // A redaction is moot in a message withheld for another finding.
            (Action::Redact, Outcome::Block { .. }) => "withheld",
            (Action::Redact, _) => "redact",
            (Action::Audit, _) => "audit",
        };
        if let Some(c) = counts {
            c.bump(f.detector_index(), dir, action);
        }
        // The record keeps the first 32 of a message, and about 16 KiB in
        // all (a long event stream adds findings event after event).
        if i >= 32 || text.len() > MAX_AUDIT {
            continue;
        }
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(
            &serde_json::json!({"direction": dir, "detector": &*f.detector, "pointer": f.pointer,
                "count": f.count, "action": action})
            .to_string(),
        );
    }
}

/// An event stream screened event by event: each complete event's data is
/// screened as one message; other lines pass as they are.
#[derive(Default)]
pub(crate) struct Events {
    pending: Vec<u8>,
}

impl Events {
    /// Feed body bytes; what may be sent now goes to `out`. `Err` when one
    /// event outgrows the bound (the stream is then cut: fail closed).
    pub(crate) fn feed(
        &mut self,
        screen: &Screen,
        counts: Option<&ScreenCounts>,
        data: &[u8],
        out: &mut Vec<u8>,
        audit: &mut Option<String>,
    ) -> Result<(), ()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(len) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + len];
            match screen_event(screen, counts, event, audit) {
                Some(new) => out.extend_from_slice(&new),
                None => out.extend_from_slice(event),
            }
            start += len;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_SCREENED {
            return Err(());
        }
        Ok(())
    }

    /// At the end of the stream: an event without its blank line, which
    /// clients discard unread, passes as it is.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
    }
}

/// The event rewritten when screening changed its message.
fn screen_event(
    screen: &Screen,
    counts: Option<&ScreenCounts>,
    event: &[u8],
    audit: &mut Option<String>,
) -> Option<Vec<u8>> {
    let (kept, data) = split_event(event)?;
    if data.is_empty() {
        return None;
    }
    let Screened::Changed(new) =
        message(screen, counts, data.as_bytes(), Direction::Response, audit)
    else {
        return None;
    };
    Some(join_event(kept, &new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::screen::ScreenConfig;

    fn screen() -> Screen {
        let cfg: ScreenConfig =
            serde_yaml_ng::from_str("{ actions: { aws_key: redact, email: redact, jwt: block } }")
                .unwrap();
        Screen::compile(&cfg).unwrap()
    }

    /// An event split across reads, fed one byte at a time: screened whole,
    /// the other events and fields byte-exact, nothing held past its end.
    #[test]
    fn events_split_across_reads_are_screened_whole() {
        let s = screen();
        let stream = concat!(
            "id: 1\nevent: message\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",",
            "\"text\":\"key AKIAIOSFODNN7EXAMPLE to a@b.example\"}]}}\n\n",
            ": a comment\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
        );
        let mut events = Events::default();
        let (mut out, mut audit) = (Vec::new(), None);
        for b in stream.as_bytes() {
            events.feed(&s, None, &[*b], &mut out, &mut audit).unwrap();
        }
        events.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("id: 1\nevent: message\ndata: {"), "{text}");
        assert!(
            text.contains("[REDACTED:aws_key]") && text.contains("[REDACTED:email]"),
            "{text}"
        );
        assert!(
            !text.contains("AKIA") && !text.contains("a@b.example"),
            "{text}"
        );
        assert!(text.ends_with(
            ": a comment\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n"
        ));
        let audit = audit.unwrap();
        assert!(
            audit.contains("\"aws_key\"") && !audit.contains("AKIA"),
            "{audit}"
        );
    }

    /// A blocked answer becomes a JSON-RPC error with the same id; a blocked
    /// request is refused naming the detector; no finding, no change.
    #[test]
    fn block_answers_with_the_ids_and_nothing_found_passes() {
        let s = screen();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        let answer = format!(
            r#"[{{"jsonrpc":"2.0","id":"a","result":{{"t":"{jwt}"}}}},{{"jsonrpc":"2.0","id":2,"result":{{}}}}]"#
        );
        let mut audit = None;
        let Screened::Changed(new) =
            message(&s, None, answer.as_bytes(), Direction::Response, &mut audit)
        else {
            panic!("blocked answers are replaced")
        };
        let v: Value = serde_json::from_slice(&new).unwrap();
        assert_eq!(v[0]["id"], "a");
        assert_eq!(v[1]["id"], 2);
        assert!(v[0]["error"]["message"].as_str().unwrap().contains("jwt"));
        assert!(!String::from_utf8_lossy(&new).contains(jwt));
        let request = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"t":"{jwt}"}}}}}}"#
        );
        assert!(matches!(
            message(&s, None, request.as_bytes(), Direction::Request, &mut None),
            Screened::Blocked(d) if &*d == "jwt"
        ));
        let clean = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let mut audit = None;
        assert!(matches!(
            message(&s, None, clean, Direction::Response, &mut audit),
            Screened::Same
        ));
        assert!(audit.is_none());
    }

    /// A batch's findings go to the message they were found in.
    #[test]
    fn findings_are_attributed_to_their_message() {
        let s = screen();
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{}}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b","arguments":{"t":"x@y.example"}}},
            {"jsonrpc":"2.0","id":3,"method":"ping"},
            {"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"c","arguments":{"k":"AKIAIOSFODNN7EXAMPLE","e":"p@q.example"}}}]"#;
        let found = s.scan(batch).unwrap();
        let names = |i| -> Vec<&str> {
            of_message(&found, true, i)
                .iter()
                .map(|f| &*f.detector)
                .collect()
        };
        assert!(names(0).is_empty());
        assert_eq!(names(1), ["email"]);
        assert!(names(2).is_empty());
        assert_eq!(names(3), ["aws_key", "email"]);
        assert!(names(4).is_empty());
        assert_eq!(of_message(&found, false, 0).len(), found.len());
    }
}
