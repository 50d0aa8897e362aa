//! `compile(config) -> Snapshot`: everything a request needs, checked and
//! prepared once (routes, resolved upstreams, TLS configs, limits). A request
//! loads the current snapshot once and uses it to the end; a reload (later)
//! swaps the whole snapshot through the one `ArcSwap`.

pub(crate) mod route;
pub(crate) mod tls;

use crate::config::UpstreamAuthConfig;
use crate::config::{self, Config, ConfigError, ConfigErrors, Limits, RuntimeConfig};
use crate::http1::parse::HeadLimits;
use crate::identity::Issuers;
use crate::snapshot::route::{Route, RouteTable};
use crate::snapshot::route::{RouteAuth, UpstreamCredential};
use arc_swap::ArcSwap;
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

/// The routes, in configuration order.
fn compile_routes(config: &Config, errs: &mut Errors) -> Vec<Route> {
    let mut seen = SeenRoutes {
        has_plain: config.listen.iter().any(|l| l.tls.is_none()),
        has_tls: config.listen.iter().any(|l| l.tls.is_some()),
        names: HashSet::new(),
        publics: HashSet::new(),
    };
    let mut routes = Vec::new();
    for (index, r) in config.routes.iter().enumerate() {
        let mut cx = RouteCx {
            config,
            index,
            r,
            errs,
        };
        cx.check_unique(&mut seen);
        let upstream_addrs = cx.resolve_upstream();
        let mut route = Route::new(
            index,
            &r.name,
            r.from.clone(),
            r.to.clone(),
            upstream_addrs,
            r.mcp.is_some(),
        );
        route.audit_arguments = r.audit_arguments;
        if let Some(mcp) = &r.mcp {
            route.allowed_origins = mcp.allowed_origins.clone();
        }
        route.auth = cx.auth();
        if let Some(rules) = &r.policy {
            cx.policy(rules, &mut route);
        }
        if let Some(pin) = &r.pin {
            route.pin = cx.pin(pin);
        }
        if let Some(screen) = &r.screen {
            route.screen = cx.screen(screen);
            route.screen_counts = route
                .screen
                .as_ref()
                .map(|s| Arc::new(crate::metrics::ScreenCounts::new(s.detectors())));
        }
        cx.content_criteria(&route);
        routes.push(route);
    }
    routes
}

/// What the routes checked so far have used, and which listener kinds exist.
struct SeenRoutes<'c> {
    has_plain: bool,
    has_tls: bool,
    names: HashSet<&'c str>,
    publics: HashSet<(bool, String, u16, String)>,
}

/// The route being compiled: its configuration, its position, and where its
/// errors go.
struct RouteCx<'c, 'e, 't> {
    config: &'c Config,
    index: usize,
    r: &'c config::RouteConfig,
    errs: &'e mut Errors<'t>,
}

impl<'c> RouteCx<'c, '_, '_> {
    /// An error located at this route's `key` (the route's nth occurrence).
    fn at(&mut self, key: &str, message: String) {
        self.errs.at(key, "", self.index, message);
    }

    /// A unique non-empty name and public URL, with a listener of its scheme.
    fn check_unique(&mut self, seen: &mut SeenRoutes<'c>) {
        let (index, r) = (self.index, self.r);
        if r.name.is_empty() {
            self.at(
                "from",
                format!("route #{}: name must not be empty", index + 1),
            );
        } else if !seen.names.insert(r.name.as_str()) {
            self.at("from", format!("route name {:?} is used twice", r.name));
        }
        if !seen.publics.insert((
            r.from.tls,
            r.from.host.clone(),
            r.from.port,
            r.from.path.clone(),
        )) {
            self.at(
                "from",
                format!(
                    "route {:?}: public URL {} is already routed",
                    r.name, r.from
                ),
            );
        }
        if r.from.tls && !seen.has_tls {
            self.at(
                "from",
                format!(
                    "route {:?}: {} is https but no listener has tls",
                    r.name, r.from
                ),
            );
        }
        if !r.from.tls && !seen.has_plain {
            self.at(
                "from",
                format!(
                    "route {:?}: {} is http but every listener has tls",
                    r.name, r.from
                ),
            );
        }
    }

