//! The control plane: the built-in authorization server on threads of its
//! own. The cores hand it requests over a bounded channel (`proxy::handoff`)
//! and never wait on it; it owns the store, calls the company IdP and fetches
//! client metadata documents (blocking, here only), and publishes what the
//! cores need (signing keys, revoked grants) through `Shared::issued`. A tick
//! thread of its own, every 250 ms however busy the others are, and at once
//! when a shared store notifies a change (`store::watch`), re-reads
//! revocations and keys when the store changed (also those made by another
//! instance or `portcullis grants revoke`), refreshes users' upstream tokens
//! ahead of expiry (claimed, one refresher per token), and sweeps expired
//! records.

use crate::authz::server::Server;
use crate::proxy::handoff::{Control, Job};
use crate::proxy::worker::Shared;
use crate::snapshot::SharedSnapshot;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Threads answering the authorization server's requests: a slow IdP or
/// metadata fetch on one leaves the others serving.
const THREADS: usize = 4;
/// Requests queued beyond those being answered; more are refused (503).
const QUEUE: usize = 1024;
/// How often revocations are re-read from the store when it changed, and
/// upstream tokens due for a refresh are looked for.
const POLL: Duration = Duration::from_millis(250);
const SWEEP: Duration = Duration::from_secs(600);

/// The parts of a started authorization server the runtime keeps.
pub(crate) struct Started {
    pub control: Control,
    pub server: Arc<Server>,
    receiver: Receiver<Job>,
}

/// Open the store and make the server, when the configuration has one; its
/// keys and revocations are in `issued` when this returns.
pub(crate) fn prepare(
    snapshot: &crate::snapshot::Snapshot,
    issued: &Arc<arc_swap::ArcSwapOption<crate::identity::minted::Issued>>,
) -> std::io::Result<Option<Started>> {
    let Some(settings) = &snapshot.authz else {
        return Ok(None);
    };
    let err = |e: String| std::io::Error::other(format!("authorization server: {e}"));
    let (store, migrated) =
        crate::store::migrate(&settings.store).map_err(|e| err(e.to_string()))?;
    if migrated.from != migrated.to {
        tracing::info!(store = %settings.store, from = migrated.from, to = migrated.to, "migrated the store's schema");
    }
    let master = master_secret(settings).map_err(err)?;
    let server = Server::new(settings, store, &master, issued.clone()).map_err(err)?;
    tracing::info!(issuer = %settings.issuer, store = %settings.store, "authorization server ready");
    let (control, receiver) = std::sync::mpsc::sync_channel(QUEUE);
    Ok(Some(Started {
        control,
        server: Arc::new(server),
        receiver,
    }))
}

/// Start the threads; they end once every worker has stopped.
pub(crate) fn spawn(
    started: Started,
    snapshot: SharedSnapshot,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let audit = shared.clone();
    let _ = started.server.audit.set(Box::new(move |line| {
        if let Some(sink) = &audit.audit {
            sink.send(line, 1);
        }
    }));
    let receiver = Arc::new(Mutex::new(started.receiver));
    // Another instance's change wakes the tick at once (a full channel
    // already holds a wake-up: nothing is lost by dropping this one).
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    if let Some(settings) = snapshot.load().authz.as_deref() {
        let stopped = shared.clone();
        let (woke, state) = (
            started.server.counters.clone(),
            started.server.counters.clone(),
        );
        crate::store::watch::spawn(
            &settings.store,
            move || {
                woke.store_notifications.fetch_add(1, Ordering::Relaxed);
                let _ = wake.try_send(());
            },
            move |up| state.store_watch.store(u64::from(up), Ordering::Relaxed),
            move || stopped.stopped.load(Ordering::Relaxed),
        )?;
    }
    {
        let (server, snapshot, shared) = (started.server.clone(), snapshot.clone(), shared.clone());
        std::thread::Builder::new()
            .name("portcullis-authz-tick".into())
            .spawn(move || tick(&server, &snapshot, &shared, &woken))?;
    }
    for i in 0..THREADS {
        let (receiver, server, snapshot, shared) = (
            receiver.clone(),
            started.server.clone(),
            snapshot.clone(),
            shared.clone(),
        );
        std::thread::Builder::new()
            .name(format!("portcullis-authz{i}"))
            .spawn(move || serve(&receiver, &server, &snapshot, &shared))?;
    }
    Ok(())
}

