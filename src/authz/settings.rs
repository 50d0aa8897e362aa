//! The authorization server's configuration, checked and compiled: the
//! issuer, how users log in, which clients exist, lifetimes, and the
//! resources (routes accepting `portcullis` tokens) a grant can be bound to.
//! Part of the snapshot: reloads swap it with the routes.

use crate::config::authz::{
    AuthorizationServerConfig, DevUser, OidcLoginConfig, RegisteredClient, StoreConfig,
};
use crate::config::{RouteConfig, Url};

/// The name routes use for the built-in issuer (`auth.issuers: [portcullis]`).
pub(crate) const ISSUER_NAME: &str = "portcullis";

/// One route a grant can be bound to.
#[derive(Debug, Clone)]
pub struct Resource {
    pub route: String,
    /// RFC 8707 canonical form, what requests are compared in.
    pub canonical: String,
    /// The route's public URL as its metadata names it: the tokens' `aud`.
    pub audience: String,
    pub scopes: Vec<String>,
    /// The user's own token at the route's upstream (`upstream_auth.oauth2`).
    pub upstream: Option<crate::config::authz::UpstreamOAuth2>,
    /// The route's `to`: where discovery reads the upstream's metadata.
    pub upstream_url: String,
}

#[derive(Debug)]
pub enum Login {
    Oidc(OidcLoginConfig),
    Dev(Vec<DevUser>),
}

#[derive(Debug)]
pub struct Settings {
    /// The origin, no trailing slash.
    pub issuer: String,
    pub issuer_url: Url,
    pub login: Login,
    pub cimd: Option<crate::config::authz::MetadataDocumentsConfig>,
    pub dynamic_registration: bool,
    pub registration_ttl: i64,
    pub registered: Vec<RegisteredClient>,
    pub access_ttl: i64,
    pub refresh_ttl: i64,
    pub refresh_grace: i64,
    pub consent_ttl: i64,
    pub resources: Vec<Resource>,
    pub secret: Option<String>,
    /// Where the store is (`store`).
    pub(crate) store: crate::store::Location,
    /// The vault's keys (id, key): the first seals, all open. Fixed at start.
    pub vault_keys: Vec<(String, String)>,
    /// How long before expiry upstream tokens are refreshed.
    pub vault_refresh_ahead: i64,
}

impl Settings {
    /// The resource a canonical `resource` names.
    pub fn resource(&self, canonical: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.canonical == canonical)
    }

    /// An endpoint's absolute URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Whether the authorization server is only reachable on loopback.
    pub fn on_loopback(&self) -> bool {
        crate::authz::Uri::parse(&self.issuer)
            .and_then(|u| u.authority)
            .is_some_and(|a| a.is_loopback())
    }
}