    /// The upstream's addresses (resolved now).
    fn resolve_upstream(&mut self) -> Vec<SocketAddr> {
        let r = self.r;
        let host = r.to.host.trim_start_matches('[').trim_end_matches(']');
        match (host, r.to.port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                self.at(
                    "to",
                    format!("route {:?}: cannot resolve upstream {}: {e}", r.name, r.to),
                );
                Vec::new()
            }
        }
    }

    /// The route's `auth` (with its upstream credential), checking that
    /// `upstream_auth` comes only with it.
    fn auth(&mut self) -> Option<RouteAuth> {
        let r = self.r;
        let Some(auth) = &r.auth else {
            if r.upstream_auth.is_some() {
                self.at(
                    "upstream_auth",
                    format!("route {:?}: upstream_auth needs auth", r.name),
                );
            }
            return None;
        };
        if r.mcp.is_none() {
            self.at(
                "auth",
                format!("route {:?}: auth needs an MCP route (`mcp: {{}}`)", r.name),
            );
        }
        let issuers_config = &self.config.identity.issuers;
        let mut issuers = Vec::new();
        let mut issuer_urls = Vec::new();
        let mut builtin = false;
        for name in &auth.issuers {
            if name == crate::authz::settings::ISSUER_NAME {
                match &self.config.authorization_server {
                    Some(a) => {
                        builtin = true;
                        issuer_urls.push(a.issuer.clone());
                    }
                    None => self.at(
                        "issuers",
                        format!(
                            "route {:?}: issuer \"portcullis\" needs the `authorization_server` section",
                            r.name
                        ),
                    ),
                }
                continue;
            }
            match issuers_config.iter().position(|c| &c.name == name) {
                Some(i) => {
                    issuers.push(i);
                    issuer_urls.push(issuers_config[i].issuer.clone());
                }
                None => self.at(
                    "issuers",
                    format!(
                        "route {:?}: unknown issuer {name:?} (not in identity.issuers)",
                        r.name
                    ),
                ),
            }
        }
        if auth.issuers.is_empty() {
            self.at(
                "auth",
                format!("route {:?}: auth needs at least one issuer", r.name),
            );
        }
        let upstream = self.upstream_credential();
        let oauth2 = self.upstream_oauth2(auth);
        Some(RouteAuth {
            issuers,
            builtin,
            issuer_urls,
            scopes: auth.scopes.clone(),
            audience: r.from.to_string(),
            metadata_url: RouteAuth::metadata_url_for(&r.from),
            upstream,
            oauth2,
        })
    }

    /// The route's upstream OAuth client (the user's own upstream token).
    fn upstream_oauth2(
        &mut self,
        auth: &config::AuthConfig,
    ) -> Option<Arc<crate::snapshot::route::UpstreamOAuth2>> {
        let r = self.r;
        let o = r.upstream_auth.as_ref()?.oauth2.as_ref()?;
        let ua = r.upstream_auth.as_ref()?;
        if ua.static_credential.is_some() || ua.none {
            self.at(
                "oauth2",
                format!(
                    "route {:?}: upstream_auth.oauth2 goes alone or with assertion",
                    r.name
                ),
            );
        }
        if auth.issuers != [crate::authz::settings::ISSUER_NAME] {
            self.at(
                "oauth2",
                format!(
                    "route {:?}: upstream_auth.oauth2 needs auth: {{ issuers: [portcullis] }} only (its users log in and connect through portcullis)",
                    r.name
                ),
            );
        }
        if self.config.vault.is_none() {
            self.at(
                "oauth2",
                format!("route {:?}: upstream_auth.oauth2 needs the `vault` section (the keys its tokens are sealed with)", r.name),
            );
        }
        if !crate::http1::is_token(o.header.as_bytes()) {
            self.at(
                "oauth2",
                format!("route {:?}: invalid oauth2 header name", r.name),
            );
        }
        if o.discover {
            for (what, set) in [
                ("authorization_url", !o.authorization_url.is_empty()),
                ("token_url", !o.token_url.is_empty()),
                ("revocation_url", o.revocation_url.is_some()),
                ("issuer", o.issuer.is_some()),
            ] {
                if set {
                    self.at(
                        "oauth2",
                        format!(
                            "route {:?}: oauth2.{what} comes from the upstream's metadata with discover: true; remove it",
                            r.name
                        ),
                    );
                }
            }
        } else {
            for (what, missing) in [
                ("client_id", o.client_id.is_empty()),
                ("authorization_url", o.authorization_url.is_empty()),
                ("token_url", o.token_url.is_empty()),
            ] {
                if missing {
                    self.at(
                        "oauth2",
                        format!(
                            "route {:?}: oauth2.{what} is required (or discover: true)",
                            r.name
                        ),
                    );
                }
            }
        }
        for (what, url) in [
            ("authorization_url", Some(&o.authorization_url)),
            ("token_url", Some(&o.token_url)),
            ("revocation_url", o.revocation_url.as_ref()),
        ] {
            if let Some(url) = url.filter(|u| !u.is_empty()) {
                let ok = crate::authz::Uri::parse(url).is_some_and(|u| {
                    u.scheme == "https"
                        || (u.scheme == "http"
                            && u.authority.as_ref().is_some_and(|a| a.is_loopback()))
                });
                if !ok {
                    self.at(
                        "oauth2",
                        format!(
                            "route {:?}: oauth2.{what} must be https (http on loopback only)",
                            r.name
                        ),
                    );
                }
            }
        }
        let prefix = if o.header.eq_ignore_ascii_case("authorization") {
            format!("{}: Bearer ", o.header)
        } else {
            format!("{}: ", o.header)
        };
        Some(Arc::new(crate::snapshot::route::UpstreamOAuth2 {
            config: o.clone(),
            prefix: prefix.into_bytes(),
        }))
    }

    /// What the upstream gets instead of the client's token: one of
    /// assertion (the default), static, none.
    fn upstream_credential(&mut self) -> UpstreamCredential {
        let r = self.r;
        let default_auth = UpstreamAuthConfig::default();
        let ua = r.upstream_auth.as_ref().unwrap_or(&default_auth);
        let set = usize::from(ua.assertion.is_some())
            + usize::from(ua.static_credential.is_some())
            + usize::from(ua.none);
        if set > 1 {
            self.at(
                "upstream_auth",
                format!(
                    "route {:?}: upstream_auth takes one of assertion, static, none",
                    r.name
                ),
            );
        }
        match (&ua.assertion, &ua.static_credential, ua.none) {
            (_, Some(s), _) => {
                if !crate::http1::is_token(s.header.as_bytes())
                    || s.value
                        .bytes()
                        .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
                {
                    self.at(
                        "upstream_auth",
                        format!("route {:?}: invalid static header", r.name),
                    );
                }
                UpstreamCredential::Static(format!("{}: {}\r\n", s.header, s.value).into_bytes())
            }
            (_, _, true) => UpstreamCredential::None,
            // The user's own upstream token alone (no assertion unless asked).
            (None, None, false) if ua.oauth2.is_some() => UpstreamCredential::None,
            (assertion, None, false) => {
                let assertion = assertion.as_ref();
                let header = assertion.map_or("X-Portcullis-Identity", |a| a.header.as_str());
                if !crate::http1::is_token(header.as_bytes()) {
                    self.at(
                        "upstream_auth",
                        format!("route {:?}: invalid assertion header name", r.name),
                    );
                }
                UpstreamCredential::Assertion {
                    bearer: header.eq_ignore_ascii_case("authorization"),
                    header: header.to_string(),
                    audience: assertion
                        .and_then(|a| a.audience.clone())
                        .unwrap_or_else(|| r.to.to_string()),
                }
            }
        }
    }

    /// The route's policy, set on `route` unless it is empty. Its errors are
    /// located at the nth `policy` key (counting only routes that have one).
    fn policy(&mut self, rules: &[crate::config::policy::RuleConfig], route: &mut Route) {
        let (config, r) = (self.config, self.r);
        let nth = config.routes[..self.index]
            .iter()
            .filter(|o| o.policy.is_some())
            .count();
        if r.mcp.is_none() {
            self.errs.at(
                "policy",
                "",
                nth,
                format!(
                    "route {:?}: policy needs an MCP route (`mcp: {{}}`)",
                    r.name
                ),
            );
        }
        match crate::policy::Policy::compile(rules, &config.policies, &r.name) {
            Ok(p) if p.is_empty() => {}
            Ok(p) if p.has_step_up() && route.auth.is_none() => self.errs.at(
                "policy",
                "",
                nth,
                format!(
                    "route {:?}: step_up rules need a route with auth (the user authorizes again)",
                    r.name
                ),
            ),
            Ok(p) => {
                route.policy_reads_headers = p.uses_headers();
                route.policy = Some(p);
            }
            Err(list) => {
                for message in list {
                    self.errs
                        .at("policy", "", nth, format!("route {:?}: {message}", r.name));
                }
            }
        }
    }
}

