//! From config to compiled conditions: every string set, prefix list, regex,
//! address table and time zone is built here, once.

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

/// Criteria on the caller's token: `claim`, `groups`, `scope`, `email`,
/// `client_id`, `issuer`.
fn principal(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.claim {
        return Some(claim(t));
    }
    if let Some(t) = &c.groups {
        return Some(set_op("groups", t).map(Cond::Groups));
    }
    if let Some(t) = &c.scope {
        return Some(set_op("scope", t).map(Cond::Scope));
    }
    if let Some(t) = &c.email {
        return Some(email(t));
    }
    if let Some(t) = &c.client_id {
        return Some(eq_set("client_id", t).map(Cond::ClientId));
    }
    let t = c.issuer.as_ref()?;
    Some(eq_set("issuer", t).map(Cond::Issuer))
}

fn claim(t: &config::ClaimTest) -> Result<Cond, String> {
    if t.path.is_empty() || t.path.split('.').any(str::is_empty) {
        return Err(format!("claim: bad path {:?}", t.path));
    }
    let op = one(
        "claim",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|v| Scalar::from_value(v).map(ClaimOp::Equals)),
            ),
            (
                "in",
                t.in_
                    .as_ref()
                    .map(|v| scalars(v).map(|v| ClaimOp::In(v.into()))),
            ),
            (
                "contains",
                t.contains
                    .as_ref()
                    .map(|v| Scalar::from_value(v).map(ClaimOp::Contains)),
            ),
            (
                "matches",
                t.matches
                    .as_ref()
                    .map(|r| Pattern::new(r).map(ClaimOp::Matches)),
            ),
        ],
    )?
    .map_err(|e| format!("claim: {e}"))?;
    Ok(Cond::Claim(t.path.as_str().into(), op))
}

fn email(t: &config::EmailTest) -> Result<Cond, String> {
    let lower = |v: &[String]| StrSet::new(v.iter().map(|s| s.to_ascii_lowercase()));
    let op = one(
        "email",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|s| Ok(EmailOp::In(lower(std::slice::from_ref(s))))),
            ),
            ("in", t.in_.as_ref().map(|v| Ok(EmailOp::In(lower(v))))),
            (
                "ends_with",
                t.ends_with.as_ref().map(|v| {
                    Ok(EmailOp::EndsWith(
                        v.clone()
                            .into_vec()
                            .iter()
                            .map(|s| s.to_ascii_lowercase().into())
                            .collect(),
                    ))
                }),
            ),
            (
                "matches",
                t.matches
                    .as_ref()
                    .map(|r| Pattern::new(r).map(EmailOp::Matches)),
            ),
        ],
    )?
    .map_err(|e: String| format!("email: {e}"))?;
    Ok(Cond::Email(op))
}

/// Criteria on the MCP message's names: `mcp_method`, `mcp_prompt`,
/// `mcp_tool`, `mcp_resource`.
fn mcp_names(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.mcp_method {
        return Some(name_op("mcp_method", t, None).map(Cond::Method));
    }
    if let Some(t) = &c.mcp_prompt {
        return Some(name_op("mcp_prompt", t, None).map(Cond::Prompt));
    }
    if let Some(t) = &c.mcp_tool {
        let names = config::NameTest {
            equals: t.equals.clone(),
            in_: t.in_.clone(),
            starts_with: t.starts_with.clone(),
        };
        return Some(name_op("mcp_tool", &names, Some(&t.matches)).map(Cond::Tool));
    }
    let t = c.mcp_resource.as_ref()?;
    Some(resource(t))
}

fn resource(t: &config::ResourceTest) -> Result<Cond, String> {
    let op = one(
        "mcp_resource",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|s| Ok(ResourceOp::Equals(s.as_str().into()))),
            ),
            (
                "starts_with",
                t.starts_with
                    .as_ref()
                    .map(|v| Ok(ResourceOp::Prefix(Prefixes::new(v.clone().into_vec())))),
            ),
            (
                "glob",
                t.glob.as_ref().map(|v| {
                    v.clone()
                        .into_vec()
                        .iter()
                        .map(|g| matchers::glob(g))
                        .collect::<Result<_, _>>()
                        .map(ResourceOp::Glob)
                }),
            ),
        ],
    )?
    .map_err(|e: String| format!("mcp_resource: {e}"))?;
    Ok(Cond::Resource(op))
}

/// Criteria on where and when: `source_ip`, `time`.
fn network_time(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.source_ip {
        return Some(
            Cidrs::parse(&t.in_)
                .map(Cond::SourceIp)
                .map_err(|e| format!("source_ip: {e}")),
        );
    }
    let t = c.time.as_ref()?;
    let hours = t.hours.clone().map(|h| h.into_vec()).unwrap_or_default();
    Some(
        TimeWindow::new(t.days.as_deref(), &hours, t.tz.as_deref())
            .map(|w| Cond::Time(Box::new(w)))
            .map_err(|e| format!("time: {e}")),
    )
}

