//! Configuration of the built-in OAuth 2.1 authorization server
//! (`authorization_server`) and of its embedded store (`store`).

use super::{Dur, EnvPath};
use serde::Deserialize;
use std::time::Duration;

/// portcullis as the authorization server of MCP clients: it registers them
/// (metadata documents, dynamic registration, or this file), logs users in at
/// the company's OIDC IdP, asks their consent per client, and issues access
/// tokens bound to one route. Routes accept its tokens with
/// `auth: { issuers: [portcullis] }`. Fixed at start except `clients.registered`
/// and `tokens`, which reload.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationServerConfig {
    /// The issuer: an origin (`https://mcp.example.com`), no path, no trailing
    /// slash; the same string in the metadata, the `iss` response parameter
    /// and the tokens. Its endpoints are served on this host's listener.
    #[serde(deserialize_with = "super::env_string")]
    pub issuer: String,
    /// How users log in.
    pub login: LoginConfig,
    /// Which clients may ask for tokens.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// Token lifetimes.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// How long a user's consent to a client is remembered.
    #[serde(default = "default_consent_ttl")]
    pub consent_ttl: Dur,
    /// A secret of at least 32 bytes (base64 or hex, `${ENV_VAR}`) from
    /// which the keys of cookies, of consent forms and of the stored signing
    /// keys are derived. Absent: a random one is kept in `secret.key` beside
    /// the store (mode 0600). Instances sharing a store must share it.
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub secret: Option<String>,
}

fn default_consent_ttl() -> Dur {
    Dur(Duration::from_secs(30 * 24 * 3600))
}

/// How users log in: exactly one of `oidc` or `dev_users`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The company's OpenID Connect IdP (authorization code + PKCE + nonce;
    /// the ID token is verified with its JWKS).
    pub oidc: Option<OidcLoginConfig>,
    /// A development login page listing these users (no password). Only
    /// allowed when the issuer is on loopback (`http://127.0.0.1:…`,
    /// `http://localhost:…`); `portcullis demo` uses it.
    pub dev_users: Option<Vec<DevUser>>,
}

/// The company IdP.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcLoginConfig {
    /// Its issuer; `<issuer>/.well-known/openid-configuration` is read at start.
    #[serde(deserialize_with = "super::env_string")]
    pub issuer: String,
    #[serde(deserialize_with = "super::env_string")]
    pub client_id: String,
    /// Sent with HTTP Basic authentication at its token endpoint. Absent: a
    /// public client (PKCE only).
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub client_secret: Option<String>,
    /// Scopes asked of the IdP.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// Which ID-token claims become the principal's `email` and `groups`.
    #[serde(default)]
    pub claims: ClaimNames,
    /// ID-token signature algorithms accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Extra CA certificates (PEM) for the IdP's HTTPS endpoints.
    pub ca_file: Option<EnvPath>,
    /// With `offline_access` among `scopes`, the IdP's refresh token is kept
    /// (sealed) with each grant, and a client's refresh asks the IdP again at
    /// most this often whether the user is still there: a user disabled at
    /// the IdP loses every grant at the next refresh. An unreachable IdP
    /// refuses nothing.
    #[serde(default = "default_recheck")]
    pub recheck: Dur,
}

fn default_recheck() -> Dur {
    Dur(Duration::from_secs(3600))
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

/// ID-token claim names.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub email: String,
    pub groups: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            email: "email".into(),
            groups: "groups".into(),
        }
    }
}

/// A user of the development login.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DevUser {
    pub sub: String,
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Which clients may ask for tokens.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Client ID Metadata Documents (an `https://` URL as `client_id`),
    /// fetched hardened. Absent: the allowlist default (claude.ai, claude.com,
    /// chatgpt.com, vscode.dev).
    pub metadata_documents: Option<MetadataDocumentsConfig>,
    /// RFC 7591 dynamic registration at `/register` (public clients only).
    #[serde(default)]
    pub dynamic_registration: bool,
    /// How long a dynamically registered client lives without being used.
    #[serde(default = "default_registration_ttl")]
    pub registration_ttl: Dur,
    /// Clients from this file.
    #[serde(default)]
    #[schemars(extend("default" = []))]
    pub registered: Vec<RegisteredClient>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            metadata_documents: None,
            dynamic_registration: false,
            registration_ttl: default_registration_ttl(),
            registered: Vec::new(),
        }
    }
}

fn default_registration_ttl() -> Dur {
    Dur(Duration::from_secs(90 * 24 * 3600))
}

/// Client ID Metadata Documents.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataDocumentsConfig {
    /// Hosts (and their subdomains) whose documents are accepted.
    #[serde(default = "default_cimd_domains")]
    pub allowed_domains: Vec<String>,
    /// Accept documents from any host (off: the allowlist).
    #[serde(default)]
    pub open: bool,
    /// Off: no metadata documents at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Tests only: fetch documents from loopback addresses (the draft allows
    /// it only when the authorization server itself is on loopback), trusting
    /// this CA.
    pub loopback_ca_file: Option<EnvPath>,
}

fn yes() -> bool {
    true
}

pub fn default_cimd_domains() -> Vec<String> {
    ["claude.ai", "claude.com", "chatgpt.com", "vscode.dev"]
        .map(String::from)
        .to_vec()
}

