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
    table(&mut out, schema);
    let defs = schema.get("$defs").and_then(Value::as_object);
    let Some(defs) = defs else { return out };
    for (name, def) in defs {
        if def.get("properties").is_some() {
            let _ = write!(out, "\n## {name}\n\n");
            if let Some(d) = def.get("description").and_then(Value::as_str) {
                let _ = write!(out, "{}\n\n", one_line(d));
            }
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
        }
    }
    out
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
