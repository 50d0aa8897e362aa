//! Threads and runtimes: one OS thread per worker, each with its own monoio
//! runtime (io_uring with the configured ring flags, or epoll where io_uring
//! is unavailable: the choice is logged), optional CPU pinning, and graceful
//! shutdown on SIGTERM/SIGINT.

pub(crate) mod admin;
pub(crate) mod control;
pub mod demo;
pub(crate) mod grants;
pub(crate) mod pins;
pub mod reload;
pub(crate) mod store;
pub(crate) mod tools;
pub(crate) mod vault;

use crate::config::{Driver, RuntimeConfig};
use crate::proxy::listener::{self, Bound};
use crate::proxy::worker::{Shared, Worker};
use crate::snapshot::{SharedSnapshot, Snapshot};
use arc_swap::ArcSwap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A started proxy: its workers' threads and what they share.
pub struct Running {
    pub shared: Arc<Shared>,
    pub snapshot: SharedSnapshot,
    /// The addresses actually listened on (ports of 0 resolved).
    pub addresses: Vec<std::net::SocketAddr>,
    /// The admin listener's address, when configured.
    pub admin: Option<std::net::SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
    audit_writer: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Ask the workers to stop accepting and finish in-flight requests.
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
    }

    /// Wait until every worker has stopped (called at once by
    /// `run_until_signal`: it returns after a shutdown).
    pub fn join(self) {
        let mut told = false;
        // `join` takes `self`: this is the process's one joiner.
        self.shared.joiner.get_or_init(std::thread::current);
        for t in self.threads {
            // Without an audit log nothing needs watching: wait for the worker.
            let Some(a) = &self.shared.audit else {
                let _ = t.join();
                continue;
            };
            // Until a shutdown begins this thread sleeps: it is woken by
            // `begin_shutdown` (and looks once a second, in case a worker
            // stopped on its own), so it takes no CPU from a busy worker.
            while !t.is_finished() && !self.shared.shutting_down() {
                std::thread::park_timeout(Duration::from_secs(1));
            }
            // A worker stopped by a writer that is behind (`on_overflow:
            // block`) finishes only once the writer catches up: say so once.
            while !t.is_finished() {
                let blocked = a.blocked.load(Ordering::Relaxed);
                if blocked > 0 && !told {
                    told = true;
                    tracing::warn!(
                        workers = blocked,
                        records = a.backlog(),
                        "shutdown waits for the audit writer to catch up (on_overflow: block); a second signal exits now and loses the records not yet written"
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = t.join();
        }
        // Every worker has handed over its records: write them all, stop.
        if let (Some(sink), Some(writer)) = (&self.shared.audit, self.audit_writer) {
            let since = Instant::now();
            let mut finished = false;
            loop {
                finished = finished || sink.finish();
                if finished && writer.is_finished() {
                    break;
                }
                if !told && since.elapsed() >= Duration::from_secs(1) {
                    told = true;
                    tracing::warn!(
                        records = sink.backlog(),
                        "shutdown waits for the audit writer to write every record; a second signal exits now and loses them"
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = writer.join();
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the admin thread's accept so it sees `stopped` and ends.
        if let Some(a) = self.admin {
            let _ = std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200));
        }
    }
}

/// Bind every listener and start the workers.
pub fn start(snapshot: Snapshot) -> std::io::Result<Running> {
    let workers = snapshot.workers;
    match crate::sys::raise_open_files_limit() {
        Ok((before, after)) => {
            tracing::info!(before, after, "open files limit");
            // Each connection may need two descriptors (client, upstream).
            if after < 2 * snapshot.limits.max_connections as u64 + 64 {
                tracing::warn!(
                    open_files = after,
                    max_connections = snapshot.limits.max_connections,
                    "the open files limit holds fewer than 2 x limits.max_connections; raise it (LimitNOFILE=, ulimit -n)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
    let bound = listener::bind_all(&snapshot.listeners, workers)?;
    let addresses: Vec<_> = bound
        .first()
        .map(|b| b.iter().map(|l| l.address).collect())
        .unwrap_or_default();
    for (spec, addr) in snapshot.listeners.iter().zip(&addresses) {
        tracing::info!(address = %addr, tls = spec.tls.is_some(), "listening");
    }
    let pin = snapshot.pin_workers;
    let admin = snapshot.admin;
    let (audit, audit_writer) = match &snapshot.audit {
        Some(cfg) => {
            let (sink, handle) = crate::audit::Sink::start(cfg)?;
            (Some(sink), Some(handle))
        }
        None => (None, None),
    };
    let mut shared = Shared::new(workers, audit).map_err(std::io::Error::other)?;
    let authz = control::prepare(&snapshot, &shared.issued)?;
    if let Some(a) = &authz {
        // One assertion key for every instance on the store (and across
        // restarts), so upstreams verify assertions from any of them with
        // one JWKS.
        let (kid, pkcs8) = a.server.assertion_key().map_err(std::io::Error::other)?;
        shared.signer = crate::identity::AssertionSigner::from_pkcs8("portcullis", &kid, &pkcs8)
            .map_err(std::io::Error::other)?;
        shared.control = Some(a.control.clone());
        shared.authz_counters = Some(a.server.counters.clone());
        shared.vault_epoch = a.server.vault_epoch.clone();
    }
    let pins = pins::prepare(&snapshot, &mut shared)?;
    let shared = Arc::new(shared);
    let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    if let Some(a) = authz {
        control::spawn(a, snapshot.clone(), shared.clone())?;
    }
    if let Some(p) = pins {
        pins::spawn(p, snapshot.clone(), shared.clone())?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::with_capacity(workers);
    for (id, listeners) in bound.into_iter().enumerate() {
        let shared = shared.clone();
        let snapshot = snapshot.clone();
        let t = std::thread::Builder::new()
            .name(format!("portcullis-w{id}"))
            .spawn(move || {
                if pin {
                    if let Err(e) = monoio::utils::bind_to_cpu_set([id % cpus]) {
                        tracing::warn!(worker = id, error = ?e, "cannot pin worker to CPU");
                    }
                }
                let config = &snapshot.load().runtime;
                let (ring, entries) = (ring_builder(config), config.ring_entries);
                let driver = config.driver;
                let counts = shared.clone();
                run_on_runtime(id, driver, ring, entries, &counts, move || {
                    worker_main(id, shared, snapshot, listeners)
                });
            })?;
        threads.push(t);
    }
    let admin = match admin {
        Some(address) => Some(crate::runtime::admin::start(
            address,
            snapshot.clone(),
            shared.clone(),
        )?),
        None => None,
    };
    Ok(Running {
        shared,
        snapshot,
        addresses,
        admin,
        threads,
        audit_writer,
    })
}

fn ring_builder(config: &RuntimeConfig) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if config.coop_taskrun {
        b.setup_coop_taskrun();
    }
    if config.single_issuer {
        b.setup_single_issuer();
    }
    if config.defer_taskrun {
        b.setup_defer_taskrun();
    }
    b
}

fn ring_flags(config: &RuntimeConfig) -> String {
    let flags: Vec<&str> = [
        (config.coop_taskrun, "coop_taskrun"),
        (config.single_issuer, "single_issuer"),
        (config.defer_taskrun, "defer_taskrun"),
    ]
    .iter()
    .filter(|f| f.0)
    .map(|f| f.1)
    .collect();
    if flags.is_empty() {
        "none".into()
    } else {
        flags.join(",")
    }
}

/// Build the configured runtime on this thread and run `main` on it; fall back
/// to epoll when io_uring cannot be set up.
fn run_on_runtime<F, Fut>(
    id: usize,
    driver: Driver,
    ring: io_uring::Builder,
    entries: u32,
    counts: &Shared,
    main: F,
) where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let want_uring = match driver {
        Driver::Epoll => false,
        Driver::IoUring => true,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(ring)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => {
                tracing::info!(worker = id, driver = "io_uring", entries, "worker started");
                counts.uring_workers.fetch_add(1, Ordering::Relaxed);
                rt.block_on(main());
                return;
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "io_uring unavailable, falling back to epoll")
            }
        }
    } else if driver == Driver::Auto {
        tracing::warn!(
            worker = id,
            "io_uring not available on this system, using epoll"
        );
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            tracing::info!(worker = id, driver = "epoll", "worker started");
            counts.epoll_workers.fetch_add(1, Ordering::Relaxed);
            rt.block_on(main());
        }
        Err(e) => tracing::error!(worker = id, error = %e, "cannot build a runtime"),
    }
}

async fn worker_main(
    id: usize,
    shared: Arc<Shared>,
    snapshot: SharedSnapshot,
    listeners: Vec<Bound>,
) {
    if id == 0 {
        let cfg = &snapshot.load().runtime;
        tracing::info!(ring_flags = %ring_flags(cfg), ring_entries = cfg.ring_entries, "io_uring ring options");
    }
    let worker = Rc::new(Worker::new(id, shared.clone(), snapshot));
    let canceller = monoio::io::Canceller::new();
    let mut accepts = Vec::new();
    for bound in listeners {
        accepts.push(monoio::spawn(listener::accept_loop(
            worker.clone(),
            bound,
            canceller.handle(),
        )));
    }
    let mut ticks = 0u64;
    // Requests begun by the last tick, and for how many ticks none was.
    let (mut begun, mut quiet_ticks) = (0, 0u32);
    while !shared.shutting_down() {
        monoio::time::sleep(crate::proxy::idle::TICK).await;
        let now = worker.tick();
        worker.idle.advance();
        // Quiet for three ticks (nothing begun, nothing in flight, event
        // streams included; every held read let go by then): what the last
        // burst freed goes back to the system, once per quiet spell.
        let quiet = worker.requests_begun() == begun && worker.in_flight.get() == 0;
        begun = worker.requests_begun();
        quiet_ticks = if quiet {
            quiet_ticks.saturating_add(1)
        } else {
            0
        };
        if quiet_ticks == 3 {
            crate::sys::return_free_memory(true);
        }
        worker.flush_audit();
        ticks += 1;
        if ticks.is_multiple_of(10) {
            worker.pool.sweep(now);
            worker.exchange_baselines(crate::proxy::admit::unix_now());
            crate::sys::return_free_memory(false);
        }
        worker
            .counters
            .upstream_idle
            .store(worker.pool.idle() as u64, Ordering::Relaxed);
    }
    // Stop accepting, then let in-flight requests finish up to the deadline.
    let _ = canceller.cancel();
    for a in accepts {
        a.await;
    }
    let deadline = Instant::now() + worker.snapshot().shutdown_timeout;
    while worker.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.in_flight.get() > 0 {
        tracing::warn!(
            worker = id,
            in_flight = worker.in_flight.get(),
            "shutdown deadline reached, closing"
        );
    }
    worker.flush_audit();
    tracing::info!(worker = id, "worker stopped");
}

/// Run until SIGTERM or SIGINT, then shut down gracefully. A second signal
/// exits at once. With a configuration file, it is watched and SIGHUP
/// reloads it (`reload`); SIGUSR1 reopens the audit log (logrotate).
pub fn run_until_signal(running: Running, config: Option<&std::path::Path>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let shared = running.shared.clone();
    let reload = match config {
        Some(path) => Some(crate::runtime::reload::start(
            path,
            running.snapshot.clone(),
            shared.clone(),
        )?),
        None => None,
    };
    std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    match &shared.audit {
                        Some(a) => a.reopen.store(true, Ordering::Relaxed),
                        None => tracing::info!("SIGUSR1 ignored: no audit log"),
                    }
                } else if sig == SIGHUP {
                    match &reload {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => tracing::info!("SIGHUP ignored: no configuration file to reload"),
                    }
                } else if first {
                    tracing::info!(
                        signal = sig,
                        "shutting down: no new connections, finishing in-flight requests"
                    );
                    shared.begin_shutdown();
                    first = false;
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    running.join();
    tracing::info!("stopped");
    Ok(())
}
