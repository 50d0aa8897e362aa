//! Rewriting the first event of a legacy (2024-11-05) SSE stream: `event:
//! endpoint` whose data is the POST URL on the upstream. Everything after the
//! first event passes through byte-exact; nothing is held back longer than the
//! first event (or `MAX_FIRST_EVENT` bytes). The URL mapping itself is the
//! caller's (the route's: `Route::public_url`).

/// Maps an upstream URL (a path, or an absolute URL on the upstream) to the
/// public one; `None` leaves the event as it is.
pub(crate) type MapUrl<'a> = &'a dyn Fn(&str) -> Option<String>;

const MAX_FIRST_EVENT: usize = 8 * 1024;

#[derive(Default)]
pub(crate) struct EndpointRewriter {
    pending: Vec<u8>,
    done: bool,
}

impl EndpointRewriter {
    /// Feed body bytes; append what may be sent now to `out`.
    pub(crate) fn feed(&mut self, map: MapUrl<'_>, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            out.extend_from_slice(data);
            return;
        }
        self.pending.extend_from_slice(data);
        let Some(end) = event_end(&self.pending) else {
            if self.pending.len() > MAX_FIRST_EVENT {
                self.done = true;
                out.append(&mut self.pending);
            }
            return;
        };
        self.done = true;
        let (event, rest) = self.pending.split_at(end);
        match rewrite_event(map, event) {
            Some(new) => out.extend_from_slice(&new),
            None => out.extend_from_slice(event),
        }
        out.extend_from_slice(rest);
        self.pending = Vec::new();
    }

    /// Whatever is still held at end of stream.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        out.append(&mut self.pending);
    }
}

/// End of the first event (index just past its blank line).
pub(crate) fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        // A line ends at CRLF, LF or CR; an empty line ends the event.
        let line_end = buf[i..].iter().position(|&b| b == b'\n' || b == b'\r')? + i;
        let next = if buf[line_end] == b'\r' && buf.get(line_end + 1) == Some(&b'\n') {
            line_end + 2
        } else if buf[line_end] == b'\r' && line_end + 1 == buf.len() {
            return None; // CR at the end: wait to see whether LF follows
        } else {
            line_end + 1
        };
        if line_end == i {
            return Some(next);
        }
        i = next;
    }
    None
}

fn rewrite_event(map: MapUrl<'_>, event: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let is_endpoint = text.lines().any(|l| field(l, "event") == Some("endpoint"));
    if !is_endpoint {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 32);
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        match field(bare, "data") {
            Some(url) => {
                let rewritten = map(url)?;
                out.push_str("data: ");
                out.push_str(&rewritten);
                out.push_str(&line[bare.len()..]);
            }
            None => out.push_str(line),
        }
    }
    Some(out.into_bytes())
}

/// `field: value` → value (one optional space after the colon, as SSE says).
pub(crate) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let v = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(v.strip_prefix(' ').unwrap_or(v))
}

/// One complete event split into its `data` (lines joined with `\n`) and
/// every other line, kept in order; `None` when it is not UTF-8. Lines end
/// at CRLF, CR or LF, as SSE clients read them; a leading byte order mark
/// is dropped (clients strip it at the start of a stream).
pub(crate) fn split_event(event: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(event).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (mut kept, mut data) = (String::new(), String::new());
    for bare in text.split(['\r', '\n']) {
        if bare.is_empty() {
            continue;
        }
        match field(bare, "data") {
            Some(d) => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d);
            }
            None => {
                kept.push_str(bare);
                kept.push('\n');
            }
        }
    }
    Some((kept, data))
}

/// An event of the `kept` lines and `message` as data, a `data:` line per
/// line of it (a pretty-printed JSON message has several).
pub(crate) fn join_event(kept: String, message: &[u8]) -> Vec<u8> {
    let mut out = kept.into_bytes();
    for line in message.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/x` and `http://up/x` on the upstream are `/legacy/x` publicly.
    fn map(url: &str) -> Option<String> {
        let path = url.strip_prefix("http://up").unwrap_or(url);
        path.starts_with('/').then(|| format!("/legacy{path}"))
    }

    fn run(parts: &[&[u8]]) -> Vec<u8> {
        let mut rw = EndpointRewriter::default();
        let mut out = Vec::new();
        for p in parts {
            rw.feed(&map, p, &mut out);
        }
        rw.finish(&mut out);
        out
    }

    #[test]
    fn rewrites_the_endpoint_event_in_any_split() {
        let input: &[u8] = b"event: endpoint\r\ndata: /messages/?session_id=abc\r\n\r\n: ping\r\n\r\nevent: message\r\ndata: {}\r\n\r\n";
        let want: &[u8] = b"event: endpoint\r\ndata: /legacy/messages/?session_id=abc\r\n\r\n: ping\r\n\r\nevent: message\r\ndata: {}\r\n\r\n";
        assert_eq!(run(&[input]), want);
        for split in 1..input.len() {
            assert_eq!(
                run(&[&input[..split], &input[split..]]),
                want,
                "split {split}"
            );
        }
    }

    #[test]
    fn rewrites_only_the_endpoint_event_and_what_maps() {
        assert_eq!(
            run(&[b"event:endpoint\ndata:http://up/messages?s=1\n\n"]),
            b"event:endpoint\ndata: /legacy/messages?s=1\n\n"
        );
        let other: &[u8] = b"event: message\ndata: /messages\n\n";
        assert_eq!(run(&[other]), other);
        let foreign: &[u8] = b"event: endpoint\ndata: elsewhere/messages\n\n";
        assert_eq!(run(&[foreign]), foreign);
    }
}
