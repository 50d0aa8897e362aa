//! Hot reload: the configuration file is polled for changes (its content, so
//! an editor's rename-over counts too) and SIGHUP forces a reload. A new
//! snapshot is compiled on this thread, off the request path, and swapped in
//! with one `ArcSwap::store`; requests in flight finish on the snapshot they
//! loaded. An invalid file is logged with file:line:column and the running
//! snapshot stays. Listener addresses, worker count and runtime options are
//! fixed at start: a change to them is logged and takes effect at restart.

use crate::proxy::worker::Shared;
use crate::snapshot::{self, SharedSnapshot, Snapshot};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Swapped,
    /// The file did not change since the last load.
    Unchanged,
    Failed,
}

/// Reloads one configuration file into a shared snapshot.
pub struct Reloader {
    path: PathBuf,
    snapshot: SharedSnapshot,
    shared: Arc<Shared>,
    fingerprint: Option<u64>,
}

impl Reloader {
    pub fn new(path: &Path, snapshot: SharedSnapshot, shared: Arc<Shared>) -> Reloader {
        Reloader {
            fingerprint: fingerprint(path),
            path: path.to_path_buf(),
            snapshot,
            shared,
        }
    }

    /// Reload if the file changed (or always, when `force`).
    pub fn check(&mut self, force: bool) -> Outcome {
        let now = fingerprint(&self.path);
        if !force && (now.is_none() || now == self.fingerprint) {
            return Outcome::Unchanged;
        }
        self.fingerprint = now;
        match snapshot::load(&self.path) {
            Ok(mut next) => {
                let old = self.snapshot.load();
                warn_fixed_at_start(&old, &next);
                if next.pin_store.is_some() && self.shared.pin_reports.is_none() {
                    tracing::warn!("a route pins now, but no route pinned at start: tool pinning starts at the next restart (until then nothing is recorded or held)");
                }
                next.adopt_metrics(&old);
                let routes = next.routes.all().len();
                self.snapshot.store(Arc::new(next));
                self.shared.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %self.path.display(), routes, "configuration reloaded");
                Outcome::Swapped
            }
            Err(errors) => {
                self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                for e in &errors.0 {
                    tracing::error!(error = %e, "configuration rejected");
                }
                tracing::error!(
                    file = %self.path.display(),
                    errors = errors.0.len(),
                    "reload failed: still running the previous configuration"
                );
                Outcome::Failed
            }
        }
    }
}

/// A hash of the file's bytes (`None` when it cannot be read right now, e.g.
/// in the middle of an editor's save: the next poll sees the final file).
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn warn_fixed_at_start(old: &Snapshot, new: &Snapshot) {
    let addrs = |s: &Snapshot| s.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
    if addrs(old) != addrs(new) {
        tracing::warn!("listener addresses changed: they take effect at restart");
    }
    if old.workers != new.workers || old.pin_workers != new.pin_workers {
        tracing::warn!("workers / pin_workers changed: they take effect at restart");
    }
}

/// Start the watcher thread: it polls the file every `POLL_INTERVAL` and
/// reloads at once on a message from the returned sender (SIGHUP). It stops
/// when every sender is dropped or the proxy shuts down.
pub fn start(
    path: &Path,
    snapshot: SharedSnapshot,
    shared: Arc<Shared>,
) -> std::io::Result<Sender<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reloader = Reloader::new(path, snapshot, shared.clone());
    std::thread::Builder::new()
        .name("portcullis-reload".into())
        .spawn(move || watch(&mut reloader, &rx, &shared))?;
    Ok(tx)
}

fn watch(reloader: &mut Reloader, rx: &Receiver<()>, shared: &Shared) {
    while !shared.shutting_down() {
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(()) => {
                tracing::info!("SIGHUP: reloading the configuration");
                reloader.check(true);
            }
            Err(RecvTimeoutError::Timeout) => {
                reloader.check(false);
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
