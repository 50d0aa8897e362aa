//! `portcullis schema`: the configuration file's JSON Schema (draft 2020-12),
//! derived from the configuration types and their doc comments (schemars),
//! and the option reference rendered from it as Markdown
//! (`config/REFERENCE.md`). Both committed copies are checked by the tests.

use serde_json::Value;
use std::fmt::Write;

/// The JSON Schema of the configuration file.
pub fn json() -> Value {
    let mut schema = schemars::schema_for!(crate::config::Config);
    schema.insert("title".into(), "portcullis configuration (YAML)".into());
    schema.to_value()
}

/// The option reference: one table per section of the file.
pub fn markdown(schema: &Value) -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration types by `portcullis schema --markdown`; do not edit\n\
         (the tests check that it is current). `config/portcullis.yaml` shows the options in use,\n\
         `config/portcullis.schema.json` is the same as a JSON Schema. Unknown keys are errors.\n\n\
         ## Top level\n\n",
    );
    describe(&mut out, schema);
    table(&mut out, schema);
    let defs = schema.get("$defs").and_then(Value::as_object);
    let Some(defs) = defs else { return out };
    for (name, def) in defs {
        if def.get("properties").is_some() {
            let _ = write!(out, "\n## {name}\n\n");
            describe(&mut out, def);
            table(&mut out, def);
        }
    }
    out.push_str("\n## Value types\n\n");
    for (name, def) in defs {
        if def.get("properties").is_none() {
            let _ = write!(
                out,
                "- <a id=\"{}\"></a>**{name}**: {}",
                anchor(name),
                kind(def)
            );
            if let Some(d) = def.get("description").and_then(Value::as_str) {
                let _ = write!(out, ". {}", one_line(d));
            }
            out.push('\n');
            // The values of an enum, each with its own description.
            for alt in def
                .get("oneOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let value = alt.get("const");
                let text = alt.get("description").and_then(Value::as_str);
                if let (Some(v), Some(d)) = (value, text) {
                    let _ = writeln!(out, "  - `{v}`: {}", one_line(d));
                }
            }
        }
    }
    out
}

/// A section's description as a paragraph.
fn describe(out: &mut String, def: &Value) {
    if let Some(d) = def.get("description").and_then(Value::as_str) {
        let _ = write!(out, "{}\n\n", one_line(d));
    }
}

