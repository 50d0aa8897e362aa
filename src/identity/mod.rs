//! Identity: verifying bearer tokens (JWT access tokens) into a [`Principal`], and signing
//! identity assertions for upstreams (the client's token is never forwarded).
//!
//! - [`config`]: the `identity.issuers` configuration.
//! - [`jwks`]: JWK sets; each key is pinned to the algorithms it may verify: its `alg`, else
//!   those of its `kty`/`crv` (an RSA key without `alg` may serve every allowed RS*/PS*),
//!   always within the issuer's allowed list; never from a token.
//! - [`verify`]: the signature layer ([`verify::verify_signature`]) and the claim checks.
//! - [`cache`]: the per-core token cache (positive and negative).
//! - [`assertion`]: the ES256 identity assertion signer and its per-core cache.
//! - [`minted`]: access tokens portcullis issues itself (HS256 under its own key) and their
//!   verification: an HMAC and a JSON parse.
//!
//! **Which issuer**: the token's `iss` selects the issuer among those allowed (all of them for
//! [`Issuers::verify`], a route's for [`Issuers::verify_for`]).
//!
//! **Remote key sets**: a `jwks_uri` is fetched once at [`Issuers::compile`] (failure is a
//! start-up error naming the URL). Each issuer's key set sits in an `ArcSwap`, read lock-free
//! on the request path. A background std thread ([`Issuers::start_refresher`]) refetches every
//! `refresh_interval`; a token with an unknown kid fails at once (no fetch on the request path)
//! and raises a per-issuer "refresh wanted" flag that wakes the thread, which honours it at
//! most once per [`MIN_REFETCH`] per issuer. A failed or unusable fetch keeps the last good
//! set and logs a warning.
//!
//! **Crypto backend**: jsonwebtoken does the signature checks through a `CryptoProvider`;
//! this module installs [`crypto::RING_PROVIDER`] (ring, already in the tree via rustls).
//! Medians from `cargo bench --bench jwt --features jwt-bench-backends` (2-core machine):
//!
//! | median (µs)          | ring (chosen) | aws_lc_rs | rust_crypto | ring direct |
//! |----------------------|---------------|-----------|-------------|-------------|
//! | RS256 signature      | 24.3          | 21.2      | 207         | 24.2        |
//! | ES256 signature      | 60.9          | 61.6      | 275         | 60.8        |
//! | `Issuers::verify` RS256 / ES256 (ring, whole check) | 34.8 / 85.8 | | | |
//!
//! ring is chosen: on par with aws-lc-rs (ES256 equal, RS256 15% slower), 8-10x faster than
//! the pure-Rust backend, no extra C/cmake build (aws-lc-sys), and verified tokens are cached
//! per core anyway ([`TokenCache`] hit: 43-51 ns median over two runs, 664-byte token). The provider
//! layer costs nothing measurable over calling ring directly.
use crate::principal::Principal;
use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) mod assertion;
pub(crate) mod cache;
use crate::config::identity as config;
pub mod crypto;
pub(crate) mod jwks;
pub(crate) mod minted;
pub(crate) mod verify;

pub(crate) use crate::config::identity::IssuerConfig;
pub(crate) use assertion::{AssertionCache, AssertionSigner};
pub(crate) use cache::TokenCache;
pub(crate) use jwks::KeySet;
pub(crate) use verify::{AuthError, MAX_TOKEN_BYTES};

use verify::{check_claims, parse_claims, ClaimRules, Jws};

/// Least time between two refetches of one issuer's JWKS triggered by unknown kids.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(30);

struct Remote {
    uri: String,
    interval: Duration,
    wanted: AtomicBool,
    /// Milliseconds since `Issuers::epoch` of the last fetch attempt.
    last_fetch_ms: AtomicU64,
    /// Refreshes that replaced the key set, and that failed (for /metrics).
    refreshed: AtomicU64,
    failed: AtomicU64,
    /// Whether the last refresh failed (the last good set is in use).
    failing: AtomicBool,
}

struct Issuer {
    name: Arc<str>,
    issuer: String,
    algs: Vec<Algorithm>,
    audiences: Option<Vec<String>>,
    leeway: i64,
    max_lifetime: i64,
    typ: Option<String>,
    keys: ArcSwap<KeySet>,
    remote: Option<Remote>,
}

/// The trusted issuers, compiled from configuration. Shared by all workers (`Arc`).
pub struct Issuers {
    issuers: Vec<Issuer>,
    epoch: Instant,
    refresher: OnceLock<std::thread::Thread>,
}