fn serve(
    receiver: &Mutex<Receiver<Job>>,
    server: &Server,
    snapshot: &SharedSnapshot,
    shared: &Shared,
) {
    while !shared.stopped.load(std::sync::atomic::Ordering::Relaxed) {
        let next = receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(POLL);
        let snap = snapshot.load();
        let Some(settings) = snap.authz.as_deref() else {
            // Reloaded without the section: keep answering, clearly.
            match next {
                Ok(Job::Http { reply, .. }) => {
                    let _ = reply.send(crate::authz::token::oauth_error(
                        404,
                        "invalid_request",
                        "the authorization server is not configured",
                    ));
                }
                Ok(Job::Upstream { reply, .. }) => {
                    let _ = reply.send(crate::authz::upstream::UpstreamAnswer::Unavailable);
                }
                Ok(Job::Refused { .. }) | Err(_) => {}
            }
            continue;
        };
        match next {
            Ok(Job::Http { call, reply }) => {
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.handle(settings, &call)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        "the authorization server failed on a request (a bug): answered 500"
                    );
                    crate::authz::token::oauth_error(
                        500,
                        "server_error",
                        "the authorization server failed on this request",
                    )
                });
                let _ = reply.send(answer);
            }
            Ok(Job::Refused {
                user,
                route,
                status,
            }) => {
                server.upstream_refused(&user, &route, status);
            }
            Ok(Job::Upstream { user, route, reply }) => {
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.upstream_token(settings, &user, &route)
                }))
                .unwrap_or(crate::authz::upstream::UpstreamAnswer::Unavailable);
                let _ = reply.send(answer);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The periodic work, on a thread of its own so that it keeps its pace
/// however busy the request threads are: revocations re-read when the store
/// changed, users' upstream tokens refreshed ahead (the one refresher), the
/// store swept.
fn tick(server: &Server, snapshot: &SharedSnapshot, shared: &Shared, woken: &Receiver<()>) {
    let mut swept = Instant::now();
    while !shared.stopped.load(std::sync::atomic::Ordering::Relaxed) {
        // A change notification (shared store) or the poll, whichever first;
        // without a watcher (a file store) the channel is closed: the poll.
        if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(POLL) {
            std::thread::sleep(POLL);
        }
        let snap = snapshot.load();
        let Some(settings) = snap.authz.as_deref() else {
            continue;
        };
        let counters = &server.counters;
        match server.publish(settings) {
            Ok(()) => {
                if counters.store_up.swap(1, Ordering::Relaxed) == 0 {
                    tracing::info!("the store answers");
                }
            }
            Err(e) => {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if counters.store_up.swap(0, Ordering::Relaxed) == 1 {
                    tracing::warn!(error = %e, "the store does not answer: the data plane goes on with what it has; authorization requests get 503");
                }
            }
        }
        server.refresh_upstream(settings, crate::authz::unix_now());
        if swept.elapsed() >= SWEEP {
            swept = Instant::now();
            match server.sweep() {
                Ok(n) if n > 0 => {
                    tracing::info!(records = n, "swept expired authorization records")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot sweep the store"),
            }
        }
    }
}

/// The configured secret, or the one kept beside the SQLite store (made on
/// first start, mode 0600). A shared store has no such place: the
/// configuration must give the secret (checked when it is compiled).
fn master_secret(s: &crate::authz::settings::Settings) -> Result<Vec<u8>, String> {
    use crate::authz::seal::parse_secret;
    if let Some(text) = &s.secret {
        return parse_secret(text);
    }
    let crate::store::Location::File { path, .. } = &s.store else {
        return Err("authorization_server.secret is required with a shared store".into());
    };
    let path = path.with_file_name("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_secret(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| "no system randomness".to_string())?;
            let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
            write_private(&path, text.as_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "made the authorization server's secret (keep it with the store)");
            Ok(secret.to_vec())
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
