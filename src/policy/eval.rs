//! Evaluating compiled conditions against one request's facts, with three
//! values: a criterion that cannot be decided (arguments or rate limits
//! while filtering a list; an ambiguous input such as a duplicated JSON key
//! on the pointer's path, or a repeated header that gives different answers)
//! is `Unknown`. A deny rule denies unless its condition is `False`; an allow
//! rule allows only when its condition is `True`.

use crate::mcp::method::Method;
use simd_json::{Node, StaticNode};

use super::compile::{
    Argument, ClaimOp, Cond, ContentOp, EmailOp, Header, NameOp, RateLimit, ResourceOp, SetOp,
    ValueOp,
};
use super::matchers::{lower, same, same_lower, Scalar, StrSet};
use super::ratelimit::RateTable;
use super::Facts;
use crate::config::policy::RateKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tri {
    False,
    Unknown,
    True,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

/// Which item a method names, worked out once per evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Tool,
    Prompt,
    Resource,
    Other,
}

impl Call {
    /// Every `resources/` method reaches a resource, named or not.
    pub(super) fn of(method: Option<Method<'_>>) -> Call {
        match method {
            Some(Method::ToolsCall) => Call::Tool,
            Some(Method::PromptsGet) => Call::Prompt,
            Some(
                Method::ResourcesList
                | Method::ResourcesTemplatesList
                | Method::ResourcesRead
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe,
            ) => Call::Resource,
            Some(Method::Other(m)) if m.starts_with("resources/") => Call::Resource,
            _ => Call::Other,
        }
    }
}

pub(crate) struct Ctx<'f, 'a> {
    pub facts: &'f Facts<'a>,
    pub call: Call,
    /// Filtering a list: arguments and rate limits are `Unknown`, nothing is counted.
    pub listing: bool,
    pub table: Option<&'f RateTable>,
    /// Set by a rate limit found exceeded.
    pub retry_after: Option<u64>,
}

impl Cond {
    /// Only `and`/`or`/`not` and the cheapest criteria are evaluated here;
    /// the rest are calls, so this recursive function keeps a small frame
    /// (its prologue and dispatch were most of the cost of a node).
    pub(super) fn eval(&self, cx: &mut Ctx<'_, '_>) -> Tri {
        let f = cx.facts;
        match self {
            Cond::And(items) => {
                let mut out = Tri::True;
                for c in items.iter() {
                    match c.eval(cx) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::True => {}
                    }
                }
                out
            }
            Cond::Or(items) => {
                let mut out = Tri::False;
                for c in items.iter() {
                    match c.eval(cx) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::False => {}
                    }
                }
                out
            }
            Cond::Not(c) => match c.eval(cx) {
                Tri::True => Tri::False,
                Tri::False => Tri::True,
                Tri::Unknown => Tri::Unknown,
            },
            Cond::Claim(path, op) => claim(path, op, f),
            Cond::Groups(op) => f.principal.is_some_and(|p| set_op(op, &p.groups)).into(),
            Cond::Scope(op) => f.principal.is_some_and(|p| set_op(op, &p.scopes)).into(),
            Cond::Email(op) => email(op, f),
            Cond::ClientId(set) => f
                .principal
                .and_then(|p| p.client_id.as_deref())
                .is_some_and(|c| set.contains(c))
                .into(),
            Cond::Issuer(set) => f
                .principal
                .is_some_and(|p| set.contains(&p.issuer_name))
                .into(),
            // A request without a method (GET, DELETE) is tested as the
            // empty name: `mcp_method: { equals: "" }` is how a rule names them.
            Cond::Method(op) => name_op(op, f.method.map_or("", Method::as_str)).into(),
            Cond::Tool(op) => {
                (cx.call == Call::Tool && f.name.is_some_and(|n| name_op(op, n))).into()
            }
            Cond::Prompt(op) => {
                (cx.call == Call::Prompt && f.name.is_some_and(|n| name_op(op, n))).into()
            }
            Cond::Resource(op) => resource(op, cx),
            Cond::Argument(a) => argument(a, cx),
            Cond::SourceIp(cidrs) => cidrs.contains(f.source_ip).into(),
            Cond::Time(w) => w.matches(f.now_unix).into(),
            Cond::Header(h) => header(h, f),
            Cond::Content(op) => f
                .content
                .iter()
                .any(|x| match op {
                    ContentOp::Detector(d) => *x.detector == **d,
                    ContentOp::Group(g) => x.group == *g,
                })
                .into(),
            Cond::RateLimit(r) => rate_limit(r, cx),
            Cond::Anomaly(a) => a.eval(f),
        }
    }
}

