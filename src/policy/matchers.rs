//! String and value matchers, built once at compile time and read without
//! allocating.

use std::collections::HashSet;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Largest compiled program a policy regex may have (bytes); a hostile or
/// fuzzed config cannot make the proxy build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const REGEX_DFA_LIMIT: usize = 1024 * 1024;

/// Below this many members a set is a slice scanned linearly (faster than hashing).
const LINEAR_MAX: usize = 8;

pub(crate) type Hasher = foldhash::fast::RandomState;

/// Byte equality inlined for short strings: policy names are short, and a
/// call to `memcmp` for each costs more than the comparison.
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Two overlapping word loads cover lengths 4..=16.
    let w8 = |x: &[u8], at: usize| u64::from_le_bytes(x[at..at + 8].try_into().unwrap_or_default());
    let w4 = |x: &[u8], at: usize| u32::from_le_bytes(x[at..at + 4].try_into().unwrap_or_default());
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n - 1] == b[n - 1] && a[n / 2] == b[n / 2],
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => a == b,
    }
}

/// `a` equals `lower` ignoring ASCII case, where `lower` is already
/// lowercase (header names): word-at-a-time for lengths up to 16.
#[inline]
pub(crate) fn same_lower(a: &[u8], lower: &[u8]) -> bool {
    let n = a.len();
    if n != lower.len() {
        return false;
    }
    // Bytes `A`..=`Z` gain 0x20, others are unchanged (as `to_ascii_lowercase`).
    fn fold(x: u64) -> u64 {
        const LO: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const HI: u64 = 0x8080_8080_8080_8080;
        let seven = x & LO;
        let above_z = seven.wrapping_add(0x2525_2525_2525_2525); // > 'Z' (0x5a)
        let from_a = seven.wrapping_add(0x3f3f_3f3f_3f3f_3f3f); // >= 'A' (0x41)
        let upper = from_a & !above_z & !x & HI;
        x | (upper >> 2)
    }
    let w8 = |x: &[u8], at: usize| u64::from_le_bytes(x[at..at + 8].try_into().unwrap_or_default());
    let w4 = |x: &[u8], at: usize| {
        u64::from(u32::from_le_bytes(
            x[at..at + 4].try_into().unwrap_or_default(),
        ))
    };
    match n {
        0 => true,
        4..=7 => fold(w4(a, 0)) == w4(lower, 0) && fold(w4(a, n - 4)) == w4(lower, n - 4),
        8..=16 => fold(w8(a, 0)) == w8(lower, 0) && fold(w8(a, n - 8)) == w8(lower, n - 8),
        _ => a.eq_ignore_ascii_case(lower),
    }
}

/// `s` starts with `p`.
#[inline]
pub(crate) fn starts(s: &str, p: &str) -> bool {
    s.len() >= p.len() && same(&s.as_bytes()[..p.len()], p.as_bytes())
}

/// A set of exact strings.
#[derive(Debug)]
pub(crate) enum StrSet {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>, Hasher>),
}

impl StrSet {
    pub(super) fn new(items: impl IntoIterator<Item = String>) -> StrSet {
        let mut v: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        v.sort();
        v.dedup();
        if v.len() <= LINEAR_MAX {
            StrSet::Few(v.into_boxed_slice())
        } else {
            StrSet::Many(v.into_iter().collect())
        }
    }

    #[inline]
    pub(super) fn contains(&self, s: &str) -> bool {
        match self {
            StrSet::Few(v) => v.iter().any(|x| same(x.as_bytes(), s.as_bytes())),
            StrSet::Many(h) => h.contains(s),
        }
    }

    /// `contains` for bytes that may not be UTF-8 (never a member then).
    pub(super) fn contains_bytes(&self, b: &[u8]) -> bool {
        match self {
            StrSet::Few(v) => v.iter().any(|x| same(x.as_bytes(), b)),
            StrSet::Many(h) => std::str::from_utf8(b).is_ok_and(|s| h.contains(s)),
        }
    }

    /// Every member, for the rule index.
    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            StrSet::Few(v) => Box::new(v.iter().map(|s| &**s)),
            StrSet::Many(h) => Box::new(h.iter().map(|s| &**s)),
        }
    }
}

/// A set of prefixes, sorted with redundant ones removed, so one binary
/// search finds the only candidate: the largest prefix `<=` the string.
#[derive(Debug)]
pub(crate) struct Prefixes(Box<[Box<str>]>);

