//! Decoding MCP JSON-RPC bodies in full with simd-json: a per-core scratch
//! copy is parsed (simd-json rewrites its input; the original bytes are what
//! gets forwarded), every element of a batch is decoded, and each message's
//! policy keys are handed to a visitor. Anything the proxy and a server could
//! read differently is an error: invalid JSON or UTF-8, nesting beyond
//! `MAX_DEPTH`, duplicate keys in the members the proxy inspects, a
//! non-object message, an empty batch, members of the wrong type.
//!
//! On the request path for every body on an MCP route (`proxy::judge`),
//! which hands each message to the gate and the policy.

use crate::mcp::method::Method;
use simd_json::{Buffers, Node, StaticNode};

mod quick;

/// Deepest nesting of arrays and objects accepted in a body.
pub(crate) const MAX_DEPTH: usize = 64;

/// The meta key carrying the protocol version in modern-era messages.
pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Per-core scratch space: reused across requests, never shared.
#[derive(Default)]
pub struct Scratch {
    input: Vec<u8>,
    buffers: Option<Buffers>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id<'a> {
    Str(&'a str),
    Int(i64),
}

/// A JSON-RPC id kept past the body's decoding (to answer with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcId {
    Int(i64),
    Str(Box<str>),
}

impl From<Id<'_>> for RpcId {
    fn from(id: Id<'_>) -> RpcId {
        match id {
            Id::Int(n) => RpcId::Int(n),
            Id::Str(s) => RpcId::Str(s.into()),
        }
    }
}

impl RpcId {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            RpcId::Int(n) => {
                let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
            }
            RpcId::Str(s) => write_json_string(out, s),
        }
    }
}

/// Append `s` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Copy runs of bytes that need no escape at once (every escaped byte is
    // ASCII, so a run never splits a UTF-8 sequence).
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none of them needs an escape.
        if let Some(chunk) = bytes.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if !needs_escape(x) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        let at = i - 1;
        out.extend_from_slice(&bytes[start..at]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes in `x` is a control character, `"` or `\\`
/// (the classic "has a zero byte" bit trick, applied three times).
fn needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    // Any byte below 0x20 (exact as a yes/no answer: a borrow starts only
    // at such a byte).
    let low = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
    low | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))) != 0
}

/// What one JSON-RPC message says, as far as a policy needs to know.
#[derive(Debug, Default, PartialEq)]
pub struct Message<'a> {
    pub kind: Option<Kind>,
    pub id: Option<Id<'a>>,
    pub method: Option<Method<'a>>,
    /// `params.name` (tools/call, prompts/get).
    pub name: Option<&'a str>,
    /// `params.uri` (resources/read, subscribe, unsubscribe).
    pub uri: Option<&'a str>,
    /// `params.taskId` (tasks/*).
    pub task_id: Option<&'a str>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub protocol_version: Option<&'a str>,
    /// `params.arguments`, as simd-json tape nodes (the value's header node
    /// first; `arguments[0]` is an `Object`, `Array` or scalar).
    pub arguments: Option<&'a [Node<'a>]>,
    /// `params.ref` of `completion/complete`: the prompt name (`ref/prompt`)
    /// or resource URI (`ref/resource`) whose arguments are completed.
    pub ref_name: Option<&'a str>,
    pub ref_uri: Option<&'a str>,
    /// `params.notifications.resourceSubscriptions` of `subscriptions/listen`
    /// (the array's nodes; every element is a string).
    pub subscriptions: Option<&'a [Node<'a>]>,
    /// The body as sent, and where the decoder's copy of it began.
    pub source: Source<'a>,
}

/// The bytes a message was decoded from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Source<'a> {
    body: &'a [u8],
    /// Address of the decoder's copy of `body`: its strings are decoded in
    /// place, so a string's address there is its offset in `body`.
    copy: usize,
}

impl<'a> Message<'a> {
    /// `params.arguments` exactly as sent, when it is an object with at
    /// least one member (its first key finds it in the body); `None` for an
    /// empty object or another value.
    pub fn arguments_raw(&self) -> Option<&'a [u8]> {
        let (Node::Object { .. }, Some(Node::String(key))) =
            (self.arguments?.first()?, self.arguments?.get(1))
        else {
            return None;
        };
        let body = self.source.body;
        let key = (key.as_ptr() as usize).checked_sub(self.source.copy)?;
        let start = super::raw::object_start(body, key)?;
        let end = super::raw::container_end(body, start)?;
        Some(&body[start..end])
    }

    /// The resource URIs a `subscriptions/listen` subscribes to.
    pub fn subscription_uris(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.subscriptions
            .into_iter()
            .flat_map(|nodes| nodes.iter().skip(1))
            .filter_map(|n| match n {
                Node::String(s) => Some(*s),
                _ => None,
            })
    }
}

