//! Legacy MCP sessions bound to the principal that opened them: a session id
//! is never authentication, so a request on an authenticated route carrying
//! an `Mcp-Session-Id` minted for someone else is refused (403), however it
//! got the id. The binding is recorded when an upstream's answer to an
//! authenticated caller carries `Mcp-Session-Id`.
//!
//! Shared by all cores without locks: a fixed table of slots, each a session
//! fingerprint and a principal fingerprint (64-bit seeded hashes), written
//! seqlock-style (key cleared, value written, key set) so a reader never
//! pairs a key with another key's value. A session whose slot was taken by a
//! later one is simply unknown: the upstream still checks its own sessions,
//! and every request is authenticated on its own.

use crate::principal::Principal;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots (16 bytes each: 1 MiB).
const SLOTS: usize = 1 << 16;

struct Slot {
    session: AtomicU64,
    principal: AtomicU64,
}

pub struct Sessions {
    slots: Box<[Slot]>,
    seed: foldhash::quality::RandomState,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    session: AtomicU64::new(0),
                    principal: AtomicU64::new(0),
                })
                .collect(),
            seed: Default::default(),
        }
    }
}

/// Whether a session may be used by a principal.
#[derive(Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bound to this principal.
    Same,
    /// Bound to another principal.
    Other,
    /// Not known here (never seen, or its slot was reused).
    Unknown,
}

impl Sessions {
    fn session_key(&self, route: &str, id: &[u8]) -> u64 {
        // Never 0: 0 marks an empty slot.
        self.seed.hash_one((route, id)) | 1
    }

    fn principal_key(&self, p: &Principal) -> u64 {
        self.seed.hash_one((&*p.issuer_name, &p.issuer, &p.sub)) | 1
    }

    /// Record that `id` on the route named `route` belongs to `p` (by name,
    /// so a reload that reorders routes keeps the bindings).
    pub fn bind(&self, route: &str, id: &[u8], p: &Principal) {
        let key = self.session_key(route, id);
        let slot = &self.slots[key as usize & (SLOTS - 1)];
        slot.session.store(0, Ordering::Release);
        slot.principal
            .store(self.principal_key(p), Ordering::Release);
        slot.session.store(key, Ordering::Release);
    }

    pub fn check(&self, route: &str, id: &[u8], p: &Principal) -> Binding {
        let key = self.session_key(route, id);
        let slot = &self.slots[key as usize & (SLOTS - 1)];
        if slot.session.load(Ordering::Acquire) != key {
            return Binding::Unknown;
        }
        let owner = slot.principal.load(Ordering::Acquire);
        if slot.session.load(Ordering::Acquire) != key {
            return Binding::Unknown;
        }
        if owner == self.principal_key(p) {
            Binding::Same
        } else {
            Binding::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(sub: &str) -> Principal {
        Principal {
            issuer_name: "idp".into(),
            issuer: "https://idp".into(),
            sub: sub.into(),
            email: None,
            groups: vec![],
            scopes: vec![],
            client_id: None,
            exp: 0,
            claims: Default::default(),
        }
    }

    #[test]
    fn sessions_belong_to_who_opened_them() {
        let s = Sessions::default();
        let (alice, bob) = (principal("alice"), principal("bob"));
        assert_eq!(s.check("r", b"abc", &alice), Binding::Unknown);
        s.bind("r", b"abc", &alice);
        assert_eq!(s.check("r", b"abc", &alice), Binding::Same);
        assert_eq!(s.check("r", b"abc", &bob), Binding::Other);
        assert_eq!(s.check("q", b"abc", &bob), Binding::Unknown, "per route");
        assert_eq!(s.check("r", b"abd", &bob), Binding::Unknown);
    }
}
