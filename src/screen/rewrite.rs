//! Rewriting: redaction of matched spans inside a body's string values
//! (every other byte copied as it was; a rewritten string is re-escaped
//! whole), and the JSON pointers of findings.

use super::matcher::Hit;
use super::walk::{unescape, Seg};
use super::{JsonError, Mask, Screen};
use crate::mcp::jsonrpc::write_json_string;
use std::fmt::Write;

impl Screen {
    /// Append `body` to `out` with every match of the detectors in `which`
    /// replaced by `[REDACTED:<detector>]` inside its string (overlapping
    /// matches merge into one marker, named after the earliest). Only the
    /// strings that change are re-serialised; a message's `id` is never
    /// touched. Returns how many markers were written; on an error `out` is
    /// left as it was.
    pub fn redact(&self, body: &[u8], which: Mask, out: &mut Vec<u8>) -> Result<usize, JsonError> {
        let scanned = self.scanned(body)?;
        let text = scanned.text(body);
        let (mut copied, mut markers) = (0, 0);
        let mut value = Vec::new();
        for m in scanned.matched.iter().filter(|m| !m.id) {
            let mut hits: Vec<Hit> = scanned.hits[m.hits.clone()]
                .iter()
                .filter(|h| which.has(h.det))
                .map(|h| Hit {
                    det: h.det,
                    start: h.start - m.raw.start as usize,
                    end: h.end - m.raw.start as usize,
                })
                .collect();
            if hits.is_empty() {
                continue;
            }
            value.clear();
            markers += self.replace(&text[m.raw.value()], &mut hits, &mut value);
            // The raw string, quotes included, is body[start - 1..end + 1].
            out.extend_from_slice(&body[copied..m.raw.start as usize - 1]);
            write_json_string(out, &String::from_utf8_lossy(&value));
            copied = m.raw.end as usize + 1;
        }
        out.extend_from_slice(&body[copied..]);
        Ok(markers)
    }

    /// `text` with each (merged) span of `hits` replaced by its marker,
    /// appended to `out`; returns the number of markers. Spans widen to
    /// whole code points.
    fn replace(&self, text: &[u8], hits: &mut [Hit], out: &mut Vec<u8>) -> usize {
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
        let (mut at, mut markers, mut i) = (0, 0, 0);
        while i < hits.len() {
            let first = hits[i];
            let mut end = first.end;
            i += 1;
            while i < hits.len() && hits[i].start < end {
                end = end.max(hits[i].end);
                i += 1;
            }
            out.extend_from_slice(&text[at..first.start]);
            let name = &self.matcher.detectors[usize::from(first.det)].name;
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(name.as_bytes());
            out.push(b']');
            at = end;
            markers += 1;
        }
        out.extend_from_slice(&text[at..]);
        markers
    }

    /// RFC 6901: `/` before each step, `~` as `~0` and `/` as `~1` in keys;
    /// matches inside a key are replaced by their markers.
    pub(super) fn pointer(&self, body: &[u8], path: &[Seg]) -> String {
        let mut p = String::new();
        let mut key = Vec::new();
        for seg in path {
            p.push('/');
            let Some((raw, escaped)) = seg.key(body) else {
                if let Seg::Index(n) = seg {
                    let _ = write!(p, "{n}");
                }
                continue;
            };
            key.clear();
            if escaped {
                unescape(raw, &mut key);
            } else {
                key.extend_from_slice(raw);
            }
            let mut hits = self.hits_in(&key);
            let mut masked = Vec::new();
            self.replace(&key, &mut hits, &mut masked);
            for c in String::from_utf8_lossy(&masked).chars() {
                match c {
                    '~' => p.push_str("~0"),
                    '/' => p.push_str("~1"),
                    c => p.push(c),
                }
            }
        }
        p
    }
}