impl Prefixes {
    pub(super) fn new(items: Vec<String>) -> Prefixes {
        let mut v: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        v.sort();
        v.dedup();
        let mut kept: Vec<Box<str>> = Vec::with_capacity(v.len());
        for p in v {
            // Sorted: a prefix of `p` already kept is the last one kept.
            if kept.last().is_some_and(|k| p.starts_with(&**k)) {
                continue;
            }
            kept.push(p);
        }
        Prefixes(kept.into_boxed_slice())
    }

    #[inline]
    pub(super) fn matches(&self, s: &str) -> bool {
        if self.0.len() <= 4 {
            return self.0.iter().any(|p| starts(s, p));
        }
        let i = self.0.partition_point(|p| **p <= *s);
        i > 0 && starts(s, &self.0[i - 1])
    }
}

/// Compile a user regex with size limits; anchoring is as written.
pub(crate) fn regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| format!("bad regex {pattern:?}: {e}"))
}

/// A user regex; one that is only literal text (with `^`/`$` anchors at
/// most) is matched as plain text, which is several times faster.
#[derive(Debug)]
pub(crate) enum Pattern {
    Contains(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Exact(Box<str>),
    Regex(Regex),
}

impl Pattern {
    pub(super) fn new(pattern: &str) -> Result<Pattern, String> {
        let re = regex(pattern)?;
        let (head, body) = match pattern.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let (tail, body) = match body.strip_suffix('$') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let literal = body.chars().all(|c| {
            c.is_alphanumeric() && !c.is_whitespace()
                || matches!(
                    c,
                    '/' | '_'
                        | ':'
                        | '@'
                        | '='
                        | ','
                        | '%'
                        | '!'
                        | '\''
                        | '"'
                        | '<'
                        | '>'
                        | ';'
                        | '`'
                )
        });
        if !literal || body.is_empty() {
            return Ok(Pattern::Regex(re));
        }
        let body: Box<str> = body.into();
        Ok(match (head, tail) {
            (false, false) => Pattern::Contains(body),
            (true, false) => Pattern::Prefix(body),
            (false, true) => Pattern::Suffix(body),
            (true, true) => Pattern::Exact(body),
        })
    }

    #[inline]
    pub(super) fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Contains(b) => s.contains(&**b),
            Pattern::Prefix(b) => starts(s, b),
            Pattern::Suffix(b) => s.ends_with(&**b),
            Pattern::Exact(b) => same(s.as_bytes(), b.as_bytes()),
            Pattern::Regex(re) => re.is_match(s),
        }
    }
}

/// A glob over a URI: `*` matches any run without `/`, `**` any run at all,
/// `?` one character other than `/`; everything else is literal. Anchored.
pub(crate) fn glob(pattern: &str) -> Result<Regex, String> {
    let mut re = String::with_capacity(pattern.len() * 2 + 2);
    re.push('^');
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                re.push_str(".*");
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => {
                let mut buf = [0u8; 4];
                re.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    re.push('$');
    RegexBuilder::new(&re)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

/// A scalar from the config (`equals`, `in`, `contains`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(Box<str>),
    /// A number: its value, and the exact integer when it is one.
    Num(f64, Option<i128>),
    Bool(bool),
    Null,
}

impl Scalar {
    pub(super) fn from_value(v: &Value) -> Result<Scalar, String> {
        Ok(match v {
            Value::String(s) => Scalar::Str(s.as_str().into()),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            Value::Number(n) => {
                let int = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from));
                Scalar::Num(n.as_f64().unwrap_or(f64::NAN), int)
            }
            _ => return Err("only strings, numbers, booleans and null can be compared".into()),
        })
    }

    /// Numeric equality: exact for integers, by value otherwise.
    pub(super) fn eq_i128(&self, x: i128) -> bool {
        match self {
            Scalar::Num(_, Some(i)) => *i == x,
            Scalar::Num(f, None) => *f == x as f64,
            _ => false,
        }
    }

    pub(super) fn eq_f64(&self, x: f64) -> bool {
        matches!(self, Scalar::Num(f, _) if *f == x)
    }

    /// Equality with a JSON value (a token claim).
    pub(super) fn eq_json(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => **a == **b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Null, Value::Null) => true,
            (Scalar::Num(..), Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    self.eq_i128(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    self.eq_i128(i128::from(u))
                } else {
                    n.as_f64().is_some_and(|f| self.eq_f64(f))
                }
            }
            _ => false,
        }
    }
}

