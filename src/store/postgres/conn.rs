//! Reaching PostgreSQL: the connection URL checked once, TLS with rustls
//! (ring), connecting, and errors that name the server but never the
//! password.

use crate::store::StoreError;
use ::postgres::config::{Host, SslMode};
use ::postgres::error::SqlState;
use ::postgres::{Client, NoTls};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting may take unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Set on every connection: how long a statement waits for a row another
/// connection has locked before failing with [`StoreError::Busy`] (SQLite's
/// busy timeout), how long one may run at all, and no notices below
/// warnings (`CREATE TABLE IF NOT EXISTS … skipping`) in the log.
const SESSION: &str =
    "SET lock_timeout = '5s'; SET statement_timeout = '30s'; SET client_min_messages = warning";

/// Why an operation failed, before it becomes a [`StoreError`]: the
/// driver's error is kept so that the caller can tell a lost connection (to
/// reconnect) and a serialization failure (to retry) from the rest.
#[derive(Debug)]
pub(crate) enum Fail {
    Store(StoreError),
    Pg(::postgres::Error),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<::postgres::Error> for Fail {
    fn from(e: ::postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl Fail {
    /// The connection is gone (closed, reset, the server shut down or
    /// terminated the session): drop it and connect again.
    pub(crate) fn lost(&self) -> bool {
        let Fail::Pg(e) = self else { return false };
        if e.is_closed() {
            return true;
        }
        if let Some(db) = e.as_db_error() {
            // Class 08: connection exception; 57P0x: shutdown, terminated.
            let code = db.code().code();
            return code.starts_with("08") || code.starts_with("57P");
        }
        source_chain(e).any(|s| s.is::<std::io::Error>())
    }

    /// Another transaction got in the way (a serialization failure or a
    /// deadlock): nothing was written, running it again is safe.
    pub(crate) fn conflict(&self) -> bool {
        matches!(self, Fail::Pg(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        }))
    }

    /// Maps a unique-key violation to [`StoreError::Exists`].
    pub(crate) fn exists(what: &'static str) -> impl Fn(Fail) -> Fail {
        move |f| match &f {
            Fail::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Fail::Store(StoreError::Exists(what))
            }
            _ => f,
        }
    }
}

fn source_chain<'a>(
    e: &'a ::postgres::Error,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
}

/// Where a PostgreSQL store is and how to reach it: the parsed URL and the
/// TLS configuration. Shown (`Display`, `Debug`) as `user@host:port/db`,
/// never with the password.
#[derive(Clone)]
pub(crate) struct Target {
    config: ::postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({}, tls: {})", self.shown, self.tls.is_some())
    }
}

/// TLS to the server: the certificates that may sign its certificate
/// (`ca_file`, PEM), or the system's (else the bundled Mozilla) roots.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSetting {
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl Target {
    /// Checks a connection URL (`postgres://user:password@host:port/db?…`
    /// or libpq's `key=value` form) and the TLS setting. Without `tls`, the
    /// connection is plain text (the URL may not ask for `sslmode=require`);
    /// with it, TLS is required and the server's certificate verified for
    /// the URL's host name. The error never contains the URL.
    pub(crate) fn new(url: &str, tls: Option<&TlsSetting>) -> Result<Target, String> {
        let mut config = ::postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection URL: {}", describe(&e)))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host (postgres://user@host:5432/db)".into());
        }
        if config.get_dbname().is_none() {
            return Err("the URL names no database (postgres://user@host:5432/db)".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = match (tls, config.get_ssl_mode()) {
            (None, SslMode::Require) => {
                return Err(
                    "the URL asks for sslmode=require: add `tls: {}` (with `ca_file` \
                            for a private CA) so the server's certificate is verified"
                        .into(),
                )
            }
            (None, _) => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            (Some(_), SslMode::Disable) => {
                return Err("the URL says sslmode=disable but `tls` is configured".into())
            }
            (Some(t), _) => {
                config.ssl_mode(SslMode::Require);
                Some(client_config(t.ca_file.as_deref())?)
            }
        };
        let shown = shown(&config);
        Ok(Target { config, tls, shown })
    }

    /// The same server and credentials, another database (tests make one
    /// per case).
    #[cfg(test)]
    pub(crate) fn with_dbname(&self, dbname: &str) -> Target {
        let mut config = self.config.clone();
        config.dbname(dbname);
        let shown = shown(&config);
        Target {
            config,
            tls: self.tls.clone(),
            shown,
        }
    }

    /// A new session, with the store's timeouts set.
    pub(crate) fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                )),
        };
        let mut client = connected.map_err(|e| self.unreachable(&e))?;
        client
            .batch_execute(SESSION)
            .map_err(|e| self.unreachable(&e))?;
        Ok(client)
    }

    fn unreachable(&self, e: &::postgres::Error) -> StoreError {
        StoreError::Backend(format!(
            "PostgreSQL at {} unreachable: {}",
            self.shown,
            describe(e)
        ))
    }

    /// The [`StoreError`] of a failed operation. `committing`: the failure
    /// came at COMMIT, so whether the write happened is unknown.
    pub(crate) fn error(&self, f: Fail, committing: bool) -> StoreError {
        let lost = f.lost();
        let e = match f {
            Fail::Store(e) => return e,
            Fail::Pg(e) => e,
        };
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return StoreError::Busy;
        }
        let at = &self.shown;
        StoreError::Backend(match (lost, committing) {
            (true, true) => format!(
                "PostgreSQL at {at}: the connection was lost while committing, whether the \
                 write happened is unknown: {}",
                describe(&e)
            ),
            (true, false) => format!(
                "PostgreSQL at {at} unreachable (connection lost): {}",
                describe(&e)
            ),
            (false, _) => format!("PostgreSQL at {at}: {}", describe(&e)),
        })
    }
}

/// `user@host:port/db`.
fn shown(config: &::postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("(user)"),
        config.get_dbname().unwrap_or("")
    )
}

/// The driver's error with its causes, but of a server error only its
/// message and code: the DETAIL of a constraint violation quotes the row's
/// values (hashes, sealed bytes).
pub(crate) fn describe(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    for cause in source_chain(e) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

/// rustls with ring: TLS 1.3 or 1.2, the server verified against `ca_file`
/// or the system's roots (the bundled Mozilla roots where it has none).
fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}
