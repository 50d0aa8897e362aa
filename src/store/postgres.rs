//! The shared backend: one PostgreSQL database for several portcullis
//! instances (the synchronous `postgres` client, on the control-plane
//! threads only).
//!
//! One connection per store, opened at `open` and again on the next call
//! after it was lost; the schema is versioned in `schema_version` and
//! migrated at open under an advisory lock, a newer one refused. Every
//! method is one transaction (a read is one statement). Isolation is READ
//! COMMITTED, and what must have one winner is written so that it has one
//! there: conditional updates (`… WHERE state = 0`, `… WHERE generation =
//! $n`, `… WHERE replaced IS NULL`) that a concurrent writer waits for and
//! then re-checks, `INSERT … ON CONFLICT`, and the grant's row locked
//! (`FOR UPDATE`) while its refresh family is rotated. Every write that
//! changed something bumps `changes.seq` last in its transaction.
//!
//! A lost connection is retried once on a new one when nothing can have
//! been committed (a read, or a write that failed before COMMIT: the server
//! rolled it back); a serialization failure or deadlock is retried too.

mod conn;
mod pins;
mod schema;

pub(crate) use conn::Fail;
pub(crate) use conn::{describe, Target, TlsSetting};

use super::{Client, ClientKind, Grant, StoreError, UpstreamClient, UpstreamStatus, UpstreamToken};
use ::postgres::types::{FromSql, ToSql};
use ::postgres::{GenericClient, Row, Statement, Transaction};
use std::cell::RefCell;
use std::collections::HashMap;

/// Tries of one operation: a lost connection or a conflict is tried again.
const ATTEMPTS: u32 = 3;

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

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One session and the statements prepared on it.
struct Conn {
    client: ::postgres::Client,
    prepared: HashMap<&'static str, Statement>,
}

/// Statements run on a session or in its transaction, each prepared once
/// per session.
struct Db<'a, C> {
    c: &'a mut C,
    prepared: &'a mut HashMap<&'static str, Statement>,
}

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, Fail> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }

    fn exec(&mut self, sql: &'static str, params: Params<'_>) -> Result<usize, Fail> {
        let s = self.statement(sql)?;
        Ok(self.c.execute(&s, params)? as usize)
    }

    fn rows(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, Fail> {
        let s = self.statement(sql)?;
        Ok(self.c.query(&s, params)?)
    }

    fn row(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>, Fail> {
        let s = self.statement(sql)?;
        Ok(self.c.query_opt(&s, params)?)
    }
}

/// The PostgreSQL store: one connection to one database. Open it twice for
/// two connections (tests do, to race writers).
pub(crate) struct PostgresStore {
    target: Target,
    conn: RefCell<Option<Conn>>,
}

impl PostgresStore {
    /// The newest schema version this build knows.
    pub(crate) const SCHEMA_VERSION: i64 = schema::MIGRATIONS.len() as i64;

    /// Connects and migrates the schema.
    #[cfg(test)]
    pub(crate) fn open(target: &Target) -> Result<Self, StoreError> {
        Self::open_migrated(target).map(|(store, _)| store)
    }

    /// As [`PostgresStore::open`], with the schema version found before
    /// migrating (0: an empty database).
    pub(crate) fn open_migrated(target: &Target) -> Result<(Self, i64), StoreError> {
        let mut client = target.connect()?;
        let found = schema::migrate(&mut client).map_err(|e| target.error(e, false))?;
        let conn = Conn {
            client,
            prepared: HashMap::new(),
        };
        let store = PostgresStore {
            target: target.clone(),
            conn: RefCell::new(Some(conn)),
        };
        Ok((store, found))
    }

    /// One read: `f` runs on the session (each statement its own
    /// transaction); run again on a new connection if the old one was lost.
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, ::postgres::Client>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.borrow_mut();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Conn { client, prepared } = connected(&mut slot, &self.target)?;
            let failed = match f(&mut Db {
                c: client,
                prepared,
            }) {
                Ok(out) => return Ok(out),
                Err(failed) => failed,
            };
            if failed.lost() {
                *slot = None;
            }
            if !(failed.lost() || failed.conflict()) || attempt >= ATTEMPTS {
                return Err(self.target.error(failed, false));
            }
        }
    }

    /// One write transaction: `f` returns its result and whether it changed
    /// anything (then the change sequence grows in the same transaction).
    /// Retried from the start after a conflict or a connection lost before
    /// COMMIT (the server rolled it back); a failed COMMIT is not retried.
    fn write<T>(
        &mut self,
        mut f: impl FnMut(&mut Db<'_, Transaction<'_>>) -> Result<(T, bool), Fail>,
    ) -> Result<T, StoreError> {
        let slot = self.conn.get_mut();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = connected(slot, &self.target)?;
            let (failed, committing) = match transact(conn, &mut f) {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            if failed.lost() {
                *slot = None;
            }
            let again = (failed.lost() || failed.conflict()) && !committing;
            if !again || attempt >= ATTEMPTS {
                return Err(self.target.error(failed, committing));
            }
        }
    }
}

/// The session, connecting first when there is none or it was closed.
fn connected<'a>(slot: &'a mut Option<Conn>, target: &Target) -> Result<&'a mut Conn, StoreError> {
    if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        *slot = Some(Conn {
            client: target.connect()?,
            prepared: HashMap::new(),
        });
    }
    Ok(slot.as_mut().expect("connected above"))
}

