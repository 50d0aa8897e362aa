//! The compiled detectors: one pass over a text collects candidate
//! positions (one SIMD literal search, Teddy, for every anchor; byte
//! searches for `@`, ESC and the lead bytes of invisible code points; digit
//! runs where the text is dense in digits), then each candidate is
//! confirmed where it lies: an anchored regex, a validator, or a
//! hand-written detector. A single automaton for every pattern (a
//! `RegexSet`, or Aho-Corasick with ASCII case folding) reads one byte per
//! step and measured about 1.7 µs/KiB on its own here; the literal search
//! reads 16 or 32 bytes per step. Anchors are searched case-sensitively
//! (folding the text first costs a pass and makes Teddy's fingerprints
//! collide) and are at least four bytes long (Teddy's longest fingerprint).

use super::detectors::{anchor_forms, CharClass, Group, How, BUILTINS};
use super::digits::{card_or_iban_runs, CARD_SPAN};
use super::literals::{teddy_order, Literals};
use super::validate::{card_at, char_at, chars_at, iban_at, is_word};
use crate::sys::Bytes16;
use regex::bytes::{Regex, RegexBuilder};
use std::sync::Arc;

/// At most this many detectors per route (they index a 128-bit mask).
pub(crate) const MAX_DETECTORS: usize = 128;

/// Compiled regexes above this size are refused (a custom expression).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A match: detector id and byte range in the text scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) det: u8,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Where detectors might match in a text: one list per kind of search,
/// each in order (a detector's candidates all come from one list).
#[derive(Debug, Default)]
pub(crate) struct Cands {
    /// (position, anchor pattern).
    anchors: Vec<(usize, u16)>,
    /// Lead bytes of invisible code points.
    chars: Vec<usize>,
    /// (position, detector) of trigger bytes.
    bytes: Vec<(usize, u8)>,
    /// Starts of digit runs that may begin a card number (`true`) or
    /// follow an IBAN's country code (`false`; never both: a card starts
    /// after a non-word byte, the code is letters).
    digits: Vec<(usize, bool)>,
}

/// The candidates inside one value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Within<'c> {
    anchors: &'c [(usize, u16)],
    chars: &'c [usize],
    bytes: &'c [(usize, u8)],
    digits: &'c [(usize, bool)],
}

impl Within<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.anchors.is_empty()
            && self.chars.is_empty()
            && self.bytes.is_empty()
            && self.digits.is_empty()
    }
}

/// How far each list of a `Cands` has been read.
#[derive(Debug, Default)]
pub(crate) struct Cursor([usize; 4]);

/// The items of `list` (ordered by `pos`) in `a..b`, from `at` on.
fn take<'c, T>(
    list: &'c [T],
    at: &mut usize,
    pos: impl Fn(&T) -> usize,
    a: usize,
    b: usize,
) -> &'c [T] {
    while list.get(*at).is_some_and(|c| pos(c) < a) {
        *at += 1;
    }
    let from = *at;
    while list.get(*at).is_some_and(|c| pos(c) < b) {
        *at += 1;
    }
    &list[from..*at]
}

impl Cands {
    pub(crate) fn all(&self) -> Within<'_> {
        Within {
            anchors: &self.anchors,
            chars: &self.chars,
            bytes: &self.bytes,
            digits: &self.digits,
        }
    }

    /// Whether a candidate is in `a..b`.
    pub(crate) fn any_in(&self, a: usize, b: usize) -> bool {
        fn any<T>(list: &[T], pos: impl Fn(&T) -> usize, a: usize, b: usize) -> bool {
            let from = list.partition_point(|c| pos(c) < a);
            list.get(from).is_some_and(|c| pos(c) < b)
        }
        any(&self.anchors, |c| c.0, a, b)
            || any(&self.chars, |c| *c, a, b)
            || any(&self.bytes, |c| c.0, a, b)
            || any(&self.digits, |c| c.0, a, b)
    }

    /// The first position not yet read by `within` (`usize::MAX`: none).
    pub(crate) fn upcoming(&self, cur: &Cursor) -> usize {
        let [c0, c1, c2, c3] = cur.0;
        let first = |p: Option<usize>| p.unwrap_or(usize::MAX);
        first(self.anchors.get(c0).map(|c| c.0))
            .min(first(self.chars.get(c1).copied()))
            .min(first(self.bytes.get(c2).map(|c| c.0)))
            .min(first(self.digits.get(c3).map(|c| c.0)))
    }

    /// The candidates in `a..b`; successive calls must move forward.
    pub(crate) fn within(&self, cur: &mut Cursor, a: usize, b: usize) -> Within<'_> {
        let [c0, c1, c2, c3] = &mut cur.0;
        Within {
            anchors: take(&self.anchors, c0, |c| c.0, a, b),
            chars: take(&self.chars, c1, |c| *c, a, b),
            bytes: take(&self.bytes, c2, |c| c.0, a, b),
            digits: take(&self.digits, c3, |c| c.0, a, b),
        }
    }
}

