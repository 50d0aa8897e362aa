//! Which backend the configuration's `store` section names, and opening it:
//! what the authorization server, `portcullis grants`, `portcullis vault`
//! and `portcullis store migrate` share.

use super::postgres::{PostgresStore, Target, TlsSetting};
use super::sqlite::SqliteStore;
use super::{Store, StoreError};
use crate::config::authz::{StoreConfig, StoreSync};
use std::path::{Path, PathBuf};

/// Where the store is.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// One SQLite file, on this host only.
    File { path: PathBuf, full_sync: bool },
    /// A PostgreSQL database, shared by every instance using it.
    Postgres(Box<Target>),
}

impl std::fmt::Display for Location {
    /// The file, or `postgresql://user@host:port/db` (never the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File { path, .. } => write!(f, "{}", path.display()),
            Location::Postgres(target) => write!(f, "postgresql://{target}"),
        }
    }
}

impl Location {
    /// From the `store` section; a relative path is taken from `base` (the
    /// configuration file's directory). The errors are sentences for
    /// `portcullis check`.
    pub(crate) fn from_config(cfg: &StoreConfig, base: &Path) -> Result<Location, String> {
        match (&cfg.path, &cfg.postgres) {
            (Some(path), None) => Ok(Location::File {
                path: base.join(&path.0),
                full_sync: cfg.sync.unwrap_or_default() == StoreSync::Full,
            }),
            (None, Some(pg)) => {
                if cfg.sync.is_some() {
                    return Err("store.sync is for the SQLite file (`path`); PostgreSQL \
                                commits are as durable as the server is configured"
                        .into());
                }
                let tls = pg.tls.as_ref().map(|t| TlsSetting {
                    ca_file: t.ca_file.as_ref().map(|p| base.join(&p.0)),
                });
                Target::new(&pg.url, tls.as_ref())
                    .map(|t| Location::Postgres(Box::new(t)))
                    .map_err(|e| format!("store.postgres.url: {e}"))
            }
            (Some(_), Some(_)) => Err("store: give `path` (one SQLite file) or `postgres` (a \
                                       database several instances share), not both"
                .into()),
            (None, None) => Err(
                "store needs `path: FILE` (one SQLite file) or `postgres: { \
                                 url: … }` (a database several instances share)"
                    .into(),
            ),
        }
    }

    /// Whether several instances may share it (then nothing the
    /// authorization server needs may live in local files).
    pub(crate) fn shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// Opens the store (creating the SQLite file and its directory when
/// missing) and migrates its schema; a newer schema is refused.
pub(crate) fn open(location: &Location) -> Result<Box<dyn Store>, StoreError> {
    migrate(location).map(|(store, _)| store)
}

/// The schema versions before and after opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// 0: the store was empty.
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// As [`open`], also saying what migrating did.
pub(crate) fn migrate(location: &Location) -> Result<(Box<dyn Store>, Migrated), StoreError> {
    match location {
        Location::File { path, full_sync } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("creating {}: {e}", dir.display()),
                })?;
            }
            let (store, from) = SqliteStore::open_migrated(path, *full_sync)?;
            let to = SqliteStore::SCHEMA_VERSION;
            Ok((Box::new(store), Migrated { from, to }))
        }
        Location::Postgres(target) => {
            let (store, from) = PostgresStore::open_migrated(target)?;
            let to = PostgresStore::SCHEMA_VERSION;
            Ok((Box::new(store), Migrated { from, to }))
        }
    }
}
