//! Access policy: per-route rule lists, compiled at config load, evaluated
//! per JSON-RPC message without allocating.
//!
//! Semantics: deny wins; when a policy has any rule, a request no allow rule
//! matches is denied ("no rule allowed it"); an empty policy allows
//! everything. `allow: { and: [] }` is a rule that always matches.
//!
//! Evaluation order (rate limits count only when reached):
//! 1. deny rules without a rate limit, in order: any not `False` denies;
//! 2. allow rules, in order, until one is `True` (else deny);
//! 3. deny rules with a rate limit, in order.
//!
//! So a request denied by another rule, or by no allow rule, uses no quota.
//! A request that passes one rate limit and is then refused by a later one
//! has used the first one's quota.
//!
//! Keys (see MCP.md "Where a policy finds its keys"): `mcp_tool` reads
//! `params.name` of `tools/call`, `mcp_prompt` that of `prompts/get`,
//! `mcp_resource` `params.uri` of any `resources/*` method. `completion/complete`
//! keys are not read: on that method these criteria are false. A URI with a
//! `.`/`..` segment (also percent-encoded) makes `starts_with`/`glob` unknown
//! (so a deny rule using them denies, an allow rule does not allow).
//! For lists, a resource template's `uriTemplate` text is matched as the URI.

mod anomaly;
mod cidr;
mod compile;
mod eval;
mod index;
mod matchers;
mod ratelimit;
mod time;

#[cfg(test)]
mod tests;

use crate::mcp::listfilter::ListKind;
use crate::mcp::method::Method;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

pub(crate) use crate::config::policy::RuleConfig;

use crate::principal::Principal;
use compile::{Compiler, Cond, NameOp};
use eval::{Call, Ctx, Tri};
use index::{first, merge, Index, Lists};
use matchers::Hasher;
use ratelimit::RateTable;

/// Most rules one policy may expand to (after `use`).
pub(crate) const MAX_RULES: usize = 10_000;

/// What a policy may look at for one message.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub principal: Option<&'a Principal>,
    /// JSON-RPC method; `None` for a request without one (GET, DELETE).
    pub method: Option<Method<'a>>,
    /// `params.name`.
    pub name: Option<&'a str>,
    /// `params.uri`.
    pub uri: Option<&'a str>,
    /// `params.arguments` as tape nodes, header node first.
    pub arguments: Option<&'a [simd_json::Node<'a>]>,
    pub source_ip: IpAddr,
    pub now_unix: i64,
    pub headers: &'a [httparse::Header<'a>],
    /// The request's behaviour scores (`anomaly` criteria, `step_up` rules);
    /// `None` when it was not scored.
    pub anomaly: Option<&'a crate::behaviour::Scores>,
    /// What content screening found in the message (`content` criteria).
    pub content: &'a [crate::screen::Finding],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// `rule` is the allow rule that matched; `None` for an empty policy.
    Allow { rule: Option<&'p str> },
    Deny {
        rule: &'p str,
        message: &'p str,
        /// Set when a rate limit denied.
        retry_after_secs: Option<u64>,
    },
    /// A `step_up` rule refused: the user must authorize again (401).
    StepUp { rule: &'p str, message: &'p str },
}

/// A kind of item in a list result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Tool,
    Prompt,
    Resource,
    ResourceTemplate,
}

impl From<ListKind> for ItemKind {
    fn from(list: ListKind) -> ItemKind {
        match list {
            ListKind::Tools => ItemKind::Tool,
            ListKind::Prompts => ItemKind::Prompt,
            ListKind::Resources => ItemKind::Resource,
            ListKind::ResourceTemplates => ItemKind::ResourceTemplate,
        }
    }
}

#[derive(Debug)]
struct Rule {
    name: Box<str>,
    message: Box<str>,
    deny: bool,
    /// A `step_up` rule (also `deny`).
    step_up: bool,
    cond: Cond,
    /// The rule is false unless the method is this kind (its condition
    /// needs a `mcp_tool`/`mcp_prompt`/`mcp_resource` test to hold): a
    /// guard checked before walking the condition. `None` for rules with
    /// a rate limit, whose criteria before the guard's may count.
    call: Option<Call>,
}

impl Rule {
    /// The condition's value, `False` without walking it when the guard fails.
    #[inline]
    fn eval(&self, cx: &mut Ctx<'_, '_>) -> Tri {
        if self.step_up && anomaly::pending(cx.facts) {
            return Tri::True;
        }
        match self.call {
            Some(c) if c != cx.call => Tri::False,
            _ => self.cond.eval(cx),
        }
    }
}

/// The kind of method a condition can only be true (or unknown) on.
fn required_call(c: &Cond) -> Option<Call> {
    match c {
        Cond::Tool(_) => Some(Call::Tool),
        Cond::Prompt(_) => Some(Call::Prompt),
        Cond::Resource(_) => Some(Call::Resource),
        // One false item makes `and` false, unknowns or not.
        Cond::And(items) => items.iter().find_map(required_call),
        Cond::Or(items) => {
            let first = required_call(items.first()?)?;
            items
                .iter()
                .all(|i| required_call(i) == Some(first))
                .then_some(first)
        }
        _ => None,
    }
}