/// Check and compile. Errors are whole sentences for `portcullis check`.
pub fn compile(
    cfg: &AuthorizationServerConfig,
    store: Option<&StoreConfig>,
    vault: Option<&crate::config::vault::VaultConfig>,
    routes: &[RouteConfig],
    base: &std::path::Path,
) -> Result<Settings, Vec<String>> {
    let mut errs = Vec::new();
    let issuer_url = match Url::parse(&cfg.issuer) {
        Ok(u) if u.path == "/" && !cfg.issuer.ends_with('/') => Some(u),
        Ok(_) => {
            errs.push(format!(
                "authorization_server.issuer {:?} must be an origin with no path and no trailing slash (https://mcp.example.com)",
                cfg.issuer
            ));
            None
        }
        Err(e) => {
            errs.push(format!("authorization_server.issuer: {e}"));
            None
        }
    };
    let login = match (&cfg.login.oidc, &cfg.login.dev_users) {
        (Some(o), None) => Some(Login::Oidc(o.clone())),
        (None, Some(users)) if !users.is_empty() => Some(Login::Dev(users.clone())),
        _ => {
            errs.push("authorization_server.login needs exactly one of `oidc` or `dev_users` (a non-empty list)".into());
            None
        }
    };
    if let Some(m) = &cfg.clients.metadata_documents {
        if m.loopback_ca_file.is_some()
            && !crate::authz::Uri::parse(&cfg.issuer)
                .and_then(|u| u.authority)
                .is_some_and(|a| a.is_loopback())
        {
            errs.push("authorization_server.clients.metadata_documents.loopback_ca_file is for tests: only allowed when the issuer is on loopback".into());
        }
    }
    let loopback = crate::authz::Uri::parse(&cfg.issuer)
        .and_then(|u| u.authority)
        .is_some_and(|a| a.is_loopback());
    if issuer_url.as_ref().is_some_and(|u| !u.tls) && !loopback {
        errs.push(format!(
            "authorization_server.issuer {:?}: an authorization server is reached over https (OAuth 2.1 §1.5); plain http only on loopback",
            cfg.issuer
        ));
    }
    if matches!(login, Some(Login::Dev(_))) && !loopback {
        errs.push("authorization_server.login.dev_users is a development login without passwords: only allowed when the issuer is on loopback (http://127.0.0.1:PORT)".into());
    }
    if cfg.tokens.access_ttl.0.as_secs() > 24 * 3600 {
        errs.push("authorization_server.tokens.access_ttl must be at most 24h".into());
    }
    for c in &cfg.clients.registered {
        check_registered(c, &mut errs);
    }
    let resources = resources(routes);
    if resources.is_empty() {
        errs.push("authorization_server: no route accepts its tokens (add `portcullis` to a route's auth.issuers)".into());
    }
    let store = match store.map(|s| crate::store::Location::from_config(s, base)) {
        Some(Ok(location)) => Some(location),
        Some(Err(e)) => {
            errs.push(e);
            None
        }
        None => {
            errs.push("authorization_server needs `store: { path: … }` (one file for clients, grants and keys) or `store: { postgres: { url: … } }` (a database several instances share)".into());
            None
        }
    };
    if store.as_ref().is_some_and(crate::store::Location::shared) && cfg.secret.is_none() {
        errs.push("authorization_server.secret is required with `store: { postgres: … }`: every instance must seal cookies, forms and signing keys with the same secret (without it each would keep its own in a local secret.key file)".into());
    }
    if let Some(secret) = &cfg.secret {
        if let Err(e) = crate::authz::seal::parse_secret(secret) {
            errs.push(format!("authorization_server.secret: {e}"));
        }
    }
    let (Some(issuer_url), Some(login), Some(store), true) =
        (issuer_url, login, store, errs.is_empty())
    else {
        return Err(errs);
    };
    let secs = |d: crate::config::Dur| d.0.as_secs() as i64;
    Ok(Settings {
        issuer: cfg.issuer.clone(),
        issuer_url,
        login,
        cimd: match &cfg.clients.metadata_documents {
            Some(m) if !m.enabled => None,
            Some(m) => Some(crate::config::authz::MetadataDocumentsConfig {
                allowed_domains: m.allowed_domains.clone(),
                open: m.open,
                enabled: true,
                loopback_ca_file: m.loopback_ca_file.clone(),
            }),
            None => Some(crate::config::authz::MetadataDocumentsConfig {
                allowed_domains: crate::config::authz::default_cimd_domains(),
                open: false,
                enabled: true,
                loopback_ca_file: None,
            }),
        },
        dynamic_registration: cfg.clients.dynamic_registration,
        registration_ttl: secs(cfg.clients.registration_ttl),
        registered: cfg.clients.registered.clone(),
        access_ttl: secs(cfg.tokens.access_ttl),
        refresh_ttl: secs(cfg.tokens.refresh_ttl),
        refresh_grace: secs(cfg.tokens.refresh_grace),
        consent_ttl: secs(cfg.consent_ttl),
        resources,
        secret: cfg.secret.clone(),
        store,
        vault_keys: vault.map_or_else(Vec::new, |v| {
            v.keys
                .iter()
                .map(|k| (k.id.clone(), k.key.clone()))
                .collect()
        }),
        vault_refresh_ahead: vault.map_or(300, |v| v.refresh_ahead.0.as_secs() as i64),
    })
}

fn check_registered(c: &RegisteredClient, errs: &mut Vec<String>) {
    if c.client_id.is_empty() || c.client_id.starts_with("https://") {
        errs.push(format!(
            "authorization_server.clients.registered: client_id {:?} must be non-empty and not an https URL (those are metadata documents)",
            c.client_id
        ));
    }
    if c.redirect_uris.is_empty() {
        errs.push(format!("client {:?}: redirect_uris is empty", c.client_id));
    }
    for uri in &c.redirect_uris {
        if let Err(e) = crate::authz::redirect::check(uri, c.client_secret.is_none()) {
            errs.push(format!("client {:?}: {uri:?}: {}", c.client_id, e.reason()));
        }
    }
    if c.access_ttl.is_some_and(|t| t.0.as_secs() > 24 * 3600) {
        errs.push(format!(
            "client {:?}: access_ttl must be at most 24h",
            c.client_id
        ));
    }
}