/// BEGIN, `f`, the change sequence, COMMIT. The error says whether it came
/// at COMMIT.
fn transact<T>(
    conn: &mut Conn,
    f: &mut impl FnMut(&mut Db<'_, Transaction<'_>>) -> Result<(T, bool), Fail>,
) -> Result<T, (Fail, bool)> {
    let Conn { client, prepared } = conn;
    let mut tx = client.transaction().map_err(|e| (Fail::Pg(e), false))?;
    let mut db = Db {
        c: &mut tx,
        prepared,
    };
    let out = f(&mut db)
        .and_then(|(out, changed)| {
            if changed {
                db.exec("UPDATE changes SET seq = seq + 1 WHERE id = 1", &[])?;
                // Delivered at commit, once per transaction: other
                // instances' watchers wake (`store::watch`).
                db.exec("SELECT pg_notify('portcullis_changes', '')", &[])?;
            }
            Ok(out)
        })
        .map_err(|e| (e, false))?;
    tx.commit().map_err(|e| (Fail::Pg(e), true))?;
    Ok(out)
}

/// Column `at` of a row; a value of the wrong type is [`StoreError::Corrupt`].
fn col<'a, T: FromSql<'a>>(r: &'a Row, at: usize) -> Result<T, Fail> {
    r.try_get(at)
        .map_err(|_| Fail::Store(StoreError::Corrupt("a stored value has the wrong type")))
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings always serialises")
}

fn list(r: &Row, at: usize) -> Result<Vec<String>, Fail> {
    let text: &str = col(r, at)?;
    serde_json::from_str(text)
        .map_err(|_| Fail::Store(StoreError::Corrupt("a stored list is not a JSON array")))
}

fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], Fail> {
    bytes
        .try_into()
        .map_err(|_| Fail::Store(StoreError::Corrupt("a stored hash is not 32 bytes")))
}

fn kind_name(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::Registered => "registered",
        ClientKind::Dynamic => "dynamic",
        ClientKind::MetadataDocument => "metadata_document",
    }
}

fn client_row(r: &Row) -> Result<Client, Fail> {
    let kind = match col::<&str>(r, 3)? {
        "registered" => ClientKind::Registered,
        "dynamic" => ClientKind::Dynamic,
        "metadata_document" => ClientKind::MetadataDocument,
        _ => return Err(StoreError::Corrupt("a client's kind is unknown").into()),
    };
    Ok(Client {
        id: col(r, 0)?,
        name: col(r, 1)?,
        redirect_uris: list(r, 2)?,
        kind,
        secret_hash: col::<Option<Vec<u8>>>(r, 4)?.map(hash32).transpose()?,
        grant_types: list(r, 5)?,
        created: col(r, 6)?,
        expires: col(r, 7)?,
    })
}

fn grant_row(r: &Row) -> Result<Grant, Fail> {
    Ok(Grant {
        id: col(r, 0)?,
        user: col(r, 1)?,
        claims: col(r, 2)?,
        client_id: col(r, 3)?,
        redirect_uri: col(r, 4)?,
        resource: col(r, 5)?,
        scopes: list(r, 6)?,
        created: col(r, 7)?,
        expires: col(r, 8)?,
        revoked: col(r, 9)?,
    })
}

/// The `status` and `reason` columns of an upstream connection's status.
fn status_columns(s: &UpstreamStatus) -> (&'static str, Option<&str>) {
    match s {
        UpstreamStatus::Connected => ("connected", None),
        UpstreamStatus::Disconnected { reason } => ("disconnected", Some(reason)),
    }
}

fn upstream_row(r: &Row) -> Result<UpstreamToken, Fail> {
    let status = match (col::<&str>(r, 7)?, col::<Option<String>>(r, 8)?) {
        ("connected", None) => UpstreamStatus::Connected,
        ("disconnected", Some(reason)) => UpstreamStatus::Disconnected { reason },
        _ => return Err(StoreError::Corrupt("an upstream token's status is unknown").into()),
    };
    Ok(UpstreamToken {
        user: col(r, 0)?,
        route: col(r, 1)?,
        client_id: col(r, 2)?,
        kid: col(r, 3)?,
        sealed: col(r, 4)?,
        expires: col(r, 5)?,
        refresh_due: col(r, 6)?,
        status,
        updated: col(r, 9)?,
        generation: col(r, 10)?,
    })
}

fn upstream_client_row(r: &Row) -> Result<UpstreamClient, Fail> {
    let kid: Option<String> = col(r, 3)?;
    let sealed: Option<Vec<u8>> = col(r, 4)?;
    Ok(UpstreamClient {
        route: col(r, 0)?,
        issuer: col(r, 1)?,
        client_id: col(r, 2)?,
        secret: kid.zip(sealed),
        created: col(r, 5)?,
    })
}

fn all<T>(rows: Vec<Row>, each: impl Fn(&Row) -> Result<T, Fail>) -> Result<Vec<T>, Fail> {
    rows.iter().map(each).collect()
}

/// The grant, its row locked until the transaction ends.
fn grant_locked(db: &mut Db<'_, Transaction<'_>>, id: &str) -> Result<Option<Grant>, Fail> {
    db.row(
        concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id = $1 FOR UPDATE"
        ),
        &[&id],
    )?
    .as_ref()
    .map(grant_row)
    .transpose()
}

fn revoke_in(db: &mut Db<'_, Transaction<'_>>, id: &str) -> Result<bool, Fail> {
    let n = db.exec(
        "UPDATE grants SET revoked = TRUE WHERE id = $1 AND NOT revoked",
        &[&id],
    )?;
    Ok(n > 0)
}

mod ops;

#[cfg(test)]
mod tests;
