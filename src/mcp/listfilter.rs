//! List filtering: the results of `tools/list`, `prompts/list`,
//! `resources/list` and `resources/templates/list` keep only the items the
//! caller may use. A JSON body is filtered whole; an SSE stream event by
//! event (only the event answering the list request is rewritten, every
//! other byte passes unchanged). Fails closed: a list response that cannot
//! be read is replaced by an error, never passed unfiltered.

use super::jsonrpc::RpcId;
use super::method::Method;
use super::sse::{event_end, join_event, split_event};
use serde_json::Value;

/// Which list, and so which items and which key names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn of_method(method: Method<'_>) -> Option<ListKind> {
        Some(match method {
            Method::ToolsList => ListKind::Tools,
            Method::PromptsList => ListKind::Prompts,
            Method::ResourcesList => ListKind::Resources,
            Method::ResourcesTemplatesList => ListKind::ResourceTemplates,
            _ => return None,
        })
    }

    /// (result member holding the items, item member naming each).
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools", "name"),
            ListKind::Prompts => ("prompts", "name"),
            ListKind::Resources => ("resources", "uri"),
            ListKind::ResourceTemplates => ("resourceTemplates", "uriTemplate"),
        }
    }
}

/// The list requests of one body whose answers must be filtered (one, or
/// several in a batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFilter {
    pub wanted: Vec<(ListKind, RpcId)>,
}

impl ListFilter {
    pub fn one(kind: ListKind, id: RpcId) -> ListFilter {
        ListFilter {
            wanted: vec![(kind, id)],
        }
    }

    fn kind_of(&self, id: &Value) -> Option<(ListKind, &RpcId)> {
        self.wanted
            .iter()
            .find(|(_, want)| id_matches(id, want))
            .map(|(k, id)| (*k, id))
    }
}

/// What filtering asks of its caller: whether each item may be seen; it
/// also hears when a list answer's items were all judged, and of the
/// notifications passing by (pinning records and audits from these).
pub(crate) trait Visible {
    /// Whether the caller may see `item`, of a `kind` list, named `name`.
    fn visible(&mut self, kind: ListKind, name: &str, item: &Value) -> bool;
    /// Every item of a `kind` list answer was judged; `complete` when the
    /// answer has no `nextCursor` (it held the whole list).
    fn listed(&mut self, _kind: ListKind, _complete: bool) {}
    /// A notification (a message with a `method` and no `id`) went by.
    fn notified(&mut self, _method: &str) {}
}

/// A test by kind and name only (a route's policy).
impl<F: FnMut(ListKind, &str) -> bool> Visible for F {
    fn visible(&mut self, kind: ListKind, name: &str, _item: &Value) -> bool {
        self(kind, name)
    }
}

/// Largest list response (JSON body or one SSE event) filtered.
pub(crate) const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Filter a JSON-RPC message or batch of messages (`body`): the answers to
/// `filter`'s requests lose the items `visible` refuses. `None`: no answer
/// to them is in it (pass it unchanged); else the new body and how many
/// answers it held. An answer whose items cannot be read becomes an error.
pub(crate) fn filter_message(
    filter: &ListFilter,
    body: &[u8],
    visible: &mut dyn Visible,
) -> Option<(Vec<u8>, usize)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let (mut touched, mut answered) = (false, 0);
    let mut one = |item: &mut Value| {
        if let Filtered::Yes(own) = filter_one(filter, item, visible) {
            touched = true;
            answered += usize::from(own);
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(&mut one),
        item => one(item),
    }
    if !touched {
        return None;
    }
    Some((serde_json::to_vec(&v).ok()?, answered))
}

/// What filtering one message did.
#[derive(PartialEq)]
enum Filtered {
    /// Not a list answer: unchanged.
    No,
    /// A list answer filtered (or replaced by an error); `true` when it
    /// answers one of the filter's own requests (by id).
    Yes(bool),
}