fn table(out: &mut String, def: &Value) {
    let required: Vec<&str> = def
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    let Some(props) = def.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, p) in props {
        let default = match p.get("default") {
            None | Some(Value::Null) if required.contains(&key.as_str()) => "required".into(),
            None | Some(Value::Null) => String::new(),
            Some(v) => format!("`{v}`"),
        };
        let meaning = p
            .get("description")
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{key}` | {} | {} | {} |",
            cell(&kind(p)),
            cell(&default),
            cell(&meaning)
        );
    }
}

/// A schema's type in words: a link to its section, a list, a map, or values.
fn kind(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", anchor(name));
    }
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(|x| format!("`{x}`")).collect();
        return vals.join(" or ");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let kinds: Vec<String> = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .map(kind)
                .collect();
            return kinds.join(" or ");
        }
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    let words: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "array" => match v.get("items") {
                Some(items) => format!("list of {}", kind(items)),
                None => "list".into(),
            },
            "object" => match v.get("additionalProperties") {
                Some(a) if a.is_object() => format!("map of name → {}", kind(a)),
                _ => "object".into(),
            },
            "string" => match v.get("pattern").and_then(Value::as_str) {
                Some(p) => format!("string (`{p}`)"),
                None => "string".into(),
            },
            other => other.into(),
        })
        .collect();
    if words.is_empty() {
        "any".into()
    } else {
        words.join(" or ")
    }
}

fn anchor(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Limits, LogConfig, RuntimeConfig, UpstreamConfig, Workers};
    use serde_json::{json, Map};
    use std::time::Duration;

    /// The defaults the schema shows for the properties of `$defs/<def>`.
    fn defaults(schema: &Value, def: &str) -> Map<String, Value> {
        let props = schema["$defs"][def]["properties"].as_object().unwrap();
        props
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), p.get("default")?.clone())))
            .filter(|(_, d)| !d.is_null())
            .collect()
    }

    /// A section built from the defaults the schema shows is the section's
    /// `Default` (compared through `Debug`: every field counts).
    fn shown_is_real<T: serde::de::DeserializeOwned + std::fmt::Debug + Default>(def: &str) {
        let shown = defaults(&json(), def);
        let built: T = serde_json::from_value(Value::Object(shown)).unwrap();
        assert_eq!(format!("{built:?}"), format!("{:?}", T::default()), "{def}");
    }

    #[test]
    fn shown_defaults_are_the_real_defaults() {
        shown_is_real::<Limits>("Limits");
        shown_is_real::<UpstreamConfig>("UpstreamConfig");
        shown_is_real::<RuntimeConfig>("RuntimeConfig");
        shown_is_real::<LogConfig>("LogConfig");
        shown_is_real::<crate::config::screen::ScreenConfig>("ScreenConfig");

        let s = json();
        let top = &s["properties"];
        assert_eq!(top["shutdown_timeout"]["default"], "30s");
        let shown = top["shutdown_timeout"]["default"].as_str().unwrap();
        assert_eq!(Dur::parse(shown), Some(Duration::from_secs(30)));
        let minimal = crate::config::parse(
            "listen: [{address: 127.0.0.1:1}]\nroutes: [{name: a, from: http://a/, to: http://b/}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(minimal.shutdown_timeout.0, Duration::from_secs(30));
        assert_eq!(top["workers"]["default"], "auto");
        assert_eq!(minimal.workers, Workers::Auto);
        assert_eq!(top["pin_workers"]["default"], false);

        assert_eq!(
            s["$defs"]["RuntimeConfig"]["properties"]["driver"]["default"],
            "auto"
        );
        let audit = defaults(&s, "AuditConfig");
        assert_eq!(
            Value::Object(audit.clone()),
            json!({"on_overflow": "block", "fsync": false, "buffers": 16})
        );
        let mut with_path = audit;
        with_path.insert("path".into(), "-".into());
        let a: crate::config::audit::AuditConfig =
            serde_json::from_value(Value::Object(with_path)).unwrap();
        assert_eq!(a.on_overflow, crate::config::audit::Overflow::default());
        let route = defaults(&s, "RouteConfig");
        assert_eq!(route["audit_arguments"], json!("hash"));
        let r: crate::config::audit::Arguments =
            serde_json::from_value(route["audit_arguments"].clone()).unwrap();
        assert_eq!(r, crate::config::audit::Arguments::default());
        assert_eq!(defaults(&s, "RateLimitTest")["key"], json!("principal"));
        let issuer = defaults(&s, "IssuerConfig");
        use crate::config::identity as id;
        assert_eq!(issuer["leeway"], json!(id::DEFAULT_LEEWAY));
        assert_eq!(issuer["max_lifetime"], json!(id::DEFAULT_MAX_LIFETIME));
        assert_eq!(
            issuer["refresh_interval"],
            json!(id::DEFAULT_REFRESH_INTERVAL)
        );
        let mut vault = defaults(&s, "VaultConfig");
        assert_eq!(
            Value::Object(vault.clone()),
            json!({"refresh_ahead": "300s"})
        );
        vault.insert("keys".into(), json!([]));
        let v: crate::config::vault::VaultConfig =
            serde_json::from_value(Value::Object(vault)).unwrap();
        assert_eq!(v.refresh_ahead.0, Duration::from_secs(300));
        let v: crate::config::vault::VaultConfig =
            serde_json::from_value(json!({"keys": []})).unwrap();
        assert_eq!(v.refresh_ahead.0, Duration::from_secs(300));
    }

    /// An option that is neither required nor optional (absent = off) shows its
    /// default; only whole sections do not (their tables show theirs).
    #[test]
    fn every_defaulted_option_shows_its_default() {
        let s = json();
        let mut missing = Vec::new();
        let mut check = |name: &str, def: &Value| {
            let required: Vec<&Value> = def
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().collect())
                .unwrap_or_default();
            for (key, p) in def["properties"].as_object().into_iter().flatten() {
                let nullable = p["anyOf"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["type"] == "null"))
                    || p["type"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|x| x == "null"));
                if !nullable && p.get("default").is_none() && !required.contains(&&json!(key)) {
                    missing.push(format!("{name}.{key}"));
                }
            }
        };
        check("", &s);
        for (name, def) in s["$defs"].as_object().unwrap() {
            check(name, def);
        }
        missing.sort();
        assert_eq!(
            missing,
            [
                ".identity",
                ".limits",
                ".log",
                ".runtime",
                ".upstream",
                "AuthorizationServerConfig.clients",
                "AuthorizationServerConfig.tokens",
                "BehaviourConfig.burst",
                "BehaviourConfig.enumeration",
                "OidcLoginConfig.claims"
            ]
        );
    }

    #[test]
    fn durations_are_written_as_read() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("1500ms", Duration::from_millis(1500)),
            ("30s", Duration::from_secs(30)),
            ("7200s", Duration::from_secs(7200)),
        ] {
            let shown = serde_json::to_value(Dur(d)).unwrap();
            assert_eq!(shown, text);
            assert_eq!(Dur::parse(text), Some(d));
        }
        assert_eq!(serde_json::to_value(Workers::Count(4)).unwrap(), 4);
        assert_eq!(serde_json::to_value(Workers::Auto).unwrap(), "auto");
        let w: Workers = serde_json::from_value(json!(4)).unwrap();
        assert_eq!(w, Workers::Count(4));
    }

    #[test]
    fn enum_values_are_listed_with_their_meaning() {
        let md = markdown(&json());
        assert!(md.contains("  - `\"drop\"`: "), "{md}");
        assert!(md.contains("  - `\"io_uring\"`: "), "{md}");
        assert!(!md.contains("| any |"), "{md}");
    }
}
