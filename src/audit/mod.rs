//! The audit log: exactly one JSON line per request (schema version 1, see
//! README "Audit"), including refused, malformed and timed-out ones.
//!
//! Off the request path: each worker appends its records to its own buffer
//! (`Worker::audit_buf`) and hands full buffers (and, every 100 ms, partial
//! ones) to one writer thread through a bounded channel. When the writer
//! cannot keep up, `on_overflow: block` (the default) makes the worker wait,
//! so no record is lost: the worker's thread stops in the hand-over, and
//! every connection on it with it, until the writer takes the buffer (shown
//! by `blocked` and `blocked_micros`); `drop` drops the buffer and counts its
//! records. On shutdown every worker hands over what it holds, then the
//! writer writes everything and stops. SIGUSR1 reopens the file (logrotate).
//!
//! `writer`: the sink workers hand buffers to and the writer thread;
//! `record`: one record as a JSON line (no `core::fmt`); `arguments`:
//! `params.arguments` rendered (redacted) or as the hash's input.

mod arguments;
pub(crate) mod query;
mod record;
mod writer;

pub(crate) use arguments::{arguments_exact, arguments_json, Arguments};
pub use record::Record;
pub(crate) use record::{now_rfc3339, write_record};
pub use writer::Sink;

use crate::principal::Principal;

/// Schema version written in every record (`"v"`).
pub(crate) const SCHEMA_VERSION: u32 = 1;
/// A worker hands its buffer over once it holds this much. Each hand-over
/// wakes the writer and each write updates the file's times: at 64 KiB
/// those cost the writer more than the bytes did (issue 15).
pub(crate) const FLUSH_BYTES: usize = 256 * 1024;
/// What a TLS handshake settled, for the audit record.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<Box<str>>,
}

/// What one request's record says beyond the connection's facts.
#[derive(Default)]
pub struct Facts {
    pub principal: Option<std::rc::Rc<Principal>>,
    /// `MCP-Protocol-Version` or `_meta` version, YYYYMMDD (0: none).
    pub era: u32,
    pub method: Option<std::borrow::Cow<'static, str>>,
    /// Tool or prompt name, or resource URI.
    pub target: Option<Box<str>>,
    pub rpc_id: Option<crate::mcp::jsonrpc::RpcId>,
    pub batch: usize,
    /// `params.arguments` as the route's `audit_arguments` asks.
    pub arguments: Option<Arguments>,
    pub rule: Option<Box<str>>,
    pub session: Option<std::rc::Rc<str>>,
    /// Content screening's findings, rendered JSON objects joined by commas
    /// (detector, pointer, count, direction, action; never the matched text).
    pub screen: Option<String>,
    /// Behaviour signals raised, rendered JSON objects joined by commas
    /// (signal and score).
    pub anomalies: Option<String>,
}
