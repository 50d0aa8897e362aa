//! Each route compiled: its upstream, credentials, policy, screening and
//! pinning, with errors located at the key that caused them.

use super::*;

/// The routes, in configuration order.
pub(super) fn compile_routes(config: &Config, errs: &mut Errors) -> Vec<Route> {
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
                route.policy_reads_arguments = p.uses_arguments();
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