/// A client from the configuration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisteredClient {
    pub client_id: String,
    /// Shown on the consent page; default: the client id.
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    /// A confidential client's secret (`client_secret_basic` or
    /// `client_secret_post`); absent: a public client. `${ENV_VAR}`.
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub client_secret: Option<String>,
    /// This client's access-token lifetime (default: `tokens.access_ttl`),
    /// for clients that never refresh.
    pub access_ttl: Option<Dur>,
}

/// Token lifetimes.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Access tokens (at most 24 h).
    pub access_ttl: Dur,
    /// Refresh tokens: how long a grant lives without a refresh (sliding).
    pub refresh_ttl: Dur,
    /// How long a just-rotated refresh token still gets an access token
    /// (parallel sessions of one client racing a refresh); used later, the
    /// whole grant is revoked.
    pub refresh_grace: Dur,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: Dur(Duration::from_secs(3600)),
            refresh_ttl: Dur(Duration::from_secs(30 * 24 * 3600)),
            refresh_grace: Dur(Duration::from_secs(60)),
        }
    }
}

/// The authorization server's store: one SQLite file (`path`), the default
/// for one instance, or a PostgreSQL database that several instances share
/// (`postgres`). Exactly one of the two.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file; created with its directory when missing.
    #[serde(default)]
    pub path: Option<EnvPath>,
    /// With `path` only. `full` (the default): every commit is synced to
    /// disk before it is answered (a revocation or rotation survives a
    /// power loss). `normal`: synced at checkpoints only, several times the
    /// token endpoint's throughput on slow disks; a killed process still
    /// loses nothing, a power loss may lose the last commits (users then
    /// log in again; a revocation made in the last moments may need
    /// repeating).
    #[serde(default)]
    pub sync: Option<StoreSync>,
    /// A PostgreSQL database shared by every instance (the schema is
    /// created and migrated at start, and by `portcullis store migrate`).
    /// Needs `authorization_server.secret`: every instance seals with it.
    #[serde(default)]
    pub postgres: Option<PostgresStoreConfig>,
}

/// The PostgreSQL database of the store.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresStoreConfig {
    /// The connection URL, `postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// (libpq's form; options such as `?connect_timeout=10` allowed), best
    /// given as `${DATABASE_URL}`. The user needs to create tables in the
    /// database (its owner, say). Without `tls` the connection is plain
    /// text: only on loopback or a network you trust.
    #[serde(deserialize_with = "super::env_string")]
    pub url: String,
    /// TLS to the server (rustls): required, and the server's certificate
    /// verified for the URL's host name.
    #[serde(default)]
    pub tls: Option<PostgresTlsConfig>,
}

/// Never shows the URL: it may hold the password.
impl std::fmt::Debug for PostgresStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreConfig")
            .field("url", &"(redacted)")
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS to PostgreSQL.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresTlsConfig {
    /// CA certificates (PEM) that sign the server's certificate. Absent:
    /// the system's roots.
    #[serde(default)]
    pub ca_file: Option<EnvPath>,
}

/// How the store syncs its commits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StoreSync {
    #[default]
    Full,
    Normal,
}

/// A route's upstream OAuth 2.0 client: portcullis's registration at the
/// upstream service, used to get and refresh each user's token there. Either
/// every endpoint is configured, or `discover: true` reads them from the
/// upstream's metadata.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth2 {
    /// portcullis's client id at the upstream. Required unless `discover`
    /// is on; with `discover` and no `client_id`, portcullis registers itself
    /// at the upstream's authorization server (a client metadata document
    /// when that server supports them and portcullis's issuer is https,
    /// dynamic registration otherwise) and keeps the registration in the
    /// store.
    #[serde(default, deserialize_with = "super::env_string")]
    pub client_id: String,
    /// Sent with HTTP Basic authentication (`client_secret_basic`); absent:
    /// a public client (PKCE only). `${ENV_VAR}`.
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub client_secret: Option<String>,
    /// The upstream's authorization endpoint (the user's browser goes
    /// there). Required unless `discover` is on (then it must be absent).
    #[serde(default, deserialize_with = "super::env_string")]
    pub authorization_url: String,
    /// The upstream's token endpoint. Required unless `discover` is on
    /// (then it must be absent).
    #[serde(default, deserialize_with = "super::env_string")]
    pub token_url: String,
    /// RFC 7009 revocation endpoint: disconnecting revokes the token there.
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub revocation_url: Option<String>,
    /// Scopes asked of the upstream.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` sent to the upstream, where it supports it. With
    /// `discover`: the resource the upstream's RFC 9728 metadata must name
    /// (default: the route's `to`).
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub resource: Option<String>,
    /// The header the token goes in (`Authorization` sends `Bearer <token>`).
    #[serde(default = "default_upstream_header")]
    pub header: String,
    /// The upstream's `iss` (RFC 9207): when set, the callback's `iss` must equal it.
    #[serde(default, deserialize_with = "super::env_opt_string")]
    pub issuer: Option<String>,
    /// Read the endpoints from the upstream: its RFC 9728 protected
    /// resource metadata (at the route's `to`) names its authorization
    /// server, whose RFC 8414 (or OpenID) metadata names the endpoints;
    /// fetched on first use by the control plane and kept an hour.
    #[serde(default)]
    pub discover: bool,
}

/// Shows no secret.
impl std::fmt::Debug for UpstreamOAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamOAuth2")
            .field("client_id", &self.client_id)
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("discover", &self.discover)
            .finish_non_exhaustive()
    }
}

fn default_upstream_header() -> String {
    "Authorization".into()
}
