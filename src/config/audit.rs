//! The `audit` section and the per-route `audit_arguments` option.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Buffers in flight between the workers and the writer, by default (at
/// most 4 MiB of records).
const CHANNEL_BUFFERS: usize = 16;

fn env_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    super::env_string(d).map(PathBuf::from)
}

fn default_buffers() -> usize {
    CHANNEL_BUFFERS
}

/// The audit log (fixed at start): one JSON line per request, refused and
/// failed ones included, written in batches by a writer thread. SIGUSR1
/// reopens the file (logrotate).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file (appended to, created if missing; a relative path is relative
    /// to the working directory) or `-` for stdout. `${ENV_VAR}` is
    /// substituted.
    #[serde(deserialize_with = "env_path")]
    pub path: PathBuf,
    /// What happens when `buffers` buffers already wait for the writer.
    #[serde(default)]
    pub on_overflow: Overflow,
    /// `fsync` after every batch written (slower, survives a power cut).
    #[serde(default)]
    pub fsync: bool,
    /// Key of the keyed hash (HMAC-SHA256) of arguments and session ids
    /// (keep it out of the file: `${AUDIT_HASH_KEY}` is substituted);
    /// default: a random key per process (hashes correlate within a run only).
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub hash_key: Option<String>,
    /// Worker buffers (up to 256 KiB each) waiting for the writer before
    /// `on_overflow` applies (0 counts as 1).
    #[serde(default = "default_buffers")]
    pub buffers: usize,
}

/// What a worker does with a full buffer of records when the writer is
/// behind.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait for the writer: the worker's thread stops, every connection on
    /// it waits, until the writer takes the buffer. A slow disk stops the
    /// proxy (shutdown too); no record is lost.
    #[default]
    Block,
    /// Drop the buffer's records and count them in `/metrics`
    /// (`portcullis_audit_records_total{outcome="dropped"}`); requests never
    /// wait.
    Drop,
}

/// How a route's audit records show `params.arguments`.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Arguments {
    /// The arguments, with values under token-like keys and token-shaped
    /// values replaced by `"[redacted]"`.
    Full,
    /// A keyed hash (HMAC-SHA256 with `audit.hash_key`) of the arguments as
    /// sent: `"hmac-sha256:…"`.
    #[default]
    Hash,
    /// No `arguments` field.
    Omit,
}