/// How one compiled detector is confirmed.
#[derive(Debug)]
enum Check {
    /// An anchored regex at the candidate; `bounded`: not after a word byte;
    /// `back`: from the start of the base64url run ending at the candidate.
    Anchored {
        regex: Regex,
        bounded: bool,
        back: bool,
    },
    /// A regex over the whole string, once, when a trigger byte is in it.
    Whole(Regex),
    Chars,
    Card,
    Iban,
    /// A custom regex: run over every string.
    Custom(Regex),
}

#[derive(Debug)]
pub(crate) struct Detector {
    pub(crate) name: Arc<str>,
    pub(crate) group: Group,
    check: Check,
}

/// Every detector of a route, ready to scan.
#[derive(Debug)]
pub(crate) struct Matcher {
    pub(crate) detectors: Vec<Detector>,
    literals: Option<Literals>,
    /// Per anchor pattern: its detector.
    anchor_det: Vec<u8>,
    /// Per anchor literal: how many bytes before it a match is tried.
    anchor_lead: Vec<u8>,
    /// Per `CharClass` (Tags, Bidi, ZeroWidth): its detector, when on.
    chars: [Option<u8>; 3],
    /// (byte, detector) for `How::Byte` detectors that are on.
    bytes: Vec<(u8, u8)>,
    card: Option<u8>,
    iban: Option<u8>,
    custom: Vec<u8>,
}

fn class_index(c: CharClass) -> usize {
    match c {
        CharClass::Tags => 0,
        CharClass::Bidi => 1,
        CharClass::ZeroWidth => 2,
    }
}

fn regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

