//! HTTP/1.1 on the wire: strict request-head parsing and framing decisions
//! (`parse`), the chunked body decoder (`chunked`), upstream response heads
//! (`response`) and the bytes portcullis writes itself (`encode`).
//!
//! This module owns every framing decision. It must never guess: a message whose
//! length two parties could read differently is rejected, never "repaired".

pub(crate) mod chunked;
pub(crate) mod encode;
pub(crate) mod parse;
pub(crate) mod response;

pub(crate) use parse::{parse_request, Framing, Method, RequestHead};

/// Room for one parsed header field, left uninitialised: heads are parsed
/// into `[NO_HEADER; N]` on the stack. `httparse::EMPTY_HEADER` arrays
/// cost a store per byte (256 fields: 8 KiB) on every parse.
pub const NO_HEADER: std::mem::MaybeUninit<httparse::Header<'static>> =
    std::mem::MaybeUninit::uninit();

/// Whether header field name `name`, a token (httparse checks every name
/// it returns), is `lower` (lower-case letters and `-`) in any case. Eight
/// bytes a step: setting bit 5 of a token's byte turns exactly its
/// upper-case letters into lower-case ones; the only other token bytes it
/// changes are `^` and `_`, which become no letter and no `-`.
#[inline(always)]
pub(crate) fn name_is(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|&c| c == b'-' || c.is_ascii_lowercase()));
    debug_assert!(name.iter().all(|&b| is_tchar(b)));
    const BIT5: u64 = 0x2020_2020_2020_2020;
    let word =
        |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name.iter().zip(lower).all(|(&b, &c)| b | 0x20 == c);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(name, at) | BIT5 != word(lower, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the step before when `n` is not a
    // multiple of eight).
    word(name, n - 8) | BIT5 == word(lower, n - 8)
}

/// A header field name in lower case, as [`RequestHead::header`] takes it
/// (its comparison is exact only against lower case). Checked where it is
/// made: `const` names are checked by the compiler.
#[derive(Clone, Copy, Debug)]
pub struct Lower(&'static [u8]);

impl Lower {
    /// Panics (fails to compile, in a `const`) unless `name` is lower-case
    /// letters and `-`, what [`name_is`] compares exactly.
    pub const fn new(name: &'static str) -> Lower {
        let b = name.as_bytes();
        let mut i = 0;
        while i < b.len() {
            assert!(
                b[i] == b'-' || b[i].is_ascii_lowercase(),
                "a header name in lower case"
            );
            i += 1;
        }
        Lower(b)
    }
}

/// Whether `b` is an RFC 9110 `tchar`.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Whether `s` is an RFC 9110 `token` (a valid field name).
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Whether the query of a request target has a parameter named one of
/// `names` (ASCII case-insensitive), with or without a value. Byte searches:
/// it runs on the request path, where `str` searches for a `char` cost a few
/// hundred instructions.
pub(crate) fn query_has_param(target: &str, names: &[&str]) -> bool {
    let target = target.as_bytes();
    let Some(q) = memchr::memchr(b'?', target) else {
        return false;
    };
    target[q + 1..].split(|&b| b == b'&').any(|pair| {
        let name = &pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())];
        names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
    })
}

/// Trim optional whitespace (SP / HTAB only; nothing else counts as OWS).
#[inline]
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &v[start..end]
}

/// Append to `out` the lines of the fields `keep` keeps, exactly as they
/// came (case and whitespace included): each run of adjacent kept lines in
/// one copy, not four appends a field. `raw` is the head the fields were
/// parsed from, in order, its blank line last: a field's line runs from its
/// name to the next field's name (its CRLF included), the last field's to
/// the blank line. (httparse takes a field as one line: no obs-fold.)
pub(crate) fn copy_header_lines(
    raw: &[u8],
    headers: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
    mut keep: impl FnMut(&httparse::Header<'_>) -> bool,
) {
    debug_assert!(raw.ends_with(b"\r\n\r\n"));
    let end = raw.len().saturating_sub(2);
    let base = raw.as_ptr() as usize;
    // Where the run of kept lines being gathered began.
    let mut run = None;
    for h in headers {
        let at = (h.name.as_ptr() as usize).wrapping_sub(base);
        debug_assert!(at < end, "a field of another head");
        if keep(h) {
            run.get_or_insert(at);
        } else if let Some(from) = run.take() {
            out.extend_from_slice(&raw[from..at]);
        }
    }
    if let Some(from) = run {
        out.extend_from_slice(&raw[from..end]);
    }
}

/// Apply one Connection field value to the keep-alive decision: `close`
/// ends it; `keep-alive` asks for it on HTTP/1.0 (HTTP/1.1 has it already).
pub(crate) fn apply_connection(value: &[u8], http11: bool, keep_alive: &mut bool) {
    // The two usual values, as nearly every peer writes them: whole.
    match value {
        b"keep-alive" => {
            *keep_alive |= !http11;
            return;
        }
        b"close" => {
            *keep_alive = false;
            return;
        }
        _ => {}
    }
    for token in value.split(|&b| b == b',').map(trim_ows) {
        if token.eq_ignore_ascii_case(b"close") {
            *keep_alive = false;
        } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
            *keep_alive = true;
        }
    }
}

