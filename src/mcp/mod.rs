//! What the proxy must understand of MCP: JSON-RPC bodies decoded in full
//! (`jsonrpc`), list results filtered to what the caller may use
//! (`listfilter`), and the legacy HTTP+SSE transport's `endpoint` event,
//! rewritten when the public and upstream path prefixes differ (`sse`), and
//! method names read once into [`method::Method`]; where a value lies in
//! the bytes as sent (`raw`).

pub(crate) mod jsonrpc;
pub(crate) mod listfilter;
pub(crate) mod method;
pub(crate) mod raw;
pub(crate) mod sse;
