//! Per-core state: one `Worker` per thread, shared by that thread's tasks via
//! `Rc`, never sent across threads. Cross-core state (`Shared`) is atomics only.

use crate::proxy::upstream::pool::Pool;
use crate::snapshot::{SharedSnapshot, Snapshot};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// State shared by all workers: atomics and values fixed at start, no locks.
pub struct Shared {
    /// Set once a graceful shutdown begins: only by `begin_shutdown`, which
    /// also wakes the joiner.
    shutdown: AtomicBool,
    /// The thread waiting in `Running::join`, woken when a shutdown begins.
    pub(crate) joiner: std::sync::OnceLock<std::thread::Thread>,
    /// Open client connections across all workers.
    pub connections: AtomicUsize,
    /// Configuration reloads swapped in, and rejected.
    pub reloads: AtomicUsize,
    pub reload_failures: AtomicUsize,
    /// Each worker's own counters (one cache line each: a worker writes
    /// only its own, the admin thread sums them).
    pub counters: Vec<Arc<WorkerCounters>>,
    /// Workers running on each I/O driver.
    pub uring_workers: AtomicUsize,
    pub epoll_workers: AtomicUsize,
    /// Set when every worker has stopped (the admin thread ends with it).
    pub stopped: AtomicBool,
    /// The audit log's sink (absent when not configured).
    pub audit: Option<crate::audit::Sink>,
    /// Which principal opened each legacy MCP session.
    pub sessions: crate::proxy::session::Sessions,
    /// The key identity assertions are signed with: one for the life of the
    /// process (reloads keep it, so upstreams' cached keys stay valid).
    pub signer: crate::identity::AssertionSigner,
    /// The built-in authorization server's keys and revoked grants, for
    /// verifying its tokens (published by the control plane).
    pub issued: Arc<arc_swap::ArcSwapOption<crate::identity::minted::Issued>>,
    /// Where requests for the authorization server go (when it runs).
    pub control: Option<crate::proxy::handoff::Control>,
    /// The authorization server's counters (metrics).
    pub authz_counters: Option<Arc<crate::authz::server::Counters>>,
    /// Grows when an upstream connection is removed or disconnected: every
    /// core then empties its cache of upstream tokens.
    pub vault_epoch: Arc<AtomicU64>,
    /// Where the workers' behaviour baselines meet (one slot per worker).
    pub behaviour: crate::behaviour::Exchange,
    /// The pinned definitions of every route (tool pinning), published by
    /// the pin thread (`runtime::pins`); read with one atomic load.
    pub(crate) pins: Arc<arc_swap::ArcSwap<crate::pin::Pinned>>,
    /// Where cores report what pinning routes' lists hold (when the pin
    /// thread runs).
    pub(crate) pin_reports: Option<crate::proxy::handoff::PinReports>,
}

impl Shared {
    /// What `workers` workers share, with a new assertion key. Fails only
    /// when the system has no randomness (a start-up error).
    pub fn new(workers: usize, audit: Option<crate::audit::Sink>) -> Result<Shared, String> {
        let signer = crate::identity::AssertionSigner::generate("portcullis")
            .map_err(|e| format!("cannot create the identity assertion key: {e}"))?;
        Ok(Shared {
            shutdown: AtomicBool::default(),
            joiner: std::sync::OnceLock::new(),
            connections: AtomicUsize::default(),
            reloads: AtomicUsize::default(),
            reload_failures: AtomicUsize::default(),
            counters: (0..workers).map(|_| Arc::default()).collect(),
            uring_workers: AtomicUsize::default(),
            epoll_workers: AtomicUsize::default(),
            stopped: AtomicBool::default(),
            audit,
            sessions: Default::default(),
            signer,
            issued: Arc::default(),
            control: None,
            authz_counters: None,
            vault_epoch: Arc::default(),
            behaviour: crate::behaviour::Exchange::new(workers),
            pins: Arc::default(),
            pin_reports: None,
        })
    }

    /// Begin a graceful shutdown: workers stop accepting and finish what is
    /// in flight; the thread in `Running::join` wakes to watch them.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.joiner.get() {
            t.unpark();
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// One counter summed over all workers.
    pub fn sum(&self, field: impl Fn(&WorkerCounters) -> &AtomicU64) -> u64 {
        self.counters
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    }
}

/// Counters a worker bumps on the request path, in a cache line of its own so
/// workers never contend for them.
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Token cache lookups.
    pub token_cache_hits: AtomicU64,
    pub token_cache_misses: AtomicU64,
    /// Upstream connections opened, and requests sent on a pooled one.
    pub upstream_connects: AtomicU64,
    pub upstream_reuses: AtomicU64,
    /// Idle upstream connections in the pool (a gauge, set every 100 ms).
    pub upstream_idle: AtomicU64,
}

