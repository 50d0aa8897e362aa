//! The common body read without simd-json: one JSON-RPC message whose
//! `params.arguments` no one reads, held as it was sent. One pass over the
//! bytes, nothing copied, no tape.
//!
//! It never refuses and never guesses: whatever it is not sure of is left
//! to the full decoder (`None`), which then accepts or refuses it. Left
//! over are a batch; an escape in a key or in an inspected string; an id
//! that is not a short integer; a number with an exponent or more than 18
//! characters; a `\u` escape of a surrogate; nesting deeper than
//! `MAX_DEPTH`; `params.notifications`; anything invalid or of the wrong
//! type. So what it accepts, the full decoder accepts too, as the same
//! message (`tests`, and the `jsonrpc` fuzz target).

use super::{Id, Kind, Message, Source, META_PROTOCOL_VERSION};
use crate::mcp::method::Method;
use crate::sys::json_string_stop;

/// Deepest nesting read here (the message object is depth 1).
const MAX_DEPTH: usize = 32;
/// Longest number token read here.
const MAX_NUMBER: usize = 18;

/// The one message of `body`, or `None` for the full decoder to read.
pub(super) fn message(body: &[u8]) -> Option<Message<'_>> {
    let text = simdutf8::basic::from_utf8(body).ok()?;
    let mut r = Reader {
        b: body,
        text,
        i: 0,
    };
    let msg = r.envelope()?;
    r.blank();
    (r.i == body.len()).then_some(Message {
        source: Source {
            body,
            copy: body.as_ptr() as usize,
        },
        ..msg
    })
}

