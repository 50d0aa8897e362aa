//! Legacy MCP sessions bound to the principal that opened them: a session id
//! is never authentication, so a request on an authenticated route carrying
//! an `Mcp-Session-Id` minted for someone else is refused (403), however it
//! got the id. The binding is recorded when an upstream's answer to an
//! authenticated caller carries `Mcp-Session-Id` that its request did not
//! (the session was minted for it; an answer that repeats the id of a
//! session portcullis does not know binds nothing, so a caller presenting
//! someone else's id after it left the table cannot take it over).
//!
//! Shared by all cores: a fixed table of slots, each a session fingerprint and
//! a principal fingerprint (64-bit seeded hashes) guarded by a sequence number
//! (a seqlock).
//!
//! - `check` (every request, every core) never waits and never writes: it
//!   reads the sequence, both fingerprints, then the sequence again, and uses
//!   the pair only if the sequence was even (no write under way) and did not
//!   change. So the pair it sees was written by one bind, never half of one
//!   bind and half of another. A read that overlaps a write is retried a few
//!   times, then the session is reported `Unknown`, never `Other`.
//! - `bind` (when an upstream mints or repeats a session id) makes the
//!   sequence odd with a compare-and-swap, which excludes the other writers
//!   (a two-store critical section; a writer that finds the slot held spins,
//!   then yields), writes both fingerprints and makes the sequence even
//!   again. Without that exclusion, two cores binding sessions that share a
//!   slot could leave one session paired with the other's caller. A binding
//!   that is already in place is not written again.
//!
//! So `Same` and `Other` always describe the last completed bind of that
//! session id, and a race between binds can only make a session `Unknown`.
//! A session whose slot was taken by a later one (any other session hashing
//! to the same slot) is also `Unknown`: it is forwarded, the upstream still
//! checks its own sessions, and every request is authenticated on its own.

use crate::principal::Principal;
use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Slots (24 bytes each: 1.5 MiB).
const SLOTS: usize = 1 << 16;

/// The slot of a session key: from its high bits (the lowest is always
/// set, so it would leave every even slot empty).
fn slot_index(key: u64) -> usize {
    (key >> 32) as usize & (SLOTS - 1)
}

/// Reads of a slot that overlapped a write before `check` reports `Unknown`.
const READ_TRIES: usize = 8;

/// Spins of a writer waiting for another before it yields its thread.
const WRITE_SPINS: u32 = 64;

#[derive(Default)]
struct Slot {
    /// Odd while a bind is writing the slot; bumped by 2 per bind.
    seq: AtomicU64,
    session: AtomicU64,
    principal: AtomicU64,
}

impl Slot {
    /// The (session, principal) pair of the last completed bind, or `None`
    /// when a bind overlapped the read.
    fn read(&self) -> Option<(u64, u64)> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let pair = (
            self.session.load(Ordering::Relaxed),
            self.principal.load(Ordering::Relaxed),
        );
        // Keeps the loads above before the second read of the sequence.
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some(pair)
    }

    /// Replace the pair, excluding other writers while doing it.
    fn write(&self, session: u64, principal: u64) {
        let seq = self.lock();
        self.session.store(session, Ordering::Relaxed);
        self.principal.store(principal, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// Make the sequence odd (this writer holds the slot); returns the even
    /// value it had.
    fn lock(&self) -> u64 {
        let mut spins = 0;
        loop {
            let seq = self.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // A reader that sees any store made after this fence also
                // sees the odd sequence, and discards what it read.
                fence(Ordering::Release);
                return seq;
            }
            spins += 1;
            if spins < WRITE_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

pub struct Sessions {
    slots: Box<[Slot]>,
    seed: foldhash::quality::RandomState,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
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

    fn slot(&self, key: u64) -> &Slot {
        &self.slots[slot_index(key)]
    }

    /// Record that `id` on the route named `route` belongs to `p` (by name,
    /// so a reload that reorders routes keeps the bindings).
    pub fn bind(&self, route: &str, id: &[u8], p: &Principal) {
        let pair = (self.session_key(route, id), self.principal_key(p));
        let slot = self.slot(pair.0);
        if slot.read() != Some(pair) {
            slot.write(pair.0, pair.1);
        }
    }

    pub fn check(&self, route: &str, id: &[u8], p: &Principal) -> Binding {
        let key = self.session_key(route, id);
        let slot = self.slot(key);
        let Some((session, owner)) = (0..READ_TRIES).find_map(|_| slot.read()) else {
            return Binding::Unknown;
        };
        if session != key {
            Binding::Unknown
        } else if owner == self.principal_key(p) {
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
        Principal::for_tests(sub)
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

    #[test]
    fn sessions_spread_over_every_slot() {
        let s = Sessions::default();
        let used: std::collections::HashSet<usize> = (0..4 * SLOTS)
            .map(|i| slot_index(s.session_key("r", format!("s{i}").as_bytes())))
            .collect();
        // 4 keys per slot on average: nearly all slots, odd and even, in use.
        assert!(
            used.len() > SLOTS * 9 / 10,
            "{} of {SLOTS} slots",
            used.len()
        );
        assert!(used.iter().any(|i| i % 2 == 0) && used.iter().any(|i| i % 2 == 1));
    }

    /// `n` session ids on route `r` whose bindings share one slot.
    fn colliding_ids(s: &Sessions, n: usize) -> Vec<String> {
        let mut by_slot = std::collections::HashMap::<usize, Vec<String>>::new();
        for i in 0.. {
            let id = format!("session-{i}");
            let slot = slot_index(s.session_key("r", id.as_bytes()));
            let ids = by_slot.entry(slot).or_default();
            ids.push(id);
            if ids.len() == n {
                return std::mem::take(ids);
            }
        }
        unreachable!()
    }

    /// Several cores binding sessions that share a slot: each checks its own
    /// session right after binding it. The slot may have been taken by another
    /// session (Unknown), but a session is never paired with another caller:
    /// never Other for its own caller, never Same for the next one.
    #[test]
    fn concurrent_binds_never_pair_a_session_with_another_caller() {
        const THREADS: usize = 4;
        let s = Sessions::default();
        let ids = colliding_ids(&s, THREADS);
        let callers: Vec<Principal> = (0..THREADS).map(|i| principal(&format!("p{i}"))).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (s, ids, callers, failed) = (&s, &ids, &callers, &failed);
                scope.spawn(move || {
                    let (id, me) = (ids[t].as_bytes(), &callers[t]);
                    let other = &callers[(t + 1) % THREADS];
                    let mut rounds = 0u64;
                    while !failed.load(Ordering::Relaxed)
                        && (rounds & 1023 != 0 || std::time::Instant::now() < deadline)
                    {
                        rounds += 1;
                        s.bind("r", id, me);
                        let mine = s.check("r", id, me);
                        let theirs = s.check("r", id, other);
                        if mine == Binding::Other || theirs == Binding::Same {
                            failed.store(true, Ordering::Relaxed);
                            panic!("round {rounds}: own caller {mine:?}, other caller {theirs:?}");
                        }
                    }
                });
            }
        });
        let bound = ids
            .iter()
            .zip(&callers)
            .filter(|(id, p)| s.check("r", id.as_bytes(), p) == Binding::Same)
            .count();
        assert_eq!(bound, 1, "the slot ends up holding exactly one binding");
    }
}
