//! portcullis: an identity-aware, zero-trust edge proxy for MCP servers.
//!
//! The request path is in [`pipeline`]; see ARCHITECTURE.md for the map.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod gate;
pub mod http1;
pub mod identity;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod principal;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod session;
pub mod snapshot;
pub mod stream;
pub mod sys;
pub mod tls;
pub mod upstream;
pub mod wellknown;
pub mod worker;