#[inline(never)]
fn claim(path: &str, op: &ClaimOp, f: &Facts) -> Tri {
    let Some(v) = f.principal.and_then(|p| p.claim(path)) else {
        return Tri::False;
    };
    match op {
        ClaimOp::Equals(s) => s.eq_json(v),
        ClaimOp::In(list) => list.iter().any(|s| s.eq_json(v)),
        ClaimOp::Contains(s) => match (v, s) {
            (serde_json::Value::Array(items), s) => items.iter().any(|i| s.eq_json(i)),
            (serde_json::Value::String(text), Scalar::Str(sub)) => text.contains(&**sub),
            _ => false,
        },
        ClaimOp::Matches(re) => v.as_str().is_some_and(|s| re.is_match(s)),
    }
    .into()
}

#[inline(never)]
fn email(op: &EmailOp, f: &Facts) -> Tri {
    let Some(email) = f.principal.and_then(|p| p.email.as_deref()) else {
        return Tri::False;
    };
    match op {
        EmailOp::In(set) => email_in(set, email),
        EmailOp::EndsWith(suffixes) => suffixes.iter().any(|s| {
            email.len() >= s.len()
                && email.as_bytes()[email.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }),
        EmailOp::Matches(re) => re.is_match(email),
    }
    .into()
}

#[inline(never)]
fn resource(op: &ResourceOp, cx: &Ctx<'_, '_>) -> Tri {
    let Some(uri) = cx.facts.uri.filter(|_| cx.call == Call::Resource) else {
        return Tri::False;
    };
    match op {
        ResourceOp::Equals(e) => same(e.as_bytes(), uri.as_bytes()).into(),
        // `a/../b` would pass a prefix or glob meant to confine it.
        _ if dot_segment(uri) => Tri::Unknown,
        ResourceOp::Prefix(p) => p.matches(uri).into(),
        ResourceOp::Glob(globs) => globs.iter().any(|g| g.is_match(uri)).into(),
    }
}

#[inline(never)]
fn argument(a: &Argument, cx: &Ctx<'_, '_>) -> Tri {
    if cx.listing {
        return Tri::Unknown;
    }
    let found = match cx.facts.arguments {
        None => Found::Missing,
        Some(nodes) => lookup(nodes, &a.pointer),
    };
    match found {
        Found::Ambiguous => Tri::Unknown,
        Found::Missing => matches!(a.op, ValueOp::Exists(false)).into(),
        Found::Value(v) => node_op(&a.op, v).into(),
    }
}

#[inline(never)]
fn header(h: &Header, f: &Facts) -> Tri {
    let mut out: Option<bool> = None;
    for header in f
        .headers
        .iter()
        .filter(|x| same_lower(x.name.as_bytes(), h.name.as_bytes()))
    {
        if let ValueOp::Exists(e) = h.op {
            return e.into();
        }
        let this = header_op(&h.op, header.value);
        match out {
            Some(prev) if prev != this => return Tri::Unknown,
            _ => out = Some(this),
        }
    }
    match out {
        Some(b) => b.into(),
        None => matches!(h.op, ValueOp::Exists(false)).into(),
    }
}

#[inline(never)]
fn rate_limit(r: &RateLimit, cx: &mut Ctx<'_, '_>) -> Tri {
    if cx.listing {
        return Tri::Unknown;
    }
    let Some(table) = cx.table else {
        return Tri::False;
    };
    let f = cx.facts;
    let tool = match r.key {
        RateKey::PrincipalAndTool if cx.call == Call::Tool => f.name,
        _ => None,
    };
    let hash = match f.principal {
        Some(p) => table.hash((r.id, 0u8, p.issuer.as_str(), p.sub.as_str(), tool)),
        // Anonymous callers are counted by address.
        None => table.hash((r.id, 1u8, f.source_ip, tool)),
    };
    match table.hit(hash, f.now_unix, r.per, r.requests) {
        Ok(()) => Tri::False,
        Err(retry) => {
            cx.retry_after = Some(cx.retry_after.map_or(retry, |r| r.max(retry)));
            Tri::True
        }
    }
}

/// Kept out of `eval` so its buffer is not in every frame of the recursion.
#[inline(never)]
fn email_in(set: &StrSet, email: &str) -> bool {
    let mut buf = [0u8; 320];
    lower(email, &mut buf).is_some_and(|e| set.contains(e))
}

fn set_op(op: &SetOp, have: &[String]) -> bool {
    match op {
        SetOp::Has(x) => have.iter().any(|h| same(h.as_bytes(), x.as_bytes())),
        SetOp::Any(set) => have.iter().any(|h| set.contains(h)),
        SetOp::All(list) => list
            .iter()
            .all(|x| have.iter().any(|h| same(h.as_bytes(), x.as_bytes()))),
    }
}

#[inline]
pub(super) fn name_op(op: &NameOp, s: &str) -> bool {
    match op {
        NameOp::In(set) => set.contains(s),
        NameOp::Prefix(p) => p.matches(s),
        NameOp::Matches(re) => re.is_match(s),
    }
}

pub(super) fn str_op(op: &ValueOp, s: &str) -> bool {
    match op {
        ValueOp::In { strs, .. } => strs.contains(s),
        ValueOp::Matches(re) => re.is_match(s),
        ValueOp::Range(..) => false,
        ValueOp::Exists(e) => *e,
    }
}

/// `str_op` on a header value: a value equal to a (UTF-8) member is UTF-8,
/// so set membership compares bytes without validating them first.
fn header_op(op: &ValueOp, v: &[u8]) -> bool {
    match op {
        ValueOp::In { strs, .. } => strs.contains_bytes(v),
        _ => std::str::from_utf8(v).is_ok_and(|v| str_op(op, v)),
    }
}

fn node_op(op: &ValueOp, v: &[Node<'_>]) -> bool {
    match (op, v.first()) {
        (ValueOp::Exists(e), _) => *e,
        (_, Some(Node::String(s))) => str_op(op, s),
        (ValueOp::In { others, .. }, Some(Node::Static(s))) => {
            others.iter().any(|o| static_eq(o, s))
        }
        (ValueOp::Range(lo, hi), Some(Node::Static(s))) => {
            let x = match *s {
                StaticNode::I64(i) => i as f64,
                StaticNode::U64(u) => u as f64,
                StaticNode::F64(f) => f,
                _ => return false,
            };
            *lo <= x && x <= *hi
        }
        _ => false,
    }
}

fn static_eq(a: &Scalar, s: &StaticNode) -> bool {
    match (a, *s) {
        (Scalar::Bool(a), StaticNode::Bool(b)) => *a == b,
        (Scalar::Null, StaticNode::Null) => true,
        (Scalar::Num(..), StaticNode::I64(i)) => a.eq_i128(i128::from(i)),
        (Scalar::Num(..), StaticNode::U64(u)) => a.eq_i128(i128::from(u)),
        (Scalar::Num(..), StaticNode::F64(f)) => a.eq_f64(f),
        _ => false,
    }
}

pub(crate) enum Found<'t, 'i> {
    Missing,
    /// A key on the path occurs more than once: the proxy and the server
    /// might read different values.
    Ambiguous,
    Value(&'t [Node<'i>]),
}

/// Number of nodes a value occupies, its header included.
fn width(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Follow unescaped pointer tokens through tape nodes (`nodes[0]` is the
/// value's header). No allocation.
pub(crate) fn lookup<'t, 'i>(nodes: &'t [Node<'i>], tokens: &[Box<str>]) -> Found<'t, 'i> {
    let mut cur = nodes;
    for tok in tokens {
        let Some(head) = cur.first() else {
            return Found::Missing;
        };
        match *head {
            Node::Object { len, .. } => {
                // The key/value pairs not yet looked at, each key first.
                let mut rest = &cur[1..];
                let mut hit = None;
                for _ in 0..len {
                    let [Node::String(k), v, ..] = rest else {
                        return Found::Missing;
                    };
                    let w = width(v);
                    if same(k.as_bytes(), tok.as_bytes()) {
                        if hit.is_some() {
                            return Found::Ambiguous;
                        }
                        hit = rest.get(1..1 + w);
                    }
                    rest = rest.get(1 + w..).unwrap_or_default();
                }
                match hit {
                    Some(v) => cur = v,
                    None => return Found::Missing,
                }
            }
            Node::Array { len, .. } => {
                let Some(index) = array_index(tok) else {
                    return Found::Missing;
                };
                if index >= len {
                    return Found::Missing;
                }
                let mut i = 1;
                for _ in 0..index {
                    let Some(v) = cur.get(i) else {
                        return Found::Missing;
                    };
                    i += width(v);
                }
                let Some(v) = cur.get(i) else {
                    return Found::Missing;
                };
                match cur.get(i..i + width(v)) {
                    Some(v) => cur = v,
                    None => return Found::Missing,
                }
            }
            _ => return Found::Missing,
        }
    }
    if cur.is_empty() {
        Found::Missing
    } else {
        Found::Value(cur)
    }
}

/// RFC 6901 array index: `0` or digits without a leading zero (`-` never exists).
fn array_index(tok: &str) -> Option<usize> {
    let b = tok.as_bytes();
    if b.is_empty() || (b.len() > 1 && b[0] == b'0') || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    tok.parse().ok()
}

/// Whether `uri` could name another path than it seems to: a `.` or `..`
/// segment (literal or percent-encoded), or an encoded separator or percent
/// sign (`%2f`, `%5c`, `%25`) that a server may decode before it resolves
/// the path. Prefix and glob tests on such a URI are unknown.
pub(crate) fn dot_segment(uri: &str) -> bool {
    let encoded_separator = uri.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2] | 0x20),
                (b'2', b'f') | (b'5', b'c') | (b'2', b'5')
            )
    });
    encoded_separator
        || uri.split(['/', '\\', '?', '#']).any(|seg| {
            let b = seg.as_bytes();
            let mut dots = 0;
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'.' {
                    i += 1;
                } else if b[i] == b'%'
                    && b.get(i + 1) == Some(&b'2')
                    && matches!(b.get(i + 2), Some(b'e' | b'E'))
                {
                    i += 3;
                } else {
                    return false;
                }
                dots += 1;
            }
            dots == 1 || dots == 2
        })
}
