//! A strict JSON walk over a message's bytes that hands every string value
//! (not object keys) to a visitor with its path and where it lies in the
//! body, and the unescaping of a string. Invalid JSON (RFC 8259: UTF-8,
//! escapes, lone surrogates, numbers, trailing bytes) is refused, as is
//! nesting deeper than the JSON-RPC decoder accepts.

use crate::mcp::jsonrpc::MAX_DEPTH;
use crate::sys::json_string_stop;
use std::fmt;

/// Why a body could not be screened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not UTF-8.
    Utf8,
    /// Not JSON: the byte offset where reading stopped.
    Syntax(usize),
    /// Arrays and objects nested deeper than the JSON-RPC decoder accepts.
    TooDeep,
    /// Over 4 GiB.
    TooLarge,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Utf8 => f.write_str("body is not UTF-8"),
            JsonError::Syntax(at) => write!(f, "body is not JSON (at byte {at})"),
            JsonError::TooDeep => f.write_str("JSON nested too deeply"),
            JsonError::TooLarge => f.write_str("body over 4 GiB"),
        }
    }
}

/// One step of a value's path: an object member (its key's raw bytes,
/// between the quotes) or an array element. Positions are `u32` (bodies
/// are at most 4 GiB) to keep the walk's records small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key { start: u32, end: u32, escaped: bool },
    Index(u32),
}

impl Seg {
    /// A key's raw bytes in `body`.
    pub(crate) fn key<'b>(&self, body: &'b [u8]) -> Option<(&'b [u8], bool)> {
        match *self {
            Seg::Key {
                start,
                end,
                escaped,
            } => Some((&body[start as usize..end as usize], escaped)),
            Seg::Index(_) => None,
        }
    }
}

/// A string value: its raw bytes are `body[start..end]` (between the
/// quotes); `escaped` when they hold a backslash. Its value is `len` bytes
/// long (at `start` in the decoded copy, when it was escaped).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) len: u32,
    pub(crate) escaped: bool,
}

impl Raw {
    /// Where the value is in the decoded body (or the body).
    pub(crate) fn value(&self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// Where a string value is: the array or object holding it (an index into
/// `Walked::containers`, `NONE` at the top level), and the step to it from
/// there (`None` at the top level).
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    pub(crate) container: u32,
    pub(crate) last: Option<Seg>,
}

pub(crate) const NONE: u32 = u32::MAX;

/// What a walk leaves: every array and object as (the container holding
/// it, or `NONE`; the step to it from there), and the decoded copy.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    pub(crate) containers: Vec<(u32, Option<Seg>)>,
    pub(crate) decoded: Option<Vec<u8>>,
}

impl Walked {
    /// The path of a value held by `container` under `last`.
    pub(crate) fn path(&self, container: u32, last: Option<Seg>) -> Vec<Seg> {
        let mut path: Vec<Seg> = last.into_iter().collect();
        let mut c = container;
        while let Some(&(parent, seg)) = self.containers.get(c as usize) {
            path.extend(seg);
            c = parent;
        }
        path.reverse();
        path
    }
}

/// Walk `body`, calling `visit(at, string)` for every string value in
/// document order. With `decode`, the result holds the decoded copy when a
/// string value had escapes: the body with each such value replaced by its
/// value, NUL bytes filling the rest of its raw length (object keys stay
/// as they are).
pub(crate) fn walk<F>(body: &[u8], decode: bool, mut visit: F) -> Result<Walked, JsonError>
where
    F: FnMut(At, Raw),
{
    if u32::try_from(body.len()).is_err() {
        return Err(JsonError::TooLarge);
    }
    simdutf8::basic::from_utf8(body).map_err(|_| JsonError::Utf8)?;
    let mut w = Walker {
        b: body,
        i: 0,
        path: Vec::with_capacity(16),
        objects: Vec::with_capacity(16),
        open: Vec::with_capacity(16),
        decode,
        walked: Walked {
            containers: Vec::with_capacity(body.len() / 64),
            decoded: None,
        },
        copied: 0,
    };
    w.run(&mut visit)?;
    if let Some(out) = &mut w.walked.decoded {
        out.extend_from_slice(&body[w.copied..]);
    }
    Ok(w.walked)
}