/// A cursor over a body known to be UTF-8 (`b` is `text`'s bytes).
struct Reader<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn blank(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Skip blanks, then take `c`.
    fn expect(&mut self, c: u8) -> Option<()> {
        self.blank();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The members of an object whose `{` is next: `member` reads each
    /// value (the cursor before it) given its key.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.items(b'}', |r| {
            let key = r.plain_string()?;
            r.expect(b':')?;
            r.blank();
            member(r, key)
        })
    }

    /// The comma-separated items of a container whose opening bracket was
    /// just taken, up to its `close`: `item` reads each (blanks skipped).
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.blank();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            self.blank();
            item(self)?;
            self.blank();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The JSON-RPC message object, as `super::message` reads it.
    fn envelope(&mut self) -> Option<Message<'a>> {
        let mut seen = [false; 6];
        let (mut jsonrpc, mut id, mut method) = (None, None, None);
        let mut answer = false;
        let mut msg = Message::default();
        self.object(|r, key| {
            let slot = ["jsonrpc", "id", "method", "params", "result", "error"]
                .iter()
                .position(|k| *k == key);
            if let Some(k) = slot {
                if std::mem::replace(&mut seen[k], true) {
                    return None;
                }
            }
            match slot {
                Some(0) => jsonrpc = Some(r.plain_string()?),
                Some(1) => id = Some(r.id()?),
                Some(2) => method = Some(r.plain_string()?),
                Some(3) => r.params(&mut msg)?,
                Some(_) => {
                    answer = true;
                    r.value(2)?;
                }
                None => r.value(2)?,
            }
            Some(())
        })?;
        if jsonrpc != Some("2.0") {
            return None;
        }
        msg.kind = Some(match (method, id, answer) {
            (Some(_), Some(_), false) => Kind::Request,
            (Some(_), None, false) => Kind::Notification,
            (None, Some(_), true) => Kind::Response,
            _ => return None,
        });
        msg.id = id;
        msg.method = method.map(Method::parse);
        Some(msg)
    }

    fn params(&mut self, msg: &mut Message<'a>) -> Option<()> {
        let keys = ["name", "uri", "taskId", "_meta", "arguments", "ref"];
        let mut seen = [false; 6];
        self.object(|r, key| {
            if key == "notifications" {
                return None;
            }
            let Some(k) = keys.iter().position(|k| *k == key) else {
                return r.value(3);
            };
            if std::mem::replace(&mut seen[k], true) {
                return None;
            }
            match k {
                0 => msg.name = Some(r.plain_string()?),
                1 => msg.uri = Some(r.plain_string()?),
                2 => msg.task_id = Some(r.plain_string()?),
                3 => r.meta(msg)?,
                4 => r.value(3)?,
                _ => r.reference(msg)?,
            }
            Some(())
        })
    }

    fn meta(&mut self, msg: &mut Message<'a>) -> Option<()> {
        let mut seen = false;
        self.object(|r, key| {
            if key != META_PROTOCOL_VERSION {
                return r.value(4);
            }
            if std::mem::replace(&mut seen, true) {
                return None;
            }
            msg.protocol_version = Some(r.plain_string()?);
            Some(())
        })
    }

    /// `params.ref` of `completion/complete`.
    fn reference(&mut self, msg: &mut Message<'a>) -> Option<()> {
        let mut found: [Option<&'a str>; 3] = [None; 3];
        self.object(|r, key| {
            let Some(k) = ["type", "name", "uri"].iter().position(|k| *k == key) else {
                return r.value(4);
            };
            if found[k].replace(r.plain_string()?).is_some() {
                return None;
            }
            Some(())
        })?;
        match found[0]? {
            "ref/prompt" => msg.ref_name = found[1],
            "ref/resource" => msg.ref_uri = found[2],
            _ => return None,
        }
        Some(())
    }

    /// An id: a string without escapes, or a short integer.
    fn id(&mut self) -> Option<Id<'a>> {
        if self.peek()? == b'"' {
            return self.plain_string().map(Id::Str);
        }
        let token = self.number()?;
        // `-0` and fractions are the full decoder's to judge.
        if token.starts_with(b"-0") || token.contains(&b'.') {
            return None;
        }
        std::str::from_utf8(token).ok()?.parse().ok().map(Id::Int)
    }

    /// Any value, checked and skipped; `depth` is its nesting.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(|r, _| r.value(depth + 1)),
            b'[' => self.array(depth),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        self.items(b']', |r| r.value(depth + 1))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A number: JSON's grammar without an exponent, at most `MAX_NUMBER`
    /// characters.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let first = self.i;
            self.digits();
            if self.i == first {
                return None;
            }
        }
        let token = &self.b[start..self.i];
        match self.peek() {
            Some(b'e' | b'E') => None,
            _ => (token.len() <= MAX_NUMBER).then_some(token),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    /// A string with no escape: its text.
    fn plain_string(&mut self) -> Option<&'a str> {
        match self.string()? {
            (text, false) => Some(text),
            (_, true) => None,
        }
    }

    /// A string, its escapes checked: its text as sent, and whether it
    /// holds an escape. The cursor is on its opening quote.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            i += json_string_stop(self.b.get(i..)?)?;
            match self.b[i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += escape(&self.b[i + 1..])? + 1;
                }
                _ => return None, // a raw control character
            }
        }
        self.i = i + 1;
        // Both ends are ASCII quotes, so on character boundaries.
        Some((self.text.get(start..i)?, escaped))
    }
}

