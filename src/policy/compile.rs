//! From config to compiled conditions: every string set, prefix list, regex,
//! address table and time zone is built here, once.

mod criteria;

use criteria::{content, mcp_names, network_time, principal, values};
use regex::Regex;

use super::anomaly::Anomaly;
use super::cidr::Cidrs;
use super::matchers::{self, Pattern, Prefixes, Scalar, StrSet};
use super::time::TimeWindow;
use crate::config::policy::{self as config, Condition, RateKey};

/// Most `requests` a rate limit may allow in one window.
pub(crate) const MAX_REQUESTS: u64 = 1 << 30;
/// Deepest condition nesting accepted.
const MAX_DEPTH: usize = 32;

#[derive(Debug)]
pub(crate) enum Cond {
    And(Box<[Cond]>),
    Or(Box<[Cond]>),
    Not(Box<Cond>),
    Claim(Box<str>, ClaimOp),
    Groups(SetOp),
    Scope(SetOp),
    Email(EmailOp),
    ClientId(StrSet),
    Issuer(StrSet),
    Method(NameOp),
    Tool(NameOp),
    Resource(ResourceOp),
    Prompt(NameOp),
    Argument(Box<Argument>),
    SourceIp(Cidrs),
    Time(Box<TimeWindow>),
    Header(Box<Header>),
    Content(ContentOp),
    RateLimit(RateLimit),
    Anomaly(Anomaly),
}

impl Cond {
    pub(crate) fn uses_headers(&self) -> bool {
        match self {
            Cond::And(c) | Cond::Or(c) => c.iter().any(Cond::uses_headers),
            Cond::Not(c) => c.uses_headers(),
            Cond::Header(_) => true,
            _ => false,
        }
    }

    pub(crate) fn uses_arguments(&self) -> bool {
        match self {
            Cond::And(c) | Cond::Or(c) => c.iter().any(Cond::uses_arguments),
            Cond::Not(c) => c.uses_arguments(),
            Cond::Argument(_) => true,
            _ => false,
        }
    }

    pub(crate) fn uses_anomaly(&self) -> bool {
        match self {
            Cond::And(c) | Cond::Or(c) => c.iter().any(Cond::uses_anomaly),
            Cond::Not(c) => c.uses_anomaly(),
            Cond::Anomaly(_) => true,
            _ => false,
        }
    }
    /// The `content` criteria in it (for checking them against the route's
    /// screen).
    pub(crate) fn content<'c>(&'c self, out: &mut Vec<&'c ContentOp>) {
        match self {
            Cond::And(c) | Cond::Or(c) => c.iter().for_each(|i| i.content(out)),
            Cond::Not(c) => c.content(out),
            Cond::Content(op) => out.push(op),
            _ => {}
        }
    }
}

/// `content`: a detector by name, or a group of them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ContentOp {
    Detector(Box<str>),
    Group(crate::screen::Group),
}

#[derive(Debug)]
pub(crate) enum ClaimOp {
    Equals(Scalar),
    In(Box<[Scalar]>),
    Contains(Scalar),
    Matches(Pattern),
}

#[derive(Debug)]
pub(crate) enum SetOp {
    Has(Box<str>),
    Any(StrSet),
    All(Box<[Box<str>]>),
}

#[derive(Debug)]
pub(crate) enum EmailOp {
    /// Lowercased; compared ASCII-case-insensitively.
    In(StrSet),
    EndsWith(Box<[Box<str>]>),
    Matches(Pattern),
}

#[derive(Debug)]
pub(crate) enum NameOp {
    In(StrSet),
    Prefix(Prefixes),
    Matches(Pattern),
}

#[derive(Debug)]
pub(crate) enum ResourceOp {
    Equals(Box<str>),
    Prefix(Prefixes),
    Glob(Box<[Regex]>),
}

#[derive(Debug)]
pub(crate) struct Argument {
    /// Unescaped reference tokens.
    pub pointer: Box<[Box<str>]>,
    pub op: ValueOp,
}

#[derive(Debug)]
pub(crate) enum ValueOp {
    In { strs: StrSet, others: Box<[Scalar]> },
    Matches(Pattern),
    Range(f64, f64),
    Exists(bool),
}

#[derive(Debug)]
pub(crate) struct Header {
    /// Lowercase.
    pub name: Box<str>,
    pub op: ValueOp,
}

#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Unique within the policy (part of every counter key).
    pub id: u32,
    pub requests: u32,
    pub per: u64,
    pub key: RateKey,
}

/// Compile state for one policy.
pub(crate) struct Compiler {
    pub rate_limits: u32,
}

