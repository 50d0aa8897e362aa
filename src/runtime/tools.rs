//! `portcullis tools diff|approve ROUTE`: tool pinning's pending changes,
//! read from and approved in the store directly (the running proxy, polling
//! the store's change sequence, shows and passes the approved definitions
//! on every core within a second).

use crate::pin::{diff, Kind};
use crate::store::Pin;
use std::fmt::Write;
use std::path::Path;

/// What `portcullis tools` does.
pub enum ToolsCommand<'a> {
    /// The pending definitions and how each differs from the approved one.
    Diff,
    /// Approve the pending definitions (of one name, when given).
    Approve(Option<&'a str>),
}

/// Run it on `route` against the store named by the configuration file;
/// `kind` (`tool`, `prompt`, `resource_template`) narrows it. The text to print.
pub fn tools(
    config: &Path,
    route: &str,
    command: ToolsCommand<'_>,
    kind: Option<&str>,
) -> Result<String, String> {
    if let Some(k) = kind {
        if Kind::parse(k).is_none() {
            return Err(format!(
                "--kind {k:?}: one of tool, prompt, resource_template"
            ));
        }
    }
    let (cfg, _) = crate::config::load(config).map_err(|e| e.to_string())?;
    let Some(r) = cfg.routes.iter().find(|r| r.name == route) else {
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "{}: no route {route:?} (routes: {})",
            config.display(),
            names.join(", ")
        ));
    };
    if r.pin.is_none() {
        return Err(format!(
            "{}: route {route:?} has no `pin` section",
            config.display()
        ));
    }
    let mut store = super::store::open_configured(config, &cfg)?;
    let pins: Vec<Pin> = store
        .pins(Some(route))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|p| !p.name.is_empty() && kind.is_none_or(|k| p.kind == k))
        .collect();
    match command {
        ToolsCommand::Diff => Ok(render(route, &pins)),
        ToolsCommand::Approve(name) => {
            if name.is_some_and(|n| !pins.iter().any(|p| p.name == n && !p.approved)) {
                return Err(format!(
                    "route {route:?}: nothing pending named {:?}",
                    name.unwrap_or_default()
                ));
            }
            let now = crate::authz::unix_now();
            let approved = store
                .approve_pins(route, kind, name, now)
                .map_err(|e| e.to_string())?;
            if approved.is_empty() {
                return Err(format!("route {route:?}: nothing pending"));
            }
            let mut out = String::new();
            for p in &approved {
                let _ = writeln!(out, "approved {} {:?} ({})", p.kind, p.name, p.hash);
            }
            Ok(out)
        }
    }
}

/// Each pending definition: new or changed, which members, the description
/// around its change, the injection markers found.
fn render(route: &str, pins: &[Pin]) -> String {
    let mut out = String::new();
    let pending: Vec<&Pin> = pins.iter().filter(|p| !p.approved).collect();
    for p in &pending {
        let approved = pins
            .iter()
            .find(|a| a.approved && a.kind == p.kind && a.name == p.name);
        let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let new = parse(&p.definition);
        match approved {
            Some(a) => {
                let old = parse(&a.definition);
                let _ = writeln!(out, "{} {:?}: changed", p.kind, p.name);
                for (field, how) in diff::fields(&old, &new) {
                    let _ = writeln!(out, "  {field}: {how}");
                }
                if diff::fields(&old, &new)
                    .iter()
                    .any(|(f, _)| f == "description")
                {
                    let text = |v: &serde_json::Value| {
                        v["description"].as_str().unwrap_or_default().to_string()
                    };
                    let (before, after) = diff::excerpt(&text(&old), &text(&new));
                    let _ = writeln!(out, "  - {before:?}\n  + {after:?}");
                }
                let _ = writeln!(out, "  hash: {} -> {}", a.hash, p.hash);
            }
            None => {
                let _ = writeln!(out, "{} {:?}: new", p.kind, p.name);
                let _ = writeln!(out, "  hash: {}", p.hash);
            }
        }
        if !p.flagged.is_empty() {
            let _ = writeln!(out, "  injection markers: {}", p.flagged.join(", "));
        }
    }
    let approved = pins.len() - pending.len();
    let _ = writeln!(
        out,
        "route {route:?}: {} pending, {approved} approved",
        pending.len()
    );
    out
}
