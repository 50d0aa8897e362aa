//! The authorization server: one [`Server`] shared by the control-plane
//! threads, answering the [`Call`]s the cores hand over. Its endpoints:
//!
//! ```text
//! GET  /.well-known/oauth-authorization-server, /.well-known/openid-configuration   metadata
//! POST /register                    RFC 7591 dynamic registration (when on)
//! GET  /authorize                   client + redirect checked, then login → consent → code
//! GET  /.portcullis/login           the development login page / POST: a user picked
//! GET  /.portcullis/callback        back from the company IdP
//! GET  /.portcullis/consent         the consent page / POST: allow or deny
//! POST /token                       authorization_code, refresh_token
//! POST /revoke                      RFC 7009
//! GET  /.portcullis/upstream/callback  back from a route's upstream (connect)
//! GET  /.portcullis/upstream/client    portcullis's client metadata document there
//! GET  /.portcullis/connections     the user's upstream accounts / POST: connect, disconnect
//! ```
//!
//! The store is behind a mutex: its operations are short transactions, and
//! only these threads (never a core) take it. What the cores need (keys,
//! revocations) is published through `issued`.

use super::clients::ClientError;
use super::http::{Answer, Call, Verb};
use super::seal::Sealer;
use super::settings::Settings;
use crate::identity::minted::{Issued, MintKey};
use crate::store::{Store, StoreError};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Paths the authorization server answers; the cores hand these over.
pub(crate) fn is_endpoint(path: &str) -> bool {
    matches!(
        path,
        "/.well-known/oauth-authorization-server"
            | "/.well-known/openid-configuration"
            | "/register"
            | "/authorize"
            | "/token"
            | "/revoke"
    ) || path.starts_with("/.portcullis/")
}

/// Counters for Prometheus (`portcullis_authz_*`).
#[derive(Default)]
pub struct Counters {
    pub registrations: AtomicU64,
    pub metadata_documents: AtomicU64,
    pub authorizations: AtomicU64,
    pub logins: AtomicU64,
    pub consents: AtomicU64,
    pub codes: AtomicU64,
    pub tokens: AtomicU64,
    pub refreshes: AtomicU64,
    pub reuse_detected: AtomicU64,
    pub revocations: AtomicU64,
    pub errors: AtomicU64,
    /// Periodic store reads (revocations, keys) that failed.
    pub store_errors: AtomicU64,
    /// 1 while the last periodic store read worked (a gauge).
    pub store_up: AtomicU64,
    /// 1 while a shared store's change notifications are being received.
    pub store_watch: AtomicU64,
    /// Change notifications received from a shared store.
    pub store_notifications: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, c, help) in [
            (
                "registrations",
                &self.registrations,
                "Clients registered dynamically",
            ),
            (
                "metadata_documents",
                &self.metadata_documents,
                "Client ID Metadata Documents fetched",
            ),
            (
                "authorizations",
                &self.authorizations,
                "Authorization requests accepted",
            ),
            ("logins", &self.logins, "Users logged in"),
            ("consents", &self.consents, "Consents given"),
            ("codes", &self.codes, "Authorization codes issued"),
            (
                "tokens",
                &self.tokens,
                "Tokens issued for an authorization code",
            ),
            (
                "refreshes",
                &self.refreshes,
                "Tokens issued for a refresh token",
            ),
            (
                "reuse_detected",
                &self.reuse_detected,
                "Replayed codes and reused refresh tokens (their grant revoked)",
            ),
            ("revocations", &self.revocations, "Grants revoked"),
            (
                "errors",
                &self.errors,
                "Requests refused with an OAuth error",
            ),
        ] {
            let _ = writeln!(out, "# HELP portcullis_authz_{name}_total {help}.\n# TYPE portcullis_authz_{name}_total counter\nportcullis_authz_{name}_total {}", c.load(Ordering::Relaxed));
        }
        for (name, c, kind, help) in [
            ("store_errors_total", &self.store_errors, "counter", "Periodic reads of the store (revocations, keys) that failed"),
            ("store_notifications_total", &self.store_notifications, "counter", "Change notifications received from the shared store"),
            ("store_up", &self.store_up, "gauge", "1 while the last periodic read of the store worked"),
            ("store_watch_up", &self.store_watch, "gauge", "1 while the shared store's change notifications are received (0 with a file store: the poll does it all)"),
        ] {
            let _ = writeln!(out, "# HELP portcullis_{name} {help}.\n# TYPE portcullis_{name} {kind}\nportcullis_{name} {}", c.load(Ordering::Relaxed));
        }
    }
}

