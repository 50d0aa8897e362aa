//! What the pin thread makes of a core's report: the first definitions of a
//! route's kind recorded (trusted; under `enforce` one with injection
//! markers is held for approval), every later change audited with its diff
//! and either recorded (`record`) or held pending (`enforce`), removals
//! audited and forgotten, `list_changed` notifications audited. Reports
//! repeat (every core reports until the pinned set is published): what is
//! stored already is not recorded or audited again.

use crate::config::pin::PinMode;
use crate::pin::{diff, Observed, Report, RoutePin};
use crate::snapshot::Snapshot;
use crate::store::{Pin, Store, StoreError};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Names listed in one audit record of first definitions, at most.
const MAX_NAMES: usize = 100;

pub(super) fn report(
    store: &mut dyn Store,
    snap: &Snapshot,
    report: Report,
    audit: &dyn Fn(Value),
) -> Result<(), StoreError> {
    match report {
        Report::ListChanged { route, method } => {
            audit(json!({"event": "pin.list_changed", "route": route, "method": method}));
            Ok(())
        }
        Report::Observed(o) => {
            let route = snap.routes.all().iter().find(|r| r.name == o.route);
            // Reloaded away, or pinning turned off since: nothing to record.
            let Some(pin) = route.and_then(|r| r.pin.as_deref()) else {
                return Ok(());
            };
            if pin.mode(o.kind) == PinMode::Off {
                return Ok(());
            }
            observed(store, pin, &o, crate::authz::unix_now(), audit)
        }
    }
}

fn observed(
    store: &mut dyn Store,
    pin: &RoutePin,
    o: &Observed,
    now: i64,
    audit: &dyn Fn(Value),
) -> Result<(), StoreError> {
    let kind = o.kind.as_str();
    let rows: Vec<Pin> = store
        .pins(Some(&o.route))?
        .into_iter()
        .filter(|p| p.kind == kind)
        .collect();
    if rows.is_empty() {
        return first(store, pin, o, now, audit);
    }
    let mut approved: HashMap<&str, &Pin> = HashMap::new();
    let mut pending: HashMap<&str, &Pin> = HashMap::new();
    for p in &rows {
        let map = if p.approved {
            &mut approved
        } else {
            &mut pending
        };
        map.insert(&p.name, p);
    }
    let enforce = pin.mode(o.kind) == PinMode::Enforce;
    for item in &o.items {
        let old = approved.get(item.name.as_str()).copied();
        if old.is_some_and(|a| a.hash == item.hash)
            || pending
                .get(item.name.as_str())
                .is_some_and(|p| p.hash == item.hash)
        {
            continue;
        }
        let change = if old.is_some() { "changed" } else { "added" };
        let mut line = json!({
            "event": "pin.change", "route": o.route, "kind": kind, "name": item.name,
            "change": change, "hash": item.hash,
            "action": if enforce { "held" } else { "recorded" },
        });
        if let Some(a) = old {
            let before: Value = serde_json::from_str(&a.definition).unwrap_or(Value::Null);
            line["previous_hash"] = a.hash.clone().into();
            line["diff"] = diff::summary(&before, &item.definition);
        }
        if !item.flagged.is_empty() {
            line["flagged"] = json!(item.flagged);
            pin.counts.flagged(o.kind.index());
        }
        pin.counts.changed(o.kind.index(), change);
        audit(line);
        store.put_pin(&row(o, item, !enforce, now))?;
        if !enforce {
            store.delete_pin(&o.route, kind, &item.name, true)?;
        }
    }
    if o.complete {
        removed(store, pin, o, &approved, &pending, audit)?;
    }
    Ok(())
}

/// The first definitions of a route's kind: trusted (recorded approved),
/// except, under `enforce`, those with injection markers.
fn first(
    store: &mut dyn Store,
    pin: &RoutePin,
    o: &Observed,
    now: i64,
    audit: &dyn Fn(Value),
) -> Result<(), StoreError> {
    let enforce = pin.mode(o.kind) == PinMode::Enforce;
    for item in &o.items {
        let held = enforce && !item.flagged.is_empty();
        store.put_pin(&row(o, item, !held, now))?;
        if !item.flagged.is_empty() {
            pin.counts.flagged(o.kind.index());
            audit(json!({
                "event": "pin.flagged", "route": o.route, "kind": o.kind.as_str(),
                "name": item.name, "hash": item.hash, "flagged": item.flagged,
                "action": if held { "held" } else { "recorded" },
            }));
        }
    }
    let names: Vec<&str> = o
        .items
        .iter()
        .take(MAX_NAMES)
        .map(|i| i.name.as_str())
        .collect();
    audit(json!({
        "event": "pin.recorded", "route": o.route, "kind": o.kind.as_str(),
        "count": o.items.len(), "names": names,
    }));
    Ok(())
}

/// Pinned items a whole list no longer holds: audited (approved ones) and
/// forgotten, so one coming back is new.
fn removed(
    store: &mut dyn Store,
    pin: &RoutePin,
    o: &Observed,
    approved: &HashMap<&str, &Pin>,
    pending: &HashMap<&str, &Pin>,
    audit: &dyn Fn(Value),
) -> Result<(), StoreError> {
    let kind = o.kind.as_str();
    let mut gone: Vec<(&str, bool)> = approved
        .keys()
        .map(|n| (*n, true))
        .chain(
            pending
                .keys()
                .filter(|n| !approved.contains_key(*n))
                .map(|n| (*n, false)),
        )
        .filter(|(n, _)| !o.items.iter().any(|i| i.name == *n))
        .collect();
    gone.sort_unstable();
    for (name, was_approved) in gone {
        if was_approved {
            pin.counts.changed(o.kind.index(), "removed");
            audit(json!({
                "event": "pin.change", "route": o.route, "kind": kind, "name": name,
                "change": "removed", "previous_hash": approved[name].hash,
            }));
        }
        store.delete_pin(&o.route, kind, name, false)?;
    }
    Ok(())
}

fn row(o: &Observed, item: &crate::pin::Item, approved: bool, now: i64) -> Pin {
    Pin {
        route: o.route.clone(),
        kind: o.kind.as_str().into(),
        name: item.name.clone(),
        approved,
        hash: item.hash.clone(),
        definition: String::from_utf8(crate::pin::canon::canonical(&item.definition))
            .unwrap_or_default(),
        flagged: item.flagged.clone(),
        first_seen: now,
        approved_at: approved.then_some(now),
    }
}
