//! `compile(config) -> Snapshot`: everything a request needs, checked and
//! prepared once (routes, resolved upstreams, TLS configs, limits). A request
//! loads the current snapshot once and uses it to the end; a reload (later)
//! swaps the whole snapshot through the one `ArcSwap`.

pub(crate) mod route;
mod routes;
pub(crate) mod tls;

use crate::config::UpstreamAuthConfig;
use crate::config::{self, Config, ConfigError, ConfigErrors, Limits, RuntimeConfig};
use crate::http1::parse::HeadLimits;
use crate::identity::Issuers;
use crate::snapshot::route::{Route, RouteTable};
use crate::snapshot::route::{RouteAuth, UpstreamCredential};
use arc_swap::ArcSwap;
use routes::compile_routes;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The one shared, atomically replaceable snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct ListenerSpec {
    pub address: SocketAddr,
    pub max_connections: Option<usize>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

pub struct Snapshot {
    pub routes: RouteTable,
    pub limits: Limits,
    pub head_limits: HeadLimits,
    pub upstream: UpstreamSettings,
    pub listeners: Vec<ListenerSpec>,
    pub workers: usize,
    pub pin_workers: bool,
    pub runtime: RuntimeConfig,
    pub shutdown_timeout: Duration,
    pub identity: Arc<Issuers>,
    /// Distinct for every compiled snapshot: per-core caches derived from a
    /// snapshot (verified tokens) are dropped when it changes.
    pub generation: u64,
    /// Logging (fixed at start).
    pub log: crate::config::LogConfig,
    /// The audit log (fixed at start).
    pub audit: Option<crate::config::audit::AuditConfig>,
    /// The admin listener's address (fixed at start).
    pub admin: Option<SocketAddr>,
    /// The built-in authorization server's settings (routes accepting its
    /// tokens among them).
    pub authz: Option<Arc<crate::authz::settings::Settings>>,
    /// The store pinned definitions are kept in, when a route pins.
    pub(crate) pin_store: Option<crate::store::Location>,
    /// Counters of requests that matched no route.
    pub unrouted: Arc<crate::metrics::RouteMetrics>,
    /// Behaviour baselines' settings (the tables live in the workers).
    pub behaviour: Option<Arc<crate::behaviour::Settings>>,
    /// Stops this snapshot's JWKS refresher when the snapshot is dropped.
    _refresher: RefresherStop,
}

impl Snapshot {
    /// Keep the counters of `old` for the routes that are still here (by name).
    pub fn adopt_metrics(&mut self, old: &Snapshot) {
        self.unrouted = old.unrouted.clone();
        for r in self.routes.all_mut() {
            if let Some(o) = old.routes.all().iter().find(|o| o.name == r.name) {
                r.metrics = o.metrics.clone();
                if let (Some(new), Some(old)) = (r.pin.as_mut(), o.pin.as_ref()) {
                    if let Some(new) = Arc::get_mut(new) {
                        new.counts = old.counts.clone();
                    }
                }
            }
        }
    }
}

/// Sets its flag when dropped: the JWKS refresher thread of a replaced
/// snapshot stops once the last request using that snapshot is done.
struct RefresherStop(Arc<AtomicBool>);

impl Drop for RefresherStop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Check and compile a parsed configuration. Every problem found is reported,
/// located in `file` (whose text is `text`) where possible.
pub(crate) fn compile(config: Config, text: &str, file: &Path) -> Result<Snapshot, ConfigErrors> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut errs = Errors {
        text,
        file,
        list: Vec::new(),
    };
    let listeners = compile_listeners(&config, base, &mut errs);
    check_routes_present(&config, &mut errs);
    check_log(&config.log, &mut errs);
    let identity = compile_identity(&config, base, &mut errs);
    let routes = compile_routes(&config, &mut errs);
    let upstream_tls = compile_upstream_tls(&config.upstream, base, &mut errs);
    let authz = compile_authz(&config, base, &mut errs);
    let behaviour = compile_behaviour(&config, &routes, &mut errs);
    let pin_store = compile_pin_store(&config, base, &mut errs);
    let (Some(upstream_tls), Some(identity), true) = (upstream_tls, identity, errs.list.is_empty())
    else {
        return Err(ConfigErrors(errs.list));
    };
    let mut snap = assemble(config, routes, listeners, identity, upstream_tls);
    snap.authz = authz.map(Arc::new);
    snap.behaviour = behaviour.map(Arc::new);
    snap.pin_store = pin_store;
    Ok(snap)
}