/// One compiled rule list (one route's).
#[derive(Debug)]
pub struct Policy {
    rules: Box<[Rule]>,
    index: Index,
    default_rule: Box<str>,
    table: Option<Box<RateTable>>,
    /// No rules (the second list when there is no tool list).
    none: Lists,
}

impl Policy {
    /// Compile a route's rules; `shared` holds the named policies `use` can include.
    /// Errors name the rule (index and name) and the problem.
    pub fn compile(
        rules: &[RuleConfig],
        shared: &HashMap<String, Vec<RuleConfig>>,
        route_name: &str,
    ) -> Result<Policy, Vec<String>> {
        let mut expander = Expander {
            shared,
            stack: Vec::new(),
            compiler: Compiler { rate_limits: 0 },
            out: Vec::new(),
            errors: Vec::new(),
        };
        expander.expand(rules, &format!("route {route_name}"), route_name);
        let Expander {
            compiler,
            out,
            mut errors,
            ..
        } = expander;
        if !errors.is_empty() {
            let mut seen = HashSet::new();
            errors.retain(|e| seen.insert(e.clone()));
            return Err(errors);
        }
        let table = (compiler.rate_limits > 0).then(Box::<RateTable>::default);
        let index = Index::build(&out);
        Ok(Policy {
            rules: out.into_boxed_slice(),
            index,
            default_rule: format!("{route_name}#default").into(),
            table,
            none: Lists::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a denial's `rule` is the default one (no allow rule matched),
    /// rather than a deny rule.
    pub fn is_default_rule(&self, rule: &str) -> bool {
        std::ptr::eq(rule, &*self.default_rule)
    }

    /// Whether any rule reads request headers (`header` criteria): only then
    /// must the pipeline keep the request's header fields for it.
    pub fn uses_headers(&self) -> bool {
        self.rules.iter().any(|r| r.cond.uses_headers())
    }

    /// Whether any rule reads `params.arguments` (`argument` criteria): only
    /// then must a body's arguments be decoded for it.
    pub fn uses_arguments(&self) -> bool {
        self.rules.iter().any(|r| r.cond.uses_arguments())
    }

    /// Whether any rule is a `step_up` rule (the route needs `auth`).
    pub fn has_step_up(&self) -> bool {
        self.rules.iter().any(|r| r.step_up)
    }

    /// Whether any rule reads behaviour scores (`anomaly`, `step_up`).
    pub fn uses_anomaly(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.step_up || r.cond.uses_anomaly())
    }

    /// Its `content` criteria that `screen` (the route's) does not run: each
    /// as an error message. A criterion no screen can satisfy would be
    /// silently false.
    pub fn unscreened_content(&self, screen: Option<&crate::screen::Screen>) -> Vec<String> {
        let mut ops = Vec::new();
        for r in self.rules.iter() {
            r.cond.content(&mut ops);
        }
        let mut errors: Vec<String> = Vec::new();
        for op in ops {
            let (name, group) = match op {
                compile::ContentOp::Detector(d) => (Some(&**d), None),
                compile::ContentOp::Group(g) => (None, Some(*g)),
            };
            if screen.is_some_and(|s| s.runs(name, group)) {
                continue;
            }
            let what = match (name, group) {
                (Some(d), _) => format!("detector {d:?}"),
                (_, g) => format!("group {:?}", g.map_or("", |g| g.name())),
            };
            let e = match screen {
                None => format!("content: {what} needs the route's `screen` section"),
                Some(_) => format!("content: the route's screen runs no {what}"),
            };
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        errors
    }

    /// The verdict for one message. Counts rate limits; never allocates.
    pub fn evaluate(&self, facts: &Facts) -> Verdict<'_> {
        if self.rules.is_empty() {
            return Verdict::Allow { rule: None };
        }
        let (a, b) = self.index.lists(facts.method, facts.name, &self.none);
        let mut cx = Ctx {
            facts,
            call: Call::of(facts.method),
            listing: false,
            table: self.table.as_deref(),
            retry_after: None,
        };
        let rules = &self.rules;
        if let Some(i) = first(&a.deny, &b.deny, |i| rules[i].eval(&mut cx) != Tri::False) {
            return self.deny(&rules[i], None);
        }
        let allowed = first(&a.allow, &b.allow, |i| rules[i].eval(&mut cx) == Tri::True);
        let Some(allowed) = allowed else {
            return Verdict::Deny {
                rule: &self.default_rule,
                message: "no rule allowed it",
                retry_after_secs: None,
            };
        };
        for i in merge(&a.rated, &b.rated) {
            let r = &self.rules[i];
            cx.retry_after = None;
            if r.eval(&mut cx) != Tri::False {
                return self.deny(r, cx.retry_after);
            }
        }
        Verdict::Allow {
            rule: Some(&self.rules[allowed].name),
        }
    }

    /// For list filtering: may the caller see this item? Arguments and rate
    /// limits are unknown here; the item is hidden only if a deny rule is
    /// certainly true or no allow rule can be true. Counts nothing.
    pub fn visible(&self, facts_without_arguments: &Facts, kind: ItemKind, name: &str) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let facts = match kind {
            ItemKind::Tool => Facts {
                method: Some(Method::ToolsCall),
                name: Some(name),
                uri: None,
                arguments: None,
                ..*facts_without_arguments
            },
            ItemKind::Prompt => Facts {
                method: Some(Method::PromptsGet),
                name: Some(name),
                uri: None,
                arguments: None,
                ..*facts_without_arguments
            },
            ItemKind::Resource | ItemKind::ResourceTemplate => Facts {
                method: Some(Method::ResourcesRead),
                name: None,
                uri: Some(name),
                arguments: None,
                ..*facts_without_arguments
            },
        };
        let (a, b) = self.index.lists(facts.method, facts.name, &self.none);
        let mut cx = Ctx {
            facts: &facts,
            call: Call::of(facts.method),
            listing: true,
            table: None,
            retry_after: None,
        };
        let rules = &self.rules;
        let mut certain = |i: usize| rules[i].eval(&mut cx) == Tri::True;
        let denied = first(&a.deny, &b.deny, &mut certain).is_some()
            || first(&a.rated, &b.rated, &mut certain).is_some();
        !denied && first(&a.allow, &b.allow, |i| rules[i].eval(&mut cx) != Tri::False).is_some()
    }

    fn deny<'p>(&'p self, r: &'p Rule, retry_after_secs: Option<u64>) -> Verdict<'p> {
        if r.step_up {
            return Verdict::StepUp {
                rule: &r.name,
                message: &r.message,
            };
        }
        Verdict::Deny {
            rule: &r.name,
            message: &r.message,
            retry_after_secs,
        }
    }
}

/// Rules being expanded (`use` inlined) and compiled, with what they need.
struct Expander<'a> {
    shared: &'a HashMap<String, Vec<RuleConfig>>,
    /// The shared policies being expanded (to find cycles).
    stack: Vec<String>,
    compiler: Compiler,
    out: Vec<Rule>,
    errors: Vec<String>,
}

