//! The value types of the configuration that parse themselves: durations,
//! paths and strings with `${ENV_VAR}` substituted, URLs and authorities,
//! with their JSON Schema.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, path::PathBuf, time::Duration};

/// A duration written as `250ms`, `10s`, `2m`, `1h`, `30d`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        Some(match unit.trim() {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let (parsed, raw) = match Raw::deserialize(d)? {
            Raw::N(n) => (Some(Duration::from_secs(n)), n.to_string()),
            Raw::S(s) => (Dur::parse(&s), s),
        };
        match parsed {
            Some(d) if !d.is_zero() => Ok(Dur(d)),
            _ => Err(de::Error::custom(format!(
                "\"{raw}\" is not a positive duration such as `250ms`, `10s`, `2m`, `1h` or `30d`"
            ))),
        }
    }
}

/// The inverse of [`Dur::parse`]: `250ms` when not a whole number of
/// seconds, else `30s`.
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

/// As written in the file (`"30s"`), so the schema shows defaults readably.
impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A file path; `${ENV_VAR}` is substituted.
#[derive(Clone, Debug)]
pub struct EnvPath(pub PathBuf);

impl<'de> Deserialize<'de> for EnvPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        expand_env(&s)
            .map(|s| EnvPath(PathBuf::from(s)))
            .map_err(de::Error::custom)
    }
}

/// `deserialize_with` for a string in which `${ENV_VAR}` is substituted.
pub fn env_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    expand_env(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// `deserialize_with` for an optional string in which `${ENV_VAR}` is
/// substituted (with `#[serde(default)]`).
pub fn env_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| expand_env(&s))
        .transpose()
        .map_err(de::Error::custom)
}

/// `deserialize_with` for strings in which `${ENV_VAR}` is substituted.
pub fn env_opt_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Option::<Vec<String>>::deserialize(d)?
        .map(|v| v.iter().map(|s| expand_env(s)).collect())
        .transpose()
        .map_err(de::Error::custom)
}

/// Substitute `${NAME}` with the environment variable NAME; `$${` is a literal
/// `${`. An unset variable is an error, never an empty string.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let name = &t[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            let value = std::env::var(name)
                .map_err(|_| format!("environment variable \"{name}\" is not set"))?;
            out.push_str(&value);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An `http://` or `https://` URL with a path prefix and no query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Lower-cased host name or IP literal (IPv6 with brackets).
    pub host: String,
    pub port: u16,
    /// The path prefix: starts with `/`, no trailing `/` unless it is `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?}: URL must start with http:// or https://"));
        };
        if rest.contains(['?', '#']) {
            return Err(format!("{s:?}: URL must not have a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("{s:?}: URL must not contain credentials"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("{s:?}: invalid host or port"))?;
        let port = port.unwrap_or(default_port);
        if path.split('/').any(|seg| seg == "." || seg == "..") || path.contains(['%', ' ']) {
            return Err(format!(
                "{s:?}: path prefix must be plain (no dot segments, escapes or spaces)"
            ));
        }
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let path = if path.is_empty() { "/" } else { path };
        Ok(Url {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    pub fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// `host[:port]` as sent in a Host header (port omitted when default).
    pub fn authority(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.authority(), self.path)
    }
}

/// Split `host[:port]`, `[v6][:port]`. `None` when malformed.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        host[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        match &authority[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        // A byte search: this runs on every request (route lookup).
        match authority.bytes().rposition(|b| b == b':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        }
    };
    let valid_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if !host.starts_with('[') && !valid_name(host) {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = expand_env(&s).map_err(de::Error::custom)?;
        Url::parse(&s).map_err(de::Error::custom)
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A positive duration: `250ms`, `10s`, `2m`, `1h`, or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(ms|s|m|h|d)?\\s*$"},
                {"type": "integer", "minimum": 1}
            ]
        })
    }
}

impl schemars::JsonSchema for EnvPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Path".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A file path (relative to the configuration file's directory); `${ENV_VAR}` is substituted.",
            "type": "string"
        })
    }
}

impl schemars::JsonSchema for Url {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Url".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An http:// or https:// URL; `${ENV_VAR}` is substituted.",
            "type": "string",
            "pattern": "^(https?://|\\$\\{)"
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if (1..=1024).contains(&n) => Ok(Workers::Count(n as usize)),
            Raw::S(s) if s == "auto" => Ok(Workers::Auto),
            Raw::S(s) => Err(de::Error::custom(format!(
                "workers: \"{s}\" is not `auto` or a number from 1 to 1024"
            ))),
            Raw::N(n) => Err(de::Error::custom(format!(
                "workers: {n} is not `auto` or a number from 1 to 1024"
            ))),
        }
    }
}

/// `"auto"` or the number, as written in the file.
impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl Workers {
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl schemars::JsonSchema for Workers {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Workers".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Worker threads: `auto` (one per CPU) or 1 to 1024.",
            "anyOf": [
                {"const": "auto"},
                {"type": "integer", "minimum": 1, "maximum": 1024}
            ],
            "default": "auto"
        })
    }
}