fn secs(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Issuers {
    /// Compiles issuer configs: loads every JWKS (files relative to `base_dir`; remote ones
    /// fetched now, blocking). Errors are `(issuer index, message)`.
    pub fn compile(
        configs: &[IssuerConfig],
        base_dir: &Path,
    ) -> Result<Issuers, Vec<(usize, String)>> {
        crypto::install();
        let mut errors = Vec::new();
        let mut issuers = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            match compile_one(c, base_dir) {
                Ok(iss) => issuers.push(iss),
                Err(e) => errors.push((i, e)),
            }
        }
        for (i, c) in configs.iter().enumerate() {
            if configs[..i].iter().any(|o| o.name == c.name) {
                errors.push((i, format!("duplicate issuer name {:?}", c.name)));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Issuers {
            issuers,
            epoch: Instant::now(),
            refresher: OnceLock::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The index of the issuer configured under `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.issuers.iter().position(|i| &*i.name == name)
    }

    /// Verifies `token` against any configured issuer. `audience` is the route's public URL
    /// (replaced by the issuer's `audiences` when configured); `now_unix` in seconds.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now_unix: i64,
    ) -> Result<Principal, AuthError> {
        self.verify_inner(token, audience, now_unix, |_| true)
    }

    /// Like [`Issuers::verify`], accepting only the issuers whose indexes are in `allowed`.
    pub fn verify_for(
        &self,
        allowed: &[usize],
        token: &str,
        audience: &str,
        now_unix: i64,
    ) -> Result<Principal, AuthError> {
        self.verify_inner(token, audience, now_unix, |i| allowed.contains(&i))
    }

    fn verify_inner(
        &self,
        token: &str,
        audience: &str,
        now: i64,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<Principal, AuthError> {
        let jws = Jws::parse(token)?;
        let claims = parse_claims(&jws.payload)?;
        let iss = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::UnknownIssuer)?;
        let (idx, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(i, c)| c.issuer == iss && allowed(*i))
            .ok_or(AuthError::UnknownIssuer)?;
        if !issuer.algs.contains(&jws.alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        let keys = issuer.keys.load();
        match jws.verify_in(&keys) {
            Ok(()) => {}
            Err(AuthError::UnknownKey) => {
                self.want_refresh(idx);
                return Err(AuthError::UnknownKey);
            }
            Err(e) => return Err(e),
        }
        let route_aud = [audience];
        let configured: Vec<&str>;
        let audiences: &[&str] = match &issuer.audiences {
            Some(list) => {
                configured = list.iter().map(String::as_str).collect();
                &configured
            }
            None => &route_aud,
        };
        let rules = ClaimRules {
            issuer_name: &issuer.name,
            issuer: &issuer.issuer,
            audiences,
            leeway: issuer.leeway,
            max_lifetime: issuer.max_lifetime,
            typ: issuer.typ.as_deref(),
        };
        check_claims(jws.typ.as_deref(), claims, &rules, now)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn want_refresh(&self, idx: usize) {
        if let Some(r) = self.issuers.get(idx).and_then(|i| i.remote.as_ref()) {
            if !r.wanted.swap(true, Ordering::Relaxed) {
                if let Some(t) = self.refresher.get() {
                    t.unpark();
                }
            }
        }
    }

    /// True while an unknown kid has asked for a refetch that has not happened yet.
    pub fn refresh_wanted(&self, idx: usize) -> bool {
        self.issuers
            .get(idx)
            .and_then(|i| i.remote.as_ref())
            .is_some_and(|r| r.wanted.load(Ordering::Relaxed))
    }

    /// Refetches one remote issuer's JWKS now (blocking). On failure the current set stays.
    pub fn refresh(&self, idx: usize) -> Result<usize, String> {
        let issuer = self.issuers.get(idx).ok_or("no such issuer")?;
        let remote = issuer.remote.as_ref().ok_or("issuer has no jwks_uri")?;
        remote.last_fetch_ms.store(self.now_ms(), Ordering::Relaxed);
        remote.wanted.store(false, Ordering::Relaxed);
        let set = jwks::fetch(&remote.uri).and_then(|v| {
            KeySet::parse(&v, &issuer.algs, false).map_err(|e| format!("JWKS {}: {e}", remote.uri))
        });
        match set {
            Ok(set) => {
                let n = set.len();
                issuer.keys.store(Arc::new(set));
                remote.refreshed.fetch_add(1, Ordering::Relaxed);
                remote.failing.store(false, Ordering::Relaxed);
                tracing::debug!(issuer = %issuer.name, keys = n, "JWKS refreshed");
                Ok(n)
            }
            Err(e) => {
                remote.failed.fetch_add(1, Ordering::Relaxed);
                remote.failing.store(true, Ordering::Relaxed);
                tracing::warn!(issuer = %issuer.name, error = %e, "JWKS refresh failed; keeping the last good key set");
                Err(e)
            }
        }
    }

    /// Prometheus series of the issuers' key sets: keys held, and for remote
    /// sets the refreshes since the issuers were loaded and whether the last
    /// one failed.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.issuers.is_empty() {
            return;
        }
        let _ = writeln!(out, "# TYPE portcullis_jwks_keys gauge");
        for i in &self.issuers {
            let name = crate::metrics::escape(&i.name);
            let _ = writeln!(
                out,
                "portcullis_jwks_keys{{issuer=\"{name}\"}} {}",
                i.keys.load().len()
            );
        }
        let remote = || {
            self.issuers
                .iter()
                .filter_map(|i| Some((crate::metrics::escape(&i.name), i.remote.as_ref()?)))
        };
        if remote().next().is_none() {
            return;
        }
        let _ = writeln!(out, "# TYPE portcullis_jwks_refreshes_total counter");
        for (name, r) in remote() {
            for (outcome, n) in [("ok", &r.refreshed), ("failed", &r.failed)] {
                let _ = writeln!(
                    out,
                    "portcullis_jwks_refreshes_total{{issuer=\"{name}\",outcome=\"{outcome}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# TYPE portcullis_jwks_refresh_failing gauge");
        for (name, r) in remote() {
            let _ = writeln!(
                out,
                "portcullis_jwks_refresh_failing{{issuer=\"{name}\"}} {}",
                u8::from(r.failing.load(Ordering::Relaxed))
            );
        }
    }

    /// One pass of the refresher: refetches each remote set that is due (its interval passed,
    /// or a refresh is wanted and [`MIN_REFETCH`] passed since the last fetch).
    pub fn refresh_due(&self) {
        for (idx, issuer) in self.issuers.iter().enumerate() {
            let Some(r) = &issuer.remote else { continue };
            let since = self
                .now_ms()
                .saturating_sub(r.last_fetch_ms.load(Ordering::Relaxed));
            let since = Duration::from_millis(since);
            let due =
                since >= r.interval || (r.wanted.load(Ordering::Relaxed) && since >= MIN_REFETCH);
            if due {
                let _ = self.refresh(idx);
            }
        }
    }

    /// Starts the background refresher thread (none is needed without remote sets). It
    /// stops once `stop` is set (checked at least every second).
    pub fn start_refresher(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        if !self.issuers.iter().any(|i| i.remote.is_some()) {
            return None;
        }
        let me = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("jwks-refresh".into())
            .spawn(move || {
                let _ = me.refresher.set(std::thread::current());
                while !stop.load(Ordering::Relaxed) {
                    me.refresh_due();
                    std::thread::park_timeout(Duration::from_secs(1));
                }
            });
        match handle {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the JWKS refresher thread");
                None
            }
        }
    }
}

fn compile_one(c: &IssuerConfig, base_dir: &Path) -> Result<Issuer, String> {
    let mut algs = Vec::new();
    for a in &c.algorithms {
        if a.eq_ignore_ascii_case("none") {
            return Err("algorithm \"none\" is never accepted".into());
        }
        algs.push(jwks::parse_alg(a).ok_or(format!("unsupported algorithm {a:?}"))?);
    }
    if algs.is_empty() {
        return Err("no algorithms".into());
    }
    let sources = [
        c.jwks_uri.is_some(),
        c.jwks_file.is_some(),
        c.jwks.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err("exactly one of jwks_uri, jwks_file, jwks is required".into());
    }
    let hmac = algs
        .iter()
        .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    if hmac && c.jwks.is_none() {
        return Err("HS* algorithms need an inline `jwks` with an oct key".into());
    }
    let mut remote = None;
    let set = if let Some(uri) = &c.jwks_uri {
        let v = jwks::fetch(uri)?;
        remote = Some(Remote {
            uri: uri.clone(),
            interval: Duration::from_secs(
                c.refresh_interval
                    .unwrap_or(config::DEFAULT_REFRESH_INTERVAL)
                    .max(1),
            ),
            wanted: AtomicBool::new(false),
            last_fetch_ms: AtomicU64::new(0),
            refreshed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        KeySet::parse(&v, &algs, false).map_err(|e| format!("JWKS {uri}: {e}"))?
    } else if let Some(file) = &c.jwks_file {
        let path = base_dir.join(file);
        let text = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        KeySet::parse(&v, &algs, false).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let v = c.jwks.as_ref().ok_or("no JWKS")?;
        KeySet::parse(v, &algs, true).map_err(|e| format!("inline jwks: {e}"))?
    };
    Ok(Issuer {
        name: Arc::from(c.name.as_str()),
        issuer: c.issuer.clone(),
        algs,
        audiences: c.audiences.clone(),
        leeway: secs(c.leeway.unwrap_or(config::DEFAULT_LEEWAY)),
        max_lifetime: secs(c.max_lifetime.unwrap_or(config::DEFAULT_MAX_LIFETIME)),
        typ: c.typ.clone(),
        keys: ArcSwap::from_pointee(set),
        remote,
    })
}

#[cfg(test)]
mod tests;
