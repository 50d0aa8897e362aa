//! The YAML configuration file: its serde shapes (unknown keys are errors).
//! Value types that validate themselves while deserializing (so their errors
//! carry a line and column) and `${ENV_VAR}` substitution are in `values`;
//! reading the file and locating its errors in `load`; the cross-field checks
//! that `portcullis check` reports all at once are made where the snapshot is
//! built. No runtime logic lives here, and
//! nothing here imports the rest of the crate: it is the leaf every other
//! module reads its settings from.

pub mod audit;
pub mod authz;
pub mod behaviour;
pub mod identity;
mod load;
pub mod pin;
pub mod policy;
pub mod schema;
pub mod screen;
pub mod values;
pub mod vault;

pub use load::{load, locate_nth, parse, ConfigError, ConfigErrors};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Duration};
pub use values::{
    env_opt_string, env_opt_strings, env_string, expand_env, split_host_port, Dur, EnvPath, Url,
    Workers,
};

/// The configuration file. Routes, policies, issuers, limits and certificates
/// are reloaded when the file changes (or on SIGHUP); the options marked
/// "fixed at start" take effect at the next restart.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads, each with its own event loop and its own sockets on
    /// every listener: `auto` starts one per CPU. Fixed at start.
    #[serde(default)]
    pub workers: Workers,
    /// Pin worker N to CPU N (modulo the CPUs available). Fixed at start.
    #[serde(default)]
    pub pin_workers: bool,
    /// The I/O driver and its io_uring ring options. Fixed at start.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Addresses to accept client connections on (at least one). A route's
    /// `from` scheme needs a listener of its kind (`tls` for `https://`).
    pub listen: Vec<Listen>,
    /// Request size limits, client timeouts and the connection limit.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts, connection pool and extra CA certificates for upstreams.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT;
    /// connections still busy then are closed.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Logging to stderr (PORTCULLIS_LOG, when set, overrides `level`). Fixed
    /// at start.
    #[serde(default)]
    pub log: LogConfig,
    /// The audit log; off when absent. Fixed at start.
    pub audit: Option<audit::AuditConfig>,
    /// The admin listener (metrics, health, config summary); off when absent.
    /// Fixed at start.
    pub admin: Option<AdminConfig>,
    /// portcullis as the OAuth 2.1 authorization server of MCP clients; off
    /// when absent.
    pub authorization_server: Option<authz::AuthorizationServerConfig>,
    /// The authorization server's embedded store.
    pub store: Option<authz::StoreConfig>,
    /// The keys that seal users' upstream OAuth tokens in the store, and
    /// when those tokens are refreshed; needed by routes with
    /// `upstream_auth.oauth2`.
    pub vault: Option<vault::VaultConfig>,
    /// Trusted token issuers, which routes accept by name (`auth.issuers`).
    #[serde(default)]
    pub identity: identity::IdentityConfig,
    /// Per-caller behaviour baselines and anomaly signals (`anomaly`
    /// criteria, `step_up` rules); off when absent.
    #[serde(default)]
    pub behaviour: Option<behaviour::BehaviourConfig>,
    /// Named rule lists that routes include with `- use: <name>`.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub policies: std::collections::HashMap<String, Vec<policy::RuleConfig>>,
    /// The routes (at least one). A request goes to the route whose `from`
    /// host and port equal its `Host` and whose path prefix is the longest
    /// match on a `/` boundary; a request no route matches gets 404.
    pub routes: Vec<RouteConfig>,
}

/// I/O driver and io_uring ring options (fixed at start). The ring flags
/// matter: with default ring flags io_uring loses to epoll on small machines
/// (README, "Runtime"). A worker whose ring cannot be set up (an old kernel
/// rejecting a flag, too little locked memory) falls back to epoll and logs it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Which I/O driver the workers use.
    pub driver: Driver,
    /// Entries of each worker's io_uring submission queue (io_uring only).
    pub ring_entries: u32,
    /// Set up the ring with `IORING_SETUP_COOP_TASKRUN`: completions are
    /// processed when the worker enters the kernel, without interrupting it.
    pub coop_taskrun: bool,
    /// Set up the ring with `IORING_SETUP_SINGLE_ISSUER` (only the worker's
    /// own thread submits to it, so the kernel can skip some locking).
    pub single_issuer: bool,
    /// Set up the ring with `IORING_SETUP_DEFER_TASKRUN`: completion work is
    /// deferred until the worker waits for events (needs `single_issuer`).
    pub defer_taskrun: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            driver: Driver::Auto,
            ring_entries: 1024,
            coop_taskrun: true,
            single_issuer: true,
            defer_taskrun: true,
        }
    }
}

