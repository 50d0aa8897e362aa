//! The authorization server's state behind a small, synchronous [`Store`]
//! trait: an embedded file or a shared PostgreSQL database.
//!
//! What is stored: OAuth clients (pre-registered, dynamically registered, and
//! resolved Client ID Metadata Documents, which are cached records), consents
//! per (user, client, redirect URI), authorization codes, grants with their
//! refresh-token families, the sealed signing keys (and the identity
//! assertion key), users' upstream OAuth tokens per (user, route) and
//! portcullis's registrations at upstream authorization servers (issue 12),
//! and a change sequence (with PostgreSQL, also a notification per change:
//! `watch`).
//!
//! Secrets never reach the store in the clear: authorization codes, refresh
//! tokens and client secrets are stored only as SHA-256 hashes, which the
//! caller computes and passes as `[u8; 32]`; signing keys and upstream tokens
//! arrive sealed by the caller (upstream tokens by the vault) and are
//! stored as opaque bytes.
//!
//! Who uses it: the control plane owns a store (hence `Send`, not `Sync`)
//! and serves the authorization server's requests from it. The data plane
//! never touches it: what the cores need (revocations, keys) reaches them
//! through snapshots. Every operation is one transaction; every write that
//! changed something bumps [`Store::seq`], which cache invalidation reads.
//!
//! Times are unix seconds (`i64`). A record is valid while `now < expires`.
//!
//! Backends: [`sqlite::SqliteStore`] (one file, WAL; one instance) and
//! [`postgres::PostgresStore`] (one database several instances share),
//! chosen by the configuration's `store` section ([`open::Location`],
//! [`open::open`]). The behaviour suite in `tests.rs` is written once
//! against the trait, and both backends run it.

pub(crate) mod open;
pub(crate) mod postgres;
pub(crate) mod sqlite;
pub(crate) mod watch;

pub(crate) use open::{migrate, open, Location};

#[cfg(test)]
pub(crate) mod tests;

/// How long a used authorization code is remembered after it expired, so a
/// late replay is still reported (and its grant revoked) rather than unknown.
pub const CODE_MEMORY_SECS: i64 = 24 * 3600;

/// How a client came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// From the configuration.
    Registered,
    /// RFC 7591 dynamic registration.
    Dynamic,
    /// A resolved Client ID Metadata Document (a cached record, re-fetched
    /// when it expires).
    MetadataDocument,
}

/// An OAuth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub kind: ClientKind,
    /// SHA-256 of the client secret; `None` for a public client.
    pub secret_hash: Option<[u8; 32]>,
    pub grant_types: Vec<String>,
    pub created: i64,
    /// When the registration (or the cached document) lapses; `None`: never.
    pub expires: Option<i64>,
}

/// A user's consent to one client at one redirect URI, for some scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub user: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub expires: i64,
}

/// An issued authorization code and everything it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeGrant {
    /// SHA-256 of the code.
    pub code_hash: [u8; 32],
    pub client_id: String,
    pub redirect_uri: String,
    /// The PKCE S256 code challenge.
    pub challenge: String,
    /// The canonical resource (RFC 8707) the tokens will be bound to.
    pub resource: String,
    pub scopes: Vec<String>,
    /// The user's subject.
    pub user: String,
    /// The principal's claims (`sub`, `email`, `groups`…) as a JSON object.
    pub claims: String,
    pub expires: i64,
}

/// A grant: what one authorization gave one client, and the refresh-token
/// family issued under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    /// The user's subject.
    pub user: String,
    /// The principal's claims as a JSON object, for access tokens minted on
    /// refresh.
    pub claims: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created: i64,
    /// The end of the refresh lifetime; access tokens must not outlive it.
    pub expires: i64,
    pub revoked: bool,
}

/// A signing key, sealed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    pub created: i64,
    pub sealed: Vec<u8>,
}