/// Filter `msg` in place when it answers one of `filter`'s requests, or, by
/// its shape, any list request: an answer whose id the server changed (say,
/// a large integer read as a double) is filtered all the same.
fn filter_one(filter: &ListFilter, msg: &mut Value, visible: &mut dyn Visible) -> Filtered {
    let Some(obj) = msg.as_object_mut() else {
        return Filtered::No;
    };
    if let (false, Some(method)) = (
        obj.contains_key("id"),
        obj.get("method").and_then(Value::as_str),
    ) {
        visible.notified(method);
        return Filtered::No;
    }
    let own = obj.get("id").and_then(|id| filter.kind_of(id));
    if obj.contains_key("error") {
        return if own.is_some() {
            Filtered::Yes(true)
        } else {
            Filtered::No
        };
    }
    let kind = match own {
        Some((kind, _)) => kind,
        None => match obj.get("result").and_then(Value::as_object).and_then(|r| {
            [
                ListKind::Tools,
                ListKind::Prompts,
                ListKind::Resources,
                ListKind::ResourceTemplates,
            ]
            .into_iter()
            .find(|k| r.contains_key(k.keys().0))
        }) {
            Some(kind) => kind,
            None => return Filtered::No,
        },
    };
    let (list_key, name_key) = kind.keys();
    let complete = obj
        .get("result")
        .and_then(|r| r.get("nextCursor"))
        .is_none_or(Value::is_null);
    let Some(items) = obj
        .get_mut("result")
        .and_then(|r| r.get_mut(list_key))
        .and_then(Value::as_array_mut)
    else {
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        *msg = unreadable(id);
        return Filtered::Yes(own.is_some());
    };
    items.retain(|item| {
        item.get(name_key)
            .and_then(Value::as_str)
            .is_some_and(|name| visible.visible(kind, name, item))
    });
    visible.listed(kind, complete);
    Filtered::Yes(own.is_some())
}

fn id_matches(id: &Value, want: &RpcId) -> bool {
    match want {
        RpcId::Int(n) => id.as_i64() == Some(*n),
        RpcId::Str(s) => id.as_str() == Some(s),
    }
}

fn unreadable(id: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603,
        "message": "portcullis could not read the list result to filter it"}})
}

/// Filters an SSE stream: events are held until complete (bounded by
/// `MAX_LIST_BYTES`), list answers are rewritten, every other event passes
/// byte-exact. With wanted requests, the stream passes as it comes once all
/// of them are answered; without (a GET stream), every event is judged.
#[derive(Default)]
pub(crate) struct SseListFilter {
    pending: Vec<u8>,
    /// Answers seen so far; done when every wanted one was filtered.
    answered: usize,
    done: bool,
}

impl SseListFilter {
    /// Feed body bytes; append what may be sent now to `out`. `Err` when an
    /// event grows past the bound (the stream is then cut: fail closed).
    #[allow(clippy::result_unit_err)]
    pub(crate) fn feed(
        &mut self,
        filter: &ListFilter,
        data: &[u8],
        out: &mut Vec<u8>,
        visible: &mut dyn Visible,
    ) -> Result<(), ()> {
        if self.done {
            out.extend_from_slice(data);
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(len) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + len];
            match filter_event(filter, event, visible) {
                Some((new, answered)) => {
                    out.extend_from_slice(&new);
                    self.answered += answered;
                }
                None => out.extend_from_slice(event),
            }
            start += len;
            if !filter.wanted.is_empty() && self.answered >= filter.wanted.len() {
                // Every answer is filtered: the rest passes as it comes.
                self.done = true;
                out.extend_from_slice(&self.pending[start..]);
                self.pending.clear();
                return Ok(());
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LIST_BYTES {
            return Err(());
        }
        Ok(())
    }

    /// At the end of the stream: what is held is an event without its blank
    /// line, which clients discard unread; it passes as it is.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
    }
}

