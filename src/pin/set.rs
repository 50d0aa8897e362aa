//! The pinned set the cores decide from: per route and kind, each item's
//! approved hash and the hash of a change awaiting approval. Built by the
//! control plane from the store and published whole (`Shared::pins`); the
//! request path reads it with one atomic load and never waits.

use super::Kind;
use std::collections::HashMap;

/// Every route's pinned items.
#[derive(Debug, Default)]
pub(crate) struct Pinned {
    routes: HashMap<String, [Option<Table>; 3]>,
}

/// One route's pinned items of one kind. Its existence means the first
/// definitions were recorded: an item not in it is new.
#[derive(Debug, Default)]
pub(crate) struct Table {
    items: HashMap<String, Entry>,
    approved: usize,
}

/// One item: the approved definition's hash, and a pending one's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) approved: Option<String>,
    pub(crate) pending: Option<String>,
}

/// What the data plane makes of an item in a list answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The approved definition.
    Approved,
    /// A change already recorded as pending.
    Pending,
    /// Not pinned yet (a new item, or a change not yet recorded): the
    /// control plane must hear of it.
    Unknown,
}

impl Pinned {
    /// From the stored rows: (route, kind, name, hash, approved).
    pub(crate) fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a str, Kind, &'a str, &'a str, bool)>,
    ) -> Pinned {
        let mut p = Pinned::default();
        for (route, kind, name, hash, approved) in rows {
            let table = p.routes.entry(route.to_string()).or_default()[kind.index()]
                .get_or_insert_with(Table::default);
            if name.is_empty() {
                // The mark that the kind's first definitions were recorded.
                continue;
            }
            let entry = table.items.entry(name.to_string()).or_default();
            if approved {
                if entry.approved.is_none() {
                    table.approved += 1;
                }
                entry.approved = Some(hash.to_string());
            } else {
                entry.pending = Some(hash.to_string());
            }
        }
        p
    }

    /// The route's table of `kind`: `None` until its first definitions are recorded.
    pub(crate) fn table(&self, route: &str, kind: Kind) -> Option<&Table> {
        self.routes.get(route)?[kind.index()].as_ref()
    }
}

impl Table {
    pub(crate) fn seen(&self, name: &str, hash: &str) -> Seen {
        match self.items.get(name) {
            Some(e) if e.approved.as_deref() == Some(hash) => Seen::Approved,
            Some(e) if e.pending.as_deref() == Some(hash) => Seen::Pending,
            _ => Seen::Unknown,
        }
    }

    /// Whether a call to `name` may pass under `enforce`: it is approved and
    /// no change of it awaits approval.
    pub(crate) fn callable(&self, name: &str) -> bool {
        self.items
            .get(name)
            .is_some_and(|e| e.approved.is_some() && e.pending.is_none())
    }

    /// A template of this table (a resource template's name is its URI
    /// template) that `uri` falls under and that is not callable: a read
    /// of `uri` is refused under `enforce`. A URI under no recorded
    /// template (a plain resource) has none.
    pub(crate) fn unapproved_template_of(&self, uri: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(t, e)| {
                (e.approved.is_none() || e.pending.is_some()) && super::template::matches(t, uri)
            })
            .map(|(t, _)| t.as_str())
    }

    /// Whether a change of `name` awaits approval.
    pub(crate) fn has_pending(&self, name: &str) -> bool {
        self.items.get(name).is_some_and(|e| e.pending.is_some())
    }

    /// Whether `name` has an approved definition (whatever its hash).
    pub(crate) fn has_approved(&self, name: &str) -> bool {
        self.items.get(name).is_some_and(|e| e.approved.is_some())
    }

    /// How many items have an approved definition.
    pub(crate) fn approved(&self) -> usize {
        self.approved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_set_tells_approved_pending_and_unknown_apart() {
        let p = Pinned::from_rows([
            ("r", Kind::Tool, "add", "h1", true),
            ("r", Kind::Tool, "add", "h2", false),
            ("r", Kind::Tool, "echo", "h3", true),
            ("r", Kind::Tool, "new", "h4", false),
            ("s", Kind::Prompt, "p", "h5", true),
            ("s", Kind::Tool, "", "", true),
        ]);
        let t = p.table("r", Kind::Tool).unwrap();
        assert_eq!(t.seen("add", "h1"), Seen::Approved);
        assert_eq!(t.seen("add", "h2"), Seen::Pending);
        assert_eq!(t.seen("add", "h9"), Seen::Unknown);
        assert_eq!(t.seen("other", "h1"), Seen::Unknown);
        assert!(t.callable("echo"));
        assert!(!t.callable("add"), "a change awaits approval");
        assert!(!t.callable("new") && !t.callable("other"));
        assert_eq!(t.approved(), 2);
        assert!(t.has_approved("add") && !t.has_approved("new") && !t.has_approved("x"));
        assert!(t.has_pending("add") && !t.has_pending("echo"));
        let templates = Pinned::from_rows([
            ("r", Kind::ResourceTemplate, "e2e://docs/{n}", "h1", true),
            ("r", Kind::ResourceTemplate, "e2e://docs/{n}", "h2", false),
            ("r", Kind::ResourceTemplate, "e2e://notes/{n}", "h3", true),
            ("r", Kind::ResourceTemplate, "e2e://new/{n}", "h4", false),
        ]);
        let t = templates.table("r", Kind::ResourceTemplate).unwrap();
        assert_eq!(
            t.unapproved_template_of("e2e://docs/7"),
            Some("e2e://docs/{n}")
        );
        assert_eq!(
            t.unapproved_template_of("e2e://new/1"),
            Some("e2e://new/{n}")
        );
        assert_eq!(t.unapproved_template_of("e2e://notes/7"), None);
        assert_eq!(t.unapproved_template_of("e2e://greeting"), None);
        assert!(p.table("r", Kind::Prompt).is_none(), "nothing recorded yet");
        assert!(p.table("s", Kind::Prompt).unwrap().callable("p"));
        assert!(p.table("x", Kind::Tool).is_none());
        let marked = p
            .table("s", Kind::Tool)
            .expect("recorded, with nothing in it");
        assert_eq!(marked.approved(), 0);
        assert_eq!(marked.seen("", ""), Seen::Unknown);
    }
}
