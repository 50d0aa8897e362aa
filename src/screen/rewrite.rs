//! Rewriting: redaction of matched spans inside a body's string values
//! (every other byte copied as it was; a rewritten string is re-escaped
//! whole), and the JSON pointers of findings.

use super::matcher::{Cands, Hit};
use super::walk::{unescape, Seg};
use super::{JsonError, Mask, Screen};
use std::fmt::Write;

impl Screen {
    /// Append `body` to `out` with every match of the detectors in `which`
    /// replaced by `[REDACTED:<detector>]` inside its string (overlapping
    /// matches merge into one marker, named after the earliest). Every other
    /// byte is copied as it was, escapes included; a message's `id` is never
    /// touched. Returns how many markers were written; on an error `out` is
    /// left as it was.
    pub fn redact(&self, body: &[u8], which: Mask, out: &mut Vec<u8>) -> Result<usize, JsonError> {
        let scanned = self.scanned(body)?;
        let text = scanned.text(body);
        let (mut copied, mut markers) = (0, 0);
        let mut hits = Vec::new();
        for m in scanned.matched.iter().filter(|m| !m.id) {
            let a = m.raw.start as usize;
            hits.clear();
            hits.extend(
                scanned.hits[m.hits.clone()]
                    .iter()
                    .filter(|h| which.has(h.det))
                    .map(|h| Hit {
                        det: h.det,
                        start: h.start - a,
                        end: h.end - a,
                    }),
            );
            if hits.is_empty() {
                continue;
            }
            let spans = merge(&text[m.raw.value()], &mut hits);
            out.extend_from_slice(&body[copied..a]);
            let raw = &body[a..m.raw.end as usize];
            markers += self.splice(raw, m.raw.escaped, &spans, out);
            copied = m.raw.end as usize;
        }
        out.extend_from_slice(&body[copied..]);
        Ok(markers)
    }

    /// The raw string `raw` (between its quotes) with each span of its
    /// value replaced by a marker; the raw bytes around them are copied.
    fn splice(&self, raw: &[u8], escaped: bool, spans: &[Hit], out: &mut Vec<u8>) -> usize {
        let mut at = Decoding { raw, r: 0, d: 0 };
        let mut copied = 0;
        for span in spans {
            if escaped {
                at.advance(span.start);
            } else {
                at.r = span.start;
            }
            out.extend_from_slice(&raw[copied..at.r]);
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(
                self.matcher.detectors[usize::from(span.det)]
                    .name
                    .as_bytes(),
            );
            out.push(b']');
            if escaped {
                at.advance(span.end);
            } else {
                at.r = span.end;
            }
            copied = at.r;
        }
        out.extend_from_slice(&raw[copied..]);
        spans.len()
    }

    /// `text` with each (merged) span of `hits` replaced by its marker,
    /// appended to `out`.
    fn replace(&self, text: &[u8], hits: &mut [Hit], out: &mut Vec<u8>) {
        let mut at = 0;
        for span in merge(text, hits) {
            out.extend_from_slice(&text[at..span.start]);
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(
                self.matcher.detectors[usize::from(span.det)]
                    .name
                    .as_bytes(),
            );
            out.push(b']');
            at = span.end;
        }
        out.extend_from_slice(&text[at..]);
    }

    /// RFC 6901: `/` before each step, `~` as `~0` and `/` as `~1` in keys;
    /// matches inside a key are replaced by their markers.
    ///
    /// `memo` holds, per depth, the last step rendered there: a step's
    /// rendering depends on its own bytes only, and the findings of a body
    /// mostly share their first steps (and their last key), so each key is
    /// searched for matches once.
    pub(super) fn pointer(
        &self,
        body: &[u8],
        path: &[Seg],
        cands: &Cands,
        memo: &mut Vec<(Seg, String)>,
    ) -> String {
        let mut p = String::with_capacity(memo.iter().map(|(_, s)| s.len()).sum::<usize>() + 16);
        for (depth, seg) in path.iter().enumerate() {
            let same = |(done, _): &(Seg, String)| match (done, seg) {
                (Seg::Index(a), Seg::Index(b)) => a == b,
                (done, seg) => done.key(body) == seg.key(body),
            };
            if !memo.get(depth).is_some_and(same) {
                let step = (*seg, self.step(body, seg, cands));
                match memo.get_mut(depth) {
                    Some(slot) => *slot = step,
                    None => memo.push(step),
                }
            }
            p.push_str(&memo[depth].1);
        }
        p
    }