impl WorkerCounters {
    /// Add one (relaxed: counters only).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Verified tokens kept per core.
const TOKEN_CACHE_ENTRIES: usize = 4096;
/// Signed identity assertions kept per core.
const ASSERTION_CACHE_ENTRIES: usize = 1024;

pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// This worker's counters (its entry in `Shared::counters`).
    pub counters: Arc<WorkerCounters>,
    snapshot: RefCell<arc_swap::Cache<SharedSnapshot, Arc<Snapshot>>>,
    pub(crate) pool: Pool,
    /// The coarse clock of connections waiting for their next request.
    pub idle: std::rc::Rc<crate::proxy::idle::IdleClock>,
    /// Scratch space for decoding MCP bodies (simd-json rewrites its input).
    pub mcp_scratch: RefCell<crate::mcp::jsonrpc::Scratch>,
    /// Verified tokens (and recently rejected ones), for the current snapshot.
    pub token_cache: RefCell<crate::identity::TokenCache>,
    /// Users' upstream tokens (routes with `oauth2`).
    pub upstream_tokens: RefCell<crate::proxy::inject::UpstreamTokens>,
    /// Signed identity assertions, reused while fresh.
    pub assertions: RefCell<crate::identity::AssertionCache>,
    /// This core's behaviour baselines: kept across reloads (not in the
    /// snapshot), merged with the other cores' once a second.
    pub baselines: RefCell<crate::behaviour::Baselines>,
    /// The snapshot generation the caches were filled under.
    cache_generation: Cell<u64>,
    /// Audit records not yet handed to the writer.
    audit_buf: RefCell<Vec<u8>>,
    /// Records in `audit_buf`.
    audit_records: Cell<u64>,
    /// Where a request's arguments are serialised to be hashed.
    pub(crate) audit_scratch: RefCell<Vec<u8>>,
    /// Requests being served on this worker right now.
    pub in_flight: Cell<usize>,
    request_seq: Cell<u64>,
    /// The first 16 hex digits of every request id of this worker: its
    /// random seed, written once.
    request_seed: [u8; 16],
    /// A coarse clock, set by the worker's ticker: for expiries that need no
    /// better than ±100 ms (pool), so the request path reads no clock for them.
    clock: Cell<Instant>,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>, snapshot: SharedSnapshot) -> Worker {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(id);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let counters = shared.counters.get(id).cloned().unwrap_or_default();
        Worker {
            id,
            shared,
            counters,
            snapshot: RefCell::new(arc_swap::Cache::new(snapshot)),
            pool: Pool::default(),
            idle: std::rc::Rc::default(),
            mcp_scratch: RefCell::default(),
            token_cache: RefCell::new(crate::identity::TokenCache::new(TOKEN_CACHE_ENTRIES)),
            upstream_tokens: RefCell::default(),
            assertions: RefCell::new(crate::identity::AssertionCache::new(
                ASSERTION_CACHE_ENTRIES,
            )),
            baselines: RefCell::default(),
            cache_generation: Cell::new(0),
            audit_buf: RefCell::new(Vec::new()),
            audit_records: Cell::new(0),
            audit_scratch: RefCell::default(),
            in_flight: Cell::new(0),
            request_seq: Cell::new(0),
            request_seed: seed_hex(h.finish() ^ (id as u64).rotate_left(56)),
            clock: Cell::new(Instant::now()),
        }
    }

    /// The coarse clock (updated every ~100 ms).
    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Advance the coarse clock; called by the worker's ticker.
    pub fn tick(&self) -> Instant {
        let now = Instant::now();
        self.clock.set(now);
        now
    }

    /// The token cache, if it belongs to `snap`: a request still on an older
    /// snapshot than the cache's neither reads nor fills it.
    pub fn token_cache_for(
        &self,
        snap: &Snapshot,
    ) -> Option<std::cell::RefMut<'_, crate::identity::TokenCache>> {
        (snap.generation == self.cache_generation.get()).then(|| self.token_cache.borrow_mut())
    }

    /// Buffer one audit record; a full buffer goes to the writer.
    pub fn audit(&self, record: &crate::audit::Record<'_>) {
        let mut buf = self.audit_buf.borrow_mut();
        crate::audit::write_record(&mut buf, record);
        self.audit_records.set(self.audit_records.get() + 1);
        let full = buf.len() >= crate::audit::FLUSH_BYTES;
        drop(buf);
        if full {
            self.flush_audit();
        }
    }

    /// Hand this worker's buffered audit records to the writer.
    pub fn flush_audit(&self) {
        let Some(sink) = &self.shared.audit else {
            return;
        };
        let mut buf = self.audit_buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        // Under load (a full buffer) the next one starts at its full size, so
        // it is never grown and copied record by record; a partial buffer
        // handed over by the timer is followed by a small one.
        let next = if buf.len() >= crate::audit::FLUSH_BYTES {
            Vec::with_capacity(crate::audit::FLUSH_BYTES + 16 * 1024)
        } else {
            Vec::new()
        };
        let full = std::mem::replace(&mut *buf, next);
        drop(buf);
        sink.send(full, self.audit_records.replace(0));
    }

    /// The current snapshot (cheap: a per-core cache of the shared `ArcSwap`).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.snapshot.borrow_mut().load().clone();
        if snap.generation != self.cache_generation.get() {
            // Issuers, keys or claim mappings may have changed: verify every
            // token again, and sign every assertion again from what that
            // verification finds.
            self.cache_generation.set(snap.generation);
            *self.token_cache.borrow_mut() = crate::identity::TokenCache::new(TOKEN_CACHE_ENTRIES);
            *self.assertions.borrow_mut() =
                crate::identity::AssertionCache::new(ASSERTION_CACHE_ENTRIES);
        }
        snap
    }

    /// Read the current snapshot without holding it (no reference count
    /// taken), for values read at once; the caches are left as they are.
    pub fn peek_snapshot<R>(&self, read: impl FnOnce(&Snapshot) -> R) -> R {
        read(self.snapshot.borrow_mut().load())
    }

    /// Once a second: share this core's baselines with the other cores and
    /// take theirs (`behaviour::Baselines::exchange`).
    pub fn exchange_baselines(&self, now_unix: i64) {
        let snap = self.snapshot();
        if let Some(settings) = snap.behaviour.as_deref() {
            self.baselines.borrow_mut().exchange(
                &self.shared.behaviour,
                self.id,
                settings,
                now_unix,
            );
        }
    }

    /// Requests begun on this worker so far (wrapping).
    pub fn requests_begun(&self) -> u64 {
        self.request_seq.get()
    }

    /// A new request id: 16 hex digits of per-worker random seed and 8 of a
    /// per-worker counter, unique across workers and restarts in practice.
    pub fn next_request_id(&self, out: &mut RequestId) {
        let seq = self.request_seq.get().wrapping_add(1);
        self.request_seq.set(seq);
        out.bytes[..16].copy_from_slice(&self.request_seed);
        for i in 0..8 {
            out.bytes[16 + i] = HEX[((seq >> (28 - 4 * i)) & 15) as usize];
        }
        out.len = 24;
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A request id's first 16 hex digits.
fn seed_hex(seed: u64) -> [u8; 16] {
    std::array::from_fn(|i| HEX[((seed >> (60 - 4 * i)) & 15) as usize])
}

/// A request id, kept from the client (if well-formed) or generated.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 64],
    len: usize,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl RequestId {
    /// Keep a client-sent id when it is 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn keep(value: &[u8]) -> Option<RequestId> {
        if value.is_empty()
            || value.len() > 64
            || !value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return None;
        }
        let mut id = RequestId::default();
        id.bytes[..value.len()].copy_from_slice(value);
        id.len = value.len();
        Some(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The id as text. `keep` admits only `[A-Za-z0-9._-]` and the
    /// generator writes hex digits, so the empty default is
    /// never taken.
    pub fn as_str(&self) -> &str {
        crate::sys::ascii_str(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_snapshot_empties_the_token_and_assertion_caches() {
        let text = "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - { name: t, from: http://proxy.test/, to: http://127.0.0.1:9/ }\n";
        let path = std::path::Path::new("t.yaml");
        let snap = crate::snapshot::from_text(text, path).unwrap();
        let shared_snap: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
        let shared = Arc::new(Shared::new(1, None).unwrap());
        let worker = Worker::new(0, shared.clone(), shared_snap.clone());
        let first = worker.snapshot();
        let principal = crate::principal::Principal::for_tests("alice");
        let sign = || {
            worker.assertions.borrow_mut().get_or_sign(
                &shared.signer,
                &principal,
                "http://127.0.0.1:9",
                1_000,
                "r1",
            )
        };
        let jwt = sign();
        assert_eq!(worker.assertions.borrow().len(), 1);
        assert_eq!(sign(), jwt, "reused while the snapshot stays");
        worker.snapshot();
        assert_eq!(worker.assertions.borrow().len(), 1, "same generation");

        shared_snap.store(Arc::new(crate::snapshot::from_text(text, path).unwrap()));
        let second = worker.snapshot();
        assert_ne!(first.generation, second.generation);
        assert!(worker.assertions.borrow().is_empty(), "emptied on reload");
        assert!(worker.token_cache_for(&second).is_some());
        assert!(
            worker.token_cache_for(&first).is_none(),
            "an older snapshot never fills it"
        );
    }
}
