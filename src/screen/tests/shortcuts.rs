//! The scan's shortcuts: a body without a backslash is confirmed as the
//! walk reaches each value (else after it, in the decoded copy), one-letter
//! escapes are decoded without `escape`, card numbers are only tried where
//! 13 digits fit (runs that cannot start a card or follow an IBAN's
//! country code are dropped a block at a time), the anchors' literals are
//! ordered for Teddy, strings are read 16 bytes at a time, and a pointer's
//! steps are rendered once per depth.

use super::super::detectors::{anchor_forms, How, BUILTINS};
use super::super::digits::{card_or_iban_runs, digit_runs};
use super::super::literals::ORDER;
use super::{all, names, AWS};

/// (detector, pointer, count) of each finding.
fn found(body: &str) -> Vec<(String, String, u32)> {
    let s = all();
    let findings = s.scan(body.as_bytes()).unwrap();
    findings
        .into_iter()
        .map(|f| (f.detector.to_string(), f.pointer, f.count))
        .collect()
}

#[test]
fn one_invisible_code_point_in_a_short_string_is_found_raw_or_escaped() {
    let cases = [
        ("\u{200B}", r"\u200b", "zero_width"),
        ("\u{FEFF}", r"\ufeff", "zero_width"),
        ("\u{202E}", r"\u202E", "bidi_control"),
        ("\u{E0041}", r"\udb40\udc41", "unicode_tags"),
        ("a\u{2066}", r"a\u2066", "bidi_control"),
    ];
    for (raw, escaped, want) in cases {
        let expect = vec![(want.to_string(), "/k".to_string(), 1)];
        // No backslash anywhere: confirmed during the walk.
        assert_eq!(found(&format!(r#"{{"k":"{raw}","n":[1,"ok"]}}"#)), expect);
        // The code point escaped, or raw with an escape elsewhere: the
        // decoded copy.
        assert_eq!(
            found(&format!(r#"{{"k":"{escaped}","n":[1,"ok"]}}"#)),
            expect
        );
        assert_eq!(found(&format!(r#"{{"k":"{raw}","n":[1,"o\nk"]}}"#)), expect);
    }
    // An ESC is a control character: only ever escaped in JSON.
    let expect = vec![("ansi_escape".to_string(), "/k".to_string(), 1)];
    assert_eq!(found(r#"{"k":"\u001b[0m"}"#), expect);
}

#[test]
fn a_key_split_by_an_escape_reads_as_its_value() {
    let plain = found("{\"key\":\"pass\u{200B}word\",\"id\":\"x\"}");
    let escaped = found(r#"{"k\u0065y":"pass\u200bword","i\u0064":"x"}"#);
    assert_eq!(plain, escaped);
    assert_eq!(plain, [("zero_width".to_string(), "/key".to_string(), 1)]);
    // A message's `id` spelled with an escape is still never rewritten.
    let s = all();
    let body = format!(r#"{{"jsonrpc":"2.0","i\u0064":"{AWS}","result":"{AWS}"}}"#);
    let mut out = Vec::new();
    s.redact(body.as_bytes(), super::Mask::ALL, &mut out)
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"jsonrpc":"2.0","i\u0064":"{AWS}","result":"[REDACTED:aws_key]"}}"#)
    );
}

#[test]
fn a_body_with_and_without_escapes_scans_alike() {
    // Many short values, numbers and nested containers (as structured
    // results are), then the same with one escape at the very end.
    let mut records = Vec::new();
    for i in 0..40 {
        records.push(format!(
            r#"{{"n":{i},"t":"item {i}","u":"https://example.com/{i}","m":"{}","k":"{}","z":"a{}b"}}"#,
            if i % 7 == 0 { "ops@example.com" } else { "none" },
            if i % 9 == 0 { AWS } else { "-" },
            '\u{200C}',
        ));
    }
    let plain = format!(r#"{{"r":[{}],"e":"x"}}"#, records.join(","));
    let escaped = format!(r#"{{"r":[{}],"e":"\n"}}"#, records.join(","));
    let (a, b) = (found(&plain), found(&escaped));
    assert_eq!(a, b);
    let count = |name: &str| a.iter().filter(|f| f.0 == name).count();
    assert_eq!(
        (count("email"), count("aws_key"), count("zero_width")),
        (6, 5, 40)
    );
}

#[test]
fn card_numbers_are_found_at_their_widest_and_across_blocks() {
    let s = all();
    // Thirteen digits spread over 22 bytes, the most a card spans.
    let widest = "4111 1 0 0 0 0 0 0 0 0";
    assert_eq!(widest.len(), 22);
    assert_eq!(names(&s, widest), ["card_number"]);
    // Digit-dense text around it, at every offset of a 64-byte block.
    for pad in 0..70 {
        let text = format!(
            "{} 4111 1111 1111 1111 ok",
            "12 ".repeat(pad).get(..pad).unwrap_or("")
        );
        assert_eq!(names(&s, &text), ["card_number"], "{pad}");
    }
}

#[test]
fn private_keys_are_found_from_their_begin_line_only() {
    let s = all();
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg==\n-----END PRIVATE KEY-----";
    assert_eq!(names(&s, pem), ["private_key"]);
    assert_eq!(names(&s, &format!("--{pem}")), ["private_key"]);
    assert!(names(&s, "BEGIN PRIVATE KEY-----\nMIIE").is_empty());
    assert!(names(&s, "| ---- | -----BEGIN-- |").is_empty());
}

#[test]
fn every_built_in_literal_has_its_place_in_teddys_order() {
    for b in BUILTINS {
        if let How::Anchored { anchors, case, .. } = b.how {
            for (form, _) in anchors.iter().flat_map(|a| anchor_forms(a, case)) {
                assert!(ORDER.contains(&form.as_str()), "{form} is not in ORDER");
            }
        }
    }
}

#[test]
fn pointers_after_closed_containers_and_in_arrays() {
    let cases = [
        (r#"{"a":[{"x":1},{"y":["","K"]}]}"#, "/a/1/y/1"),
        (r#"{"a":{"b":{}},"c":"K"}"#, "/c"),
        (r#"{"a":[[1],[],"K"]}"#, "/a/2"),
        (r#"[{"a":[1]},"K"]"#, "/1"),
        (r#"{"a":[{"b":[{}]}],"c":[[],{"d":"K"}]}"#, "/c/1/d"),
    ];
    for (body, want) in cases {
        let body = body.replace('K', AWS);
        let f = found(&body);
        assert_eq!(f, [("aws_key".to_string(), want.to_string(), 1)], "{body}");
        // The same through the decoded copy.
        let escaped = body.replacen("\"a\"", r#""\u0061""#, 1);
        assert_eq!(found(&escaped), f, "{escaped}");
    }
}

#[test]
fn digit_runs_match_a_naive_reading() {
    let texts = [
        "",
        "1",
        "12",
        "a12b345c6",
        "1234567890123456789",
        "x 4111 1111 1111 1111",
        "12345678",
        "1234567",
        "a1b2c3d4e5f6g7h8",
        "é12é",
        "0123456789012345678901234567",
    ];
    // Whole 64-byte blocks too, runs across their edges included.
    let long: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "{}{}",
                "ab1"[i % 3..].chars().next().unwrap(),
                i * 7919 % 1000
            )
        })
        .collect();
    let long = long.concat();
    let texts: Vec<&str> = texts
        .into_iter()
        .chain([long.as_str(), &long[1..], &long[5..]])
        .collect();
    for t in texts {
        let t = t.as_bytes();
        let mut got = Vec::new();
        digit_runs(t, 0, |p, window| got.push((p, window)));
        let mut want = Vec::new();
        for i in 0..t.len() {
            let run_start = t[i].is_ascii_digit() && (i == 0 || !t[i - 1].is_ascii_digit());
            if run_start && t.get(i + 1).is_some_and(u8::is_ascii_digit) {
                let window = (t[i..].iter().take(64).enumerate())
                    .fold(0u64, |m, (k, c)| m | (u64::from(c.is_ascii_digit()) << k));
                want.push((i, window));
            }
        }
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(t));
    }
    // Only where 64-byte blocks, two by two, hold enough digits.
    let sparse = format!("{}12 34 56{}", "a".repeat(100), "b".repeat(100));
    let mut got = Vec::new();
    digit_runs(sparse.as_bytes(), 10, |p, _| got.push(p));
    assert!(got.is_empty());
    let dense = format!("{}4111 1111 1111 1111{}", "a".repeat(60), "b".repeat(100));
    digit_runs(dense.as_bytes(), 10, |p, _| got.push(p));
    assert_eq!(got, [60, 65, 70, 75]);
}

#[test]
fn card_and_iban_runs_are_the_digit_runs_that_may_start_one() {
    // Runs of every length, after capitals, spaces, dashes and other
    // bytes, across 64-byte edges.
    let pieces = [
        "4111", "1", "22", "333", " ", "-", "GB", "DE8", "x", "é", "55555", "Q",
    ];
    let texts: Vec<Vec<u8>> = (0..40)
        .map(|seed: usize| {
            (0..120)
                .map(|i| pieces[(i * 7 + seed * 13 + i * i * seed) % pieces.len()])
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    for t in &texts {
        for (card, iban) in [(true, false), (false, true), (true, true)] {
            let mut want = Vec::new();
            digit_runs(t, 0, |p, window| {
                let c = card && window & 0xf == 0xf;
                let i = iban
                    && p >= 2
                    && t[p - 1].is_ascii_uppercase()
                    && t[p - 2].is_ascii_uppercase();
                if c || i {
                    want.push((p, window));
                }
            });
            let mut got = Vec::new();
            card_or_iban_runs(t, card, iban, |p, window| got.push((p, window)));
            assert_eq!(got, want, "{card} {iban} {:?}", String::from_utf8_lossy(t));
        }
    }
    // A card and an IBAN straddling a block's edge.
    for pad in 55..66 {
        let body = format!(
            r#"{{"a":"{} 4111 1111 1111 1111","b":"{} GB82WEST12345698765432"}}"#,
            "x".repeat(pad),
            "y".repeat(pad)
        );
        let f = found(&body);
        let want = [("card_number", "/a"), ("iban", "/b")];
        let want: Vec<_> = (want.iter())
            .map(|(d, p)| (d.to_string(), p.to_string(), 1))
            .collect();
        assert_eq!(f, want, "{body}");
    }
}

#[test]
fn strings_read_a_block_at_a_time_end_where_they_end() {
    for n in 0..140 {
        let pad = "x".repeat(n);
        // A match right after an escape, a quote or a multi-byte code
        // point at any offset in a 64-byte step or a 16-byte one.
        for sep in [
            r"\n",
            r#"\""#,
            r"\\",
            r"\u00e9",
            "é",
            "😀",
            r"\ud83d\ude00",
            " ",
        ] {
            let body = format!(r#"{{"{pad}":"{pad}{sep}{AWS}","b":"{pad}"}}"#);
            let want = [("aws_key".to_string(), format!("/{pad}"), 1)];
            assert_eq!(found(&body), want, "{body}");
        }
        // A raw control character is refused where it is.
        for c in ['\u{1}', '\n', '\u{1f}'] {
            let body = format!(r#"{{"a":"{pad}{c}"}}"#);
            let s = all();
            assert_eq!(
                s.scan(body.as_bytes()),
                Err(super::super::JsonError::Syntax(6 + n)),
                "{body:?}"
            );
        }
        // A string that ends in the body's last bytes.
        let body = format!(r#""{pad} {AWS}""#);
        assert_eq!(found(&body), [("aws_key".to_string(), String::new(), 1)]);
    }
}

#[test]
fn pointer_steps_are_rendered_once_per_depth_and_stay_right() {
    let e = "e@example.com";
    let body = format!(
        r#"[{{"a":{{"b":"{e}"}}}},{{"c":{{"b":"{e}"}}}},{{"a":{{"d/~":"{e}"}}}},{{"{AWS}":["{e}","{e}"]}},{{"a\u0062":{{"b":"{e}"}}}},{{"a":{{"b":"{e}"}}}}]"#
    );
    let got: Vec<String> = found(&body).into_iter().map(|f| f.1).collect();
    let want = [
        "/0/a/b",
        "/1/c/b",
        "/2/a/d~1~0",
        "/3/[REDACTED:aws_key]/0",
        "/3/[REDACTED:aws_key]/1",
        "/4/ab/b",
        "/5/a/b",
    ];
    assert_eq!(got, want);
}

#[test]
fn keys_are_searched_where_the_body_has_candidates_in_them() {
    let e = "e@example.com";
    for (key, shown) in [
        ("a@example.com", "[REDACTED:email]"),
        ("x\u{200b}y", "x[REDACTED:zero_width]y"),
        ("4111 1111 1111 1111", "[REDACTED:card_number]"),
        ("GB82WEST12345698765432", "[REDACTED:iban]"),
        ("plain 2024-05-17T12:34:56Z", "plain 2024-05-17T12:34:56Z"),
    ] {
        let body = format!(r#"{{"k":[{{"{key}":"{e}"}}]}}"#);
        let got: Vec<String> = found(&body).into_iter().map(|f| f.1).collect();
        assert_eq!(got, [format!("/k/0/{shown}")], "{body}");
    }
}

#[test]
fn dates_are_not_card_candidates_and_cards_still_are() {
    let s = all();
    let runs = |t: &str| {
        let c = s.matcher.candidates(t.as_bytes());
        c.all().is_empty()
    };
    assert!(runs(r#""2024-05-17T12:34:56Z","2024-05-17 12:34:56""#));
    for t in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "4222 2222 2222 2",
        "x 4111 1111 1111 1111 y",
    ] {
        for pad in 0..20 {
            let text = format!("{}{t}", " ".repeat(pad));
            assert!(!runs(&text), "{text:?}");
            assert_eq!(found(&format!(r#"{{"a":"{text}"}}"#)).len(), 1, "{text:?}");
        }
    }
}