/// The rewritten event when it carries the answer to the list request.
fn filter_event(
    filter: &ListFilter,
    event: &[u8],
    visible: &mut dyn Visible,
) -> Option<(Vec<u8>, usize)> {
    let (kept, data) = split_event(event)?;
    let (new, answered) = filter_message(filter, data.as_bytes(), visible)?;
    Some((join_event(kept, &new), answered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_safe(_: ListKind, name: &str) -> bool {
        !name.starts_with("delete_")
    }

    #[test]
    fn json_lists_keep_only_visible_items() {
        let filter = ListFilter::one(ListKind::Tools, RpcId::Int(3));
        let body = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"search"},{"name":"delete_repo"},{"name":"x","description":"d"}],"nextCursor":"c"}}"#;
        let out = filter_message(&filter, body, &mut only_safe).unwrap().0;
        let v: Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["search", "x"]);
        assert_eq!(v["result"]["nextCursor"], "c");
        // Another id: filtered by its shape all the same (a server may
        // have changed the id); a result that is no list, or an error, passes.
        let (out, answered) = filter_message(
            &filter,
            br#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"delete_x"}]}}"#,
            &mut only_safe,
        )
        .unwrap();
        assert_eq!(answered, 0);
        assert!(!String::from_utf8(out).unwrap().contains("delete_x"));
        assert!(filter_message(
            &filter,
            br#"{"jsonrpc":"2.0","id":4,"result":{"content":[]}}"#,
            &mut only_safe
        )
        .is_none());
        assert!(filter_message(
            &filter,
            br#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"m"}}"#,
            &mut only_safe
        )
        .is_none());
        // An answer without a readable list fails closed.
        let out = filter_message(
            &filter,
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":"all"}}"#,
            &mut only_safe,
        )
        .unwrap();
        assert!(String::from_utf8(out.0).unwrap().contains("-32603"));
        let templates = ListFilter::one(ListKind::ResourceTemplates, RpcId::Str("a".into()));
        let out = filter_message(
            &templates,
            br#"{"jsonrpc":"2.0","id":"a","result":{"resourceTemplates":[{"uriTemplate":"file:///{p}"},{"uriTemplate":"delete_x"}]}}"#,
            &mut only_safe,
        )
        .unwrap()
        .0;
        assert!(!String::from_utf8(out).unwrap().contains("delete_x"));
        // A batch answer: every list answer in it is filtered (id 9 by its
        // shape), only the wanted ones counted.
        let batch = ListFilter {
            wanted: vec![
                (ListKind::Tools, RpcId::Int(1)),
                (ListKind::Prompts, RpcId::Int(2)),
            ],
        };
        let (out, answered) = filter_message(
            &batch,
            br#"[{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete_a"},{"name":"b"}]}},{"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"delete_c"}]}},{"jsonrpc":"2.0","id":2,"result":{"prompts":[{"name":"delete_p"}]}}]"#,
            &mut only_safe,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(answered, 2);
        assert!(
            !text.contains("delete_a") && !text.contains("delete_p") && !text.contains("delete_c"),
            "{text}"
        );
    }

    /// Sees whole items, hears of lists and notifications.
    #[derive(Default)]
    struct Watcher {
        items: Vec<String>,
        listed: Vec<(ListKind, bool)>,
        notified: Vec<String>,
    }

    impl Visible for Watcher {
        fn visible(&mut self, _: ListKind, name: &str, item: &Value) -> bool {
            self.items.push(item.to_string());
            !name.starts_with("delete_")
        }
        fn listed(&mut self, kind: ListKind, complete: bool) {
            self.listed.push((kind, complete));
        }
        fn notified(&mut self, method: &str) {
            self.notified.push(method.into());
        }
    }

    #[test]
    fn the_caller_sees_whole_items_lists_and_notifications() {
        let filter = ListFilter::one(ListKind::Tools, RpcId::Int(1));
        let mut w = Watcher::default();
        let stream = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\",\"description\":\"d\"},{\"name\":\"delete_b\"}],\"nextCursor\":\"c\"}}\n\n";
        let mut out = Vec::new();
        SseListFilter::default()
            .feed(&filter, stream, &mut out, &mut w)
            .unwrap();
        assert_eq!(
            w.items,
            [
                r#"{"description":"d","name":"a"}"#,
                r#"{"name":"delete_b"}"#
            ]
        );
        assert_eq!(
            w.listed,
            [(ListKind::Tools, false)],
            "a page, not the whole list"
        );
        assert_eq!(w.notified, ["notifications/tools/list_changed"]);
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"nextCursor":null}}"#;
        filter_message(&filter, body, &mut w).unwrap();
        assert_eq!(w.listed[1], (ListKind::Tools, true));
    }

    #[test]
    fn sse_streams_are_filtered_event_by_event_however_split() {
        let filter = ListFilter::one(ListKind::Tools, RpcId::Int(1));
        let stream = b": priming\n\nid: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nid: 8\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"delete_all\"},{\"name\":\"search\"}]}}\r\n\r\nid: 9\ndata: tail\n\n";
        let mut whole = Vec::new();
        SseListFilter::default()
            .feed(&filter, stream, &mut whole, &mut only_safe)
            .unwrap();
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(text.starts_with(": priming\n\nid: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"), "{text}");
        assert!(
            !text.contains("delete_all") && text.contains("\"search\""),
            "{text}"
        );
        assert!(text.contains("id: 8\nevent: message\ndata: {"), "{text}");
        assert!(text.ends_with("id: 9\ndata: tail\n\n"), "{text}");
        for split in 1..stream.len() {
            let mut f = SseListFilter::default();
            let mut out = Vec::new();
            f.feed(&filter, &stream[..split], &mut out, &mut only_safe)
                .unwrap();
            f.feed(&filter, &stream[split..], &mut out, &mut only_safe)
                .unwrap();
            assert_eq!(out, whole, "split at {split}");
        }
    }
}