/// The length of the escape after a backslash; `None` if it is not one
/// JSON allows, or stands for half a surrogate pair.
fn escape(s: &[u8]) -> Option<usize> {
    match *s.first()? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(1),
        b'u' => {
            let hex = std::str::from_utf8(s.get(1..5)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            let unit = u16::from_str_radix(hex, 16).ok()?;
            (!(0xd800..=0xdfff).contains(&unit)).then_some(5)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, decode_without_arguments, DecodeError, Scratch, Shape};
    use super::*;

    type View = (
        Option<Kind>,
        Option<String>,
        Option<String>,
        [Option<String>; 6],
    );

    fn view(m: &Message<'_>) -> View {
        let own = |s: Option<&str>| s.map(str::to_owned);
        (
            m.kind,
            m.id.map(|id| format!("{id:?}")),
            m.method.map(|m| m.as_str().to_owned()),
            [
                own(m.name),
                own(m.uri),
                own(m.task_id),
                own(m.protocol_version),
                own(m.ref_name),
                own(m.ref_uri),
            ],
        )
    }

    /// Both decoders on `body`: they must agree; says whether the quick
    /// reader took it.
    fn both(body: &[u8]) -> bool {
        type Got = Result<(Shape, Vec<View>), DecodeError>;
        let run = |lean: bool| -> Got {
            let mut seen = Vec::new();
            let mut scratch = Scratch::default();
            let shape = if lean {
                decode_without_arguments(&mut scratch, body, |m| {
                    assert!(m.arguments.is_none());
                    seen.push(view(m))
                })
            } else {
                decode(&mut scratch, body, |m| seen.push(view(m)))
            }?;
            Ok((shape, seen))
        };
        let text = String::from_utf8_lossy(body);
        assert_eq!(run(true), run(false), "{text}");
        let quick = message(body);
        if let Some(m) = &quick {
            let (_, full) = run(false).unwrap_or_else(|e| panic!("{e:?}: {text}"));
            assert_eq!(full, [view(m)], "{text}");
        }
        quick.is_some()
    }

    #[test]
    fn common_messages_are_read_here_as_the_full_decoder_reads_them() {
        let padding = "x".repeat(960);
        let bodies = [
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search","arguments":{{"query":"{padding}"}}}}}}"#),
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true},"sampling":{}},"clientInfo":{"name":"c","version":"1.0.0"}}}"#.into(),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(),
            r#" { "jsonrpc" : "2.0" , "id" : "a-1" , "method" : "tools/list" , "params" : { "cursor" : "x" } }
"#.into(),
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#.into(),
            r#"{"jsonrpc":"2.0","id":-8,"error":{"code":-32601,"message":"no","data":null}}"#.into(),
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a b/ü.txt"}}"#.into(),
            r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"review","arguments":{"n":"1"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"review"},"argument":{"name":"a","value":"b"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":5,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":"t","method":"tasks/get","params":{"taskId":"t-1"}}"#.into(),
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":7,"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":123456789012345678,"method":"tools/call","params":{"name":"n","arguments":{"a":[0,-1,1.5,-0.25,true,false,null,[],{},[[{"b":[]}]]],"s":"q\"b\\n\/\b\f\n\r\t\u00e9\u0000 😀"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}},"extra":{"jsonrpc":"1.0"}}"#.into(),
        ];
        for body in &bodies {
            assert!(both(body.as_bytes()), "left to the full decoder: {body}");
        }
    }

    #[test]
    fn whatever_is_unsure_is_left_to_the_full_decoder() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}1{}}}}}"#,
            r#"{"a":"#.repeat(MAX_DEPTH),
            "}".repeat(MAX_DEPTH)
        );
        let mut bodies: Vec<Vec<u8>> = [
            "",
            "{",
            "{}",
            "[]",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}{}"#,
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"met\u0068od":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\nb"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"e":1e3}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":1234567890123456789}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":1e999999}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"s":"\ud83d\ude00"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"s":"\x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":01}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":1.}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"n":-}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1,]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"t":tru}}}"#,
            r#"{"jsonrpc":"2.0","id":-0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"x","result":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":1,"result":2}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["x"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"a","io.modelcontextprotocol/protocolVersion":"b"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/other","name":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"name":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["file:///a"]}}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\tb\"}}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        bodies.push(deep.into_bytes());
        bodies.push(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffing\"}".to_vec());
        for body in &bodies {
            assert!(!both(body), "read here: {}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn string_ends_are_found_at_every_offset() {
        for len in 0..150 {
            for special in ["\\\"", "\\\\", "\\u00e9", "é"] {
                for at in 0..=len {
                    let mut s = "a".repeat(len);
                    s.insert_str(at, special);
                    let body = format!(
                        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"s":"{s}"}}}}}}"#
                    );
                    assert!(both(body.as_bytes()), "{body}");
                    let raw = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{s}"}}"#);
                    assert_eq!(both(raw.as_bytes()), special == "é", "{raw}");
                }
            }
        }
    }
}
