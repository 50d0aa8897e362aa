//! The shape of the source tree, kept by tests: modules depend only on those
//! `src/lib.rs` lists before them, `unsafe` lives in `sys` only, and no
//! function on the request path grows past a screen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` (or `dir.rs`), with its text.
fn sources(module: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        out.push((file.clone(), std::fs::read_to_string(&file).unwrap()));
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out
}

/// The top-level modules in the order `src/lib.rs` declares them.
fn declared_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
        })
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// The top-level modules a text names as `crate::<module>`, also inside a
/// group (`crate::{a, b::c}`).
fn named_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + "crate::".len()..];
        let names: Vec<String> = match tail.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .map(|item| ident(item.trim_start()))
                .collect(),
            None => vec![ident(tail)],
        };
        for name in names {
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
        rest = tail;
    }
    found
}

#[test]
fn modules_depend_only_on_those_listed_before() {
    let order = declared_order();
    assert!(order.len() > 10, "lib.rs lists {order:?}");
    assert!(order.contains(&"proxy".to_string()) && order.contains(&"runtime".to_string()));
    assert_eq!(order[0], "config", "config is the leaf");
    let mut wrong = BTreeMap::new();
    for (i, module) in order.iter().enumerate() {
        let files = sources(module);
        assert!(!files.is_empty(), "no source for module {module}");
        for (path, text) in files {
            for used in named_modules(&text) {
                let pos = order.iter().position(|m| *m == used);
                if used != *module && pos.is_none_or(|p| p > i) {
                    wrong
                        .entry(path.display().to_string())
                        .or_insert_with(Vec::new)
                        .push(used);
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules reaching modules listed after them in src/lib.rs: {wrong:#?}"
    );
}

#[test]
fn pure_libraries_never_reach_the_data_plane() {
    for module in [
        "config",
        "mcp",
        "screen",
        "metrics",
        "pin",
        "principal",
        "behaviour",
        "error",
        "http1",
        "policy",
        "identity",
        "audit",
        "store",
        "vault",
    ] {
        for (path, text) in sources(module) {
            for forbidden in [
                "crate::proxy",
                "crate::runtime",
                "crate::snapshot",
                "monoio::",
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{} uses {forbidden}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn unsafe_code_lives_in_sys_only() {
    for module in declared_order() {
        if module == "sys" {
            continue;
        }
        for (path, text) in sources(&module) {
            assert!(
                !text.contains("unsafe {") && !text.contains("allow(unsafe_code)"),
                "{} has unsafe code",
                path.display()
            );
        }
    }
}

/// Functions longer than `max` lines in a text: (name, lines). A function
/// starts at a line whose code begins with `fn`/`pub fn`/`async fn`… and
/// ends at the first later line that closes a brace at its indentation.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = line.len() - code.len();
        let words: Vec<&str> = code.split_whitespace().collect();
        let Some(fn_at) = words.iter().position(|w| *w == "fn") else {
            continue;
        };
        let before_ok = words[..fn_at]
            .iter()
            .all(|w| matches!(*w, "pub" | "pub(crate)" | "pub(super)" | "async" | "const"));
        if !before_ok || code.ends_with(';') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        let Some(len) = lines[i + 1..].iter().position(|l| *l == close) else {
            continue;
        };
        if len + 2 > max {
            let name = words.get(fn_at + 1).unwrap_or(&"?");
            let name = name.split(['(', '<']).next().unwrap_or("?");
            long.push((name.to_string(), len + 2));
        }
    }
    long
}

#[test]
fn request_path_functions_fit_on_a_screen() {
    let mut long = Vec::new();
    for module in [
        "proxy", "http1", "mcp", "screen", "policy", "identity", "audit",
    ] {
        for (path, text) in sources(module) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == "tests.rs" {
                continue; // test tables
            }
            // Unit tests sit at the end of a file; only code before them counts.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (f, n) in long_functions(code, 100) {
                long.push(format!("{}: {f} ({n} lines)", path.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over 100 lines: {long:#?}");
}

#[test]
fn long_functions_are_measured() {
    let mut text = String::from("pub async fn big() {\n");
    text.push_str(&"    x();\n".repeat(120));
    text.push_str("}\nfn small() {\n    y();\n}\n    fn decl(&self);\n");
    assert_eq!(long_functions(&text, 100), vec![("big".to_string(), 122)]);
    assert_eq!(
        named_modules("use crate::proxy::x; crate::a::b, crate::proxy"),
        ["proxy", "a"]
    );
    assert_eq!(
        named_modules("use crate::{snapshot::Snapshot, proxy};"),
        ["snapshot", "proxy"]
    );
}

#[test]
fn no_function_is_excused_from_clippy_argument_counts() {
    for module in declared_order() {
        for (path, text) in sources(&module) {
            assert!(
                !text.contains("too_many_arguments"),
                "{}: pass a context struct instead",
                path.display()
            );
        }
    }
}