pub struct Server {
    store: Mutex<Box<dyn Store>>,
    pub(crate) sealer: Sealer,
    /// The signing keys, newest first (it signs); re-read from the store
    /// when its change sequence moves, so a key another instance made is
    /// known here within one publish.
    keys: arc_swap::ArcSwap<Vec<MintKey>>,
    /// What the cores verify with; replaced when revocations change.
    issued: Arc<ArcSwapOption<Issued>>,
    pub counters: Arc<Counters>,
    /// Where audit records go (set once the audit sink is shared).
    pub audit: std::sync::OnceLock<Box<dyn Fn(Vec<u8>) + Send + Sync>>,
    pub(crate) oidc: super::oidc::Cache,
    pub(crate) limiter: super::register::Limiter,
    /// The store's change sequence when revocations were last read.
    seen_seq: AtomicU64,
    /// Users' upstream tokens are sealed with it (absent: no `vault`).
    vault: Option<crate::vault::Vault>,
    /// Grows when an upstream connection goes away: the cores empty their
    /// token caches (shared with them as `Shared::vault_epoch`).
    pub vault_epoch: Arc<AtomicU64>,
    /// Routes' upstreams as discovered (`upstream_auth.oauth2.discover`).
    pub(crate) discovered: super::discover::Cache,
}

/// A store failure, for every endpoint: 503, never a half-done grant.
pub(crate) fn unavailable(e: &StoreError) -> Answer {
    tracing::error!(error = %e, "authorization server store failed");
    Answer::json(
        503,
        &serde_json::json!({"error": "temporarily_unavailable", "error_description": "the authorization server's store is unavailable; try again"}),
    )
    .with("retry-after", "1")
    .with("cache-control", "no-store")
}