    /// One step of a pointer: `/`, then the index or the key. A key
    /// without escapes is searched for matches only when the body's
    /// candidates (`cands`, found in the body or its decoded copy, where
    /// keys are as they are in the body) hold one inside it: each
    /// candidate of the key on its own is one of those, at the same place.
    fn step(&self, body: &[u8], seg: &Seg, cands: &Cands) -> String {
        let mut p = String::from("/");
        let Some((raw, escaped)) = seg.key(body) else {
            if let Seg::Index(n) = seg {
                let _ = write!(p, "{n}");
            }
            return p;
        };
        let mut key = Vec::new();
        if escaped {
            unescape(raw, &mut key);
        } else {
            key.extend_from_slice(raw);
        }
        let searched = match *seg {
            Seg::Key { start, end, .. } => {
                escaped || self.matcher.has_custom() || cands.any_in(start as usize, end as usize)
            }
            Seg::Index(_) => false,
        };
        let mut hits = if searched {
            self.hits_in(&key)
        } else {
            Vec::new()
        };
        let mut masked = Vec::new();
        self.replace(&key, &mut hits, &mut masked);
        for c in String::from_utf8_lossy(&masked).chars() {
            match c {
                '~' => p.push_str("~0"),
                '/' => p.push_str("~1"),
                c => p.push(c),
            }
        }
        p
    }
}

/// The spans of `hits` in `text`, widened to whole code points, ordered,
/// overlapping ones merged (each named after its earliest, longest hit).
fn merge(text: &[u8], hits: &mut [Hit]) -> Vec<Hit> {
    let boundary = |i: usize| i >= text.len() || (text[i] & 0xc0) != 0x80;
    for h in hits.iter_mut() {
        while !boundary(h.start) {
            h.start -= 1;
        }
        while !boundary(h.end) {
            h.end += 1;
        }
    }
    hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end), h.det));
    let mut spans: Vec<Hit> = Vec::with_capacity(hits.len());
    for h in hits.iter() {
        match spans.last_mut() {
            Some(last) if h.start < last.end => last.end = last.end.max(h.end),
            _ => spans.push(*h),
        }
    }
    spans
}

/// A position in a raw JSON string (`r`) and in its value (`d`).
struct Decoding<'r> {
    raw: &'r [u8],
    r: usize,
    d: usize,
}

impl Decoding<'_> {
    /// Move to value offset `to` (a code point boundary at or after `d`).
    fn advance(&mut self, to: usize) {
        while self.d < to {
            let plain =
                memchr::memchr(b'\\', &self.raw[self.r..]).unwrap_or(self.raw.len() - self.r);
            if self.d + plain >= to {
                self.r += to - self.d;
                self.d = to;
                return;
            }
            self.r += plain;
            self.d += plain;
            // An escape: two bytes for one, or \uXXXX (twice for a pair) for
            // a code point of one to four bytes.
            let (raw_len, value_len) = match self.raw.get(self.r + 1) {
                Some(b'u') => {
                    let hex = std::str::from_utf8(&self.raw[self.r + 2..self.r + 6]).unwrap_or("0");
                    match u32::from_str_radix(hex, 16).unwrap_or(0) {
                        0xd800..=0xdbff => (12, 4),
                        c => (6, char::from_u32(c).map_or(3, char::len_utf8)),
                    }
                }
                _ => (2, 1),
            };
            self.r += raw_len;
            self.d += value_len;
        }
    }
}