impl Matcher {
    /// The built-ins `on` (indexes into `BUILTINS`, in order), then the
    /// custom (name, regex) pairs. Errors name the custom detector.
    pub(crate) fn compile(on: &[usize], custom: &[(&str, &str)]) -> Result<Matcher, Vec<String>> {
        let mut m = Matcher {
            detectors: Vec::new(),
            literals: None,
            anchor_det: Vec::new(),
            anchor_lead: Vec::new(),
            chars: [None; 3],
            bytes: Vec::new(),
            card: None,
            iban: None,
            custom: Vec::new(),
        };
        if on.len() + custom.len() > MAX_DETECTORS {
            return Err(vec![format!(
                "at most {MAX_DETECTORS} detectors, built-in and custom"
            )]);
        }
        let mut anchors = Vec::new();
        for &i in on {
            let b = &BUILTINS[i];
            let id = m.detectors.len() as u8;
            let check = match b.how {
                How::Anchored {
                    anchors: list,
                    case,
                    back,
                    regex: r,
                    bounded,
                } => {
                    for (form, lead) in list.iter().flat_map(|a| anchor_forms(a, case)) {
                        anchors.push(form);
                        m.anchor_det.push(id);
                        m.anchor_lead.push(lead as u8);
                    }
                    Check::Anchored {
                        regex: regex(&format!("^(?:{r})")).expect("built-in regexes compile"),
                        bounded,
                        back,
                    }
                }
                How::Byte {
                    byte,
                    regex: r,
                    anchored,
                } => {
                    m.bytes.push((byte, id));
                    if anchored {
                        Check::Anchored {
                            regex: regex(&format!("^(?:{r})")).expect("built-in regexes compile"),
                            bounded: false,
                            back: false,
                        }
                    } else {
                        Check::Whole(regex(r).expect("built-in regexes compile"))
                    }
                }
                How::Chars(class) => {
                    m.chars[class_index(class)] = Some(id);
                    Check::Chars
                }
                How::Card => {
                    m.card = Some(id);
                    Check::Card
                }
                How::Iban => {
                    m.iban = Some(id);
                    Check::Iban
                }
            };
            m.detectors.push(Detector {
                name: b.name.into(),
                group: b.group,
                check,
            });
        }
        let mut errors = Vec::new();
        for (name, pattern) in custom {
            match regex(pattern) {
                Ok(r) => {
                    m.custom.push(m.detectors.len() as u8);
                    m.detectors.push(Detector {
                        name: (*name).into(),
                        group: Group::Custom,
                        check: Check::Custom(r),
                    });
                }
                Err(e) => errors.push(format!("custom detector {name:?}: invalid regex: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if !anchors.is_empty() {
            m.search(&anchors);
        }
        Ok(m)
    }

    /// The literal search for `anchors` (their detectors and leads in
    /// `anchor_det` and `anchor_lead`), in the order Teddy takes them.
    fn search(&mut self, anchors: &[String]) {
        let order = teddy_order(anchors);
        let anchors: Vec<String> = order.iter().map(|&i| anchors[i].clone()).collect();
        self.anchor_det = order.iter().map(|&i| self.anchor_det[i]).collect();
        self.anchor_lead = order.iter().map(|&i| self.anchor_lead[i]).collect();
        self.literals = Some(Literals::build(&anchors));
    }

    pub(crate) fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// Every candidate position in `t`.
    pub(crate) fn candidates(&self, t: &[u8]) -> Cands {
        let mut out = Cands::default();
        if let Some(lits) = &self.literals {
            self.anchors(lits, t, &mut out.anchors);
        }
        if self.chars.iter().any(Option::is_some) {
            out.chars.extend(
                memchr::memchr3_iter(0xe2, 0xef, 0xf3, t).filter(|p| invisible_lead(&t[*p..])),
            );
        }
        for &(byte, det) in &self.bytes {
            out.bytes
                .extend(memchr::memchr_iter(byte, t).map(|pos| (pos, det)));
        }
        if self.bytes.len() > 1 {
            out.bytes.sort_unstable_by_key(|c| c.0);
        }
        let (card, iban) = (self.card.is_some(), self.iban.is_some());
        if card || iban {
            card_or_iban_runs(t, card, iban, |p, window| {
                // A card's first four digits, after a non-word byte, with
                // the 13 digits a card holds at least in the bytes they
                // span at most (`card_at`); or the check digits after an
                // IBAN's country code.
                // (Bits first: a fifth digit, or a separator and one, must
                // follow the first four.)
                let card_start = card
                    && window & 0xf == 0xf
                    && window & 0x30 != 0
                    && (window as u32 & CARD_SPAN).count_ones() >= 13
                    && (b'2'..=b'6').contains(&t[p])
                    && (p == 0 || !is_word(t[p - 1]))
                    && card_bytes(t, p);
                let iban_start = iban
                    && p >= 2
                    && t[p - 1].is_ascii_uppercase()
                    && t[p - 2].is_ascii_uppercase();
                if card_start || iban_start {
                    out.digits.push((p, card_start));
                }
            });
        }
        out
    }

    /// Every anchor in `t` (overlapping ones too).
    fn anchors(&self, lits: &Literals, t: &[u8], out: &mut Vec<(usize, u16)>) {
        let mut at = 0;
        while let Some((pattern, s)) = lits.find(t, at) {
            out.push((s, pattern as u16));
            at = s + 1;
        }
    }

    /// Confirm the candidates `cands` (all inside the value `v`); matches go
    /// to `v.hits`.
    pub(crate) fn confirm(&self, v: &mut Value<'_>, cands: Within<'_>) {
        for &(p, pattern) in cands.anchors {
            let lead = usize::from(self.anchor_lead[usize::from(pattern)]);
            // A lead byte before the value cannot be part of a match in it.
            if p >= v.a + lead {
                self.anchored(v, p - lead, self.anchor_det[usize::from(pattern)]);
            }
        }
        for &(p, det) in cands.bytes {
            self.anchored(v, p, det);
        }
        for &p in cands.chars {
            let class = char_at(v.t, p).and_then(|(c, _)| CharClass::of(c));
            let det = class.and_then(|c| self.chars[class_index(c)].map(|d| (c, d)));
            if let Some((class, det)) = det.filter(|(_, d)| p >= v.next[usize::from(*d)]) {
                if let Some(e) = chars_at(v.t, v.a, p, v.b, class) {
                    v.push(det, p, e);
                }
            }
        }
        for &(p, card) in cands.digits {
            if let Some(det) = self.card.filter(|d| card && p >= v.next[usize::from(*d)]) {
                if let Some(e) = card_at(v.t, v.a, p, v.b) {
                    v.push(det, p, e);
                }
            }
            if let Some(det) = (self.iban).filter(|d| !card && p >= v.next[usize::from(*d)] + 2) {
                if let Some(e) = iban_at(v.t, v.a, p, v.b) {
                    v.push(det, p - 2, e);
                }
            }
        }
        for &det in &self.custom {
            if let Check::Custom(re) = &self.detectors[usize::from(det)].check {
                for m in re.find_iter(&v.t[v.a..v.b]).filter(|m| !m.is_empty()) {
                    v.hits.push(Hit {
                        det,
                        start: v.a + m.start(),
                        end: v.a + m.end(),
                    });
                }
            }
        }
    }

    /// A regex-confirmed detector at a candidate `p`.
    fn anchored(&self, v: &mut Value<'_>, p: usize, det: u8) {
        let d = usize::from(det);
        if p < v.next[d] {
            return;
        }
        match &self.detectors[d].check {
            Check::Anchored {
                regex,
                bounded,
                back,
            } => {
                let mut p = p;
                if *back {
                    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
                    while p > v.a && b64(v.t[p - 1]) {
                        p -= 1;
                    }
                    if p < v.next[d] {
                        return;
                    }
                }
                if *bounded && p > v.a && is_word(v.t[p - 1]) {
                    return;
                }
                if let Some(m) = regex.find(&v.t[p..v.b]).filter(|m| !m.is_empty()) {
                    v.push(det, p, p + m.end());
                }
            }
            Check::Whole(regex) => {
                for m in regex.find_iter(&v.t[v.a..v.b]) {
                    v.hits.push(Hit {
                        det,
                        start: v.a + m.start(),
                        end: v.a + m.end(),
                    });
                }
                v.next[d] = v.b;
            }
            _ => {}
        }
    }
}

/// One string value being confirmed: `t[a..b]`, where each detector may
/// match again (`next[d]`; matches of one detector do not overlap, and
/// positions before `a` count as none), and the matches so far (positions
/// in `t`).
pub(crate) struct Value<'x> {
    pub(crate) t: &'x [u8],
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(crate) next: &'x mut [usize],
    pub(crate) hits: &'x mut Vec<Hit>,
}

impl Value<'_> {
    fn push(&mut self, det: u8, start: usize, end: usize) {
        self.hits.push(Hit { det, start, end });
        self.next[usize::from(det)] = end;
    }
}

/// Whether the bytes a card number starting at `t[p]` must hold (its 13th
/// digit is 12 bytes on at least) are digits and one kind of separator,
/// spaces or dashes, as `card_at` reads them: dates and times
/// (`2024-05-17T12:34:56Z`) hold as many digits, but other separators or
/// both. Decided 16 bytes at once (near the text's end: yes).
fn card_bytes(t: &[u8], p: usize) -> bool {
    const SPAN: u32 = 0x1fff;
    let Some(chunk) = t.get(p..).and_then(|r| r.first_chunk::<16>()) else {
        return true;
    };
    let b = Bytes16::load(chunk);
    let digits = b.in_range(b'0', b'9');
    (digits | b.eq(b' ')) & SPAN == SPAN || (digits | b.eq(b'-')) & SPAN == SPAN
}

/// Whether `t` starts with the UTF-8 encoding of an invisible code point
/// (U+200B–U+200D, U+202A–U+202E, U+2060, U+2066–U+2069, U+FEFF,
/// U+E0000–U+E007F).
fn invisible_lead(t: &[u8]) -> bool {
    matches!(
        t,
        [0xe2, 0x80, 0x8b..=0x8d | 0xaa..=0xae, ..]
            | [0xe2, 0x81, 0xa0 | 0xa6..=0xa9, ..]
            | [0xef, 0xbb, 0xbf, ..]
            | [0xf3, 0xa0, 0x80 | 0x81, ..]
    )
}