impl RouteCx<'_, '_, '_> {
    /// The policy's `content` criteria must name detectors the route's
    /// screen runs (unless the screen itself failed to compile).
    fn content_criteria(&mut self, route: &Route) {
        let (Some(policy), r) = (&route.policy, self.r) else {
            return;
        };
        if r.screen.is_some() && route.screen.is_none() {
            return;
        }
        let nth = self.config.routes[..self.index]
            .iter()
            .filter(|o| o.policy.is_some())
            .count();
        for message in policy.unscreened_content(route.screen.as_deref()) {
            self.errs
                .at("policy", "", nth, format!("route {:?}: {message}", r.name));
        }
    }

    /// The route's `pin` section, compiled (`None` when every kind is off;
    /// its error located at the nth `pin` key).
    fn pin(&mut self, pin: &crate::config::pin::PinConfig) -> Option<Arc<crate::pin::RoutePin>> {
        let r = self.r;
        if r.mcp.is_none() {
            let nth = self.config.routes[..self.index]
                .iter()
                .filter(|o| o.pin.is_some())
                .count();
            self.errs.at(
                "pin",
                "",
                nth,
                format!("route {:?}: pin needs an MCP route (`mcp: {{}}`)", r.name),
            );
            return None;
        }
        crate::pin::RoutePin::compile(pin).map(Arc::new)
    }

    /// The route's `screen` section, compiled (its errors located at the
    /// nth `screen` key).
    fn screen(
        &mut self,
        screen: &crate::config::screen::ScreenConfig,
    ) -> Option<Arc<crate::screen::Screen>> {
        let (config, r) = (self.config, self.r);
        let nth = config.routes[..self.index]
            .iter()
            .filter(|o| o.screen.is_some())
            .count();
        let (compiled, mut errors) = match crate::screen::Screen::compile(screen) {
            Ok(s) => (Some(Arc::new(s)), Vec::new()),
            Err(list) => (None, list),
        };
        if r.mcp.is_none() {
            errors.push("screen needs an MCP route (`mcp: {}`)".into());
        }
        let ok = errors.is_empty();
        for message in errors {
            self.errs.at(
                "screen",
                "",
                nth,
                format!("route {:?}: screen: {message}", r.name),
            );
        }
        compiled.filter(|_| ok)
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
mod tests {
    use super::*;

    #[test]
    fn reports_every_cross_field_error_with_a_line() {
        let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/mcp
    to: http://127.0.0.1:9000/mcp
  - name: a
    from: https://mcp.example.com/x
    to: http://127.0.0.1:9000/mcp
";
        let errs = from_text(text, Path::new("c.yaml"))
            .err()
            .expect("must fail")
            .0;
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{msgs:#?}");
        assert!(msgs[0].contains("used twice"), "{msgs:#?}");
        assert!(msgs[0].starts_with("c.yaml:8:"), "{msgs:#?}");
        assert!(msgs[1].starts_with("c.yaml:8:"), "{msgs:#?}");
        assert!(msgs[1].contains("no listener has tls"), "{msgs:#?}");
    }

    /// `upstream_auth.oauth2`: every endpoint configured, or `discover`
    /// with none of them.
    #[test]
    fn upstream_oauth2_endpoints_are_configured_or_discovered() {
        let text = |oauth2: &str| {
            format!(
                "listen: [{{address: 127.0.0.1:8080}}]
authorization_server: {{issuer: 'http://127.0.0.1:8080', login: {{dev_users: [{{sub: a}}]}}}}
store: {{path: /tmp/portcullis-snapshot-test.db}}
vault: {{keys: [{{id: k1, key: '{}'}}]}}
routes:
  - name: gh
    from: http://127.0.0.1:8080/gh
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
    upstream_auth: {{oauth2: {oauth2}}}
",
                "ab".repeat(32)
            )
        };
        let errors = |oauth2: &str| -> Vec<String> {
            match from_text(&text(oauth2), Path::new("c.yaml")) {
                Ok(_) => vec![],
                Err(e) => e.0.iter().map(|e| e.message.clone()).collect(),
            }
        };
        assert_eq!(errors("{discover: true}"), Vec::<String>::new());
        assert_eq!(
            errors("{discover: true, client_id: pre-registered, scopes: [repo]}"),
            Vec::<String>::new()
        );
        assert_eq!(
            errors("{client_id: c, authorization_url: 'https://gh/a', token_url: 'https://gh/t'}"),
            Vec::<String>::new()
        );
        let e = errors("{client_id: c}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("oauth2.authorization_url is required (or discover: true)"));
        assert!(e[1].contains("oauth2.token_url is required"));
        let e = errors("{authorization_url: 'https://gh/a', token_url: 'https://gh/t'}");
        assert!(
            e.len() == 1 && e[0].contains("oauth2.client_id is required"),
            "{e:?}"
        );
        let e = errors("{discover: true, token_url: 'https://gh/t', issuer: 'https://gh'}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0]
            .contains("oauth2.token_url comes from the upstream's metadata with discover: true"));
        assert!(e[1].contains("oauth2.issuer comes from"));
    }

    #[test]
    fn missing_certificate_files_are_errors() {
        let text = "\
listen:
  - address: 127.0.0.1:8443
    tls:
      certificates:
        - { cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem }
routes:
  - name: a
    from: https://127.0.0.1:8443/mcp
    to: http://127.0.0.1:9000/mcp
";
        let errs = from_text(text, Path::new("c.yaml"))
            .err()
            .expect("must fail")
            .0;
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("/nonexistent/c.pem"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[0].line, Some(5));
    }

    #[test]
    fn screen_errors_are_located_and_a_valid_screen_is_compiled() {
        let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {}
    screen: { custom: [{ name: acme_id, regex: 'ACME-[0-9' }] }
  - name: b
    from: http://127.0.0.1:8080/b
    to: http://127.0.0.1:9000/mcp
    screen: {}
";
        let errs = from_text(text, Path::new("c.yaml"))
            .err()
            .expect("must fail")
            .0;
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{msgs:#?}");
        assert!(
            msgs[0].starts_with(
                "c.yaml:8:5: route \"a\": screen: custom detector \"acme_id\": invalid regex"
            ),
            "{msgs:#?}"
        );
        assert!(msgs[1].starts_with("c.yaml:12:5: route \"b\""), "{msgs:#?}");
        assert!(msgs[1].contains("needs an MCP route"), "{msgs:#?}");
        let ok = text
            .replace("'ACME-[0-9'", "'ACME-[0-9]+'")
            .replace("    screen: {}", "    mcp: {}\n    screen: {}");
        let snap = from_text(&ok, Path::new("c.yaml")).unwrap();
        assert!(snap.routes.all().iter().all(|r| r.screen.is_some()));
    }

    #[test]
    fn content_criteria_must_name_what_the_screen_runs() {
        let route = |screen: &str, content: &str| {
            format!(
                "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
{screen}    policy:
      - deny: {{ content: {content} }}
"
            )
        };
        let err = |text: &str| -> Vec<String> {
            match from_text(text, Path::new("c.yaml")) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
            }
        };
        let msgs = err(&route("", "{ detector: aws_key }"));
        assert_eq!(msgs.len(), 1, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("c.yaml:8:5: route \"a\": content: detector \"aws_key\" needs the route's `screen` section"),
            "{msgs:#?}"
        );
        let custom = "    screen: { custom: [{ name: acme_id, regex: 'ACME-[0-9]+' }] }\n";
        let msgs = err(&route(custom, "{ detector: acme_idd }"));
        assert!(
            msgs.len() == 1 && msgs[0].contains("the route's screen runs no detector \"acme_idd\""),
            "{msgs:#?}"
        );
        assert!(err(&route(custom, "{ detector: acme_id }")).is_empty());
        assert!(err(&route(custom, "{ group: custom }")).is_empty());
        assert!(err(&route("    screen: {}\n", "{ group: secrets }")).is_empty());
    }

    #[test]
    fn pinning_needs_an_mcp_route_and_the_store() {
        let text = "\
listen:
  - address: 127.0.0.1:8080
routes:
  - name: a
    from: http://127.0.0.1:8080/a
    to: http://127.0.0.1:9000/mcp
    mcp: {}
    pin: { tools: enforce }
  - name: b
    from: http://127.0.0.1:8080/b
    to: http://127.0.0.1:9000/mcp
    pin: { prompts: record }
";
        let errs = from_text(text, Path::new("c.yaml"))
            .err()
            .expect("must fail")
            .0;
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{msgs:#?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("route \"b\": pin needs an MCP route")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("pin keeps the pinned definitions in the store")),
            "{msgs:#?}"
        );
        let bad_mode = text.replace("tools: enforce", "tools: strict");
        let errs = from_text(&bad_mode, Path::new("c.yaml"))
            .err()
            .expect("must fail")
            .0;
        assert!(errs[0].to_string().contains("strict"), "{}", errs[0]);
        let ok = text
            .replace(
                "    pin: { prompts: record }",
                "    mcp: {}\n    pin: { prompts: record }",
            )
            .replace("routes:", "store: { path: /tmp/pins.db }\nroutes:");
        let snap = from_text(&ok, Path::new("c.yaml")).unwrap();
        let a = snap.routes.get(0).pin.as_deref().unwrap();
        assert_eq!(
            a.mode(crate::pin::Kind::Tool),
            crate::config::pin::PinMode::Enforce
        );
        assert_eq!(
            a.mode(crate::pin::Kind::Prompt),
            crate::config::pin::PinMode::Off
        );
        assert!(snap.pin_store.is_some());
        let summary = snap.summary();
        assert!(summary.contains("(mcp; pin: tools enforce)"), "{summary}");
        assert!(summary.contains("(mcp; pin: prompts record)"), "{summary}");
        // Every kind off: no pinning, and the store is then unused.
        let off = ok
            .replace("pin: { tools: enforce }", "pin: {}")
            .replace("pin: { prompts: record }", "pin: { tools: off }");
        let snap = from_text(&off, Path::new("c.yaml")).unwrap();
        assert!(snap.routes.all().iter().all(|r| r.pin.is_none()) && snap.pin_store.is_none());
    }
}
