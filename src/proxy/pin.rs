//! Tool pinning on the data plane: list answers of a pinning route are
//! judged item by item against the pinned set (`Shared::pins`, one atomic
//! load), what is not pinned yet is reported to the pin thread (never
//! awaited), and under `enforce` a call to an item that is not approved is
//! refused. The store is never touched here.

use crate::config::pin::PinMode;
use crate::mcp::listfilter::{ListKind, Visible};
use crate::pin::set::Seen;
use crate::pin::{Item, Kind, Observed, Pinned, Report, RoutePin};
use crate::policy::{Facts, Policy};
use crate::proxy::worker::Shared;
use crate::snapshot::route::Route;
use serde_json::Value;

/// The visibility test of a list answer: the route's policy, then its
/// pinning; collects the reports to send once the answer is filtered.
pub(crate) struct Lister<'a> {
    policy: Option<&'a Policy>,
    base: &'a Facts<'a>,
    route: &'a str,
    pin: Option<(&'a RoutePin, &'a Pinned)>,
    /// The current list's items, and what they add up to.
    items: Vec<Item>,
    unknown: bool,
    approved_seen: usize,
    pub(crate) reports: Vec<Report>,
}

impl<'a> Lister<'a> {
    pub(crate) fn new(route: &'a Route, base: &'a Facts<'a>, pinned: &'a Pinned) -> Lister<'a> {
        Lister {
            policy: route.policy.as_ref(),
            base,
            route: &route.name,
            pin: route.pin.as_deref().map(|p| (p, pinned)),
            items: Vec::new(),
            unknown: false,
            approved_seen: 0,
            reports: Vec::new(),
        }
    }

    /// Whether pinning shows `item`; notes what the control plane must hear.
    fn pinned(&mut self, pin: &RoutePin, pinned: &Pinned, kind: Kind, item: &Value) -> bool {
        let mode = pin.mode(kind);
        if mode == PinMode::Off {
            return true;
        }
        let Some(mut item) = Item::of(kind, item) else {
            return true;
        };
        let table = pinned.table(self.route, kind);
        let seen = table.map_or(Seen::Unknown, |t| t.seen(&item.name, &item.hash));
        if seen == Seen::Approved {
            self.approved_seen += 1;
        } else if seen == Seen::Unknown {
            item.screen();
            self.unknown = true;
        }
        let shown = match (mode, table.is_some(), seen) {
            (PinMode::Enforce, _, Seen::Approved) => true,
            // The first definitions seen are trusted, unless marked.
            (PinMode::Enforce, false, _) => item.flagged.is_empty(),
            (PinMode::Enforce, true, _) => false,
            _ => true,
        };
        self.items.push(item);
        shown
    }
}

impl Visible for Lister<'_> {
    fn visible(&mut self, kind: ListKind, name: &str, item: &Value) -> bool {
        let allowed = self
            .policy
            .is_none_or(|p| p.visible(self.base, kind.into(), name));
        let pinned = match (self.pin, Kind::of_list(kind)) {
            (Some((pin, pinned)), Some(kind)) => self.pinned(pin, pinned, kind, item),
            _ => true,
        };
        allowed && pinned
    }

    fn listed(&mut self, kind: ListKind, complete: bool) {
        let items = std::mem::take(&mut self.items);
        let (unknown, approved_seen) = (
            std::mem::take(&mut self.unknown),
            std::mem::take(&mut self.approved_seen),
        );
        let (Some((pin, pinned)), Some(kind)) = (self.pin, Kind::of_list(kind)) else {
            return;
        };
        if pin.mode(kind) == PinMode::Off {
            return;
        }
        // A pinned item missing from a whole list was removed.
        let removed = complete
            && pinned
                .table(self.route, kind)
                .is_some_and(|t| t.approved() > approved_seen);
        if unknown || removed {
            self.reports.push(Report::Observed(Observed {
                route: self.route.to_string(),
                kind,
                items,
                complete,
            }));
        }
    }

    fn notified(&mut self, method: &str) {
        let Some((pin, _)) = self.pin else { return };
        let kind = match method {
            "notifications/tools/list_changed" => Kind::Tool,
            "notifications/prompts/list_changed" => Kind::Prompt,
            "notifications/resources/list_changed" => Kind::ResourceTemplate,
            _ => return,
        };
        if pin.mode(kind) != PinMode::Off {
            self.reports.push(Report::ListChanged {
                route: self.route.to_string(),
                method: method.to_string(),
            });
        }
    }
}

/// Hand the reports to the pin thread; a full queue drops them (the next
/// list answer reports again), so a core never waits.
pub(crate) fn send(shared: &Shared, reports: Vec<Report>) {
    let Some(tx) = &shared.pin_reports else {
        return;
    };
    for r in reports {
        if tx.try_send(r).is_err() {
            tracing::debug!("pin reports queue full or closed: a report dropped");
            return;
        }
    }
}

/// Under `enforce`, why a call to `name` (`tools/call`, `prompts/get`) is
/// refused: pinning has recorded the route's definitions and this one is
/// not approved (new, changed since approved, or marked).
pub(crate) fn refused_call(
    route: &Route,
    shared: &Shared,
    method: crate::mcp::method::Method<'_>,
    name: Option<&str>,
) -> Option<String> {
    use crate::mcp::method::Method;
    let pin = route.pin.as_deref()?;
    let kind = match method {
        Method::ToolsCall => Kind::Tool,
        Method::PromptsGet => Kind::Prompt,
        _ => return None,
    };
    if pin.mode(kind) != PinMode::Enforce {
        return None;
    }
    let name = name.unwrap_or("");
    let pinned = shared.pins.load();
    let table = pinned.table(&route.name, kind)?;
    (!table.callable(name)).then(|| {
        format!(
            "refused by tool pinning: {} {name:?} is not approved on this route (new, or changed since it was approved)",
            kind.as_str().replace('_', " ")
        )
    })
}
