//! The embedded backend: one SQLite file (rusqlite, bundled SQLite).
//!
//! Opened in WAL mode with `synchronous=FULL` (a commit is on disk before
//! it returns, so neither a crash nor a power loss loses it), foreign keys
//! on, and a busy timeout so that two connections to one file wait for each
//! other. Every write is a `BEGIN IMMEDIATE` transaction: it takes the write
//! lock up front, so a transaction never fails half-way to upgrade a read.
//! The schema is versioned in `schema_version` and migrated at open; a file
//! from a newer build is refused. Every statement is parameterised. The file
//! is created readable by its owner only.

use super::{
    Client, ClientKind, CodeGrant, CodeTake, Consent, Grant, Pin, Rotation, SigningKey, Store,
    StoreError, Swept, UpstreamClient, UpstreamStatus, UpstreamToken, CODE_MEMORY_SECS,
};
use rusqlite::types::Type;
use rusqlite::TransactionBehavior::Immediate;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Transaction};
use std::path::Path;
use std::time::Duration;

/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The migrations, in order: `MIGRATIONS[i]` takes the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// Schema version 1. Lists (redirect URIs, grant types, scopes) are JSON
/// arrays of strings; hashes are 32-byte blobs; times are unix seconds.
/// Grants and consents name their client by id without a foreign key: a
/// metadata-document client is a cache entry that expires and is fetched
/// again, and its grants outlive that.
const V1: &str = "
CREATE TABLE changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
) STRICT;
INSERT INTO changes (id, seq) VALUES (1, 0);

CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('registered', 'dynamic', 'metadata_document')),
    secret_hash BLOB CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    grant_types TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER
) STRICT;
CREATE INDEX clients_expires ON clients (expires);

CREATE TABLE consents (
    subject TEXT NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (subject, client_id, redirect_uri)
) STRICT;
CREATE INDEX consents_client ON consents (client_id);

-- state: 0 issued, 1 taken (exchanged once), 2 replayed (presented again).
CREATE TABLE codes (
    code_hash BLOB PRIMARY KEY CHECK (length(code_hash) = 32),
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    subject TEXT NOT NULL,
    claims TEXT NOT NULL,
    expires INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    grant_id TEXT
) STRICT;
CREATE INDEX codes_expires ON codes (expires);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    claims TEXT NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
) STRICT;
CREATE INDEX grants_subject ON grants (subject);
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_expires ON grants (expires);

-- One refresh-token family per grant: generation 0 is the first token;
-- `replaced` is when the next generation replaced it (NULL: the current one).
CREATE TABLE refresh_tokens (
    hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
    grant_id TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    replaced INTEGER,
    UNIQUE (grant_id, generation)
) STRICT;

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    sealed BLOB NOT NULL
) STRICT;
";

/// Schema version 2: users' upstream OAuth tokens, sealed by the vault (the
/// store sees opaque bytes). `reason` is set exactly when the connection is
/// disconnected. The partial index serves the refresher's due scan.
const V2: &str = "
CREATE TABLE upstream_tokens (
    subject TEXT NOT NULL,
    route TEXT NOT NULL,
    client_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    sealed BLOB NOT NULL,
    expires INTEGER NOT NULL,
    refresh_due INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('connected', 'disconnected')),
    reason TEXT CHECK ((status = 'connected') = (reason IS NULL)),
    updated INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (subject, route)
) STRICT;
CREATE INDEX upstream_tokens_due ON upstream_tokens (refresh_due)
    WHERE status = 'connected';
";

/// Schema version 3: portcullis's registrations at upstream authorization
/// servers (discovery mode); the secret, if any, sealed by the vault.
const V3: &str = "
CREATE TABLE upstream_clients (
    route TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    kid TEXT,
    sealed BLOB,
    created INTEGER NOT NULL,
    CHECK ((kid IS NULL) = (sealed IS NULL)),
    PRIMARY KEY (route, issuer)
) STRICT;
";

