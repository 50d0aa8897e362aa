//! portcullis: an identity-aware, zero-trust edge proxy for MCP servers.
//!
//! Modules in dependency order: each uses only those listed before it (kept
//! by `tests/integration/layout.rs`). The request path is [`proxy`], read in
//! flow order; ARCHITECTURE.md has the map.

/// Every serde shape of the YAML file and its value types; imports nothing else.
pub mod config;

/// The one module allowed `unsafe`: a socket peek, the open-files limit.
pub mod sys;

/// MCP messages: full JSON-RPC decoding, method names, list filtering, the
/// legacy SSE endpoint rewrite.
pub mod mcp;

/// Per-route counters and latency histograms (atomics), Prometheus text.
pub mod metrics;

/// The verified caller, built by `identity`, read by `policy` and `audit`.
pub mod principal;

/// The closed set of local answers (`HttpError`): status, reason, close.
pub mod error;

/// Strict HTTP/1.1: request and response heads, chunked framing, local answers.
pub mod http1;

/// The rule language compiled to matchers, and the allocation-free evaluator.
pub mod policy;

/// Token verification (JWKS, claims), the per-core token cache, identity assertions.
pub mod identity;

/// Audit records (one JSON line per request), the writer thread, `portcullis audit`.
pub mod audit;

/// `compile(config) -> Snapshot`: routes, TLS configs, upstreams, policies;
/// swapped whole on reload.
pub mod snapshot;

/// The data plane, in flow order: accept, read, admit, judge, send, relay, record.
pub mod proxy;

/// Threads, signals, reload, the admin listener and the demo.
pub mod runtime;
