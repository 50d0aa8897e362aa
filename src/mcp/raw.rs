//! Raw JSON: where a value the parser has already accepted lies in the
//! bytes as they were sent (for hashing them without writing them again).

/// The end (exclusive) of the object or array that starts at
/// `body[start]`; `None` if the bytes are not one.
pub(crate) fn container_end(body: &[u8], start: usize) -> Option<usize> {
    if !matches!(body.get(start), Some(b'{' | b'[')) {
        return None;
    }
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = body.get(i) {
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => {
                i = string_end(body, i + 1)?;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index after the closing quote of the string whose content starts
/// at `i`.
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', body.get(i..)?)?;
        if body[at] == b'"' {
            return Some(at + 1);
        }
        // An escape: the byte after the backslash never ends the string.
        i = at + 2;
    }
}

/// The start of the object whose first key's text begins at `key` (the
/// byte after its opening quote): `{`, blanks, `"`.
pub(crate) fn object_start(body: &[u8], key: usize) -> Option<usize> {
    let quote = key.checked_sub(1)?;
    if body.get(quote) != Some(&b'"') {
        return None;
    }
    let mut i = quote;
    loop {
        i = i.checked_sub(1)?;
        match body[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' => return Some(i),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_end_where_they_close() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"a":1} tail"#, Some(r#"{"a":1}"#)),
            (
                r#"{"a":"}\"]{","b":[1,{"c":"\\"}]}]"#,
                Some(r#"{"a":"}\"]{","b":[1,{"c":"\\"}]}"#),
            ),
            (r#"[ [], {} ]x"#, Some(r#"[ [], {} ]"#)),
            (r#"{"a":1"#, None),
            (r#"{"a":"\"#, None),
            ("1", None),
        ];
        for (text, want) in cases {
            let got = container_end(text.as_bytes(), 0).map(|end| &text[..end]);
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn objects_start_before_their_first_key() {
        let text = br#"{"p":{ 	"k":1}}"#;
        assert_eq!(object_start(text, 9), Some(5));
        assert_eq!(object_start(text, 2), Some(0));
        assert_eq!(object_start(text, 3), None);
        assert_eq!(object_start(text, 0), None);
    }
}
