//! Per-core keep-alive pool of upstream connections: bounded per upstream,
//! idle connections expire. `!Send` by design: one pool per worker, no locks.

use crate::stream::UpstreamStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<String, Vec<(UpstreamStream, Instant)>>>,
}

impl Pool {
    /// An idle connection to `key` that has not outlived `max_idle`.
    pub fn take(&self, key: &str, max_idle: Duration) -> Option<UpstreamStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < max_idle {
                return Some(conn);
            }
        }
        None
    }

    /// Keep a connection for reuse; beyond `max` idle ones the oldest is closed.
    pub fn put(&self, key: &str, conn: UpstreamStream, max: usize) {
        if max == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = match idle.get_mut(key) {
            Some(l) => l,
            None => idle.entry(key.to_string()).or_default(),
        };
        if list.len() >= max {
            list.remove(0);
        }
        list.push((conn, Instant::now()));
    }

    /// Close idle connections older than `max_idle`.
    pub fn sweep(&self, max_idle: Duration) {
        for list in self.idle.borrow_mut().values_mut() {
            list.retain(|(_, since)| since.elapsed() < max_idle);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