/// The shape of a decoded body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: bool,
    pub messages: usize,
}

/// Why a body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or not UTF-8.
    Parse,
    TooDeep,
    NotAnObject,
    EmptyBatch,
    DuplicateKey(&'static str),
    /// A member the proxy inspects has the wrong type or value.
    BadMember(&'static str),
}

impl DecodeError {
    /// The JSON-RPC error code to answer with (always with HTTP 400).
    pub fn code(self) -> i32 {
        match self {
            DecodeError::Parse => -32700,
            _ => -32600,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            DecodeError::Parse => "parse error: body is not valid JSON",
            DecodeError::TooDeep => "invalid request: JSON nested too deeply",
            DecodeError::NotAnObject => "invalid request: a message must be a JSON object",
            DecodeError::EmptyBatch => "invalid request: empty batch",
            DecodeError::DuplicateKey(_) => "invalid request: duplicate key in an inspected member",
            DecodeError::BadMember(_) => "invalid request: an inspected member has the wrong type",
        }
    }
}

/// Decode `body` in full; `visit` sees every message in order. The body
/// itself is not modified.
pub fn decode<F>(scratch: &mut Scratch, body: &[u8], mut visit: F) -> Result<Shape, DecodeError>
where
    F: FnMut(&Message<'_>),
{
    scratch.input.clear();
    scratch.input.extend_from_slice(body);
    let source = Source {
        body,
        copy: scratch.input.as_ptr() as usize,
    };
    let buffers = scratch
        .buffers
        .get_or_insert_with(|| Buffers::with_max_depth(4096, MAX_DEPTH));
    let tape = simd_json::to_tape_with_buffers(&mut scratch.input, buffers).map_err(|e| {
        if matches!(e.error(), simd_json::ErrorType::DepthLimitExceeded) {
            DecodeError::TooDeep
        } else {
            DecodeError::Parse
        }
    })?;
    let nodes = tape.0.as_slice();
    match nodes.first() {
        Some(Node::Object { .. }) => {
            visit(&Message {
                source,
                ..message(nodes)?
            });
            Ok(Shape {
                batch: false,
                messages: 1,
            })
        }
        Some(Node::Array { len, .. }) => {
            if *len == 0 {
                return Err(DecodeError::EmptyBatch);
            }
            let mut i = 1;
            for _ in 0..*len {
                let element = &nodes[i..i + width(&nodes[i])];
                if !matches!(element[0], Node::Object { .. }) {
                    return Err(DecodeError::NotAnObject);
                }
                visit(&Message {
                    source,
                    ..message(element)?
                });
                i += element.len();
            }
            Ok(Shape {
                batch: true,
                messages: *len,
            })
        }
        _ => Err(DecodeError::NotAnObject),
    }
}

/// [`decode`] for a caller that never reads `params.arguments`: every
/// message's `arguments` is `None`. The common body, one message, is read
/// without simd-json (`quick`); whatever that leaves is decoded in full,
/// so the two accept and refuse the same bodies.
pub fn decode_without_arguments<F>(
    scratch: &mut Scratch,
    body: &[u8],
    mut visit: F,
) -> Result<Shape, DecodeError>
where
    F: FnMut(&Message<'_>),
{
    if let Some(m) = quick::message(body) {
        visit(&m);
        return Ok(Shape {
            batch: false,
            messages: 1,
        });
    }
    decode(scratch, body, |m| {
        visit(&Message {
            arguments: None,
            ..*m
        })
    })
}

/// Number of nodes a value occupies, its header included.
fn width(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The members of the object at `nodes[0]`, in order, as (key, value nodes).
fn members<'t, 'i>(nodes: &'t [Node<'i>]) -> impl Iterator<Item = (&'i str, &'t [Node<'i>])> {
    let len = match nodes.first() {
        Some(Node::Object { len, .. }) => *len,
        _ => 0,
    };
    let mut i = 1;
    (0..len).filter_map(move |_| {
        let key = match nodes.get(i)? {
            Node::String(k) => *k,
            _ => return None,
        };
        let w = width(nodes.get(i + 1)?);
        let value = &nodes[i + 1..i + 1 + w];
        i += 1 + w;
        Some((key, value))
    })
}

/// Find the inspected `keys` of an object, refusing any that appears twice.
fn pick<'t, 'i, const N: usize>(
    nodes: &'t [Node<'i>],
    keys: [&'static str; N],
) -> Result<[Option<&'t [Node<'i>]>; N], DecodeError> {
    let mut found = [None; N];
    for (key, value) in members(nodes) {
        if let Some(k) = keys.iter().position(|k| *k == key) {
            if found[k].replace(value).is_some() {
                return Err(DecodeError::DuplicateKey(keys[k]));
            }
        }
    }
    Ok(found)
}

fn string<'i>(
    value: Option<&[Node<'i>]>,
    member: &'static str,
) -> Result<Option<&'i str>, DecodeError> {
    match value.map(|v| v[0]) {
        None => Ok(None),
        Some(Node::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::BadMember(member)),
    }
}

fn message<'t>(nodes: &'t [Node<'t>]) -> Result<Message<'t>, DecodeError> {
    let [jsonrpc, id, method, params, result, error] = pick(
        nodes,
        ["jsonrpc", "id", "method", "params", "result", "error"],
    )?;
    if string(jsonrpc, "jsonrpc")? != Some("2.0") {
        return Err(DecodeError::BadMember("jsonrpc"));
    }
    let id = match id.map(|v| v[0]) {
        None => None,
        Some(Node::String(s)) => Some(Id::Str(s)),
        Some(Node::Static(StaticNode::I64(n))) => Some(Id::Int(n)),
        Some(Node::Static(StaticNode::U64(n))) => Some(Id::Int(
            i64::try_from(n).map_err(|_| DecodeError::BadMember("id"))?,
        )),
        Some(_) => return Err(DecodeError::BadMember("id")),
    };
    let method = string(method, "method")?.map(Method::parse);
    let kind = match (method, id, result.is_some() || error.is_some()) {
        (Some(_), Some(_), false) => Kind::Request,
        (Some(_), None, false) => Kind::Notification,
        (None, Some(_), true) => Kind::Response,
        _ => return Err(DecodeError::BadMember("method")),
    };
    let mut msg = Message {
        kind: Some(kind),
        id,
        method,
        ..Message::default()
    };
    let Some(params) = params else { return Ok(msg) };
    if !matches!(params[0], Node::Object { .. }) {
        return Err(DecodeError::BadMember("params"));
    }
    let [name, uri, task_id, meta, arguments, reference, notifications] = pick(
        params,
        [
            "name",
            "uri",
            "taskId",
            "_meta",
            "arguments",
            "ref",
            "notifications",
        ],
    )?;
    msg.name = string(name, "params.name")?;
    msg.uri = string(uri, "params.uri")?;
    msg.task_id = string(task_id, "params.taskId")?;
    msg.arguments = arguments;
    if let Some(r) = reference {
        if !matches!(r[0], Node::Object { .. }) {
            return Err(DecodeError::BadMember("params.ref"));
        }
        let [kind, name, uri] = pick(r, ["type", "name", "uri"])?;
        match string(kind, "params.ref.type")? {
            Some("ref/prompt") => msg.ref_name = string(name, "params.ref.name")?,
            Some("ref/resource") => msg.ref_uri = string(uri, "params.ref.uri")?,
            _ => return Err(DecodeError::BadMember("params.ref.type")),
        }
    }
    if let Some(n) = notifications {
        if !matches!(n[0], Node::Object { .. }) {
            return Err(DecodeError::BadMember("params.notifications"));
        }
        let [subs] = pick(n, ["resourceSubscriptions"])?;
        if let Some(subs) = subs {
            // An array of strings: its header node, then one node per element.
            match subs[0] {
                Node::Array { len, count } if len == count => {}
                _ => return Err(DecodeError::BadMember("resourceSubscriptions")),
            }
            if !subs[1..].iter().all(|n| matches!(n, Node::String(_))) {
                return Err(DecodeError::BadMember("resourceSubscriptions"));
            }
            msg.subscriptions = Some(subs);
        }
    }
    if let Some(meta) = meta {
        if !matches!(meta[0], Node::Object { .. }) {
            return Err(DecodeError::BadMember("params._meta"));
        }
        let [version] = pick(meta, [META_PROTOCOL_VERSION])?;
        msg.protocol_version = string(version, "params._meta protocol version")?;
    }
    Ok(msg)
}

#[cfg(test)]
mod tests;
