//! The PostgreSQL schema: SQLite's versions 1 to 4 translated (INTEGER to
//! BIGINT, BLOB to BYTEA, 0/1 flags to BOOLEAN, the same CHECK constraints),
//! and the migration run at open under an advisory lock.
//!
//! Text columns use the "C" collation, SQLite's BINARY: listings sort by
//! bytes whatever the database's locale, as on SQLite.

use super::Fail;
use crate::store::StoreError;
use ::postgres::Client;

/// The migrations, in order: `MIGRATIONS[i]` takes the schema to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The advisory lock taken by every migration (the bytes of `portcull`): two
/// instances starting together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;

/// Schema version 1 (see the SQLite store's V1 for what each table holds).
pub(super) const V1: &str = r#"
CREATE TABLE changes (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO changes (id, seq) VALUES (1, 0);

CREATE TABLE clients (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('registered', 'dynamic', 'metadata_document')),
    secret_hash BYTEA CHECK (secret_hash IS NULL OR octet_length(secret_hash) = 32),
    grant_types TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT
);
CREATE INDEX clients_expires ON clients (expires);

CREATE TABLE consents (
    subject TEXT COLLATE "C" NOT NULL,
    client_id TEXT COLLATE "C" NOT NULL,
    redirect_uri TEXT COLLATE "C" NOT NULL,
    scopes TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (subject, client_id, redirect_uri)
);
CREATE INDEX consents_client ON consents (client_id);

-- state: 0 issued, 1 taken (exchanged once), 2 replayed (presented again).
CREATE TABLE codes (
    code_hash BYTEA PRIMARY KEY CHECK (octet_length(code_hash) = 32),
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    subject TEXT NOT NULL,
    claims TEXT NOT NULL,
    expires BIGINT NOT NULL,
    state BIGINT NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    grant_id TEXT COLLATE "C"
);
CREATE INDEX codes_expires ON codes (expires);

CREATE TABLE grants (
    id TEXT COLLATE "C" PRIMARY KEY,
    subject TEXT COLLATE "C" NOT NULL,
    claims TEXT NOT NULL,
    client_id TEXT COLLATE "C" NOT NULL,
    redirect_uri TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX grants_subject ON grants (subject);
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_expires ON grants (expires);

-- One refresh-token family per grant: generation 0 is the first token;
-- `replaced` is when the next generation replaced it (NULL: the current one).
CREATE TABLE refresh_tokens (
    hash BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    grant_id TEXT COLLATE "C" NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    generation BIGINT NOT NULL,
    replaced BIGINT,
    UNIQUE (grant_id, generation)
);

CREATE TABLE signing_keys (
    kid TEXT COLLATE "C" PRIMARY KEY,
    created BIGINT NOT NULL,
    sealed BYTEA NOT NULL
);
"#;

/// Schema version 2: users' upstream OAuth tokens, sealed by the vault.
pub(super) const V2: &str = r#"
CREATE TABLE upstream_tokens (
    subject TEXT COLLATE "C" NOT NULL,
    route TEXT COLLATE "C" NOT NULL,
    client_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    expires BIGINT NOT NULL,
    refresh_due BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('connected', 'disconnected')),
    reason TEXT CHECK ((status = 'connected') = (reason IS NULL)),
    updated BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (subject, route)
);
CREATE INDEX upstream_tokens_due ON upstream_tokens (refresh_due, subject, route)
    WHERE status = 'connected';
"#;

/// Schema version 3: portcullis's registrations at upstream authorization
/// servers (discovery mode); the secret, if any, sealed by the vault.
pub(super) const V3: &str = r#"
CREATE TABLE upstream_clients (
    route TEXT COLLATE "C" NOT NULL,
    issuer TEXT COLLATE "C" NOT NULL,
    client_id TEXT NOT NULL,
    kid TEXT,
    sealed BYTEA,
    created BIGINT NOT NULL,
    CHECK ((kid IS NULL) = (sealed IS NULL)),
    PRIMARY KEY (route, issuer)
);
"#;

/// Schema version 4: the definitions routes' upstreams serve, pinned (tool
/// pinning): per (route, kind, name) an approved one and a pending change.
pub(super) const V4: &str = r#"
CREATE TABLE pins (
    route TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('tool', 'prompt', 'resource_template')),
    name TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL CHECK (state IN ('approved', 'pending')),
    hash TEXT NOT NULL,
    definition TEXT NOT NULL,
    flagged TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    approved_at BIGINT,
    CHECK ((state = 'approved') = (approved_at IS NOT NULL)),
    PRIMARY KEY (route, kind, name, state)
);
"#;

/// Brings the database's schema to the newest version in one transaction,
/// after taking the migration lock (released at commit or rollback);
/// returns the version found. A newer schema is refused, nothing changed.
pub(super) fn migrate(client: &mut Client) -> Result<i64, Fail> {
    let known = MIGRATIONS.len() as i64;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY)")?;
    let found: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM schema_version",
            &[],
        )?
        .try_get(0)?;
    if found > known {
        return Err(Fail::Store(StoreError::NewerSchema { found, known }));
    }
    for (at, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(at as i64 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(found)
}