struct Walker<'b> {
    b: &'b [u8],
    i: usize,
    path: Vec<Seg>,
    /// Per open container: whether it is an object.
    objects: Vec<bool>,
    /// Per open container: its index in `walked.containers`.
    open: Vec<u32>,
    decode: bool,
    /// The containers so far, and the decoded copy from the first escaped
    /// string value on.
    walked: Walked,
    /// How much of the body `out` stands for.
    copied: usize,
}

impl Walker<'_> {
    fn err<T>(&self) -> Result<T, JsonError> {
        Err(JsonError::Syntax(self.i))
    }

    #[inline(always)]
    fn peek(&self) -> Result<u8, JsonError> {
        match self.b.get(self.i) {
            Some(c) => Ok(*c),
            None => self.err(),
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn run<F: FnMut(At, Raw)>(&mut self, visit: &mut F) -> Result<(), JsonError> {
        // The path's last step, kept apart: reading back a step just pushed
        // stalls on the stores that wrote it.
        let mut last = None;
        'value: loop {
            self.ws();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    if self.objects.len() >= MAX_DEPTH {
                        return Err(JsonError::TooDeep);
                    }
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1;
                    } else {
                        self.objects.push(open == b'{');
                        let holder = self.open.last().copied().unwrap_or(NONE);
                        self.open.push(self.walked.containers.len() as u32);
                        self.walked.containers.push((holder, last));
                        last = Some(if open == b'{' {
                            self.key()?
                        } else {
                            self.path.push(Seg::Index(0));
                            Seg::Index(0)
                        });
                        continue 'value;
                    }
                }
                b'"' => {
                    let raw = self.string(self.decode)?;
                    let container = self.open.last().copied().unwrap_or(NONE);
                    visit(At { container, last }, raw);
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return self.err(),
            }
            // After a value: the next member or element, or closing brackets.
            loop {
                self.ws();
                let Some(&object) = self.objects.last() else {
                    return if self.i == self.b.len() {
                        Ok(())
                    } else {
                        self.err()
                    };
                };
                match (self.peek()?, object) {
                    (b',', true) => {
                        self.i += 1;
                        self.path.pop();
                        self.ws();
                        last = Some(self.key()?);
                        continue 'value;
                    }
                    (b',', false) => {
                        self.i += 1;
                        if let Some(Seg::Index(n)) = self.path.last_mut() {
                            *n += 1;
                            last = Some(Seg::Index(*n));
                        }
                        continue 'value;
                    }
                    (b'}', true) | (b']', false) => {
                        self.i += 1;
                        self.objects.pop();
                        self.open.pop();
                        self.path.pop();
                        last = self.path.last().copied();
                    }
                    _ => return self.err(),
                }
            }
        }
    }

    /// A member's key and its colon; the key joins the path (and is
    /// returned).
    #[inline(always)]
    fn key(&mut self) -> Result<Seg, JsonError> {
        if self.peek()? != b'"' {
            return self.err();
        }
        let raw = self.string(false)?;
        let seg = Seg::Key {
            start: raw.start,
            end: raw.end,
            escaped: raw.escaped,
        };
        self.path.push(seg);
        self.ws();
        if self.peek()? != b':' {
            return self.err();
        }
        self.i += 1;
        Ok(seg)
    }

    /// The string starting at the quote at `self.i`; with `decode`, an
    /// escaped one is decoded into `out`.
    #[inline(always)]
    fn string(&mut self, decode: bool) -> Result<Raw, JsonError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Up to the first quote, backslash or control character, 64
            // bytes a step (`sys`); none: the body ends inside the string.
            let rest = self.b.get(self.i..).unwrap_or_default();
            self.i += json_string_stop(rest).unwrap_or(rest.len());
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    let at = self.i;
                    let simple =
                        (self.b.get(at + 1)).map_or(0, |c| SIMPLE_ESCAPES[usize::from(*c)]);
                    let mut buf = [simple, 0, 0, 0];
                    let value: &[u8] = if simple != 0 {
                        self.i += 2;
                        &buf[..1]
                    } else if self.b.get(at + 1) == Some(&b'u') {
                        self.unicode()?.encode_utf8(&mut buf).as_bytes()
                    } else {
                        return self.err();
                    };
                    if decode {
                        let out = (self.walked.decoded)
                            .get_or_insert_with(|| Vec::with_capacity(self.b.len()));
                        out.extend_from_slice(&self.b[self.copied..at]);
                        out.extend_from_slice(value);
                        self.copied = self.i;
                    }
                }
                0..=0x1f => return self.err(),
                _ => self.i += 1,
            }
        }
        let end = self.i;
        self.i += 1;
        let mut len = end - start;
        if let (true, Some(out)) = (escaped && decode, &mut self.walked.decoded) {
            out.extend_from_slice(&self.b[self.copied..end]);
            len = out.len() - start;
            // NUL fills the rest: no detector reads or crosses it.
            out.resize(end, 0);
            self.copied = end;
        }
        // The body's length was checked to fit.
        Ok(Raw {
            start: start as u32,
            end: end as u32,
            len: len as u32,
            escaped,
        })
    }

    /// The `\uXXXX` escape at the backslash at `self.i`, read past (a
    /// surrogate pair counts as one, and must pair).
    fn unicode(&mut self) -> Result<char, JsonError> {
        let code = match hex4(self.b, self.i + 2) {
            Some(high @ 0xd800..=0xdbff) => {
                let low = (self.b.get(self.i + 6..self.i + 8) == Some(b"\\u"))
                    .then(|| hex4(self.b, self.i + 8))
                    .flatten();
                let Some(low @ 0xdc00..=0xdfff) = low else {
                    return self.err();
                };
                self.i += 6;
                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
            }
            Some(code) => code,
            None => return self.err(),
        };
        match char::from_u32(code) {
            Some(c) => {
                self.i += 6;
                Ok(c)
            }
            None => self.err(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) != Some(word) {
            return self.err();
        }
        self.i += word.len();
        Ok(())
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.b[self.i] == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return self.err(),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.need_digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            self.need_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    fn need_digits(&mut self) -> Result<(), JsonError> {
        if !self.peek()?.is_ascii_digit() {
            return self.err();
        }
        self.digits();
        Ok(())
    }
}

/// The byte each one-letter escape stands for, by its letter (0: none).
const SIMPLE_ESCAPES: [u8; 256] = {
    let mut t = [0; 256];
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'/' as usize] = b'/';
    t[b'b' as usize] = 0x08;
    t[b'f' as usize] = 0x0c;
    t[b'n' as usize] = b'\n';
    t[b'r' as usize] = b'\r';
    t[b't' as usize] = b'\t';
    t
};

/// The four hex digits at `b[at..]`.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |n, d| Some(n * 16 + char::from(*d).to_digit(16)?))
}

/// Append the value of the raw string `raw` (bytes between the quotes,
/// already checked by `walk`) to `out`.
pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &raw[i..]).map(|k| i + k) {
        out.extend_from_slice(&raw[i..at]);
        let c = match raw.get(at + 1) {
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let hi = hex4(raw, at + 2).unwrap_or(0xfffd);
                let (code, len) = if (0xd800..=0xdbff).contains(&hi) {
                    let lo = hex4(raw, at + 8).unwrap_or(0xdc00);
                    (
                        0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff),
                        12,
                    )
                } else {
                    (hi, 6)
                };
                let c = char::from_u32(code).unwrap_or('\u{fffd}');
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i = at + len;
                continue;
            }
            Some(other) => *other,
            None => break,
        };
        out.push(c);
        i = at + 2;
    }
    out.extend_from_slice(&raw[i.min(raw.len())..]);
}
