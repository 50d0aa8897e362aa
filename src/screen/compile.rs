//! `ScreenConfig` → [`Screen`]: the detectors named (by name or group), the
//! custom ones checked and compiled, and the action table. Every error is
//! reported, each naming the detector or key at fault.

use super::detectors::{builtin, Group, BUILTINS};
use super::matcher::Matcher;
use super::{Action, Actions, Screen};
use crate::config::screen::ScreenConfig;

impl Screen {
    /// Compile a route's `screen` section.
    pub fn compile(config: &ScreenConfig) -> Result<Screen, Vec<String>> {
        let mut errors = Vec::new();
        let mut on = vec![false; BUILTINS.len()];
        for name in &config.detectors {
            match (Group::parse(name), builtin(name)) {
                (Some(Group::Custom), _) => errors.push(
                    "detectors: `custom` detectors always run; list them under `custom`".into(),
                ),
                (Some(g), _) => BUILTINS
                    .iter()
                    .zip(on.iter_mut())
                    .filter(|(b, _)| b.group == g)
                    .for_each(|(_, o)| *o = true),
                (None, Some(i)) => on[i] = true,
                (None, None) => errors.push(format!(
                    "detectors: unknown detector or group {name:?} (built-ins: {})",
                    names()
                )),
            }
        }
        let mut custom: Vec<(&str, &str)> = Vec::new();
        for c in &config.custom {
            if let Some(e) = bad_name(&c.name, &custom) {
                errors.push(format!("custom detector {:?}: {e}", c.name));
            }
            custom.push((&c.name, &c.regex));
        }
        for key in config.actions.keys() {
            let known = Group::parse(key).is_some()
                || builtin(key).is_some()
                || custom.iter().any(|(n, _)| n == key);
            if !known {
                errors.push(format!("actions: unknown detector or group {key:?}"));
            }
        }
        let on: Vec<usize> = (0..BUILTINS.len()).filter(|i| on[*i]).collect();
        let matcher = match Matcher::compile(&on, &custom) {
            Ok(m) if errors.is_empty() => m,
            Ok(_) => return Err(errors),
            Err(more) => {
                errors.extend(more);
                return Err(errors);
            }
        };
        let mut actions = Actions::default();
        for d in &matcher.detectors {
            let own = config.actions.get(&*d.name);
            let explicit = own.or_else(|| config.actions.get(d.group.name()));
            let response = explicit.copied().unwrap_or(Action::Audit);
            let request = if d.group == Group::Secrets {
                response.max(config.arguments)
            } else {
                response
            };
            actions.request.push(request);
            actions.response.push(response);
        }
        Ok(Screen { matcher, actions })
    }
}

/// Why a custom detector's name is refused, if it is.
fn bad_name(name: &str, earlier: &[(&str, &str)]) -> Option<&'static str> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if name.is_empty() || name.len() > 64 || !ok_chars {
        Some("a name is 1 to 64 lowercase letters, digits and `_`")
    } else if builtin(name).is_some() {
        Some("a built-in detector has this name")
    } else if Group::parse(name).is_some() {
        Some("a group has this name")
    } else if earlier.iter().any(|(n, _)| *n == name) {
        Some("named twice")
    } else {
        None
    }
}

fn names() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}
