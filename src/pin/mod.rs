//! Tool pinning (issue 14): what an upstream's definitions (tools, prompts,
//! resource templates) are, by a canonical hash of each; how a stored one
//! differs from a new one; whether a description carries injection markers;
//! and the pinned set the data plane decides from (`Pinned`, published by
//! the control plane). Pure: no I/O, no store.

pub(crate) mod canon;
pub(crate) mod diff;
pub(crate) mod set;
pub(crate) mod template;

use crate::config::pin::{PinConfig, PinMode};
use crate::mcp::listfilter::ListKind;

pub(crate) use set::Pinned;

/// A kind of pinned definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Tool,
    Prompt,
    ResourceTemplate,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Tool, Kind::Prompt, Kind::ResourceTemplate];

    /// The name the store, the audit records and the metrics use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::ResourceTemplate => "resource_template",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind a list answer holds, when it is pinned at all.
    pub(crate) fn of_list(list: ListKind) -> Option<Kind> {
        match list {
            ListKind::Tools => Some(Kind::Tool),
            ListKind::Prompts => Some(Kind::Prompt),
            ListKind::ResourceTemplates => Some(Kind::ResourceTemplate),
            ListKind::Resources => None,
        }
    }

    /// The item member naming an item of this kind.
    pub(crate) fn name_key(self) -> &'static str {
        match self {
            Kind::Tool | Kind::Prompt => "name",
            Kind::ResourceTemplate => "uriTemplate",
        }
    }
}

/// A route's pinning, compiled: the mode per kind and its counters.
#[derive(Debug)]
pub(crate) struct RoutePin {
    modes: [PinMode; 3],
    pub(crate) counts: std::sync::Arc<crate::metrics::PinCounts>,
}

impl RoutePin {
    /// `None` when every kind is off.
    pub(crate) fn compile(config: &PinConfig) -> Option<RoutePin> {
        let modes = [config.tools, config.prompts, config.resource_templates];
        modes.iter().any(|m| *m != PinMode::Off).then(|| RoutePin {
            modes,
            counts: Default::default(),
        })
    }

    pub(crate) fn mode(&self, kind: Kind) -> PinMode {
        self.modes[kind.index()]
    }

    /// The kinds pinned and how: `tools enforce, prompts record`.
    pub(crate) fn describe(&self) -> String {
        let names = ["tools", "prompts", "resource_templates"];
        let modes: Vec<String> = names
            .iter()
            .zip(self.modes)
            .filter(|(_, m)| *m != PinMode::Off)
            .map(|(n, m)| {
                format!(
                    "{n} {}",
                    if m == PinMode::Record {
                        "record"
                    } else {
                        "enforce"
                    }
                )
            })
            .collect();
        modes.join(", ")
    }

    /// The mode for the items of a list, `Off` for a list never pinned.
    pub(crate) fn list_mode(&self, list: ListKind) -> PinMode {
        Kind::of_list(list).map_or(PinMode::Off, |k| self.mode(k))
    }
}

/// One item of a list answer as the data plane saw it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Item {
    pub(crate) name: String,
    /// `canon::hash` of `definition`.
    pub(crate) hash: String,
    /// The pinned members of the item (`canon::definition`).
    pub(crate) definition: serde_json::Value,
    /// The injection detectors its strings matched (`canon::flagged`).
    pub(crate) flagged: Vec<String>,
}

impl Item {
    /// The item of `kind` in a list answer (not screened yet: `screen`);
    /// `None` without its name (or with an empty one).
    pub(crate) fn of(kind: Kind, item: &serde_json::Value) -> Option<Item> {
        let name = item.get(kind.name_key())?.as_str()?.to_string();
        if name.is_empty() {
            return None;
        }
        let definition = canon::definition(kind, item);
        Some(Item {
            name,
            hash: canon::hash(&definition),
            flagged: Vec::new(),
            definition,
        })
    }

    /// Look for injection markers in its strings (`flagged`).
    pub(crate) fn screen(&mut self) {
        self.flagged = canon::flagged(&canon::canonical(&self.definition));
    }
}

/// A list answer's items of one kind, handed by a core to the control plane
/// when something in it is not pinned yet (or a pinned item is gone).
#[derive(Clone, Debug)]
pub(crate) struct Observed {
    pub(crate) route: String,
    pub(crate) kind: Kind,
    pub(crate) items: Vec<Item>,
    /// The answer was the whole list (no `nextCursor`): a pinned item
    /// missing from it was removed.
    pub(crate) complete: bool,
}

/// What a core tells the control plane of a pinning route.
#[derive(Clone, Debug)]
pub(crate) enum Report {
    /// A list answer with something not pinned yet.
    Observed(Observed),
    /// The upstream said a list changed (`notifications/…/list_changed`).
    ListChanged { route: String, method: String },
    /// Not from a core: a shared store notified a change (`store::watch`),
    /// read the pins now rather than at the next poll.
    StoreChanged,
}