impl Server {
    /// A server over `store`; its signing key is read from the store
    /// (sealed), or made and stored on first start.
    pub fn new(
        settings: &Settings,
        mut store: Box<dyn Store>,
        master: &[u8],
        issued: Arc<ArcSwapOption<Issued>>,
    ) -> Result<Server, String> {
        let sealer = Sealer::new(master)?;
        let keys = load_keys(&mut *store, &sealer)?;
        let vault = if settings.vault_keys.is_empty() {
            None
        } else {
            Some(
                crate::vault::Vault::new(&settings.vault_keys)
                    .map_err(|e| format!("vault: {e}"))?,
            )
        };
        let server = Server {
            store: Mutex::new(store),
            sealer,
            keys: arc_swap::ArcSwap::from_pointee(keys),
            issued,
            counters: Arc::default(),
            audit: std::sync::OnceLock::new(),
            oidc: Default::default(),
            limiter: Default::default(),
            seen_seq: AtomicU64::new(u64::MAX),
            vault,
            vault_epoch: Arc::default(),
            discovered: Default::default(),
        };
        server.publish(settings).map_err(|e| e.to_string())?;
        Ok(server)
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Box<dyn Store>> {
        // A panic while holding the store left no half transaction (each
        // operation is one): carry on with it.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn signing_key(&self) -> MintKey {
        self.keys.load()[0].clone()
    }

    pub(crate) fn vault(&self) -> Option<&crate::vault::Vault> {
        self.vault.as_ref()
    }

    /// Every core forgets its cached upstream tokens.
    pub(crate) fn bump_vault_epoch(&self) {
        self.vault_epoch.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn keys(&self) -> Arc<Vec<MintKey>> {
        self.keys.load_full()
    }

    /// Publish keys and the revoked grants whose tokens may be live to the
    /// cores, when the store changed since the last time (revocations made
    /// by `portcullis grants revoke` in another process too).
    pub fn publish(&self, settings: &Settings) -> Result<(), StoreError> {
        let now = crate::authz::unix_now();
        let max_lifetime = max_access_ttl(settings);
        let (seq, revoked) = {
            let store = self.store();
            let seq = store.seq()?;
            if seq as u64 == self.seen_seq.load(Ordering::Relaxed) {
                return Ok(());
            }
            // A grant's access tokens never outlive it: once it has expired
            // by more than the longest access-token lifetime, none is left.
            (seq, store.revoked_grants(now - max_lifetime)?)
        };
        let revoked = revoked.into_iter().collect();
        // Keys made elsewhere (another instance starting on the same store).
        let stored = self.store().keys()?;
        let signing = stored
            .iter()
            .filter(|k| !k.kid.starts_with(ASSERTION_KID))
            .count();
        if signing != self.keys.load().len() {
            match open_keys(&stored, &self.sealer) {
                Ok(keys) if !keys.is_empty() => {
                    tracing::info!(signing = %keys[0].kid(), count = keys.len(), "signing keys re-read from the store");
                    self.keys.store(Arc::new(keys));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot re-read the signing keys"),
            }
        }
        let keys = (**self.keys.load()).clone();
        self.issued.store(Some(Arc::new(Issued {
            issuer: settings.issuer.clone(),
            issuer_name: super::settings::ISSUER_NAME.into(),
            keys,
            max_lifetime,
            revoked,
        })));
        self.seen_seq.store(seq as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Answer one request.
    pub fn handle(&self, settings: &Settings, call: &Call) -> Answer {
        let answer = self.route(settings, call);
        if answer.status >= 400 {
            Counters::bump(&self.counters.errors);
        }
        answer
    }

    fn route(&self, s: &Settings, call: &Call) -> Answer {
        let path = call.path.as_str();
        let cors = matches!(
            path,
            "/.well-known/oauth-authorization-server"
                | "/.well-known/openid-configuration"
                | "/register"
                | "/token"
                | "/revoke"
        );
        if cors && call.verb == Verb::Options {
            return super::metadata::preflight();
        }
        let answer = match (call.verb, path) {
            (
                Verb::Get | Verb::Head,
                "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration",
            ) => super::metadata::answer(s),
            (Verb::Post, "/register") => super::register::register(self, s, call),
            (Verb::Get | Verb::Head, "/authorize") => super::authorize::authorize(self, s, call),
            (Verb::Get, "/.portcullis/login") => super::login::page(self, s, call),
            (Verb::Post, "/.portcullis/login") => super::login::dev_login(self, s, call),
            (Verb::Get, "/.portcullis/callback") => super::login::callback(self, s, call),
            (Verb::Get, "/.portcullis/consent") => super::consent::page(self, s, call),
            (Verb::Post, "/.portcullis/consent") => super::consent::decide(self, s, call),
            (Verb::Get, "/.portcullis/upstream/callback") => {
                super::connect::callback(self, s, call)
            }
            (Verb::Get, super::discover::DOCUMENT_PATH) => super::discover::document(s),
            (Verb::Get, "/.portcullis/connections") => super::connections::page(self, s, call),
            (Verb::Post, "/.portcullis/connections") => super::connections::act(self, s, call),
            (Verb::Post, "/token") => super::token::token(self, s, call),
            (Verb::Post, "/revoke") => super::token::revoke(self, s, call),
            (_, p) if is_endpoint(p) && !p.starts_with("/.portcullis/") || known_page(p) => {
                let allow = if p.starts_with("/.well-known/") || p == "/authorize" {
                    "GET, HEAD, OPTIONS"
                } else if known_page(p) {
                    "GET, POST"
                } else {
                    "POST, OPTIONS"
                };
                Answer::json(405, &serde_json::json!({"error": "invalid_request", "error_description": format!("{} is not allowed here", verb_name(call.verb))}))
                    .with("allow", allow)
            }
            _ => Answer::json(404, &serde_json::json!({"error": "not_found"})),
        };
        if cors {
            answer
                .with("access-control-allow-origin", "*")
                .with("access-control-expose-headers", "WWW-Authenticate")
        } else {
            answer
        }
    }

    /// Revoke a grant and tell the cores at once.
    pub(crate) fn revoke_grant(&self, s: &Settings, grant: &str, why: &str) {
        let revoked = self.store().revoke_grant(grant);
        match revoked {
            Ok(true) => {
                Counters::bump(&self.counters.revocations);
                self.audit_event("grant.revoked", &[("grant", grant), ("reason", why)]);
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot revoke a grant"),
        }
        if let Err(e) = self.publish(s) {
            tracing::error!(error = %e, "cannot publish revocations");
        }
    }

    /// One audit record of the authorization server: `{"v":1,"time":…,
    /// "event":"…", …}`; never a token, code or secret.
    pub(crate) fn audit_event(&self, event: &str, fields: &[(&str, &str)]) {
        let mut obj = serde_json::Map::new();
        obj.insert("v".into(), 1.into());
        obj.insert("time".into(), crate::audit::now_rfc3339().into());
        obj.insert("event".into(), event.into());
        for (k, v) in fields {
            obj.insert((*k).into(), (*v).into());
        }
        tracing::info!(target: "portcullis::authz", event, fields = ?fields, "authorization server");
        if let Some(write) = self.audit.get() {
            let mut line = serde_json::Value::Object(obj).to_string().into_bytes();
            line.push(b'\n');
            write(line);
        }
    }
}

fn known_page(p: &str) -> bool {
    matches!(
        p,
        "/.portcullis/login"
            | "/.portcullis/callback"
            | "/.portcullis/consent"
            | "/.portcullis/upstream/callback"
            | "/.portcullis/upstream/client"
            | "/.portcullis/connections"
    )
}

fn verb_name(v: Verb) -> &'static str {
    match v {
        Verb::Get => "GET",
        Verb::Head => "HEAD",
        Verb::Post => "POST",
        Verb::Options => "OPTIONS",
        Verb::Other => "this method",
    }
}

/// The longest access-token lifetime any client gets.
pub(crate) fn max_access_ttl(s: &Settings) -> i64 {
    s.registered
        .iter()
        .filter_map(|c| c.access_ttl.map(|t| t.0.as_secs() as i64))
        .fold(s.access_ttl, i64::max)
}

/// The signing keys from the store, or a new one stored on first start.
fn load_keys(store: &mut dyn Store, sealer: &Sealer) -> Result<Vec<MintKey>, String> {
    let stored = store.keys().map_err(|e| e.to_string())?;
    let mut keys = open_keys(&stored, sealer)?;
    if keys.is_empty() {
        use super::seal::Purpose;
        let secret = sealer.random::<32>();
        let kid = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            sealer.random::<9>(),
        );
        let sealed = sealer.seal(Purpose::SigningKey, &secret);
        store
            .put_key(&kid, crate::authz::unix_now(), sealed.as_bytes())
            .map_err(|e| e.to_string())?;
        tracing::info!(kid = %kid, "made the authorization server's signing key");
        keys.push(MintKey::new(&kid, &secret));
    }
    Ok(keys)
}

/// The identity assertion key is kept beside the signing keys, its kid
/// prefixed with this.
const ASSERTION_KID: &str = "assertion:";

/// The stored signing keys opened, newest first (it signs).
fn open_keys(stored: &[crate::store::SigningKey], sealer: &Sealer) -> Result<Vec<MintKey>, String> {
    use super::seal::Purpose;
    let mut keys = Vec::new();
    for k in stored
        .iter()
        .rev()
        .filter(|k| !k.kid.starts_with(ASSERTION_KID))
    {
        let secret = sealer.open(Purpose::SigningKey, std::str::from_utf8(&k.sealed).unwrap_or("")).ok_or_else(|| {
            format!("signing key {} in the store does not open with this secret: the store was made with another authorization_server.secret", k.kid)
        })?;
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| format!("signing key {} is not 32 bytes", k.kid))?;
        keys.push(MintKey::new(&k.kid, &secret));
    }
    Ok(keys)
}

impl Server {
    /// The identity assertion key every instance on this store signs with
    /// (kid, PKCS#8), made and kept (sealed) on first use. Instances started
    /// together on an empty store each take the oldest kept one.
    pub(crate) fn assertion_key(&self) -> Result<(String, zeroize::Zeroizing<Vec<u8>>), String> {
        use super::seal::Purpose;
        for attempt in 0..2 {
            let stored = self.store().keys().map_err(|e| e.to_string())?;
            if let Some(k) = stored.iter().find(|k| k.kid.starts_with(ASSERTION_KID)) {
                let pkcs8 = self
                    .sealer
                    .open(
                        Purpose::AssertionKey,
                        std::str::from_utf8(&k.sealed).unwrap_or(""),
                    )
                    .ok_or(
                        "the identity assertion key in the store does not open with this secret",
                    )?;
                let kid = k.kid[ASSERTION_KID.len()..].to_string();
                return Ok((kid, zeroize::Zeroizing::new(pkcs8)));
            }
            if attempt == 0 {
                let (kid, pkcs8) = crate::identity::AssertionSigner::new_key()?;
                let sealed = self.sealer.seal(Purpose::AssertionKey, &pkcs8);
                self.store()
                    .put_key(
                        &format!("{ASSERTION_KID}{kid}"),
                        crate::authz::unix_now(),
                        sealed.as_bytes(),
                    )
                    .map_err(|e| e.to_string())?;
                tracing::info!(kid = %kid, "made the identity assertion key (kept in the store)");
            }
        }
        Err("the identity assertion key was stored but cannot be read back".into())
    }
}

impl From<ClientError> for Answer {
    fn from(e: ClientError) -> Answer {
        match e {
            ClientError::Store(e) => unavailable(&e),
            other => super::token::oauth_error(401, "invalid_client", &other.to_string()),
        }
    }
}

impl Server {
    /// Remove expired records; how many.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        Ok(self
            .store()
            .sweep_expired(crate::authz::unix_now())?
            .total())
    }

    /// How metadata documents are fetched (`None`: not accepted).
    pub(crate) fn cimd_policy(&self, s: &Settings) -> Option<super::cimd::CimdPolicy> {
        let m = s.cimd.as_ref()?;
        // Tests only: documents on loopback, under a test CA (the draft
        // allows loopback when the authorization server is on it too).
        let extra_roots = match &m.loopback_ca_file {
            Some(ca) => match std::fs::read(&ca.0) {
                Ok(pem) => rustls_pemfile::certs(&mut pem.as_slice())
                    .filter_map(Result::ok)
                    .collect(),
                Err(e) => {
                    tracing::error!(file = %ca.0.display(), error = %e, "cannot read clients.metadata_documents.loopback_ca_file");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        Some(super::cimd::CimdPolicy {
            allowed_domains: m.allowed_domains.clone(),
            open: m.open,
            allow_loopback: m.loopback_ca_file.is_some(),
            extra_roots,
            ..Default::default()
        })
    }
}