/// Whether a user's upstream connection works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamStatus {
    /// The sealed tokens are expected to work (the refresher keeps them fresh).
    Connected,
    /// The upstream refused the refresh token (`invalid_grant`) or the user
    /// must connect again for another `reason` (no secret in it); the record
    /// is kept so the user can be told, and is never refreshed.
    Disconnected { reason: String },
}

/// A user's tokens at one route's upstream authorization server, sealed by
/// the vault. One record per (user, route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    /// The user's subject.
    pub user: String,
    /// The route's name.
    pub route: String,
    /// The upstream client registration the tokens were issued to.
    pub client_id: String,
    /// The vault key that sealed them.
    pub kid: String,
    /// Nonce ‖ ciphertext ‖ tag: opaque here, never plaintext.
    pub sealed: Vec<u8>,
    /// The access token's expiry (unix seconds; 0: unknown).
    pub expires: i64,
    /// When the background refresher should refresh it (unix seconds;
    /// `i64::MAX`: never).
    pub refresh_due: i64,
    pub status: UpstreamStatus,
    /// When it was last written (unix seconds), as the caller says.
    pub updated: i64,
    /// Grows by one on every write of this (user, route), starting at 1: the
    /// compare-and-swap of [`Store::replace_upstream_if`], so one refresh
    /// wins however many run.
    pub generation: i64,
}

/// portcullis's own registration at a route's upstream authorization server
/// (discovery mode, dynamic registration): kept so that every restart and
/// every instance uses the client the users' tokens were issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamClient {
    /// The route's name.
    pub route: String,
    /// The upstream authorization server's issuer.
    pub issuer: String,
    pub client_id: String,
    /// The client secret sealed by the vault (key id, bytes), when the
    /// server gave one.
    pub secret: Option<(String, Vec<u8>)>,
    /// When it was registered (unix seconds).
    pub created: i64,
}

/// One pinned definition an upstream serves on a route (tool pinning): the
/// approved one, or a change awaiting approval. One of each per (route,
/// kind, name) at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub route: String,
    /// `tool`, `prompt` or `resource_template`.
    pub kind: String,
    pub name: String,
    /// Approved, or pending (a change or a new item awaiting approval).
    pub approved: bool,
    /// `sha256:` and the hex SHA-256 of the canonical definition.
    pub hash: String,
    /// The definition as JSON text (what diffs are made from).
    pub definition: String,
    /// The injection-marker detectors its strings matched.
    pub flagged: Vec<String>,
    /// When this definition was first seen (unix seconds).
    pub first_seen: i64,
    /// When it was approved (an operator, or recorded as first seen).
    pub approved_at: Option<i64>,
}

/// What presenting an authorization code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeTake {
    /// The code was valid; it is now used.
    Granted(Box<CodeGrant>),
    /// The code was never used but has expired.
    Expired,
    /// The code was used before. `grant_id` is the grant issued from it, if
    /// [`Store::code_issued`] recorded one: the caller revokes it.
    Replayed { grant_id: Option<String> },
    /// No such code (or long forgotten).
    Unknown,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The current token: the new hash replaces it. The caller issues the
    /// new refresh token and an access token.
    Rotated(Box<Grant>),
    /// The token just replaced, again within the grace window (parallel
    /// sessions racing a refresh): valid, nothing rotated; the caller issues
    /// an access token only.
    Grace(Box<Grant>),
    /// A replaced token after the grace window, or an older one: the whole
    /// grant (every token of its family) was revoked in the same transaction.
    Reused { grant_id: String },
    /// The grant was revoked.
    Revoked,
    /// The grant's refresh lifetime is over.
    Expired,
    /// No such token.
    Unknown,
}

/// What [`Store::sweep_expired`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Clients whose registration or cached document lapsed.
    pub clients: usize,
    pub consents: usize,
    /// Unused codes past their expiry; used ones [`CODE_MEMORY_SECS`] later.
    pub codes: usize,
    /// Grants past their refresh lifetime, with their refresh tokens.
    pub grants: usize,
}

impl Swept {
    /// Records removed in all.
    pub fn total(&self) -> usize {
        self.clients + self.consents + self.codes + self.grants
    }
}

