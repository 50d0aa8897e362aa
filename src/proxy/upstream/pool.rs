//! Per-core keep-alive pool of upstream connections: bounded per upstream,
//! each connection kept only until its expiry (the configured idle timeout,
//! or less when the upstream announced a shorter `Keep-Alive: timeout`), and
//! checked for a close by the peer before reuse. `!Send` by design: one pool
//! per worker, no locks.

use crate::proxy::stream::UpstreamStream;
use crate::snapshot::route::PoolKey;
use crate::sys::idle_connection_is_dead;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Connections idle for less than this are reused without a liveness peek
/// when the request can be replayed (a dead one is then retried anyway).
const FRESH: Duration = Duration::from_millis(500);

struct Idle {
    conn: UpstreamStream,
    since: Instant,
    expires: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    /// Seeded foldhash: taken from and put into on every request.
    idle: RefCell<HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>>,
}

impl Pool {
    /// A live idle connection to `key`, newest first. `replayable`: the
    /// request can be sent again on a fresh connection if this one fails, so
    /// a connection idle for only a moment is taken without a peek.
    /// `now` may be coarse (the worker's clock, ±100 ms).
    pub(crate) fn take(
        &self,
        key: PoolKey,
        replayable: bool,
        now: Instant,
    ) -> Option<UpstreamStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(Idle {
            conn,
            since,
            expires,
        }) = list.pop()
        {
            if now >= expires {
                continue;
            }
            let fresh = replayable && now.duration_since(since) < FRESH;
            // TLS connections hide their socket; a dead one shows on first use.
            if let (false, UpstreamStream::Plain(tcp)) = (fresh, &conn) {
                if idle_connection_is_dead(tcp) {
                    continue;
                }
            }
            return Some(conn);
        }
        None
    }

    /// Keep a connection for reuse for `keep`; beyond `max` idle ones per
    /// upstream the oldest is closed.
    pub(crate) fn put(
        &self,
        key: PoolKey,
        conn: UpstreamStream,
        max: usize,
        keep: Duration,
        now: Instant,
    ) {
        if max == 0 || keep.is_zero() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() >= max {
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: now,
            expires: now + keep,
        });
    }

    /// Idle connections held, to all upstreams.
    pub(crate) fn idle(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }

    /// Close expired idle connections.
    pub(crate) fn sweep(&self, now: Instant) {
        for list in self.idle.borrow_mut().values_mut() {
            list.retain(|i| now < i.expires);
        }
    }
}