/// Criteria on values in the request: `argument`, `header`.
fn values(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.argument {
        return Some(argument(t));
    }
    let t = c.header.as_ref()?;
    Some(header(t))
}

/// `content`: one detector or one group.
fn content(c: &Condition) -> Option<Result<Cond, String>> {
    let t = c.content.as_ref()?;
    let op = match (&t.detector, &t.group) {
        (Some(d), None) if !d.is_empty() => Ok(ContentOp::Detector(d.as_str().into())),
        (None, Some(g)) => crate::screen::Group::parse(g)
            .map(ContentOp::Group)
            .ok_or_else(|| {
                format!("content: unknown group {g:?} (want secrets, pii, injection or custom)")
            }),
        _ => Err("content: want exactly one of detector and group".into()),
    };
    Some(op.map(Cond::Content))
}

fn argument(t: &config::ArgumentTest) -> Result<Cond, String> {
    let pointer = pointer(&t.pointer).map_err(|e| format!("argument: {e}"))?;
    let op = value_op(
        "argument",
        t.equals.as_ref(),
        t.in_.as_deref(),
        t.matches.as_deref(),
        (t.min, t.max),
        t.exists,
    )?;
    Ok(Cond::Argument(Box::new(Argument { pointer, op })))
}

fn header(t: &config::HeaderTest) -> Result<Cond, String> {
    if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("header: bad name {:?}", t.name));
    }
    let equals = t.equals.clone().map(serde_json::Value::String);
    let in_ = t.in_.as_ref().map(|v| {
        v.iter()
            .cloned()
            .map(serde_json::Value::String)
            .collect::<Vec<_>>()
    });
    let op = value_op(
        "header",
        equals.as_ref(),
        in_.as_deref(),
        t.matches.as_deref(),
        (None, None),
        t.exists,
    )?;
    Ok(Cond::Header(Box::new(Header {
        name: t.name.to_ascii_lowercase().into(),
        op,
    })))
}

fn set_op(what: &str, t: &config::SetTest) -> Result<SetOp, String> {
    one(
        what,
        vec![
            ("has", t.has.as_ref().map(|s| SetOp::Has(s.as_str().into()))),
            (
                "any",
                t.any
                    .as_ref()
                    .map(|v| SetOp::Any(StrSet::new(v.iter().cloned()))),
            ),
            (
                "all",
                t.all
                    .as_ref()
                    .map(|v| SetOp::All(v.iter().map(|s| s.as_str().into()).collect())),
            ),
        ],
    )
}

fn eq_set(what: &str, t: &config::EqTest) -> Result<StrSet, String> {
    one(
        what,
        vec![
            (
                "equals",
                t.equals.as_ref().map(|s| StrSet::new([s.clone()])),
            ),
            ("in", t.in_.as_ref().map(|v| StrSet::new(v.iter().cloned()))),
        ],
    )
}

fn name_op(
    what: &str,
    t: &config::NameTest,
    matches: Option<&Option<String>>,
) -> Result<NameOp, String> {
    let mut options = vec![
        (
            "equals",
            t.equals
                .as_ref()
                .map(|s| Ok(NameOp::In(StrSet::new([s.clone()])))),
        ),
        (
            "in",
            t.in_
                .as_ref()
                .map(|v| Ok(NameOp::In(StrSet::new(v.iter().cloned())))),
        ),
        (
            "starts_with",
            t.starts_with
                .as_ref()
                .map(|v| Ok(NameOp::Prefix(Prefixes::new(v.clone().into_vec())))),
        ),
    ];
    if let Some(m) = matches {
        options.push((
            "matches",
            m.as_ref().map(|r| Pattern::new(r).map(NameOp::Matches)),
        ));
    }
    one(what, options)?.map_err(|e: String| format!("{what}: {e}"))
}

fn value_op(
    what: &str,
    equals: Option<&serde_json::Value>,
    in_: Option<&[serde_json::Value]>,
    matches: Option<&str>,
    (min, max): (Option<f64>, Option<f64>),
    exists: Option<bool>,
) -> Result<ValueOp, String> {
    let range = (min.is_some() || max.is_some()).then(|| {
        let (lo, hi) = (
            min.unwrap_or(f64::NEG_INFINITY),
            max.unwrap_or(f64::INFINITY),
        );
        if lo.is_nan() || hi.is_nan() || lo > hi {
            Err(format!("empty range min {lo} max {hi}"))
        } else {
            Ok(ValueOp::Range(lo, hi))
        }
    });
    one(
        what,
        vec![
            (
                "equals",
                equals.map(|v| Scalar::from_value(v).map(|s| value_in(vec![s]))),
            ),
            ("in", in_.map(|v| scalars(v).map(value_in))),
            (
                "matches",
                matches.map(|r| Pattern::new(r).map(ValueOp::Matches)),
            ),
            ("min/max", range),
            ("exists", exists.map(|e| Ok(ValueOp::Exists(e)))),
        ],
    )?
    .map_err(|e| format!("{what}: {e}"))
}
