//! The rule index: which rules a message can match at all, by phase (deny,
//! allow, rate-limited deny), keyed by method and tool name in policies
//! large enough for it to pay.

use super::*;

/// Policies with more rules than this are indexed by method and tool name.
const INDEX_MIN_RULES: usize = 16;

/// Rule numbers by phase, each in config order.
#[derive(Debug, Default, Clone)]
pub(super) struct Lists {
    pub(super) deny: Box<[u32]>,
    pub(super) allow: Box<[u32]>,
    pub(super) rated: Box<[u32]>,
}

#[derive(Debug)]
pub(super) enum Index {
    /// Every rule is a candidate.
    All(Lists),
    Keyed {
        /// Per method: rules not tied to a tool, with no method or that method.
        by_method: HashMap<Box<str>, Lists, Hasher>,
        /// Rules not tied to a method or tool.
        any: Lists,
        /// Per tool: rules that can only match `tools/call` of that tool.
        by_tool: HashMap<Box<str>, Lists, Hasher>,
    },
}

/// Which requests a rule can match at all, for the index.
enum Key {
    Any,
    Methods(Vec<String>),
    Tools(Vec<String>),
}

fn key(c: &Cond) -> Key {
    match c {
        Cond::Tool(NameOp::In(set)) => Key::Tools(set.iter().map(String::from).collect()),
        Cond::Tool(_) => Key::Methods(vec!["tools/call".into()]),
        Cond::Prompt(_) => Key::Methods(vec!["prompts/get".into()]),
        Cond::Method(NameOp::In(set)) => Key::Methods(set.iter().map(String::from).collect()),
        Cond::And(items) => {
            let mut best = Key::Any;
            for k in items.iter().map(key) {
                best = match (best, k) {
                    (Key::Tools(a), Key::Tools(b)) => {
                        Key::Tools(if b.len() < a.len() { b } else { a })
                    }
                    (Key::Tools(a), _) | (_, Key::Tools(a)) => Key::Tools(a),
                    (Key::Methods(a), Key::Methods(b)) => {
                        Key::Methods(if b.len() < a.len() { b } else { a })
                    }
                    (Key::Methods(a), _) | (_, Key::Methods(a)) => Key::Methods(a),
                    (Key::Any, Key::Any) => Key::Any,
                };
            }
            best
        }
        Cond::Or(items) if !items.is_empty() => {
            let mut tools = Vec::new();
            let mut methods = Vec::new();
            for k in items.iter().map(key) {
                match k {
                    Key::Any => return Key::Any,
                    Key::Tools(t) => tools.extend(t),
                    Key::Methods(m) => methods.extend(m),
                }
            }
            if methods.is_empty() {
                Key::Tools(tools)
            } else {
                if !tools.is_empty() {
                    methods.push("tools/call".into());
                }
                Key::Methods(methods)
            }
        }
        _ => Key::Any,
    }
}

impl Lists {
    pub(super) fn of(rules: &[Rule], pick: impl Fn(usize) -> bool) -> Lists {
        let ids = |f: &dyn Fn(&Rule) -> bool| -> Box<[u32]> {
            (0..rules.len())
                .filter(|&i| pick(i) && f(&rules[i]))
                .map(|i| i as u32)
                .collect()
        };
        Lists {
            deny: ids(&|r| r.deny && !r.cond.has_rate_limit()),
            allow: ids(&|r| !r.deny),
            rated: ids(&|r| r.deny && r.cond.has_rate_limit()),
        }
    }
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Index {
        if rules.len() <= INDEX_MIN_RULES {
            return Index::All(Lists::of(rules, |_| true));
        }
        // A pending step-up holds whatever the request: such rules are never keyed.
        let keys: Vec<Key> = rules
            .iter()
            .map(|r| if r.step_up { Key::Any } else { key(&r.cond) })
            .collect();
        let mut methods: HashSet<&str> = HashSet::new();
        let mut tools: HashSet<&str> = HashSet::new();
        for k in &keys {
            match k {
                Key::Methods(m) => methods.extend(m.iter().map(String::as_str)),
                Key::Tools(t) => tools.extend(t.iter().map(String::as_str)),
                Key::Any => {}
            }
        }
        methods.insert("tools/call");
        let by_method = methods
            .iter()
            .map(|&m| {
                let lists = Lists::of(rules, |i| match &keys[i] {
                    Key::Any => true,
                    Key::Methods(ms) => ms.iter().any(|x| x == m),
                    Key::Tools(_) => false,
                });
                (Box::from(m), lists)
            })
            .collect();
        let by_tool = tools
            .iter()
            .map(|&t| {
                let lists = Lists::of(
                    rules,
                    |i| matches!(&keys[i], Key::Tools(ts) if ts.iter().any(|x| x == t)),
                );
                (Box::from(t), lists)
            })
            .collect();
        Index::Keyed {
            by_method,
            any: Lists::of(rules, |i| matches!(keys[i], Key::Any)),
            by_tool,
        }
    }

    /// Two disjoint candidate lists, to be merged in rule order.
    pub(super) fn lists<'s>(
        &'s self,
        method: Option<Method<'_>>,
        name: Option<&str>,
        none: &'s Lists,
    ) -> (&'s Lists, &'s Lists) {
        match self {
            Index::All(l) => (l, none),
            Index::Keyed {
                by_method,
                any,
                by_tool,
            } => {
                // No method is indexed as the empty name (see `Cond::Method`).
                let a = by_method
                    .get(method.map_or("", Method::as_str))
                    .unwrap_or(any);
                let b = match name {
                    Some(n) if method == Some(Method::ToolsCall) => by_tool.get(n).unwrap_or(none),
                    _ => none,
                };
                (a, b)
            }
        }
    }
}

/// The first rule number, in order, of two sorted disjoint lists for which
/// `f` is true; the second list is usually empty (no index, or no tool list)
/// and then the first is a plain loop.
#[inline]
pub(super) fn first(a: &[u32], b: &[u32], mut f: impl FnMut(usize) -> bool) -> Option<usize> {
    if b.is_empty() {
        a.iter().map(|&i| i as usize).find(|&i| f(i))
    } else {
        merge(a, b).find(|&i| f(i))
    }
}

/// Two sorted, disjoint lists of rule numbers, merged in order.
pub(super) fn merge<'x>(a: &'x [u32], b: &'x [u32]) -> Merge<'x> {
    Merge { a, b }
}

pub(super) struct Merge<'x> {
    a: &'x [u32],
    b: &'x [u32],
}

impl Iterator for Merge<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        // The second list is usually empty (no index, or no tool list).
        let from_a = match (self.a.first(), self.b.first()) {
            (Some(_), None) => true,
            (Some(&x), Some(&y)) => x < y,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if from_a { &mut self.a } else { &mut self.b };
        let (&next, rest) = list.split_first()?;
        *list = rest;
        Some(next as usize)
    }
}