/// Schema version 4: the definitions routes' upstreams serve, pinned (tool
/// pinning): per (route, kind, name) an approved one and a pending change.
const V4: &str = "
CREATE TABLE pins (
    route TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('tool', 'prompt', 'resource_template')),
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('approved', 'pending')),
    hash TEXT NOT NULL,
    definition TEXT NOT NULL,
    flagged TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    approved_at INTEGER,
    CHECK ((state = 'approved') = (approved_at IS NOT NULL)),
    PRIMARY KEY (route, kind, name, state)
) STRICT;
";

macro_rules! upstream_columns {
    () => {
        "subject, route, client_id, kid, sealed, expires, refresh_due, status, reason, updated, \
         generation"
    };
}

macro_rules! grant_columns {
    () => {
        "id, subject, claims, client_id, redirect_uri, resource, scopes, created, expires, revoked"
    };
}

macro_rules! client_columns {
    () => {
        "id, name, redirect_uris, kind, secret_hash, grant_types, created, expires"
    };
}

/// The SQLite store: one connection to one file. Open the same file twice
/// for two connections (tests do, to race writers).
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// The newest schema version this build knows.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    /// Opens (creating if needed) the store at `path` and migrates its
    /// schema; every commit is synced to disk (`synchronous=FULL`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// As [`SqliteStore::open`]; with `full_sync` false, commits reach the
    /// operating system but are synced only at checkpoints
    /// (`synchronous=NORMAL`): a killed process still loses nothing, a power
    /// loss may lose the last commits (never corrupts the file).
    pub fn open_with(path: impl AsRef<Path>, full_sync: bool) -> Result<Self, StoreError> {
        Self::open_migrated(path.as_ref(), full_sync).map(|(store, _)| store)
    }

    /// As [`SqliteStore::open_with`], with the schema version found before
    /// migrating (0: a new file).
    pub(crate) fn open_migrated(path: &Path, full_sync: bool) -> Result<(Self, i64), StoreError> {
        let failed = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        create_private(path).map_err(|e| failed(e.to_string()))?;
        let mut conn = Connection::open(path).map_err(|e| failed(e.to_string()))?;
        configure(&conn, full_sync).map_err(|e| match e {
            StoreError::Backend(reason) => failed(reason),
            other => other,
        })?;
        let found = migrate(&mut conn)?;
        Ok((SqliteStore { conn }, found))
    }

    /// One write transaction: `f` returns its result and whether it changed
    /// anything (then the change sequence grows in the same transaction).
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.transaction_with_behavior(Immediate)?;
        let (out, changed) = f(&tx)?;
        if changed {
            tx.prepare_cached("UPDATE changes SET seq = seq + 1 WHERE id = 1")?
                .execute([])?;
        }
        tx.commit()?;
        Ok(out)
    }
}

/// Creates the file readable by its owner only (SQLite gives its `-wal` and
/// `-shm` files the same mode); an existing file is left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn configure(conn: &Connection, full_sync: bool) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "the file cannot use WAL (journal mode stays {mode})"
        )));
    }
    conn.pragma_update(
        None,
        "synchronous",
        if full_sync { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Brings the schema to the newest version; returns the version found.
fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY) STRICT",
    )?;
    let found: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if found > SqliteStore::SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SqliteStore::SCHEMA_VERSION,
        });
    }
    for (at, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [at as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(found)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
            {
                StoreError::Busy
            }
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                StoreError::Corrupt("a stored value has the wrong type or shape")
            }
            // SQLite's messages name tables and columns, never bound values.
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// Maps a uniqueness failure to [`StoreError::Exists`].
fn exists(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            StoreError::Exists(what)
        }
        _ => e.into(),
    }
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings always serialises")
}

fn list(r: &Row<'_>, at: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = r.get(at)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(at, Type::Text, Box::new(e)))
}

