//! The confirmation of a body's string values, one at a time in document
//! order, against the candidates of one search of the whole (decoded)
//! body. A value with no candidate in it costs a comparison.

use super::matcher::{Cands, Cursor, Hit, Matcher, Value};
use super::walk::{Raw, Seg};
use super::Matched;

pub(super) struct Confirm<'m> {
    matcher: &'m Matcher,
    /// The candidates of the whole body (kept for the pointers' keys).
    pub(super) cands: Cands,
    cursor: Cursor,
    /// The first candidate position not yet read (`usize::MAX`: none).
    upcoming: usize,
    /// A custom detector runs over every value.
    custom: bool,
    /// Per detector: where it may match again.
    next: Vec<usize>,
    pub(super) hits: Vec<Hit>,
    /// The values with matches (`id` still unset).
    pub(super) matched: Vec<Matched>,
}

impl<'m> Confirm<'m> {
    pub(super) fn new(matcher: &'m Matcher, cands: Cands) -> Confirm<'m> {
        let cursor = Cursor::default();
        Confirm {
            matcher,
            upcoming: cands.upcoming(&cursor),
            cands,
            cursor,
            custom: matcher.has_custom(),
            next: vec![0; matcher.detectors.len()],
            hits: Vec::new(),
            matched: Vec::new(),
        }
    }

    /// The string value `raw` (at `raw.value()` in `text`, the decoded body
    /// the candidates were found in), held by `container` under `last`.
    #[inline(always)]
    pub(super) fn value(&mut self, text: &[u8], raw: Raw, container: u32, last: Option<Seg>) {
        if (raw.start + raw.len) as usize <= self.upcoming && !self.custom {
            return;
        }
        self.confirm(text, raw, container, last);
    }

    #[inline(never)]
    fn confirm(&mut self, text: &[u8], raw: Raw, container: u32, last: Option<Seg>) {
        let (a, b) = (raw.start as usize, (raw.start + raw.len) as usize);
        let within = self.cands.within(&mut self.cursor, a, b);
        self.upcoming = self.cands.upcoming(&self.cursor);
        if within.is_empty() && !self.custom {
            return;
        }
        let before = self.hits.len();
        let mut v = Value {
            t: text,
            a,
            b,
            next: &mut self.next,
            hits: &mut self.hits,
        };
        self.matcher.confirm(&mut v, within);
        if self.hits.len() > before {
            self.matched.push(Matched {
                raw,
                id: false,
                container,
                last,
                hits: before..self.hits.len(),
            });
        }
    }
}
