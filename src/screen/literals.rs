//! The anchors' literal search: one SIMD search (Teddy) for every anchor
//! literal of a route, else (no SSSE3/AVX2 or NEON) an automaton.

use aho_corasick::{packed, AhoCorasick, Input, MatchKind, Span};

/// The anchors' literal search.
#[derive(Debug)]
pub(super) enum Literals {
    Teddy(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Literals {
    pub(super) fn build(patterns: &[String]) -> Literals {
        let teddy = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(patterns)
            .build();
        match teddy {
            Some(t) => Literals::Teddy(t),
            // No SSSE3/AVX2 (or NEON): the automaton, slower but the same.
            None => Literals::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(patterns)
                    .expect("the built-in anchors compile"),
            ),
        }
    }

    /// The first anchor starting at or after `at`: (pattern, start).
    pub(super) fn find(&self, hay: &[u8], at: usize) -> Option<(usize, usize)> {
        let m = match self {
            Literals::Teddy(t) => t.find_in(hay, Span::from(at..hay.len()))?,
            Literals::Automaton(a) => a.find(Input::new(hay).span(at..hay.len()))?,
        };
        Some((m.pattern().as_usize(), m.start()))
    }
}

/// The literals in the order Teddy is to take them (indexes into
/// `patterns`): Teddy puts a literal in the bucket of an earlier one with
/// the same low nibbles in its first four bytes, else in bucket
/// `7 - i % 8`, and a position of the text is verified against a bucket
/// when each of its four bytes' nibbles is among the bucket's. The order
/// of `ORDER` (found by a search over orders, counting those verifications
/// in the benchmark's text, the design notes and Rust sources) keeps
/// ordinary text from fitting the buckets; literals not in it come last.
pub(super) fn teddy_order(patterns: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..patterns.len()).collect();
    order.sort_by_key(|&i| {
        ORDER
            .iter()
            .position(|l| *l == patterns[i])
            .unwrap_or(usize::MAX)
    });
    order
}

pub(super) const ORDER: &[&str] = &[
    "xoxp-",
    "gnore",
    "ISREGARD",
    "github_pat_",
    "ghr_",
    "earer",
    "o not",
    "OU ARE NOW",
    "xoxs-",
    "ou are now",
    "xoxa-",
    "O NOT",
    "ghu_",
    "ghp_",
    "orget",
    "EW INSTRUCTIONS",
    "YSTEM PROMPT",
    "ystem prompt",
    "xoxr-",
    "k_live_",
    "<|im_start|>",
    ".eyJ",
    "ew instructions",
    "BEGIN",
    "xoxb-",
    "ORGET",
    "ASIA",
    "GNORE",
    "ghs_",
    "isregard",
    "gho_",
    "AKIA",
];