impl Expander<'_> {
    /// Expand `use` and compile each rule into `out`.
    fn expand(&mut self, rules: &[RuleConfig], place: &str, prefix: &str) {
        for (i, rule) in rules.iter().enumerate() {
            let name = rule
                .name
                .clone()
                .unwrap_or_else(|| format!("{prefix}#{}", i + 1));
            let what = format!("{place} rule {} ({name})", i + 1);
            let kinds = [
                rule.allow.is_some(),
                rule.deny.is_some(),
                rule.use_.is_some(),
                rule.step_up.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                self.errors.push(format!(
                    "{what}: a rule has exactly one of allow, deny, step_up, use"
                ));
                continue;
            }
            if let Some(used) = &rule.use_ {
                if rule.name.is_some() || rule.message.is_some() {
                    self.errors
                        .push(format!("{what}: use takes no name or message"));
                    continue;
                }
                let Some(inner) = self.shared.get(used) else {
                    self.errors.push(format!("{what}: unknown policy {used:?}"));
                    continue;
                };
                if self.stack.contains(used) {
                    self.errors.push(format!(
                        "{what}: policy {used:?} uses itself ({} -> {used})",
                        self.stack.join(" -> ")
                    ));
                    continue;
                }
                self.stack.push(used.clone());
                self.expand(inner, &format!("policy {used}"), used);
                self.stack.pop();
                continue;
            }
            if self.out.len() >= MAX_RULES {
                self.errors
                    .push(format!("{what}: more than {MAX_RULES} rules"));
                return;
            }
            let step_up = rule.step_up.is_some();
            let deny = rule.deny.is_some() || step_up;
            let cond = (rule.allow.as_ref())
                .or(rule.deny.as_ref())
                .or(rule.step_up.as_ref())
                .expect("checked");
            match self.compiler.cond(cond, deny, 0) {
                Ok(cond) if step_up && cond.has_rate_limit() => self
                    .errors
                    .push(format!("{what}: a step_up rule takes no rate_limit")),
                Ok(cond) => {
                    let message = match &rule.message {
                        Some(m) => m.clone(),
                        None => format!("denied by policy rule {name}"),
                    };
                    let call = if cond.has_rate_limit() {
                        None
                    } else {
                        required_call(&cond)
                    };
                    self.out.push(Rule {
                        call,
                        name: name.into(),
                        message: message.into(),
                        deny,
                        step_up,
                        cond,
                    });
                }
                Err(e) => self.errors.push(format!("{what}: {e}")),
            }
        }
    }
}

impl Cond {
    fn has_rate_limit(&self) -> bool {
        match self {
            Cond::RateLimit(_) => true,
            Cond::And(items) | Cond::Or(items) => items.iter().any(Cond::has_rate_limit),
            Cond::Not(c) => c.has_rate_limit(),
            _ => false,
        }
    }
}