fn kind_name(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::Registered => "registered",
        ClientKind::Dynamic => "dynamic",
        ClientKind::MetadataDocument => "metadata_document",
    }
}

fn client_row(r: &Row<'_>) -> rusqlite::Result<Client> {
    let kind = match r.get_ref(3)?.as_str()? {
        "registered" => ClientKind::Registered,
        "dynamic" => ClientKind::Dynamic,
        "metadata_document" => ClientKind::MetadataDocument,
        _ => {
            return Err(rusqlite::Error::InvalidColumnType(
                3,
                "kind".into(),
                Type::Text,
            ))
        }
    };
    Ok(Client {
        id: r.get(0)?,
        name: r.get(1)?,
        redirect_uris: list(r, 2)?,
        kind,
        secret_hash: r.get(4)?,
        grant_types: list(r, 5)?,
        created: r.get(6)?,
        expires: r.get(7)?,
    })
}

fn grant_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        user: r.get(1)?,
        claims: r.get(2)?,
        client_id: r.get(3)?,
        redirect_uri: r.get(4)?,
        resource: r.get(5)?,
        scopes: list(r, 6)?,
        created: r.get(7)?,
        expires: r.get(8)?,
        revoked: r.get(9)?,
    })
}

/// The `status` and `reason` columns of an upstream connection's status.
fn status_columns(s: &UpstreamStatus) -> (&'static str, Option<&str>) {
    match s {
        UpstreamStatus::Connected => ("connected", None),
        UpstreamStatus::Disconnected { reason } => ("disconnected", Some(reason)),
    }
}

fn upstream_row(r: &Row<'_>) -> rusqlite::Result<UpstreamToken> {
    let status = match (r.get_ref(7)?.as_str()?, r.get::<_, Option<String>>(8)?) {
        ("connected", None) => UpstreamStatus::Connected,
        ("disconnected", Some(reason)) => UpstreamStatus::Disconnected { reason },
        _ => {
            return Err(rusqlite::Error::InvalidColumnType(
                7,
                "status".into(),
                Type::Text,
            ))
        }
    };
    Ok(UpstreamToken {
        user: r.get(0)?,
        route: r.get(1)?,
        client_id: r.get(2)?,
        kid: r.get(3)?,
        sealed: r.get(4)?,
        expires: r.get(5)?,
        refresh_due: r.get(6)?,
        status,
        updated: r.get(9)?,
        generation: r.get(10)?,
    })
}

fn upstream_client_row(r: &Row<'_>) -> rusqlite::Result<UpstreamClient> {
    let kid: Option<String> = r.get(3)?;
    let sealed: Option<Vec<u8>> = r.get(4)?;
    Ok(UpstreamClient {
        route: r.get(0)?,
        issuer: r.get(1)?,
        client_id: r.get(2)?,
        secret: kid.zip(sealed),
        created: r.get(5)?,
    })
}

fn grant_in(tx: &Connection, id: &str) -> Result<Option<Grant>, StoreError> {
    Ok(tx
        .prepare_cached(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id = ?1"
        ))?
        .query_row([id], grant_row)
        .optional()?)
}

fn revoke_in(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached("UPDATE grants SET revoked = 1 WHERE id = ?1 AND revoked = 0")?
        .execute([id])?;
    Ok(n > 0)
}

