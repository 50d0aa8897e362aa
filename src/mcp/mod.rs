//! What the proxy must understand of MCP. For now: the legacy HTTP+SSE
//! transport's `endpoint` event, which names a URL that must be rewritten when
//! the public and upstream path prefixes differ.

pub mod jsonrpc;
pub mod sse;