/// The `behaviour` section; routes whose policies read its scores need it.
fn compile_behaviour(
    config: &Config,
    routes: &[Route],
    errs: &mut Errors,
) -> Option<crate::behaviour::Settings> {
    let Some(c) = &config.behaviour else {
        for r in routes {
            if r.policy.as_ref().is_some_and(|p| p.uses_anomaly()) {
                errs.at0(
                    "policy",
                    "",
                    format!(
                        "route {:?}: anomaly criteria and step_up rules need the top-level behaviour section",
                        r.name
                    ),
                );
            }
        }
        return None;
    };
    match crate::behaviour::Settings::compile(c) {
        Ok(s) => Some(s),
        Err(list) => {
            for message in list {
                errs.at0("behaviour", "", message);
            }
            None
        }
    }
}

/// Where pinned definitions are kept: the `store` section, needed as soon
/// as a route pins.
fn compile_pin_store(
    config: &Config,
    base: &Path,
    errs: &mut Errors,
) -> Option<crate::store::Location> {
    let pinning = config.routes.iter().any(|r| {
        r.pin
            .as_ref()
            .is_some_and(|p| crate::pin::RoutePin::compile(p).is_some())
    });
    if !pinning {
        return None;
    }
    let Some(store) = &config.store else {
        errs.at0("pin", "", "pin keeps the pinned definitions in the store: add `store: { path: … }` (or `store: { postgres: … }`)".into());
        return None;
    };
    match crate::store::Location::from_config(store, base) {
        Ok(l) => Some(l),
        // Reported by the authorization server's checks when it has one.
        Err(e) if config.authorization_server.is_none() => {
            errs.at0("store", "", format!("store: {e}"));
            None
        }
        Err(_) => None,
    }
}

/// The listeners: each address once, and each TLS listener's certificates
/// loaded into a server config.
fn compile_listeners(config: &Config, base: &Path, errs: &mut Errors) -> Vec<ListenerSpec> {
    if config.listen.is_empty() {
        errs.at0("listen", "", "at least one listener is required".into());
    }
    let mut seen_addr = HashSet::new();
    let mut cert_index = 0usize;
    let mut listeners = Vec::new();
    for l in &config.listen {
        let addr = l.address.to_string();
        if !seen_addr.insert(l.address) {
            errs.at0("address", &addr, format!("listener {addr} is listed twice"));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => listener_tls(&addr, t, base, &mut cert_index, errs),
        };
        listeners.push(ListenerSpec {
            address: l.address,
            max_connections: l.max_connections,
            tls,
        });
    }
    listeners
}

/// One listener's TLS server config. `cert_index` counts the `cert_file` keys
/// of all listeners so far (it locates a certificate's errors).
fn listener_tls(
    addr: &str,
    t: &config::ListenTls,
    base: &Path,
    cert_index: &mut usize,
    errs: &mut Errors,
) -> Option<Arc<rustls::ServerConfig>> {
    if t.certificates.is_empty() {
        errs.at0(
            "address",
            addr,
            format!("listener {addr}: tls needs at least one certificate"),
        );
        return None;
    }
    let mut keys = Vec::new();
    for c in &t.certificates {
        *cert_index += 1;
        let cert_index = *cert_index - 1;
        let (cert, key) = (base.join(&c.cert_file.0), base.join(&c.key_file.0));
        match tls::load_certified_key(&cert, &key) {
            Ok(k) => keys.push(k),
            Err(e) => errs.at("cert_file", "", cert_index, format!("listener {addr}: {e}")),
        }
    }
    if keys.len() != t.certificates.len() {
        return None;
    }
    match tls::server_config(keys) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            errs.at0("address", addr, format!("listener {addr}: {e}"));
            None
        }
    }
}