/// ASCII-lowercase `s` into `buf` without allocating; `None` if it does not fit.
pub(crate) fn lower<'b>(s: &str, buf: &'b mut [u8; 320]) -> Option<&'b str> {
    let out = buf.get_mut(..s.len())?;
    out.copy_from_slice(s.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_find_the_only_candidate() {
        let p = Prefixes::new(vec![
            "ab".into(),
            "abc".into(),
            "b".into(),
            "x/y".into(),
            "z1".into(),
            "z2".into(),
            "z3".into(),
        ]);
        assert_eq!(p.0.len(), 6);
        assert!(p.matches("z2x"));
        assert!(p.matches("abz"));
        assert!(p.matches("abc"));
        assert!(p.matches("b"));
        assert!(p.matches("x/yz"));
        assert!(!p.matches("a"));
        assert!(!p.matches("x/"));
        assert!(!p.matches(""));
        assert!(!Prefixes::new(vec![]).matches("a"));
    }

    #[test]
    fn same_is_equality() {
        let words = [
            "",
            "a",
            "ab",
            "abc",
            "abd",
            "abcd",
            "abce",
            "abcdefg",
            "abcdefh",
            "abcdefgh",
            "abcdefgi",
            "0123456789abcdef",
            "0123456789abcdeg",
            "0123456789abcdefg",
            "1123456789abcdefg",
        ];
        for a in words {
            for b in words {
                assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
    }

    #[test]
    fn same_lower_is_eq_ignore_ascii_case() {
        let words = [
            "",
            "a",
            "Ab",
            "x-tenant",
            "X-Tenant",
            "X-TENANT",
            "x-tenanu",
            "x^",
            "x~",
            "@",
            "`",
            "[",
            "{",
            "accept",
            "ACCEPT",
            "Accept-Encoding",
            "accept-encoding",
            "accept-encodinG",
            "content-security-policy",
            "Content-Security-Policy",
            "x\u{e9}y",
            "X\u{c9}Y",
            "abcd",
            "ABCD",
            "abc\u{7f}",
            "ABC\u{5f}",
        ];
        for a in words {
            for b in words {
                let lower = b.to_ascii_lowercase();
                assert_eq!(
                    same_lower(a.as_bytes(), lower.as_bytes()),
                    a.eq_ignore_ascii_case(&lower),
                    "{a:?} {lower:?}"
                );
            }
        }
        // Every byte value, in every position of an 8-byte word.
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut x = *b"abcdefgh";
                x[at] = b;
                let lower = x.to_ascii_lowercase();
                assert!(same_lower(&x, &lower));
                let mut y = lower;
                y[at] = y[at].wrapping_add(1);
                assert_eq!(same_lower(&x, &y), x.eq_ignore_ascii_case(&y), "{b} {at}");
            }
        }
    }

    #[test]
    fn strset_small_and_large() {
        let small = StrSet::new(["a".to_string(), "b".to_string()]);
        assert!(small.contains("a") && !small.contains("c"));
        let large = StrSet::new((0..100).map(|i| format!("t{i}")));
        assert!(matches!(large, StrSet::Many(_)));
        assert!(large.contains("t42") && !large.contains("t100"));
    }

    #[test]
    fn glob_stars() {
        let g = glob("file:///srv/*").unwrap();
        assert!(g.is_match("file:///srv/a.txt"));
        assert!(!g.is_match("file:///srv/a/b.txt"));
        assert!(!g.is_match("file:///srv"));
        let g = glob("file:///srv/**").unwrap();
        assert!(g.is_match("file:///srv/a/b.txt"));
        let g = glob("s3://b?/x.(y)").unwrap();
        assert!(g.is_match("s3://b1/x.(y)"));
        assert!(!g.is_match("s3://b1/xz(y)"));
    }

    #[test]
    fn literal_patterns_match_like_regexes() {
        let cases = [
            "^acme/",
            "acme",
            "web$",
            "^acme/web$",
            "^a.c",
            "(?i)acme",
            "^$",
            "",
            "^\\.x",
            "ACME",
            "^é/",
        ];
        let inputs = [
            "acme/web",
            "xacme/web",
            "ACME/WEB",
            "a.c",
            "abc",
            "",
            ".x",
            "é/x",
            "acme/web\n",
        ];
        for c in cases {
            let p = Pattern::new(c).unwrap();
            let r = regex(c).unwrap();
            for i in inputs {
                assert_eq!(p.is_match(i), r.is_match(i), "{c} on {i:?}");
            }
        }
        assert!(matches!(
            Pattern::new("^acme/").unwrap(),
            Pattern::Prefix(_)
        ));
        assert!(matches!(Pattern::new("^a.c").unwrap(), Pattern::Regex(_)));
    }

    #[test]
    fn regex_size_is_capped() {
        assert!(regex("^a+$").is_ok());
        assert!(regex("(\\w{100}){100}").is_err());
    }
}
