//! Reading a configuration file and locating its errors: serde's location,
//! moved to a quoted value it names when that is more precise, and
//! `locate_nth` for errors found after parsing.

use super::Config;
use std::fmt;
use std::path::{Path, PathBuf};

/// One configuration error, located in its file where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file.display(), self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            _ => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every error found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Read and parse a configuration file (syntax, types and unknown keys).
pub fn load(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.into(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    let config = parse(&text, path)?;
    Ok((config, text))
}

/// Parse configuration text; errors are located in `file`.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    serde_yaml_ng::from_str::<Config>(text).map_err(|e| {
        let loc = e.location();
        let mut message = e.to_string();
        // serde_yaml_ng appends " at line L column C"; the location is printed in front instead.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        let mut line = loc.as_ref().map(|l| l.line());
        let mut column = loc.as_ref().map(|l| l.column());
        // serde points at the enclosing mapping; a quoted value in the message
        // is a better anchor when it appears at or after that line.
        if let Some(value) = message.split('"').nth(1).filter(|v| !v.is_empty()) {
            let skip = line.unwrap_or(1).saturating_sub(1);
            if let Some((n, l)) = text
                .lines()
                .enumerate()
                .skip(skip)
                .find(|(_, l)| l.contains(value))
            {
                line = Some(n + 1);
                column = l.find(value).map(|c| c + 1);
            }
        }
        ConfigErrors(vec![ConfigError {
            file: file.into(),
            line,
            column,
            message,
        }])
    })
}

/// Where the `nth` (0-based) `key: value` appears in `text` (1-based line and
/// column; an empty `value` matches any), to locate errors found after parsing.
pub fn locate_nth(text: &str, key: &str, value: &str, mut nth: usize) -> Option<(usize, usize)> {
    for (n, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line);
        let mut from = 0;
        while let Some(i) = code[from..].find(key).map(|i| i + from) {
            from = i + key.len();
            let before_ok =
                i == 0 || matches!(code.as_bytes()[i - 1], b' ' | b'{' | b',' | b'-' | b'\t');
            let Some(rest) = code[from..].trim_start().strip_prefix(':') else {
                continue;
            };
            let v = rest
                .split([',', '}'])
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(|c| c == '"' || c == '\'');
            if before_ok && (value.is_empty() || v == value) {
                if nth == 0 {
                    return Some((n + 1, i + 1));
                }
                nth -= 1;
            }
        }
    }
    None
}