/// The I/O driver of the workers.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// io_uring where the kernel allows it, else epoll (the choice is logged).
    Auto,
    /// io_uring; a worker falls back to epoll, with a warning, when its ring
    /// cannot be set up.
    IoUring,
    /// epoll only.
    Epoll,
}

/// One listening address.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// IP address and port (`0.0.0.0:8443`, `[::1]:8080`; no host names).
    /// Start-up fails when another process already listens there. Fixed at
    /// start.
    pub address: SocketAddr,
    /// Serve TLS 1.2 and 1.3 on this listener; absent: plain TCP. Adding or
    /// removing it takes effect at restart; its certificates are reloaded.
    pub tls: Option<ListenTls>,
    /// Open connections on this listener (all workers); absent: no limit of
    /// its own. The total limit `limits.max_connections` applies as well.
    /// Fixed at start.
    pub max_connections: Option<usize>,
}

/// TLS on a listener (ALPN `http/1.1`). Certificates are reloaded with the
/// configuration.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// Certificates chosen by SNI; the first one is the default (also when no
    /// SNI is sent).
    pub certificates: Vec<CertPair>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// The certificate chain, leaf first.
    pub cert_file: EnvPath,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: EnvPath,
}

/// Limits on client requests and connections, with safe defaults.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line and header fields), in bytes: 431
    /// beyond (414 when the request line alone does not fit).
    pub max_header_bytes: usize,
    /// Most header fields in a request: 400 beyond. Values above 256 act as
    /// 256.
    pub max_headers: usize,
    /// Longest request target (path and query), in bytes: 414 beyond.
    pub max_target_bytes: usize,
    /// Largest request body, in bytes, on every route: 413 beyond.
    pub max_body_bytes: u64,
    /// Longest wait for a request head: for the first byte on a new
    /// connection, and from a request's first byte to its complete head (408
    /// beyond). It also bounds the TLS handshake.
    pub header_timeout: Dur,
    /// Longest wait for the next piece of a request body: 408 beyond.
    pub body_timeout: Dur,
    /// Longest a keep-alive connection may wait for its next request; then it
    /// is closed.
    pub idle_timeout: Dur,
    /// Longest a write may stall: to a client (the connection is closed), or
    /// of a request to its upstream (504).
    pub write_timeout: Dur,
    /// Open client connections, across all listeners and workers; a
    /// connection beyond it is closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_target_bytes: 8 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            header_timeout: Dur(Duration::from_secs(10)),
            body_timeout: Dur(Duration::from_secs(30)),
            idle_timeout: Dur(Duration::from_secs(120)),
            write_timeout: Dur(Duration::from_secs(60)),
            max_connections: 10_000,
        }
    }
}

/// Connections to upstreams (all routes).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Longest TCP connect to an upstream address (each resolved address is
    /// tried in turn), and again longest TLS handshake: 504 beyond.
    pub connect_timeout: Dur,
    /// From the end of the request to the complete response head: 504 beyond.
    pub response_header_timeout: Dur,
    /// Longest pause within a response body (SSE streams idle for minutes);
    /// beyond it the response is abandoned.
    pub read_timeout: Dur,
    /// Idle keep-alive connections kept per upstream and worker.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept (shorter when the upstream
    /// announces a shorter `Keep-Alive: timeout`).
    pub pool_idle_timeout: Dur,
    /// Extra CA certificates (PEM) trusted for `https://` upstreams, on top of
    /// the system roots.
    pub ca_file: Option<EnvPath>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Dur(Duration::from_secs(5)),
            response_header_timeout: Dur(Duration::from_secs(60)),
            read_timeout: Dur(Duration::from_secs(300)),
            pool_max_idle: 64,
            pool_idle_timeout: Dur(Duration::from_secs(30)),
            ca_file: None,
        }
    }
}

/// One route: a public URL and the upstream it is forwarded to.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics (`route` label), audit records and
    /// default policy rule names.
    pub name: String,
    /// The public URL: scheme, host[:port], path prefix.
    pub from: Url,
    /// The upstream URL; the path prefix of `from` is replaced by this one.
    /// Its host is resolved when the configuration is loaded.
    pub to: Url,
    /// Makes this an MCP route: request bodies are checked as JSON-RPC, and
    /// `auth` and `policy` may be used. Absent: a plain HTTP route.
    pub mcp: Option<McpRoute>,
    /// Require a bearer token from one of these issuers (needs `mcp`).
    pub auth: Option<AuthConfig>,
    /// What the upstream gets instead of the client's token (needs `auth`);
    /// default: an identity assertion signed by portcullis.
    pub upstream_auth: Option<UpstreamAuthConfig>,
    /// How audit records show `params.arguments`.
    #[serde(default)]
    pub audit_arguments: audit::Arguments,
    /// Rules deciding each JSON-RPC message (needs `mcp`): deny wins, and with
    /// any rule present a message no allow rule matches is denied. Absent or
    /// empty: every message is allowed.
    pub policy: Option<Vec<policy::RuleConfig>>,
    /// Screen the JSON string values of the route's messages for secrets,
    /// personal data and injection markers (needs `mcp`); absent: off. Not
    /// yet applied by the data plane: `portcullis check` reports the
    /// section's errors, then refuses it.
    pub screen: Option<screen::ScreenConfig>,
    /// Pin the tool, prompt and resource template definitions the upstream
    /// serves (needs `mcp` and the `store` section); absent: off.
    pub pin: Option<pin::PinConfig>,
}

