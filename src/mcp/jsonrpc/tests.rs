//! Unit tests of the JSON-RPC decoder and `write_json_string`.

use super::*;

#[test]
fn json_strings_round_trip_whatever_they_hold() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "plain".into(),
        "exactly8".into(),
        "sixteen chars ok".into(),
        "quote \" and backslash \\ mid-chunk".into(),
        "\u{0}\u{1f}\n\t\r at the start".into(),
        "ünïcødé 😀 and \"quotes\" \u{7f} \u{2028}".into(),
        "x".repeat(861),
    ];
    // Every special byte at every offset of a 20-byte string.
    for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', 'é'] {
        for at in 0..20 {
            let mut s: String = "abcdefghijklmnopqrst".into();
            s.insert(at, special);
            cases.push(s);
        }
    }
    for s in cases {
        let mut out = Vec::new();
        super::write_json_string(&mut out, &s);
        let back: String = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        assert_eq!(back, s);
    }
}

/// `decode`'s answer, checked against `decode_without_arguments`'s.
fn run(body: &str) -> Result<(Shape, Vec<String>), DecodeError> {
    let mut scratch = Scratch::default();
    let mut seen = Vec::new();
    let shape = decode(&mut scratch, body.as_bytes(), |m| {
        seen.push(format!("{m:?}"))
    });
    let lean = decode_without_arguments(&mut scratch, body.as_bytes(), |_| {});
    assert_eq!(shape, lean, "{body}");
    Ok((shape?, seen))
}

fn one(body: &str) -> Message<'static> {
    let mut scratch = Scratch::default();
    let mut out = None;
    decode(&mut scratch, body.as_bytes(), |m| {
        out = Some(Message {
            kind: m.kind,
            id: m.id.map(|id| match id {
                Id::Str(s) => Id::Str(Box::leak(s.to_string().into_boxed_str())),
                Id::Int(n) => Id::Int(n),
            }),
            method: m
                .method
                .map(|s| Method::parse(Box::leak(s.as_str().to_string().into_boxed_str()))),
            name: m.name.map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            uri: m.uri.map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            task_id: m
                .task_id
                .map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            protocol_version: m
                .protocol_version
                .map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            arguments: m.arguments.map(|_| &[][..]),
            ref_name: m
                .ref_name
                .map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            ref_uri: m
                .ref_uri
                .map(|s| &*Box::leak(s.to_string().into_boxed_str())),
            subscriptions: None,
            source: Source::default(),
        })
    })
    .unwrap();
    out.unwrap()
}

