//! Content screening of JSON-RPC messages (issue 14, part 2): a route's
//! detectors (`detectors`: secrets, personal data, injection markers,
//! custom regexes) compiled once into a [`Screen`], which scans every JSON
//! string value of a body (object keys are not screened) and reports
//! [`Finding`]s (detector, JSON pointer, count: never the matched text);
//! [`decide`] turns findings and the route's [`Actions`] into an
//! [`Outcome`], and [`Screen::redact`] rewrites the matched spans inside
//! their strings, copying every other byte of the body as it was.
//!
//! How a body is scanned: one strict JSON walk (`walk`) finds the string
//! values; the body, with escaped strings replaced by their values in
//! place, is searched once for candidate positions of every detector
//! (`matcher`), and each string value confirms only the candidates inside
//! it, so a value without any costs nothing past the walk.
//!
//! A pure library: nothing here reads the network or the clock.

mod compile;
mod confirm;
pub(crate) mod detectors;
pub(crate) mod digits;
mod literals;
pub(crate) mod matcher;
mod rewrite;
pub(crate) mod validate;
pub(crate) mod walk;

#[cfg(test)]
mod tests;

pub use crate::config::screen::Action;
pub use detectors::Group;
pub use walk::JsonError;

use confirm::Confirm;
use matcher::{Cands, Hit, Matcher, Value};
use std::ops::Range;
use std::sync::Arc;
use walk::{unescape, walk, Raw, Seg, Walked};

/// Which way a message goes: a request (a tool's arguments, going out to
/// the server) or a response (results, coming back to the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// One detector's matches in one string value. Holds no matched text, so
/// it may be logged and audited as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The detector's name (`aws_key`, a custom detector's name, ...).
    pub detector: Arc<str>,
    pub group: Group,
    /// RFC 6901 pointer to the string value; an object key along it that
    /// matches a detector itself shows as that match's redaction marker.
    pub pointer: String,
    /// How many matches of the detector the value holds.
    pub count: u32,
    id: u8,
}

impl Finding {
    /// The detector's index in its [`Screen`] (as [`Screen::detectors`]
    /// lists them).
    pub fn detector_index(&self) -> usize {
        usize::from(self.id)
    }
}

/// A set of detectors of one [`Screen`] (by id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mask(u128);

impl Mask {
    pub const ALL: Mask = Mask(u128::MAX);

    pub fn has(self, id: u8) -> bool {
        id < 128 && self.0 & (1 << id) != 0
    }

    pub fn insert(&mut self, id: u8) {
        self.0 |= 1 << (id & 127);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a message's findings call for, as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No finding asks for more than an audit record.
    Pass,
    /// Redact the matches of these detectors ([`Screen::redact`]).
    Redact(Mask),
    /// Refuse the message; the first finding whose action is `block`.
    Block { detector: Arc<str> },
}

/// A route's action per detector and direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    request: Vec<Action>,
    response: Vec<Action>,
}

impl Actions {
    /// The action for `finding`'s detector in a message going `direction`.
    pub fn for_finding(&self, finding: &Finding, direction: Direction) -> Action {
        self.of(finding.id, direction)
    }

    /// The action for detector `id` in a message going `direction`.
    pub fn of(&self, id: u8, direction: Direction) -> Action {
        let table = match direction {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        table.get(usize::from(id)).copied().unwrap_or_default()
    }
}

/// The outcome of a message's findings under `actions`: `Block` naming the
/// first finding to block, else `Redact` with every detector to redact,
/// else `Pass`.
pub fn decide(findings: &[Finding], actions: &Actions, direction: Direction) -> Outcome {
    let mut redact = Mask::default();
    for f in findings {
        match actions.of(f.id, direction) {
            Action::Block => {
                return Outcome::Block {
                    detector: f.detector.clone(),
                }
            }
            Action::Redact => redact.insert(f.id),
            Action::Audit => {}
        }
    }
    if redact.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Redact(redact)
    }
}

/// A route's compiled detectors and actions; shared by every core.
#[derive(Debug)]
pub struct Screen {
    matcher: Matcher,
    actions: Actions,
}

/// A string value with matches.
struct Matched {
    raw: Raw,
    /// Where it is (`Walked::path`).
    container: u32,
    last: Option<Seg>,
    /// The `id` member of a message (never rewritten).
    id: bool,
    hits: Range<usize>,
}

/// A scanned body: its walk (containers, the decoded copy when some string
/// had escapes), and the string values with matches.
struct Scanned {
    walked: Walked,
    matched: Vec<Matched>,
    /// Positions in the decoded body.
    hits: Vec<Hit>,
    /// Every candidate in the decoded body (object keys are in it as they
    /// are in the body).
    cands: Cands,
}

impl Scanned {
    fn text<'a>(&'a self, body: &'a [u8]) -> &'a [u8] {
        self.walked.decoded.as_deref().unwrap_or(body)
    }
}

