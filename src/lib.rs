//! portcullis: an identity-aware, zero-trust edge proxy for MCP servers.
//!
//! The public surface is what the `portcullis` command uses: the
//! configuration types ([`config`]), loading and checking a configuration
//! ([`load`], [`Snapshot`]), running it ([`start`], [`run_until_signal`]), the
//! [`demo`], and querying an audit log ([`audit_log`]). What tests, benches
//! and fuzz targets reach beyond that sits in the hidden `internal` module.
//!
//! Modules in dependency order: each uses only those listed before it (kept
//! by `tests/integration/layout.rs`). The request path is `proxy`, read in
//! flow order; ARCHITECTURE.md has the map.

#![warn(unreachable_pub)]

/// Every serde shape of the YAML file and its value types; imports nothing else.
pub mod config;

/// The one module allowed `unsafe`: a socket peek, the open-files limit.
pub(crate) mod sys;

/// MCP messages: full JSON-RPC decoding, method names, list filtering, the
/// legacy SSE endpoint rewrite.
pub(crate) mod mcp;

/// Content screening: secrets, personal data and injection markers in JSON strings; redaction.
pub(crate) mod screen;

/// Per-route counters and latency histograms (atomics), Prometheus text.
pub(crate) mod metrics;

/// Tool pinning: canonical hashes of upstream definitions, their diffs,
/// injection flags, and the pinned set the cores decide from.
pub(crate) mod pin;

/// The verified caller, built by `identity`, read by `policy` and `audit`.
pub(crate) mod principal;

/// Per-caller behaviour baselines per core, merged lock-free; anomaly signals.
pub(crate) mod behaviour;

/// The closed set of local answers (`HttpError`): status, reason, close.
pub(crate) mod error;

/// Strict HTTP/1.1: request and response heads, chunked framing, local answers.
pub(crate) mod http1;

/// The rule language compiled to matchers, and the allocation-free evaluator.
pub(crate) mod policy;

/// Token verification (JWKS, claims), the per-core token cache, identity assertions.
pub(crate) mod identity;

/// Audit records (one JSON line per request), the writer thread, `portcullis audit`.
pub(crate) mod audit;

/// The authorization server's embedded state (clients, consents, codes, grants,
/// refresh-token families, keys) behind the `Store` trait; off the data plane.
pub(crate) mod store;

/// Users' upstream OAuth tokens sealed (AES-256-GCM, AAD-bound to their row)
/// under rotating keys, and re-sealed under a new key (`portcullis vault rekey`).
pub(crate) mod vault;

/// The OAuth 2.1 authorization server for MCP clients, and portcullis as a
/// client of routes' upstream services (users' upstream accounts).
pub(crate) mod authz;

/// `compile(config) -> Snapshot`: routes, TLS configs, upstreams, policies;
/// swapped whole on reload.
pub(crate) mod snapshot;

/// The data plane, in flow order: accept, read, admit, judge, send, relay, record.
pub(crate) mod proxy;

/// Threads, signals, reload, the admin listener and the demo.
pub(crate) mod runtime;

pub use runtime::grants::{grants, GrantsCommand};
pub use runtime::store::store_migrate;
pub use runtime::tools::{tools, ToolsCommand};
pub use runtime::vault::vault_rekey;
pub use runtime::{demo, run_until_signal, start, Running};
pub use snapshot::{from_text, load, Snapshot};
pub use sys::allocator_setup;

/// `portcullis audit`: select and count audit records.
pub mod audit_log {
    pub use crate::audit::query::{parse_time, query, Found, Query};
}

/// The crate's insides, for its own tests, benches and fuzz targets only:
/// no stability, no documentation (as rustls's `internal`).
#[doc(hidden)]
pub mod internal {
    pub mod http1 {
        pub use crate::http1::chunked::{decode_all, encode_chunk, ChunkedDecoder, LAST_CHUNK};
        pub use crate::http1::parse::Framing;
        pub use crate::http1::parse::{parse_request, HeadLimits};
        pub use crate::http1::response::parse_response;
        pub use crate::http1::NO_HEADER;
    }
    pub mod mcp {
        pub use crate::mcp::jsonrpc::{
            decode, decode_without_arguments, Id, Kind, Message, Scratch,
        };
        pub use crate::mcp::method::Method;
    }
    pub mod screen {
        pub use crate::config::screen::{CustomDetector, ScreenConfig};
        pub use crate::screen::{
            decide, Action, Actions, Direction, Finding, Group, JsonError, Mask, Outcome, Screen,
        };
    }
    pub mod behaviour {
        pub use crate::behaviour::{
            Baselines, Event, Exchange, Outcome, Profile, Scores, Settings, Signal, SIGNALS,
        };
        pub use crate::config::behaviour::BehaviourConfig;
    }
    pub mod policy {
        pub use crate::config::policy::RuleConfig;
        pub use crate::policy::{Facts, ItemKind, Policy, Verdict};
    }
    pub mod identity {
        pub use crate::config::identity::IssuerConfig;
        pub use crate::identity::assertion::{AssertionCache, AssertionSigner};
        pub use crate::identity::cache::TokenCache;
        pub use crate::identity::{crypto, Issuers};
        pub mod minted {
            pub use crate::identity::minted::{
                mint, verify, AccessClaims, Expect, Issued, MintKey,
            };
        }
    }
    pub mod audit {
        pub use crate::audit::{Record, Sink};
    }
    pub mod proxy {
        pub use crate::proxy::admit::unix_now;
        pub use crate::proxy::body::Body;
        pub use crate::proxy::conn::Conn;
        pub use crate::proxy::gate::{decode_mirror, message, McpHead, Mirrors, MODERN};
        pub use crate::proxy::inject::UpstreamTokens;
        pub use crate::proxy::judge::judge;
        pub use crate::proxy::request::{parse, Step};
        pub use crate::proxy::serve;
        pub use crate::proxy::stream::ClientStream;
        pub use crate::proxy::upstream::relay::write_client_head;
        pub use crate::proxy::worker::{Shared, Worker};
    }
    pub mod runtime {
        pub use crate::runtime::reload;
    }
    pub mod authz {
        pub use crate::authz::http::{Answer, Call, Form, Verb};
        pub use crate::authz::server::Server;
        pub use crate::authz::settings::{compile as compile_settings, Settings};
        pub mod redirect {
            pub use crate::authz::redirect::{check, matches, Refused};
        }
        pub mod resource {
            pub use crate::authz::resource::{canonical, Refused};
        }
        pub mod cimd {
            pub use crate::authz::cimd::{
                check_url, fetch, resolve, special_use, validate, CimdPolicy, Refused,
                MAX_DOC_BYTES, MIN_MAX_AGE,
            };
        }
    }
    pub mod store {
        pub use crate::store::sqlite::SqliteStore;
        pub use crate::store::{
            Client, ClientKind, CodeGrant, CodeTake, Consent, Grant, Rotation, SigningKey, Store,
            StoreError, Swept, UpstreamStatus, UpstreamToken, CODE_MEMORY_SECS,
        };
    }
    pub mod vault {
        pub use crate::vault::{Secret, Vault, VaultKey};
    }
    pub use crate::error::HttpError;
    pub use crate::metrics::Decision;
    pub use crate::principal::Principal;
    pub use crate::snapshot::SharedSnapshot;
}
