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

/// A set of exact strings.
#[derive(Debug)]
pub(crate) enum StrSet {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>, Hasher>),
}

impl StrSet {
    pub fn new(items: impl IntoIterator<Item = String>) -> StrSet {
        let mut v: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        v.sort();
        v.dedup();
        if v.len() <= LINEAR_MAX {
            StrSet::Few(v.into_boxed_slice())
        } else {
            StrSet::Many(v.into_iter().collect())
        }
    }

    pub fn contains(&self, s: &str) -> bool {
        match self {
            StrSet::Few(v) => v.iter().any(|x| **x == *s),
            StrSet::Many(h) => h.contains(s),
        }
    }

    /// Every member, for the rule index.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
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
    pub fn new(items: Vec<String>) -> Prefixes {
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

    pub fn matches(&self, s: &str) -> bool {
        let i = self.0.partition_point(|p| **p <= *s);
        i > 0 && s.starts_with(&*self.0[i - 1])
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
    pub fn from_value(v: &Value) -> Result<Scalar, String> {
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
    pub fn eq_i128(&self, x: i128) -> bool {
        match self {
            Scalar::Num(_, Some(i)) => *i == x,
            Scalar::Num(f, None) => *f == x as f64,
            _ => false,
        }
    }

    pub fn eq_f64(&self, x: f64) -> bool {
        matches!(self, Scalar::Num(f, _) if *f == x)
    }

    /// Equality with a JSON value (a token claim).
    pub fn eq_json(&self, v: &Value) -> bool {
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
        let p = Prefixes::new(vec!["ab".into(), "abc".into(), "b".into(), "x/y".into()]);
        assert_eq!(p.0.len(), 3);
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
    fn regex_size_is_capped() {
        assert!(regex("^a+$").is_ok());
        assert!(regex("(\\w{100}){100}").is_err());
    }
}