impl Store for SqliteStore {
    fn put_client(&mut self, c: &Client) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(concat!(
                "INSERT OR REPLACE INTO clients (",
                client_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                c.id,
                c.name,
                to_json(&c.redirect_uris),
                kind_name(c.kind),
                c.secret_hash,
                to_json(&c.grant_types),
                c.created,
                c.expires,
            ])?;
            Ok(((), true))
        })
    }

    fn client(&self, id: &str, now: i64) -> Result<Option<Client>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                client_columns!(),
                " FROM clients WHERE id = ?1 AND (expires IS NULL OR expires > ?2)"
            ))?
            .query_row(params![id, now], client_row)
            .optional()?)
    }

    fn sweep_expired(&mut self, now: i64) -> Result<Swept, StoreError> {
        self.write(|tx| {
            let swept = Swept {
                clients: tx
                    .prepare_cached("DELETE FROM clients WHERE expires <= ?1")?
                    .execute([now])?,
                consents: tx
                    .prepare_cached("DELETE FROM consents WHERE expires <= ?1")?
                    .execute([now])?,
                codes: tx
                    .prepare_cached(
                        "DELETE FROM codes WHERE (state = 0 AND expires <= ?1) \
                         OR expires + ?2 <= ?1",
                    )?
                    .execute([now, CODE_MEMORY_SECS])?,
                grants: tx
                    .prepare_cached("DELETE FROM grants WHERE expires <= ?1")?
                    .execute([now])?,
            };
            Ok((swept, swept.total() > 0))
        })
    }

    fn put_consent(&mut self, c: &Consent) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO consents (subject, client_id, redirect_uri, scopes, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![c.user, c.client_id, c.redirect_uri, to_json(&c.scopes), c.expires])?;
            Ok(((), true))
        })
    }

    fn consented(
        &self,
        user: &str,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        now: i64,
    ) -> Result<bool, StoreError> {
        let granted = self
            .conn
            .prepare_cached(
                "SELECT scopes FROM consents WHERE subject = ?1 AND client_id = ?2 \
                 AND redirect_uri = ?3 AND expires > ?4",
            )?
            .query_row(params![user, client_id, redirect_uri, now], |r| list(r, 0))
            .optional()?;
        Ok(granted.is_some_and(|granted| scopes.iter().all(|s| granted.contains(s))))
    }

    fn revoke_consents(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError> {
        if user.is_none() && client_id.is_none() {
            return Err(StoreError::NoFilter);
        }
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM consents WHERE (?1 IS NULL OR subject = ?1) \
                     AND (?2 IS NULL OR client_id = ?2)",
                )?
                .execute(params![user, client_id])?;
            Ok((n, n > 0))
        })
    }

    fn put_code(&mut self, c: &CodeGrant) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO codes (code_hash, client_id, redirect_uri, challenge, resource, \
                 scopes, subject, claims, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                c.code_hash,
                c.client_id,
                c.redirect_uri,
                c.challenge,
                c.resource,
                to_json(&c.scopes),
                c.user,
                c.claims,
                c.expires,
            ])
            .map_err(exists("code"))?;
            Ok(((), true))
        })
    }

    fn take_code(&mut self, code_hash: &[u8; 32], now: i64) -> Result<CodeTake, StoreError> {
        self.write(|tx| {
            // The one way to `Granted`: a conditional update, so it happens
            // once per code whatever runs beside it.
            let taken = tx
                .prepare_cached(
                    "UPDATE codes SET state = 1 WHERE code_hash = ?1 AND state = 0 AND expires > ?2 \
                     RETURNING client_id, redirect_uri, challenge, resource, scopes, subject, \
                     claims, expires",
                )?
                .query_row(params![code_hash, now], |r| {
                    Ok(CodeGrant {
                        code_hash: *code_hash,
                        client_id: r.get(0)?,
                        redirect_uri: r.get(1)?,
                        challenge: r.get(2)?,
                        resource: r.get(3)?,
                        scopes: list(r, 4)?,
                        user: r.get(5)?,
                        claims: r.get(6)?,
                        expires: r.get(7)?,
                    })
                })
                .optional()?;
            if let Some(code) = taken {
                return Ok((CodeTake::Granted(Box::new(code)), true));
            }
            let found: Option<(i64, Option<String>)> = tx
                .prepare_cached("SELECT state, grant_id FROM codes WHERE code_hash = ?1")?
                .query_row([code_hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(match found {
                None => (CodeTake::Unknown, false),
                Some((0, _)) => (CodeTake::Expired, false),
                Some((_, grant_id)) => {
                    tx.prepare_cached("UPDATE codes SET state = 2 WHERE code_hash = ?1")?
                        .execute([code_hash])?;
                    (CodeTake::Replayed { grant_id }, true)
                }
            })
        })
    }

    fn code_issued(&mut self, code_hash: &[u8; 32], grant_id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let state: Option<i64> = tx
                .prepare_cached(
                    "UPDATE codes SET grant_id = ?2 WHERE code_hash = ?1 AND state != 0 \
                     RETURNING state",
                )?
                .query_row(params![code_hash, grant_id], |r| r.get(0))
                .optional()?;
            match state {
                None => Err(StoreError::NotFound("taken code")),
                Some(1) => Ok((true, true)),
                Some(_) => {
                    revoke_in(tx, grant_id)?;
                    Ok((false, true))
                }
            }
        })
    }

    fn create_grant(
        &mut self,
        g: &Grant,
        first_refresh_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(concat!(
                "INSERT INTO grants (",
                grant_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                g.id,
                g.user,
                g.claims,
                g.client_id,
                g.redirect_uri,
                g.resource,
                to_json(&g.scopes),
                g.created,
                g.expires,
                g.revoked,
            ])
            .map_err(exists("grant"))?;
            if let Some(hash) = first_refresh_hash {
                tx.prepare_cached(
                    "INSERT INTO refresh_tokens (hash, grant_id, generation) VALUES (?1, ?2, 0)",
                )?
                .execute(params![hash, g.id])
                .map_err(exists("refresh token"))?;
            }
            Ok(((), true))
        })
    }

    fn rotate_refresh(
        &mut self,
        old_hash: &[u8; 32],
        new_hash: &[u8; 32],
        now: i64,
        grace_secs: i64,
    ) -> Result<Rotation, StoreError> {
        self.write(|tx| {
            let token: Option<(String, i64)> = tx
                .prepare_cached("SELECT grant_id, generation FROM refresh_tokens WHERE hash = ?1")?
                .query_row([old_hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((grant_id, generation)) = token else {
                return Ok((Rotation::Unknown, false));
            };
            let Some(grant) = grant_in(tx, &grant_id)? else {
                return Ok((Rotation::Unknown, false));
            };
            if grant.revoked {
                return Ok((Rotation::Revoked, false));
            }
            if grant.expires <= now {
                return Ok((Rotation::Expired, false));
            }
            // The one way to `Rotated`: replace the token only if it is
            // still the current one.
            let rotated = tx
                .prepare_cached(
                    "UPDATE refresh_tokens SET replaced = ?2 WHERE hash = ?1 AND replaced IS NULL",
                )?
                .execute(params![old_hash, now])?;
            if rotated == 1 {
                tx.prepare_cached(
                    "INSERT INTO refresh_tokens (hash, grant_id, generation) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![new_hash, grant_id, generation + 1])
                .map_err(exists("refresh token"))?;
                return Ok((Rotation::Rotated(Box::new(grant)), true));
            }
            // Replaced already: the one just replaced (its successor is the
            // current token) within the grace window is still good.
            let replaced: i64 = tx
                .prepare_cached("SELECT replaced FROM refresh_tokens WHERE hash = ?1")?
                .query_row([old_hash], |r| r.get(0))?;
            let successor_current: bool = tx
                .prepare_cached(
                    "SELECT count(*) FROM refresh_tokens WHERE grant_id = ?1 AND generation = ?2 \
                     AND replaced IS NULL",
                )?
                .query_row(params![grant_id, generation + 1], |r| r.get(0))?;
            if successor_current && now < replaced.saturating_add(grace_secs) {
                return Ok((Rotation::Grace(Box::new(grant)), false));
            }
            revoke_in(tx, &grant_id)?;
            Ok((Rotation::Reused { grant_id }, true))
        })
    }

    fn refresh_grant(&self, hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT grant_id FROM refresh_tokens WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    fn revoked_grants(&self, after: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM grants WHERE revoked = 1 AND expires > ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([after], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        grant_in(&self.conn, id)
    }

    fn grants(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR client_id = ?2) \
             ORDER BY created, id"
        ))?;
        let rows = stmt.query_map(params![user, client_id], grant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_grant_claims(&mut self, id: &str, claims: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("UPDATE grants SET claims = ?2 WHERE id = ?1 AND revoked = 0")?
                .execute(params![id, claims])?;
            Ok((n == 1, n == 1))
        })
    }

    fn revoke_grant(&mut self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let revoked = revoke_in(tx, id)?;
            Ok((revoked, revoked))
        })
    }

    fn revoke_grants(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError> {
        if user.is_none() && client_id.is_none() {
            return Err(StoreError::NoFilter);
        }
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE grants SET revoked = 1 WHERE revoked = 0 \
                     AND (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR client_id = ?2)",
                )?
                .execute(params![user, client_id])?;
            Ok((n, n > 0))
        })
    }

    fn put_key(&mut self, kid: &str, created: i64, sealed: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO signing_keys (kid, created, sealed) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![kid, created, sealed])
            .map_err(exists("signing key"))?;
            Ok(((), true))
        })
    }

    fn keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kid, created, sealed FROM signing_keys ORDER BY created, kid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SigningKey {
                kid: r.get(0)?,
                created: r.get(1)?,
                sealed: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_upstream(&mut self, t: &UpstreamToken) -> Result<i64, StoreError> {
        let (status, reason) = status_columns(&t.status);
        self.write(|tx| {
            let generation = tx
                .prepare_cached(concat!(
                    "INSERT INTO upstream_tokens (",
                    upstream_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1) \
                     ON CONFLICT (subject, route) DO UPDATE SET client_id = excluded.client_id, \
                     kid = excluded.kid, sealed = excluded.sealed, expires = excluded.expires, \
                     refresh_due = excluded.refresh_due, status = excluded.status, \
                     reason = excluded.reason, updated = excluded.updated, \
                     generation = generation + 1 \
                     RETURNING generation"
                ))?
                .query_row(
                    params![
                        t.user,
                        t.route,
                        t.client_id,
                        t.kid,
                        t.sealed,
                        t.expires,
                        t.refresh_due,
                        status,
                        reason,
                        t.updated,
                    ],
                    |r| r.get(0),
                )?;
            Ok((generation, true))
        })
    }

    fn upstream(&self, user: &str, route: &str) -> Result<Option<UpstreamToken>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                upstream_columns!(),
                " FROM upstream_tokens WHERE subject = ?1 AND route = ?2"
            ))?
            .query_row(params![user, route], upstream_row)
            .optional()?)
    }

    fn upstream_of(&self, user: &str) -> Result<Vec<UpstreamToken>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            upstream_columns!(),
            " FROM upstream_tokens WHERE subject = ?1 ORDER BY route"
        ))?;
        let rows = stmt.query_map([user], upstream_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn replace_upstream_if(
        &mut self,
        t: &UpstreamToken,
        expected_generation: i64,
    ) -> Result<bool, StoreError> {
        let (status, reason) = status_columns(&t.status);
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE upstream_tokens SET client_id = ?3, kid = ?4, sealed = ?5, \
                     expires = ?6, refresh_due = ?7, status = ?8, reason = ?9, updated = ?10, \
                     generation = generation + 1 \
                     WHERE subject = ?1 AND route = ?2 AND generation = ?11",
                )?
                .execute(params![
                    t.user,
                    t.route,
                    t.client_id,
                    t.kid,
                    t.sealed,
                    t.expires,
                    t.refresh_due,
                    status,
                    reason,
                    t.updated,
                    expected_generation,
                ])?;
            Ok((n == 1, n == 1))
        })
    }

    fn delete_upstream(&mut self, user: &str, route: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM upstream_tokens WHERE subject = ?1 AND route = ?2")?
                .execute(params![user, route])?;
            Ok((n == 1, n == 1))
        })
    }

    fn upstream_due(&self, now: i64, limit: usize) -> Result<Vec<UpstreamToken>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            upstream_columns!(),
            " FROM upstream_tokens WHERE status = 'connected' AND refresh_due <= ?1 \
             ORDER BY refresh_due, subject, route LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![now, limit], upstream_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim_upstream_due(
        &mut self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<UpstreamToken>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(|tx| {
            let mut claimed: Vec<UpstreamToken> = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    upstream_columns!(),
                    " FROM upstream_tokens WHERE status = 'connected' AND refresh_due <= ?1 \
                     ORDER BY refresh_due, subject, route LIMIT ?2"
                ))?
                .query_map(params![now, limit], upstream_row)?
                .collect::<Result<_, _>>()?;
            let mut claim = tx.prepare_cached(
                "UPDATE upstream_tokens SET refresh_due = ?3, generation = generation + 1 \
                 WHERE subject = ?1 AND route = ?2",
            )?;
            for t in &mut claimed {
                claim.execute(params![t.user, t.route, until])?;
                t.refresh_due = until;
                t.generation += 1;
            }
            let changed = !claimed.is_empty();
            Ok((claimed, changed))
        })
    }

    fn all_upstream(&self) -> Result<Vec<UpstreamToken>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            upstream_columns!(),
            " FROM upstream_tokens ORDER BY subject, route"
        ))?;
        let rows = stmt.query_map([], upstream_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upstream_client(
        &self,
        route: &str,
        issuer: &str,
    ) -> Result<Option<UpstreamClient>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT route, issuer, client_id, kid, sealed, created FROM upstream_clients \
                 WHERE route = ?1 AND issuer = ?2",
            )?
            .query_row(params![route, issuer], upstream_client_row)
            .optional()?)
    }

    fn put_upstream_client(&mut self, c: &UpstreamClient) -> Result<UpstreamClient, StoreError> {
        let (kid, sealed) = match &c.secret {
            Some((k, s)) => (Some(k), Some(s)),
            None => (None, None),
        };
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "INSERT INTO upstream_clients (route, issuer, client_id, kid, sealed, created) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (route, issuer) DO NOTHING",
                )?
                .execute(params![c.route, c.issuer, c.client_id, kid, sealed, c.created])?;
            let stored = tx
                .prepare_cached(
                    "SELECT route, issuer, client_id, kid, sealed, created FROM upstream_clients \
                     WHERE route = ?1 AND issuer = ?2",
                )?
                .query_row(params![c.route, c.issuer], upstream_client_row)?;
            Ok((stored, n == 1))
        })
    }

    fn delete_upstream_client(
        &mut self,
        route: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM upstream_clients WHERE route = ?1 AND issuer = ?2 \
                     AND client_id = ?3",
                )?
                .execute(params![route, issuer, client_id])?;
            Ok((n == 1, n == 1))
        })
    }

    fn pins(&self, route: Option<&str>) -> Result<Vec<Pin>, StoreError> {
        pins::list(&self.conn, route)
    }

    fn put_pin(&mut self, pin: &Pin) -> Result<(), StoreError> {
        self.write(|tx| pins::put(tx, pin))
    }

    fn delete_pin(
        &mut self,
        route: &str,
        kind: &str,
        name: &str,
        pending_only: bool,
    ) -> Result<usize, StoreError> {
        self.write(|tx| pins::delete(tx, route, kind, name, pending_only))
    }

    fn approve_pins(
        &mut self,
        route: &str,
        kind: Option<&str>,
        name: Option<&str>,
        now: i64,
    ) -> Result<Vec<Pin>, StoreError> {
        self.write(|tx| pins::approve(tx, route, kind, name, now))
    }

    fn seq(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM changes WHERE id = 1", [], |r| r.get(0))?)
    }
}

mod pins;

#[cfg(test)]
mod tests;