/// Strict decimal Content-Length: 1 to 19 ASCII digits, nothing else.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The head must use CRLF line endings only. httparse already rejects a CR
/// not followed by LF; it accepts a bare LF as a line end, which is refused
/// here (the framing tables cover both).
/// Sixteen bytes a step (`sys::Bytes16`): every LF's bit must have a CR's
/// bit just before it, carried across steps.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    // Bit 0: the byte before this step is a CR.
    let mut cr_before = 0u32;
    let (chunks, rest) = head.as_chunks::<16>();
    for chunk in chunks {
        let v = crate::sys::Bytes16::load(chunk);
        let (lf, cr) = (v.eq(b'\n'), v.eq(b'\r'));
        if lf & !(cr << 1 | cr_before) != 0 {
            return true;
        }
        cr_before = cr >> 15;
    }
    let mut prev_cr = cr_before == 1;
    rest.iter().any(|&c| {
        let bare = c == b'\n' && !prev_cr;
        prev_cr = c == b'\r';
        bare
    })
}

#[cfg(test)]
mod tests {
    use super::has_bare_lf;

    #[test]
    #[should_panic(expected = "a header name in lower case")]
    fn a_name_with_a_capital_is_no_lower_case_name() {
        // Made at run time (a `const` one would not compile).
        let name: &'static str = String::from("X-Request-Id").leak();
        super::Lower::new(name);
    }

    #[test]
    fn header_lines_are_copied_as_they_came_for_every_choice_of_fields() {
        // Odd whitespace and case, an empty value; a request and a response.
        let request: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nX-A:1\r\ncontent-length: 3 \r\nX-B:\t two\t\r\nx-empty:\r\nAccept: */*\r\n\r\n";
        let response: &[u8] =
            b"HTTP/1.0 200 OK\r\nServer: n\r\nConnection: close\r\nX-C:  c  \r\n\r\n";
        let mut space = [crate::http1::NO_HEADER; 16];
        let limits = super::parse::HeadLimits::default();
        let r = super::parse_request(request, &mut space, &limits)
            .unwrap()
            .unwrap();
        assert_eq!(r.raw, request);
        every_choice(r.raw, r.headers);
        let mut space = [crate::http1::NO_HEADER; 16];
        let r = super::response::parse_response(response, &mut space, false, 1 << 16)
            .unwrap()
            .unwrap();
        assert_eq!(r.raw, response);
        every_choice(r.raw, r.headers);
    }

    /// Copy the lines of every subset of `headers`, each compared with the
    /// lines of `raw` as a reader of the bytes splits them.
    fn every_choice(raw: &[u8], headers: &[httparse::Header<'_>]) {
        let text = std::str::from_utf8(raw).unwrap();
        // Between the first line and the blank one.
        let lines: Vec<&str> = text.split_inclusive("\r\n").skip(1).collect();
        let lines = &lines[..lines.len() - 1];
        assert_eq!(lines.len(), headers.len());
        for choice in 0u32..1 << lines.len() {
            let mut out = b"before\r\n".to_vec();
            let mut k = 0;
            super::copy_header_lines(raw, headers, &mut out, |h| {
                // Asked about each field once, in order.
                assert!(std::ptr::eq(h, &headers[k]));
                k += 1;
                choice & 1 << (k - 1) != 0
            });
            assert_eq!(k, headers.len());
            let kept: String = (lines.iter().enumerate())
                .filter(|(i, _)| choice & 1 << i != 0)
                .map(|(_, l)| *l)
                .collect();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("before\r\n{kept}"),
                "choice {choice:b}"
            );
        }
    }

    #[test]
    fn name_is_agrees_with_a_case_blind_comparison_for_every_token() {
        let literals: [&[u8]; 8] = [
            b"te",
            b"host",
            b"expect",
            b"connection",
            b"content-length",
            b"transfer-encoding",
            b"proxy-authorization",
            b"x-portcullis-identity",
        ];
        let tchars: Vec<u8> = (0..=255u8).filter(|&b| super::is_tchar(b)).collect();
        for lower in literals {
            // The literal in lower and upper case, and every one-byte change of it
            // to any token byte (the `^`/`~` and `_`/DEL pairs included).
            let mut names = vec![lower.to_vec(), lower.to_ascii_uppercase()];
            for at in 0..lower.len() {
                for &b in &tchars {
                    let mut n = lower.to_vec();
                    n[at] = b;
                    names.push(n);
                }
            }
            names.push(lower[..lower.len() - 1].to_vec());
            for name in names {
                assert_eq!(
                    super::name_is(&name, lower),
                    name.eq_ignore_ascii_case(lower),
                    "{:?} vs {:?}",
                    String::from_utf8_lossy(&name),
                    String::from_utf8_lossy(lower)
                );
            }
        }
    }

    #[test]
    fn bare_lf_is_found_at_every_offset_and_across_steps() {
        let naive = |h: &[u8]| (0..h.len()).any(|i| h[i] == b'\n' && (i == 0 || h[i - 1] != b'\r'));
        for len in 0..70 {
            let mut head: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(!has_bare_lf(&head));
            for at in 0..len {
                // A CRLF ending here (the CR one step back when `at` starts
                // a step), then a bare LF, then a lone CR before the LF.
                head[at] = b'\n';
                if at > 0 {
                    head[at - 1] = b'\r';
                    assert!(!has_bare_lf(&head), "CRLF at {at} of {len}");
                    head[at - 1] = b'x';
                }
                assert!(has_bare_lf(&head), "bare LF at {at} of {len}");
                head[at] = b'\r';
                assert_eq!(has_bare_lf(&head), naive(&head));
                head[at] = b'a';
            }
        }
        let real = b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nAccept: */*\r\n\r\n";
        assert!(!has_bare_lf(real));
        for i in 0..real.len() {
            let mut h = real.to_vec();
            h[i] = b'\n';
            assert_eq!(has_bare_lf(&h), naive(&h), "LF at {i}");
            h[i] = b'\r';
            assert_eq!(has_bare_lf(&h), naive(&h), "CR at {i}");
        }
    }
}