fn check_routes_present(config: &Config, errs: &mut Errors) {
    if config.routes.is_empty() {
        errs.at0("routes", "", "at least one route is required".into());
    }
}

fn check_log(log: &config::LogConfig, errs: &mut Errors) {
    if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
        errs.at0(
            "level",
            &log.level,
            format!("log.level: {:?} is not a tracing filter", log.level),
        );
    }
}

/// The identity issuers; `None` when any of them is wrong.
fn compile_identity(config: &Config, base: &Path, errs: &mut Errors) -> Option<Issuers> {
    match Issuers::compile(&config.identity.issuers, base) {
        Ok(i) => Some(i),
        Err(list) => {
            for (i, message) in list {
                let name = config
                    .identity
                    .issuers
                    .get(i)
                    .map_or("", |c| c.name.as_str());
                errs.at(
                    "name",
                    name,
                    0,
                    format!("identity issuer {name:?}: {message}"),
                );
            }
            None
        }
    }
}

/// The authorization server's settings, when configured.
fn compile_authz(
    config: &Config,
    base: &Path,
    errs: &mut Errors,
) -> Option<crate::authz::settings::Settings> {
    if config
        .identity
        .issuers
        .iter()
        .any(|i| i.name == crate::authz::settings::ISSUER_NAME)
    {
        errs.at0(
            "name",
            crate::authz::settings::ISSUER_NAME,
            "identity issuer name \"portcullis\" is reserved for the built-in authorization server"
                .into(),
        );
    }
    if let Some(v) = &config.vault {
        let keys: Vec<(String, String)> = v
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.key.clone()))
            .collect();
        if let Err(e) = crate::vault::Vault::new(&keys) {
            errs.at0("vault", "", format!("vault: {e}"));
        }
        if config.authorization_server.is_none() {
            errs.at0("vault", "", "vault is used by routes with upstream_auth.oauth2, which need the authorization_server section".into());
        }
    }
    let Some(cfg) = &config.authorization_server else {
        if config.store.is_some() && config.routes.iter().all(|r| r.pin.is_none()) {
            errs.at0(
                "store",
                "",
                "store is only used by the authorization_server section and by routes that pin"
                    .into(),
            );
        }
        return None;
    };
    match crate::authz::settings::compile(
        cfg,
        config.store.as_ref(),
        config.vault.as_ref(),
        &config.routes,
        base,
    ) {
        Ok(s) => Some(s),
        Err(list) => {
            for message in list {
                errs.at0("authorization_server", "", message);
            }
            None
        }
    }
}

/// The client TLS config for upstreams (with `ca_file`, when set).
fn compile_upstream_tls(
    upstream: &config::UpstreamConfig,
    base: &Path,
    errs: &mut Errors,
) -> Option<Arc<rustls::ClientConfig>> {
    let ca = upstream.ca_file.as_ref().map(|p| base.join(&p.0));
    match tls::client_config(ca.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            errs.at0("ca_file", "", format!("upstream: {e}"));
            None
        }
    }
}

/// The header limits the HTTP/1 parser takes from `limits`.
fn head_limits(limits: &Limits) -> HeadLimits {
    HeadLimits {
        max_header_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
        max_target_bytes: limits.max_target_bytes,
    }
}

fn upstream_settings(
    upstream: &config::UpstreamConfig,
    tls: Arc<rustls::ClientConfig>,
) -> UpstreamSettings {
    UpstreamSettings {
        connect_timeout: upstream.connect_timeout.0,
        response_header_timeout: upstream.response_header_timeout.0,
        read_timeout: upstream.read_timeout.0,
        pool_max_idle: upstream.pool_max_idle,
        pool_idle_timeout: upstream.pool_idle_timeout.0,
        tls,
    }
}