/// Why a store operation failed. Never carries a secret, a hash or a claim.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "the store was written by a newer portcullis (schema version {found}, this build knows \
         up to {known}); refusing to open it"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("the store is busy: another writer held it past the busy timeout")]
    Busy,
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("revoking everything is not a filter: name a user, a client, or both")]
    NoFilter,
    #[error("a stored record cannot be read: {0}")]
    Corrupt(&'static str),
    #[error("store: {0}")]
    Backend(String),
}

/// The authorization server's state. Each method is one transaction.
pub trait Store: Send {
    /// Inserts a client or replaces the one with its id.
    fn put_client(&mut self, client: &Client) -> Result<(), StoreError>;
    /// The client with this id, unless it has expired.
    fn client(&self, id: &str, now: i64) -> Result<Option<Client>, StoreError>;
    /// Removes expired clients, consents, codes and grants.
    fn sweep_expired(&mut self, now: i64) -> Result<Swept, StoreError>;

    /// Inserts a consent or replaces the one for its (user, client, redirect URI).
    fn put_consent(&mut self, consent: &Consent) -> Result<(), StoreError>;
    /// Whether the user's unexpired consent to this client at this redirect
    /// URI covers every one of `scopes`.
    fn consented(
        &self,
        user: &str,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Removes the consents of a user, of a client, or of both together;
    /// returns how many. Both `None` is [`StoreError::NoFilter`].
    fn revoke_consents(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError>;

    /// Stores a new authorization code.
    fn put_code(&mut self, code: &CodeGrant) -> Result<(), StoreError>;
    /// Uses a code: [`CodeTake::Granted`] at most once per code, whoever asks.
    fn take_code(&mut self, code_hash: &[u8; 32], now: i64) -> Result<CodeTake, StoreError>;
    /// Records the grant issued from a taken code, so that a replay reports
    /// it. Returns false when the code was replayed in between: the grant
    /// has then been revoked in the same transaction.
    fn code_issued(&mut self, code_hash: &[u8; 32], grant_id: &str) -> Result<bool, StoreError>;

    /// Stores a new grant and the first token of its refresh family (none
    /// for a client that gets no refresh token).
    fn create_grant(
        &mut self,
        grant: &Grant,
        first_refresh_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError>;
    /// Presents a refresh token; on [`Rotation::Rotated`], `new_hash` is the
    /// family's current token. Concurrent presentations of one token yield
    /// one `Rotated`, the others `Grace`.
    fn rotate_refresh(
        &mut self,
        old_hash: &[u8; 32],
        new_hash: &[u8; 32],
        now: i64,
        grace_secs: i64,
    ) -> Result<Rotation, StoreError>;
    /// The grant a refresh token (current or replaced) belongs to, for
    /// revocation (RFC 7009); nothing is rotated.
    fn refresh_grant(&self, hash: &[u8; 32]) -> Result<Option<String>, StoreError>;
    /// The grant with this id, revoked or not.
    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// The ids of the revoked grants that expire after `after` (those whose
    /// access tokens may still be unexpired).
    fn revoked_grants(&self, after: i64) -> Result<Vec<String>, StoreError>;
    /// Grants of a user, of a client, of both, or all (`None, None`), oldest first.
    fn grants(&self, user: Option<&str>, client_id: Option<&str>)
        -> Result<Vec<Grant>, StoreError>;
    /// Replaces a live grant's claims (what the IdP says of the user now);
    /// false if it is unknown or revoked.
    fn set_grant_claims(&mut self, id: &str, claims: &str) -> Result<bool, StoreError>;
    /// Revokes one grant; false if it is unknown or was already revoked.
    fn revoke_grant(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Revokes the live grants of a user, of a client, or of both together;
    /// returns how many. Both `None` is [`StoreError::NoFilter`].
    fn revoke_grants(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError>;

    /// Stores a sealed signing key; an existing `kid` is [`StoreError::Exists`].
    fn put_key(&mut self, kid: &str, created: i64, sealed: &[u8]) -> Result<(), StoreError>;
    /// Every signing key, oldest first.
    fn keys(&self) -> Result<Vec<SigningKey>, StoreError>;

    /// Inserts or replaces the record of `t.user` at `t.route`; returns its
    /// new generation: 1 for a new record, the old one plus 1 otherwise
    /// (`t.generation` is ignored).
    fn put_upstream(&mut self, t: &UpstreamToken) -> Result<i64, StoreError>;
    /// The record of a user at a route.
    fn upstream(&self, user: &str, route: &str) -> Result<Option<UpstreamToken>, StoreError>;
    /// Every record of a user, ordered by route.
    fn upstream_of(&self, user: &str) -> Result<Vec<UpstreamToken>, StoreError>;
    /// Compare-and-swap: replaces the record of (`t.user`, `t.route`) only
    /// if its generation is still `expected_generation` (it becomes
    /// `expected_generation + 1`); false otherwise, or when there is none.
    fn replace_upstream_if(
        &mut self,
        t: &UpstreamToken,
        expected_generation: i64,
    ) -> Result<bool, StoreError>;
    /// Removes the record of a user at a route; false if there was none.
    fn delete_upstream(&mut self, user: &str, route: &str) -> Result<bool, StoreError>;
    /// Up to `limit` connected records with `refresh_due <= now`, soonest
    /// due first (then by user and route).
    fn upstream_due(&self, now: i64, limit: usize) -> Result<Vec<UpstreamToken>, StoreError>;
    /// Claims up to `limit` connected records due (`refresh_due <= now`),
    /// soonest first, for one refresher: in one transaction each gets
    /// `refresh_due = until` and its generation grows by one, and they are
    /// returned as they are now. Two refreshers claiming at once (threads,
    /// instances) get disjoint sets, so the upstream sees one refresh per
    /// token; one that dies holding a claim leaves the records due again at
    /// `until`.
    fn claim_upstream_due(
        &mut self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<UpstreamToken>, StoreError>;
    /// Every record, by user then route (for re-sealing under a new key).
    fn all_upstream(&self) -> Result<Vec<UpstreamToken>, StoreError>;

    /// portcullis's registration at a route's upstream authorization server.
    fn upstream_client(
        &self,
        route: &str,
        issuer: &str,
    ) -> Result<Option<UpstreamClient>, StoreError>;
    /// Keeps `c` unless a registration for its (route, issuer) is stored
    /// already; returns the one stored (two racing registrations: the first
    /// written wins, both use it).
    fn put_upstream_client(&mut self, c: &UpstreamClient) -> Result<UpstreamClient, StoreError>;
    /// Forgets the registration with that client id (the upstream no longer
    /// knows it); false if there was none.
    fn delete_upstream_client(
        &mut self,
        route: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<bool, StoreError>;

    /// The pins of a route (every route: `None`), by route, kind and name,
    /// an approved pin before the pending one of its name.
    fn pins(&self, route: Option<&str>) -> Result<Vec<Pin>, StoreError>;
    /// Inserts the pin, or replaces the one of its (route, kind, name,
    /// state).
    fn put_pin(&mut self, pin: &Pin) -> Result<(), StoreError>;
    /// Removes the pins of (route, kind, name): both, or only the pending
    /// one; returns how many.
    fn delete_pin(
        &mut self,
        route: &str,
        kind: &str,
        name: &str,
        pending_only: bool,
    ) -> Result<usize, StoreError>;
    /// Approves a route's pending pins (of one kind, of one name, when
    /// given): each replaces the approved pin of its name and gets
    /// `approved_at = now`. Returns them as they are now, in `pins` order.
    fn approve_pins(
        &mut self,
        route: &str,
        kind: Option<&str>,
        name: Option<&str>,
        now: i64,
    ) -> Result<Vec<Pin>, StoreError>;

    /// The change sequence: grows with every write that changed something.
    fn seq(&self) -> Result<i64, StoreError>;
}