impl Screen {
    /// The names of the detectors, by id.
    pub fn detectors(&self) -> impl Iterator<Item = &str> {
        self.matcher.detectors.iter().map(|d| &*d.name)
    }

    /// Whether a detector of this name, or of this group, is in the screen.
    pub fn runs(&self, name: Option<&str>, group: Option<Group>) -> bool {
        self.matcher
            .detectors
            .iter()
            .any(|d| name.is_some_and(|n| *d.name == *n) || group == Some(d.group))
    }

    pub fn actions(&self) -> &Actions {
        &self.actions
    }

    /// [`decide`] with this screen's actions.
    pub fn decide(&self, findings: &[Finding], direction: Direction) -> Outcome {
        decide(findings, &self.actions, direction)
    }

    /// Every finding in `body` (one JSON value, usually one JSON-RPC
    /// message or a batch), in document order.
    pub fn scan(&self, body: &[u8]) -> Result<Vec<Finding>, JsonError> {
        let scanned = self.scanned(body)?;
        let mut findings = Vec::new();
        if scanned.matched.is_empty() {
            return Ok(findings);
        }
        let mut memo = Vec::new();
        let mut counts: Vec<(u8, u32)> = Vec::new();
        for m in &scanned.matched {
            let path = scanned.walked.path(m.container, m.last);
            let pointer = self.pointer(body, &path, &scanned.cands, &mut memo);
            counts.clear();
            for h in &scanned.hits[m.hits.clone()] {
                match counts.iter_mut().find(|(d, _)| *d == h.det) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((h.det, 1)),
                }
            }
            counts.sort_unstable();
            for &(id, count) in &counts {
                let d = &self.matcher.detectors[usize::from(id)];
                findings.push(Finding {
                    detector: d.name.clone(),
                    group: d.group,
                    pointer: pointer.clone(),
                    count,
                    id,
                });
            }
        }
        Ok(findings)
    }

    /// The matches in a text on its own (not JSON): (detector, byte range),
    /// ordered by start.
    pub fn find(&self, text: &str) -> Vec<(&str, Range<usize>)> {
        let mut hits = self.hits_in(text.as_bytes());
        hits.sort_unstable_by_key(|h| (h.start, h.det));
        hits.iter()
            .map(|h| {
                (
                    &*self.matcher.detectors[usize::from(h.det)].name,
                    h.start..h.end,
                )
            })
            .collect()
    }

    fn hits_in(&self, text: &[u8]) -> Vec<Hit> {
        let cands = self.matcher.candidates(text);
        let mut next = vec![0; self.matcher.detectors.len()];
        let mut hits = Vec::new();
        self.matcher.confirm(
            &mut Value {
                t: text,
                a: 0,
                b: text.len(),
                next: &mut next,
                hits: &mut hits,
            },
            cands.all(),
        );
        hits
    }

    /// Walk `body`, decode its escaped strings in place, search the result
    /// once, and confirm each value's candidates. A body without a
    /// backslash is its own decoded copy: it is searched first and each
    /// value confirmed as the walk reaches it, with nothing kept per value.
    fn scanned(&self, body: &[u8]) -> Result<Scanned, JsonError> {
        let (walked, mut confirm) = if memchr::memchr(b'\\', body).is_none() {
            let cands = self.matcher.candidates(body);
            let mut confirm = Confirm::new(&self.matcher, cands);
            let walked = walk(body, false, |at, raw| {
                confirm.value(body, raw, at.container, at.last)
            })?;
            (walked, confirm)
        } else {
            let mut values: Vec<(Raw, u32, Option<Seg>)> = Vec::with_capacity(body.len() / 32);
            let walked = walk(body, true, |at, raw| {
                values.push((raw, at.container, at.last))
            })?;
            let text = walked.decoded.as_deref().unwrap_or(body);
            let mut confirm = Confirm::new(&self.matcher, self.matcher.candidates(text));
            for &(raw, container, last) in &values {
                confirm.value(text, raw, container, last);
            }
            (walked, confirm)
        };
        for m in &mut confirm.matched {
            m.id = is_id(body, &walked.path(m.container, m.last));
        }
        Ok(Scanned {
            walked,
            matched: confirm.matched,
            hits: confirm.hits,
            cands: confirm.cands,
        })
    }
}

/// Whether `path` is in a message's `id` member (of the body's top-level
/// object, or of an element of a top-level array), at any depth.
fn is_id(body: &[u8], path: &[Seg]) -> bool {
    let member = match path {
        [Seg::Index(_), member, ..] | [member, ..] => member,
        [] => return false,
    };
    match member.key(body) {
        Some((key, false)) => key == b"id",
        Some((key, true)) => {
            let mut k = Vec::new();
            unescape(key, &mut k);
            k == b"id"
        }
        None => false,
    }
}