/// The routes that accept the built-in issuer's tokens.
fn resources(routes: &[RouteConfig]) -> Vec<Resource> {
    routes
        .iter()
        .filter_map(|r| {
            let auth = r.auth.as_ref()?;
            auth.issuers.iter().any(|i| i == ISSUER_NAME).then(|| {
                let audience = r.from.to_string();
                Resource {
                    route: r.name.clone(),
                    canonical: crate::authz::resource::canonical(&audience)
                        .unwrap_or_else(|_| audience.clone()),
                    audience,
                    scopes: auth.scopes.clone(),
                    upstream: r.upstream_auth.as_ref().and_then(|u| u.oauth2.clone()),
                    upstream_url: r.to.to_string(),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(auth: &str, auth_issuers: &str) -> Vec<String> {
        let text = format!(
            "listen: [{{address: 127.0.0.1:8080}}]
authorization_server:
{auth}
store: {{path: state.db}}
routes:
  - {{name: a, from: https://mcp.example.com/a, to: http://127.0.0.1:9/mcp, mcp: {{}}, auth: {{issuers: [{auth_issuers}]}}}}
"
        );
        let cfg = crate::config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
        match compile(
            cfg.authorization_server.as_ref().unwrap(),
            cfg.store.as_ref(),
            cfg.vault.as_ref(),
            &cfg.routes,
            std::path::Path::new("/tmp"),
        ) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    /// The `store` section: a file or a database, and the secret a shared
    /// store needs.
    #[test]
    fn the_store_is_a_file_or_a_database() {
        let compile_with = |auth_extra: &str, store: &str| -> Result<Settings, Vec<String>> {
            let text = format!(
                "listen: [{{address: 127.0.0.1:8080}}]
authorization_server:
  issuer: https://mcp.example.com
  login: {{oidc: {{issuer: https://login.example.com, client_id: p}}}}
{auth_extra}
{store}
routes:
  - {{name: a, from: https://mcp.example.com/a, to: http://127.0.0.1:9/mcp, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
"
            );
            let cfg = crate::config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
            compile(
                cfg.authorization_server.as_ref().unwrap(),
                cfg.store.as_ref(),
                cfg.vault.as_ref(),
                &cfg.routes,
                std::path::Path::new("/etc/portcullis"),
            )
        };
        let secret = "  secret: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let s = compile_with("", "store: {path: state.db, sync: normal}").unwrap();
        assert!(matches!(
            &s.store,
            crate::store::Location::File { path, full_sync: false }
                if path == std::path::Path::new("/etc/portcullis/state.db")
        ));
        let s = compile_with("", "store: {path: /var/lib/p/state.db}").unwrap();
        assert!(matches!(
            &s.store,
            crate::store::Location::File {
                full_sync: true,
                ..
            }
        ));
        assert_eq!(s.store.to_string(), "/var/lib/p/state.db");
        let pg = "store: {postgres: {url: 'postgres://portcullis:pw-s3cret@db.internal:5432/portcullis'}}";
        let s = compile_with(secret, pg).unwrap();
        assert!(s.store.shared());
        assert_eq!(
            s.store.to_string(),
            "postgresql://portcullis@db.internal:5432/portcullis"
        );
        assert!(!format!("{:?}", s.store).contains("pw-s3cret"));
        let cases = [
            ("", pg, "authorization_server.secret is required"),
            (secret, "store: {}", "store needs `path: FILE`"),
            (
                secret,
                "store: {path: a.db, postgres: {url: 'postgres://u@h/db'}}",
                "not both",
            ),
            (
                secret,
                "store: {sync: full, postgres: {url: 'postgres://u@h/db'}}",
                "store.sync is for the SQLite file",
            ),
            (
                secret,
                "store: {postgres: {url: 'postgres://u:pw-s3cret@h/db?nope=1'}}",
                "store.postgres.url: not a PostgreSQL connection URL",
            ),
            (
                secret,
                "store: {postgres: {url: 'postgres://u@h/db?sslmode=require'}}",
                "add `tls: {}`",
            ),
            (
                secret,
                "store: {postgres: {url: 'postgres://u@h/db', tls: {ca_file: missing.pem}}}",
                "/etc/portcullis/missing.pem",
            ),
        ];
        for (extra, store, want) in cases {
            let errs = compile_with(extra, store).err().unwrap_or_default();
            assert!(errs.iter().any(|e| e.contains(want)), "{store}: {errs:?}");
            assert!(
                !errs.iter().any(|e| e.contains("pw-s3cret")),
                "{store}: {errs:?}"
            );
        }
        let unknown = crate::config::parse(
            "store: {postgres: {url: 'postgres://u@h/db', pool: 4}}",
            std::path::Path::new("t.yaml"),
        );
        let errs = format!("{:?}", unknown.err());
        assert!(errs.contains("unknown field `pool`"), "{errs}");
    }

    #[test]
    fn the_issuer_login_and_resources_are_checked() {
        let oidc = "  login: {oidc: {issuer: https://login.example.com, client_id: p}}";
        assert!(errors(
            &format!("  issuer: https://mcp.example.com\n{oidc}"),
            "portcullis"
        )
        .is_empty());
        let cases = [
            (format!("  issuer: https://mcp.example.com/\n{oidc}"), "portcullis", "no trailing slash"),
            (format!("  issuer: https://mcp.example.com/as\n{oidc}"), "portcullis", "no path"),
            (format!("  issuer: http://mcp.example.com\n{oidc}"), "portcullis", "https"),
            ("  issuer: https://mcp.example.com\n  login: {dev_users: [{sub: a}]}".into(), "portcullis", "loopback"),
            ("  issuer: https://mcp.example.com\n  login: {}".into(), "portcullis", "exactly one"),
            (format!("  issuer: https://mcp.example.com\n{oidc}"), "other", "no route accepts"),
            (
                format!("  issuer: https://mcp.example.com\n{oidc}\n  clients: {{registered: [{{client_id: c, redirect_uris: ['javascript:x']}}]}}"),
                "portcullis",
                "scheme is not allowed",
            ),
        ];
        for (auth, issuers, want) in cases {
            let errs = errors(&auth, issuers);
            assert!(errs.iter().any(|e| e.contains(want)), "{auth}: {errs:?}");
        }
    }
}