/// Logging to stderr (fixed at start).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The format of log lines.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `portcullis=debug,warn`, ...
    /// The environment variable PORTCULLIS_LOG, when set, replaces it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The admin listener (plain HTTP): `/healthz`, `/readyz`, `/config` (routes
/// and listeners, no secrets) and `/metrics` (Prometheus text).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// IP address and port. Keep it on loopback: it is not authenticated.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Bearer-token authentication of an MCP route: a request without a valid
/// token gets 401 (with RFC 9728 metadata), one without the scopes 403.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Names of `identity.issuers` whose tokens this route accepts (at least
    /// one).
    pub issuers: Vec<String>,
    /// Scopes every token must carry (403 `insufficient_scope` otherwise);
    /// also announced as the metadata's `scopes_supported`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// What the upstream gets instead of the client's token: at most one of
/// `assertion`, `static` or `none: true` (none set: an assertion with the
/// default header). The client's `Authorization` is never forwarded.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// A short-lived ES256 JWT naming the caller, signed by portcullis (its
    /// public keys are served at `/.well-known/portcullis/jwks.json`).
    pub assertion: Option<AssertionConfig>,
    /// A fixed credential from the configuration.
    #[serde(rename = "static")]
    pub static_credential: Option<StaticCredential>,
    /// The upstream gets no credential.
    #[serde(default)]
    pub none: bool,
    /// The user's own token at the upstream service (GitHub, Notion, ...):
    /// obtained once through portcullis (after consent, or on
    /// `/.portcullis/connections`), kept encrypted in the vault, refreshed
    /// ahead of expiry, sent as `Authorization: Bearer …` (or `header`). May
    /// be combined with `assertion`. Needs `auth: { issuers: [portcullis] }`
    /// and the `vault` section.
    pub oauth2: Option<authz::UpstreamOAuth2>,
}

/// An identity assertion: a 60-second ES256 JWT (`iss: portcullis`, `sub`,
/// `email`, `groups`, `client_id`, `idp`) signed by portcullis.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// The header that carries it; `Authorization` sends `Bearer <jwt>`. A
    /// client's copy of the header is removed.
    #[serde(default = "default_assertion_header")]
    pub header: String,
    /// The assertion's `aud`; default: the upstream URL (`to`). `${ENV_VAR}`
    /// is substituted.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub audience: Option<String>,
}

/// A fixed header sent to the upstream; a client's copy of it is removed.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticCredential {
    /// The header name, e.g. `Authorization`.
    pub header: String,
    /// The header value; `${ENV_VAR}` is substituted (keep secrets out of
    /// the file: `"Bearer ${GITHUB_TOKEN}"`), an unset variable is an error.
    #[serde(deserialize_with = "env_string")]
    pub value: String,
}

fn default_assertion_header() -> String {
    "X-Portcullis-Identity".into()
}

