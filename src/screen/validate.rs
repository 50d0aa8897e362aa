//! The detectors written by hand, with their validators: card numbers
//! (Luhn), IBANs (country length and mod-97), and runs of invisible code
//! points. Each works on the bytes of one string value, `t[a..b]`, from a
//! candidate position, and returns where its match ends.

use super::detectors::CharClass;

/// `[A-Za-z0-9_]`: what `\b` counts as a word character.
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether the Luhn checksum of these digits (ASCII, most significant
/// first) is valid.
pub(crate) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number starting at the digit run `t[p..]` (within `t[a..b]`): its
/// end. At most 19 digits; spaces or dashes (one kind, single) may separate
/// groups after the first four digits; the longest candidate (13 to 19
/// digits, ending at a word boundary) that passes Luhn wins.
pub(crate) fn card_at(t: &[u8], a: usize, p: usize, b: usize) -> Option<usize> {
    if (p > a && is_word(t[p - 1])) || !(b'2'..=b'6').contains(&t[p]) {
        return None;
    }
    if t.get(p..p + 4)
        .is_none_or(|g| p + 4 > b || !g.iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    // Ends (exclusive) after which a word boundary follows, with the digits
    // counted up to them.
    let mut ends: [(usize, usize); 20] = [(0, 0); 20];
    let (mut n_ends, mut digits, mut sep, mut i) = (0, 0, None, p);
    while i < b {
        let c = t[i];
        if c.is_ascii_digit() {
            digits += 1;
            i += 1;
            if digits > 19 {
                break;
            }
            let next = t.get(i).copied().filter(|_| i < b);
            if next.is_none_or(|n| !is_word(n)) && n_ends < ends.len() {
                ends[n_ends] = (i, digits);
                n_ends += 1;
            }
        } else if (c == b' ' || c == b'-')
            && i + 1 < b
            && t[i + 1].is_ascii_digit()
            && i - p >= 4
            && *sep.get_or_insert(c) == c
        {
            i += 1;
        } else {
            break;
        }
    }
    ends[..n_ends]
        .iter()
        .rev()
        .filter(|(_, n)| (13..=19).contains(n))
        .find(|(end, _)| luhn(t[p..*end].iter().copied().filter(u8::is_ascii_digit)))
        .map(|(end, _)| *end)
}

/// The length of an IBAN of this country (ISO 13616 registry), if it has
/// IBANs.
fn iban_len(cc: [u8; 2]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], u8)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    TABLE
        .iter()
        .find(|(c, _)| **c == cc)
        .map(|(_, n)| usize::from(*n))
}

/// An IBAN whose check digits start the digit run at `t[q..]` (its country
/// code is the two bytes before): its end. It holds ten digits or more.
pub(crate) fn iban_at(t: &[u8], a: usize, q: usize, b: usize) -> Option<usize> {
    let s = q.checked_sub(2).filter(|s| *s >= a)?;
    let cc = [t[s], t[s + 1]];
    if !cc.iter().all(u8::is_ascii_uppercase) || (s > a && is_word(t[s - 1])) {
        return None;
    }
    let want = iban_len(cc)?;
    let alnum = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    let (mut count, mut i) = (2, q);
    while count < want && i < b {
        if alnum(t[i]) {
            count += 1;
            i += 1;
        } else if t[i] == b' ' && count >= 4 && i + 1 < b && alnum(t[i + 1]) && t[i - 1] != b' ' {
            i += 1;
        } else {
            break;
        }
    }
    // At least ten digits: every country's account numbers are mostly
    // digits (the digit-run search hands on every run after two capitals).
    let digits = t[s..i].iter().filter(|c| c.is_ascii_digit()).count();
    if count != want || (i < b && is_word(t[i])) || digits < 10 {
        return None;
    }
    // Move the first four characters to the end, read letters as 10..35,
    // and the remainder mod 97 must be 1.
    let chars = t[s + 4..i]
        .iter()
        .chain(&t[s..s + 4])
        .filter(|c| **c != b' ');
    let mut rem = 0u32;
    for &c in chars {
        rem = if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A' + 10)) % 97
        };
    }
    (rem == 1).then_some(i)
}

/// The code point starting at `t[p]` (valid UTF-8 there) and its length.
pub(crate) fn char_at(t: &[u8], p: usize) -> Option<(char, usize)> {
    let len = match t.get(p)? {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let c = std::str::from_utf8(t.get(p..p + len)?)
        .ok()?
        .chars()
        .next()?;
    Some((c, len))
}

/// The run of `class` code points starting at `t[p..]` (a char boundary),
/// within `t[..b]`: its end, or `None` when it is not a match (a zero-width
/// joiner alone between two emoji is how emoji sequences are written).
pub(crate) fn chars_at(t: &[u8], a: usize, p: usize, b: usize, class: CharClass) -> Option<usize> {
    let mut end = p;
    let mut only_zwj = true;
    while end < b {
        match char_at(t, end) {
            Some((c, n)) if end + n <= b && CharClass::of(c) == Some(class) => {
                only_zwj &= c == '\u{200D}';
                end += n;
            }
            _ => break,
        }
    }
    if end == p {
        return None;
    }
    if class == CharClass::ZeroWidth && only_zwj && emoji(char_before(t, a, p)) {
        let after = if end < b {
            char_at(t, end).map(|c| c.0)
        } else {
            None
        };
        if emoji(after) {
            return None;
        }
    }
    Some(end)
}

fn emoji(c: Option<char>) -> bool {
    c.is_some_and(|c| matches!(c, '\u{1F000}'..='\u{1FAFF}' | '\u{2600}'..='\u{27BF}' | '\u{FE0F}'))
}

/// The code point ending at `t[p]`, not before `t[a]`.
fn char_before(t: &[u8], a: usize, p: usize) -> Option<char> {
    let mut s = p.checked_sub(1).filter(|s| *s >= a)?;
    while s > a && s + 4 > p && (t[s] & 0xc0) == 0x80 {
        s -= 1;
    }
    char_at(t, s).filter(|(_, n)| s + n == p).map(|c| c.0)
}