fn one<T>(what: &str, options: Vec<(&str, Option<T>)>) -> Result<T, String> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let mut set: Vec<(&str, T)> = options
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    if set.len() == 1 {
        if let Some((_, v)) = set.pop() {
            return Ok(v);
        }
    }
    match set.len() {
        0 => Err(format!("{what} needs one of: {}", names.join(", "))),
        _ => Err(format!(
            "{what} takes only one of: {} (got {})",
            names.join(", "),
            set.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn scalars(values: &[serde_json::Value]) -> Result<Vec<Scalar>, String> {
    values.iter().map(Scalar::from_value).collect()
}

/// `equals`/`in` values split into a string set and the rest.
fn value_in(values: Vec<Scalar>) -> ValueOp {
    let mut strs = Vec::new();
    let mut others = Vec::new();
    for v in values {
        match v {
            Scalar::Str(s) => strs.push(String::from(s)),
            v => others.push(v),
        }
    }
    ValueOp::In {
        strs: StrSet::new(strs),
        others: others.into_boxed_slice(),
    }
}

fn period(p: &config::Period) -> Result<u64, String> {
    let secs = match p {
        config::Period::Seconds(n) => Some(*n),
        config::Period::Text(t) => {
            let t = t.trim();
            let (num, unit) = match t.char_indices().last() {
                Some((i, 's')) => (&t[..i], 1),
                Some((i, 'm')) => (&t[..i], 60),
                Some((i, 'h')) => (&t[..i], 3600),
                _ => (t, 1),
            };
            num.parse::<u64>().ok().and_then(|n| n.checked_mul(unit))
        }
    };
    match secs {
        Some(s) if (1..=u32::MAX as u64).contains(&s) => Ok(s),
        _ => Err(format!(
            "bad rate_limit period {p:?} (want e.g. 30s, 1m, 2h or seconds > 0)"
        )),
    }
}

/// RFC 6901: `""` is the whole value, else `/`-separated tokens with `~1` → `/`, `~0` → `~`.
pub(crate) fn pointer(text: &str) -> Result<Box<[Box<str>]>, String> {
    if text.is_empty() {
        return Ok(Box::new([]));
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "bad JSON pointer {text:?}: must be empty or start with /"
        ));
    };
    rest.split('/')
        .map(|tok| {
            let mut out = String::with_capacity(tok.len());
            let mut chars = tok.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "bad JSON pointer {text:?}: ~ must be followed by 0 or 1"
                            ))
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out.into_boxed_str())
        })
        .collect()
}

impl Compiler {
    /// `in_deny` says whether rate limits are allowed here.
    pub(super) fn cond(
        &mut self,
        c: &Condition,
        in_deny: bool,
        depth: usize,
    ) -> Result<Cond, String> {
        if depth > MAX_DEPTH {
            return Err(format!("conditions nested deeper than {MAX_DEPTH}"));
        }
        one_key(c)?;
        self.combinator(c, in_deny, depth)
            .or_else(|| principal(c))
            .or_else(|| mcp_names(c))
            .or_else(|| network_time(c))
            .or_else(|| values(c))
            .or_else(|| content(c))
            .or_else(|| self.rate_limit(c, in_deny))
            .or_else(|| {
                c.anomaly
                    .as_ref()
                    .map(|t| Anomaly::compile(t).map(Cond::Anomaly))
            })
            .unwrap_or_else(|| unreachable!("one key was checked above"))
    }

    /// `and`, `or`, `not`: their conditions are one level deeper.
    fn combinator(
        &mut self,
        c: &Condition,
        in_deny: bool,
        depth: usize,
    ) -> Option<Result<Cond, String>> {
        let mut list = |items: &[Condition]| -> Result<Box<[Cond]>, String> {
            items
                .iter()
                .map(|i| self.cond(i, in_deny, depth + 1))
                .collect()
        };
        if let Some(items) = &c.and {
            return Some(list(items).map(Cond::And));
        }
        if let Some(items) = &c.or {
            return Some(list(items).map(Cond::Or));
        }
        let inner = c.not.as_ref()?;
        Some(
            self.cond(inner, in_deny, depth + 1)
                .map(|i| Cond::Not(Box::new(i))),
        )
    }

    /// `rate_limit` (deny rules only); each gets the next id of this policy.
    fn rate_limit(&mut self, c: &Condition, in_deny: bool) -> Option<Result<Cond, String>> {
        let t = c.rate_limit.as_ref()?;
        if !in_deny {
            return Some(Err(
                "rate_limit is true when the limit is exceeded: use it in a deny rule".into(),
            ));
        }
        if t.requests > MAX_REQUESTS {
            return Some(Err(format!("rate_limit: requests above {MAX_REQUESTS}")));
        }
        let per = match period(&t.per) {
            Ok(per) => per,
            Err(e) => return Some(Err(e)),
        };
        self.rate_limits += 1;
        Some(Ok(Cond::RateLimit(RateLimit {
            id: self.rate_limits,
            requests: t.requests as u32,
            per,
            key: t.key,
        })))
    }
}

/// A condition has exactly one key: a combinator or one criterion.
fn one_key(c: &Condition) -> Result<(), String> {
    let Condition {
        and,
        or,
        not,
        claim,
        groups,
        email,
        scope,
        client_id,
        issuer,
        mcp_method,
        mcp_tool,
        mcp_resource,
        mcp_prompt,
        argument,
        source_ip,
        time,
        header,
        content,
        rate_limit,
        anomaly,
    } = c;
    let keys: Vec<&str> = [
        ("and", and.is_some()),
        ("or", or.is_some()),
        ("not", not.is_some()),
        ("claim", claim.is_some()),
        ("groups", groups.is_some()),
        ("email", email.is_some()),
        ("scope", scope.is_some()),
        ("client_id", client_id.is_some()),
        ("issuer", issuer.is_some()),
        ("mcp_method", mcp_method.is_some()),
        ("mcp_tool", mcp_tool.is_some()),
        ("mcp_resource", mcp_resource.is_some()),
        ("mcp_prompt", mcp_prompt.is_some()),
        ("argument", argument.is_some()),
        ("source_ip", source_ip.is_some()),
        ("time", time.is_some()),
        ("header", header.is_some()),
        ("content", content.is_some()),
        ("rate_limit", rate_limit.is_some()),
        ("anomaly", anomaly.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match keys.len() {
        1 => Ok(()),
        0 => Err("empty condition (want and, or, not or one criterion)".to_string()),
        _ => Err(format!(
            "a condition has exactly one key, got {}",
            keys.join(", ")
        )),
    }
}