/// Options of an MCP route (`mcp: {}` for the defaults).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpRoute {
    /// Browser origins allowed to call this route besides its own (e.g.
    /// `https://app.example.com`, compared ignoring case). A request with any
    /// other `Origin` gets 403; one without `Origin` (non-browser clients) is
    /// allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn p(text: &str) -> Result<Config, ConfigErrors> {
        parse(text, Path::new("t.yaml"))
    }

    const MIN: &str = "listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - name: a\n    from: http://127.0.0.1:8080/mcp\n    to: http://127.0.0.1:9000/mcp\n    mcp: {}\n";

    #[test]
    fn minimal_config_parses_with_safe_defaults() {
        let c = p(MIN).unwrap();
        assert_eq!(c.workers, Workers::Auto);
        assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
        assert!(c.routes[0].mcp.is_some());
        assert_eq!(c.routes[0].from.path, "/mcp");
        assert_eq!(c.runtime.driver, Driver::Auto);
    }

    #[test]
    fn unknown_keys_are_located_errors() {
        let e = p(&MIN.replace("    mcp: {}", "    mcp: {}\n    tpyo: 1")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("unknown field `tpyo`"), "{}", e);
        assert_eq!(e.0[0].line, Some(8));
        let e = p(&format!("{MIN}limits: {{ max_body: 5 }}\n")).unwrap_err();
        assert!(e.0[0].message.contains("max_body"), "{e}");
        assert_eq!(e.0[0].line, Some(8));
    }

    #[test]
    fn bad_values_are_located_errors() {
        let cases = [
            (
                "http://127.0.0.1:8080/mcp",
                "ftp://x/mcp",
                "must start with http",
            ),
            (
                "http://127.0.0.1:8080/mcp",
                "http://h:99999/mcp",
                "invalid host or port",
            ),
            ("http://127.0.0.1:8080/mcp", "http://h/a?b", "query"),
            (
                "http://127.0.0.1:8080/mcp",
                "http://h/a/../b",
                "dot segments",
            ),
        ];
        for (from, to, msg) in cases {
            let e = p(&MIN.replace(from, to)).unwrap_err();
            assert!(e.0[0].message.contains(msg), "{to}: {e}");
            assert_eq!(e.0[0].line, Some(5), "{to}: {e}");
        }
        let e = p(&format!("{MIN}limits: {{ header_timeout: 10 parsecs }}\n")).unwrap_err();
        assert!(e.0[0].message.contains("duration"), "{e}");
        let e = p(&format!("workers: many\n{MIN}")).unwrap_err();
        assert!(e.0[0].message.contains("workers"), "{e}");
        assert_eq!(e.0[0].line, Some(1));
    }

    #[test]
    fn env_substitution() {
        std::env::set_var("PORTCULLIS_TEST_UPSTREAM", "127.0.0.1:9100");
        assert_eq!(
            expand_env("http://${PORTCULLIS_TEST_UPSTREAM}/x").unwrap(),
            "http://127.0.0.1:9100/x"
        );
        assert_eq!(expand_env("a$${b}c$d").unwrap(), "a${b}c$d");
        assert!(expand_env("${PORTCULLIS_SURELY_UNSET_VAR}")
            .unwrap_err()
            .contains("not set"));
        assert!(expand_env("${oops").is_err());
        let c = p(&MIN.replace("127.0.0.1:9000", "${PORTCULLIS_TEST_UPSTREAM}")).unwrap();
        assert_eq!(c.routes[0].to.port, 9100);
        // Credentials, keys and the audit path are substituted too.
        std::env::set_var("PORTCULLIS_TEST_SECRET", "s3cret");
        let with = |extra: &str| {
            format!(
                "{MIN}    upstream_auth: {{ static: {{ header: Authorization, value: \"Bearer ${{PORTCULLIS_TEST_SECRET}}\" }} }}\n{extra}"
            )
        };
        let c = p(&with("audit: { path: \"/tmp/${PORTCULLIS_TEST_SECRET}.jsonl\", hash_key: \"k-${PORTCULLIS_TEST_SECRET}\" }\n")).unwrap();
        let value = match &c.routes[0].upstream_auth {
            Some(UpstreamAuthConfig {
                static_credential: Some(s),
                ..
            }) => s.value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value, "Bearer s3cret");
        let audit = c.audit.unwrap();
        assert_eq!(audit.path, Path::new("/tmp/s3cret.jsonl"));
        assert_eq!(audit.hash_key.as_deref(), Some("k-s3cret"));
        let e = p(&with(
            "audit: { path: \"-\", hash_key: \"${PORTCULLIS_SURELY_UNSET_VAR}\" }\n",
        ))
        .unwrap_err();
        assert!(e.0[0].message.contains("is not set"), "{e}");
        assert_eq!(e.0[0].line, Some(9), "{e}");
        let e = p(&MIN.replace("127.0.0.1:9000", "${PORTCULLIS_SURELY_UNSET_VAR}")).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("\"PORTCULLIS_SURELY_UNSET_VAR\" is not set"),
            "{e}"
        );
        assert_eq!(e.0[0].line, Some(6), "{e}");
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://MCP.example.com/github/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "mcp.example.com", 443, "/github")
        );
        assert_eq!(u.authority(), "mcp.example.com");
        let u = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("[::1]", 9000, "/")
        );
        assert!(Url::parse("http://user@h/").is_err());
        assert!(Url::parse("http://h:/").is_err());
        assert!(Url::parse("http://[zz]/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(Dur::parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(Dur::parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(Dur::parse("1 h"), Some(Duration::from_secs(3600)));
        assert_eq!(Dur::parse("-1s"), None);
        assert_eq!(Dur::parse("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(Dur::parse("1w"), None);
    }
}