/// The arguments' bytes as sent are found in the body (the audit hashes
/// them): whitespace, escapes and nested brackets in strings included.
#[test]
fn arguments_are_found_as_sent() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"repo":"x/y","n":3}}}"#,
            Some(r#"{"repo":"x/y","n":3}"#),
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"arguments\": {\n  \"\\u0071\\\"\" : \"}]{[\\\\\", \"l\":[{}, \"\\\"\"] } ,\"name\":\"a\"}}",
            Some("{\n  \"\\u0071\\\"\" : \"}]{[\\\\\", \"l\":[{}, \"\\\"\"] }"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{}}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#,
            None,
        ),
    ];
    for (body, want) in cases {
        let mut scratch = Scratch::default();
        let mut got = Vec::new();
        decode(&mut scratch, body.as_bytes(), |m| {
            got.push(
                m.arguments_raw()
                    .map(|r| String::from_utf8(r.to_vec()).unwrap()),
            );
        })
        .unwrap();
        assert_eq!(got, vec![want.map(String::from)], "{body}");
    }
    // Each message of a batch finds its own.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"k":1}}}, {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b","arguments":{ "k" : [2] }}}]"#;
    let mut scratch = Scratch::default();
    let mut got = Vec::new();
    decode(&mut scratch, batch.as_bytes(), |m| {
        got.push(String::from_utf8(m.arguments_raw().unwrap().to_vec()).unwrap());
    })
    .unwrap();
    assert_eq!(got, [r#"{"k":1}"#, r#"{ "k" : [2] }"#]);
}

#[test]
fn extracts_policy_keys() {
    let m = one(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
    );
    assert_eq!(m.kind, Some(Kind::Request));
    assert_eq!(m.id, Some(Id::Int(7)));
    assert_eq!(
        (m.method, m.name, m.arguments.is_some()),
        (Some(Method::ToolsCall), Some("search"), true)
    );
    assert_eq!(m.protocol_version, Some("2026-07-28"));
    let m = one(
        r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#,
    );
    assert_eq!(
        (m.id, m.uri),
        (Some(Id::Str("a")), Some("file:///etc/passwd"))
    );
    let m = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(m.kind, Some(Kind::Notification));
    let m = one(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#);
    assert_eq!(m.kind, Some(Kind::Response));
    let m = one(r#"{"jsonrpc":"2.0","id":"t","method":"tasks/get","params":{"taskId":"t-1"}}"#);
    assert_eq!(m.task_id, Some("t-1"));
}

#[test]
fn decodes_every_batch_element() {
    let (shape, seen) = run(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repo"}}]"#).unwrap();
    assert_eq!(
        shape,
        Shape {
            batch: true,
            messages: 2
        }
    );
    assert!(seen[1].contains("delete_repo"), "{seen:?}");
}

#[test]
fn refuses_what_could_be_read_two_ways() {
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    let deep_args = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}1{}}}}}"#,
        r#"{"a":"#.repeat(MAX_DEPTH),
        "}".repeat(MAX_DEPTH)
    );
    let cases: Vec<(&str, String, DecodeError)> = vec![
        ("not json", "{".into(), DecodeError::Parse),
        ("trailing garbage", r#"{"jsonrpc":"2.0","method":"ping"} x"#.into(), DecodeError::Parse),
        ("invalid utf-8 is checked below", "".into(), DecodeError::Parse),
        ("too deep", deep, DecodeError::TooDeep),
        ("too deep in arguments", deep_args, DecodeError::TooDeep),
        ("top-level string", r#""hello""#.into(), DecodeError::NotAnObject),
        ("top-level number", "1".into(), DecodeError::NotAnObject),
        ("empty batch", "[]".into(), DecodeError::EmptyBatch),
        ("batch of non-objects", "[1]".into(), DecodeError::NotAnObject),
        ("duplicate method", r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#.into(), DecodeError::DuplicateKey("method")),
        ("duplicate id", r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#.into(), DecodeError::DuplicateKey("id")),
        ("duplicate tool name", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#.into(), DecodeError::DuplicateKey("name")),
        ("duplicate uri", r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","uri":"b"}}"#.into(), DecodeError::DuplicateKey("uri")),
        ("duplicate _meta", r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{},"_meta":{}}}"#.into(), DecodeError::DuplicateKey("_meta")),
        ("wrong version", r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.into(), DecodeError::BadMember("jsonrpc")),
        ("float id", r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#.into(), DecodeError::BadMember("id")),
        ("null id", r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.into(), DecodeError::BadMember("id")),
        ("numeric method", r#"{"jsonrpc":"2.0","id":1,"method":5}"#.into(), DecodeError::BadMember("method")),
        ("no method no result", r#"{"jsonrpc":"2.0","id":1}"#.into(), DecodeError::BadMember("method")),
        ("array params", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["x"]}"#.into(), DecodeError::BadMember("params")),
        ("numeric tool name", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#.into(), DecodeError::BadMember("params.name")),
        ("one bad batch element", r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"x","method":"y"}]"#.into(), DecodeError::DuplicateKey("method")),
    ];
    for (what, body, want) in cases {
        if body.is_empty() {
            continue;
        }
        assert_eq!(run(&body).map(|r| r.0), Err(want), "{what}");
    }
    let mut scratch = Scratch::default();
    let invalid_utf8 = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffing\"}";
    assert_eq!(
        decode(&mut scratch, invalid_utf8, |_| {}),
        Err(DecodeError::Parse)
    );
    // Duplicates outside the inspected members are the server's business.
    assert!(run(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#).is_ok());
}

#[test]
fn the_original_body_is_untouched_and_scratch_is_reused() {
    let body =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\nb"}}"#.to_vec();
    let copy = body.clone();
    let mut scratch = Scratch::default();
    for _ in 0..3 {
        let mut name = String::new();
        decode(&mut scratch, &body, |m| name = m.name.unwrap().to_string()).unwrap();
        assert_eq!(name, "a\nb");
    }
    assert_eq!(body, copy);
}

#[test]
fn completion_refs_and_subscriptions_are_policy_keys() {
    let m = one(
        r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"review"},"argument":{"name":"a","value":"b"}}}"#,
    );
    assert_eq!((m.ref_name, m.ref_uri), (Some("review"), None));
    let m = one(
        r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}"}}}"#,
    );
    assert_eq!((m.ref_name, m.ref_uri), (None, Some("file:///{x}")));
    let mut scratch = Scratch::default();
    let mut uris = Vec::new();
    decode(
        &mut scratch,
        br#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///a","file:///etc/passwd"]}}}"#,
        |m| uris.extend(m.subscription_uris().map(str::to_string)),
    )
    .unwrap();
    assert_eq!(uris, ["file:///a", "file:///etc/passwd"]);
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/other","name":"x"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","name":"b"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["a",{"uri":"b"}]}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":"a"}}}"#,
    ] {
        assert!(
            decode(&mut scratch, bad.as_bytes(), |_| {}).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn lone_surrogates_and_huge_numbers() {
    let mut scratch = Scratch::default();
    let lone = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800x"}}"#;
    assert_eq!(
        decode(&mut scratch, lone, |_| {}),
        Err(DecodeError::Parse),
        "lone surrogate"
    );
    let big_id = br#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#;
    assert!(
        decode(&mut scratch, big_id, |_| {}).is_err(),
        "an id beyond i64 is refused"
    );
    let big_arg = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"n":1e999999}}}"#;
    assert!(
        decode(&mut scratch, big_arg, |_| {}).is_err(),
        "a number beyond f64 is refused"
    );
}