/// The snapshot of a configuration found free of errors; starts the JWKS
/// refresher of its issuers.
fn assemble(
    config: Config,
    routes: Vec<Route>,
    listeners: Vec<ListenerSpec>,
    identity: Issuers,
    upstream_tls: Arc<rustls::ClientConfig>,
) -> Snapshot {
    let identity = Arc::new(identity);
    let stop = Arc::new(AtomicBool::new(false));
    identity.start_refresher(stop.clone());
    let limits = config.limits;
    Snapshot {
        routes: RouteTable::new(routes),
        head_limits: head_limits(&limits),
        limits,
        upstream: upstream_settings(&config.upstream, upstream_tls),
        listeners,
        workers: config.workers.resolve(),
        pin_workers: config.pin_workers,
        runtime: config.runtime,
        shutdown_timeout: config.shutdown_timeout.0,
        identity,
        _refresher: RefresherStop(stop),
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        unrouted: Default::default(),
        behaviour: None,
        admin: config.admin.map(|a| a.address),
        authz: None,
        pin_store: None,
        audit: config.audit,
        log: config.log,
    }
}

/// Errors found while compiling, located by the nth occurrence of a key.
struct Errors<'a> {
    text: &'a str,
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, key: &str, value: &str, nth: usize, message: String) {
        let loc = config::locate_nth(self.text, key, value, nth);
        self.list.push(ConfigError {
            file: self.file.into(),
            line: loc.map(|l| l.0),
            column: loc.map(|l| l.1),
            message,
        });
    }

    fn at0(&mut self, key: &str, value: &str, message: String) {
        self.at(key, value, 0, message);
    }
}

/// Load, parse and compile a configuration file.
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let (config, text) = config::load(path)?;
    compile(config, &text, path)
}

impl Snapshot {
    /// What `portcullis check` prints of a valid configuration: workers,
    /// listeners, and each route with what guards it.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "workers: {}", self.workers);
        for l in &self.listeners {
            let tls = if l.tls.is_some() { " (tls)" } else { "" };
            let _ = writeln!(out, "listen: {}{tls}", l.address);
        }
        if let Some(a) = &self.authz {
            let login = match &a.login {
                crate::authz::settings::Login::Oidc(o) => format!("oidc {}", o.issuer),
                crate::authz::settings::Login::Dev(u) => {
                    format!("development login ({} users)", u.len())
                }
            };
            let _ = writeln!(
                out,
                "authorization server: {} (login: {login}; store: {}; metadata documents: {}; dynamic registration: {})",
                a.issuer,
                a.store,
                if a.cimd.is_some() { "on" } else { "off" },
                if a.dynamic_registration { "on" } else { "off" },
            );
        }
        for r in self.routes.all() {
            let mut notes = Vec::new();
            if r.mcp {
                notes.push("mcp".to_string());
            }
            if let Some(a) = &r.auth {
                notes.push(format!("auth: {}", a.issuer_urls.join(", ")));
                if !a.scopes.is_empty() {
                    notes.push(format!("scopes: {}", a.scopes.join(" ")));
                }
                if let Some(o) = &a.oauth2 {
                    notes.push(match (&o.config.client_id[..], o.config.discover) {
                        ("", _) => {
                            "user's upstream token: discovered, registered at first use".into()
                        }
                        (id, true) => {
                            format!("user's upstream token: discovered, oauth2 client {id}")
                        }
                        (id, false) => format!("user's upstream token: oauth2 client {id}"),
                    });
                }
            }
            if r.policy.is_some() {
                notes.push("policy".into());
            }
            if let Some(p) = &r.pin {
                notes.push(format!("pin: {}", p.describe()));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            let _ = writeln!(
                out,
                "route {}: {} -> {}{notes}",
                r.name, r.public, r.upstream
            );
        }
        out
    }

    /// How the process logs (fixed at start).
    pub fn log(&self) -> &config::LogConfig {
        &self.log
    }
}

/// Compile configuration text (tests, benches and the demo).
pub fn from_text(text: &str, path: &Path) -> Result<Snapshot, ConfigErrors> {
    compile(config::parse(text, path)?, text, path)
}

#[cfg(test)]
mod tests;
