//! Per-core cache of verified tokens (and of recent rejections), one per worker thread.
//!
//! Direct-mapped: a slot is chosen by a seeded hash (foldhash, random seed per
//! cache) of the token's length and its last 64 bytes (inside the signature, so distinct
//! for distinct valid tokens); a hit also needs the full token and the audience key to
//! match, so a colliding token can only evict, never borrow, another's principal. A new
//! entry replaces whatever was in its slot: eviction is free. Entries store the token
//! (about 1 KiB each: 4 MiB per core at the default size).

use super::verify::AuthError;
use crate::principal::Principal;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

/// Default number of positive entries.
pub(crate) const DEFAULT_ENTRIES: usize = 4096;
/// Negative entries and how long a rejection is remembered (seconds).
pub(crate) const NEGATIVE_ENTRIES: usize = 256;
pub(crate) const NEGATIVE_TTL: i64 = 10;

struct Entry {
    token: Box<str>,
    audience: Box<str>,
    principal: Rc<Principal>,
    exp: i64,
}

struct Rejected {
    token: Box<str>,
    audience: Box<str>,
    until: i64,
    error: AuthError,
}

pub struct TokenCache {
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<Entry>>,
    rejected: Vec<Option<Rejected>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_ENTRIES)
    }
}

impl TokenCache {
    /// A cache of `entries` slots (rounded up to a power of two).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        TokenCache {
            hasher: Default::default(),
            slots: (0..n).map(|_| None).collect(),
            rejected: (0..NEGATIVE_ENTRIES).map(|_| None).collect(),
        }
    }

    fn hash(&self, token: &str) -> u64 {
        let b = token.as_bytes();
        let mut h = self.hasher.build_hasher();
        h.write_usize(b.len());
        h.write(&b[b.len().saturating_sub(64)..]);
        h.finish()
    }

    /// The principal of `token` verified for `audience`, unless it has expired by `now`.
    pub fn get(&self, token: &str, audience: &str, now: i64) -> Option<Rc<Principal>> {
        let i = self.hash(token) as usize & (self.slots.len() - 1);
        match &self.slots[i] {
            Some(e) if e.exp > now && *e.token == *token && *e.audience == *audience => {
                Some(e.principal.clone())
            }
            _ => None,
        }
    }

    /// Remembers a verified token for `audience` until its `exp`.
    pub fn insert(&mut self, token: &str, audience: &str, principal: Rc<Principal>) {
        let i = self.hash(token) as usize & (self.slots.len() - 1);
        self.slots[i] = Some(Entry {
            token: token.into(),
            audience: audience.into(),
            exp: principal.exp,
            principal,
        });
    }

    /// A rejection of `token` for `audience` seen within the last [`NEGATIVE_TTL`] seconds.
    pub fn get_rejected(&self, token: &str, audience: &str, now: i64) -> Option<AuthError> {
        let i = self.hash(token) as usize % self.rejected.len();
        match &self.rejected[i] {
            Some(r) if r.until > now && *r.token == *token && *r.audience == *audience => {
                Some(r.error)
            }
            _ => None,
        }
    }

    /// Remembers a rejection for [`NEGATIVE_TTL`] seconds. Unknown-key rejections are not
    /// remembered (a key rotation should be picked up as soon as the keys are refreshed).
    pub fn insert_rejected(&mut self, token: &str, audience: &str, now: i64, error: AuthError) {
        if error == AuthError::UnknownKey || token.len() > super::MAX_TOKEN_BYTES {
            return;
        }
        let i = self.hash(token) as usize % self.rejected.len();
        self.rejected[i] = Some(Rejected {
            token: token.into(),
            audience: audience.into(),
            until: now.saturating_add(NEGATIVE_TTL),
            error,
        });
    }
}
