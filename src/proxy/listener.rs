//! Listening sockets: created once per worker with `SO_REUSEPORT` (so the
//! kernel spreads connections across cores), accept loops that enforce the
//! connection limit, TLS handshakes, and a task per connection.

use crate::proxy::stream::ClientStream;
use crate::proxy::worker::Worker;
use crate::snapshot::ListenerSpec;
use monoio::io::CancelHandle;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One bound socket for one worker, not yet registered with a runtime.
pub(crate) struct Bound {
    pub socket: std::net::TcpListener,
    pub address: SocketAddr,
    /// Index of this listener in the snapshot, and its configured address:
    /// after a reload, the certificates come from the snapshot's listener at
    /// this index when its address is unchanged.
    pub index: usize,
    pub configured: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections on this listener, shared by its sockets on all workers.
    pub open: Arc<AtomicUsize>,
    pub max_connections: usize,
}

/// Bind `workers` sockets per listener, all on the same address. A port of 0
/// is resolved by the first bind and reused by the others.
pub(crate) fn bind_all(specs: &[ListenerSpec], workers: usize) -> std::io::Result<Vec<Vec<Bound>>> {
    let mut per_worker: Vec<Vec<Bound>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, spec) in specs.iter().enumerate() {
        let mut addr = spec.address;
        refuse_if_taken(addr)?;
        let open = Arc::new(AtomicUsize::new(0));
        for bound in per_worker.iter_mut() {
            let socket = bind_one(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            addr = socket.local_addr()?;
            bound.push(Bound {
                socket,
                address: addr,
                index,
                configured: spec.address,
                tls: spec.tls.clone(),
                open: open.clone(),
                max_connections: spec.max_connections.unwrap_or(usize::MAX),
            });
        }
    }
    Ok(per_worker)
}

/// `SO_REUSEPORT` would let this process silently share a port with another
/// listener (a stale portcullis, say) and split its traffic: refuse instead.
/// A bind without `SO_REUSEPORT` fails exactly when something listens there.
fn refuse_if_taken(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another process listening there?)"),
        )
    })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Holds one place in the total and the listener's connection counts.
struct ConnectionSlot(Rc<Worker>, Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept connections until cancelled (shutdown), one task per connection.
pub(crate) async fn accept_loop(worker: Rc<Worker>, bound: Bound, cancel: CancelHandle) {
    let listener = match monoio::net::TcpListener::from_std(bound.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %bound.address, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        let (tcp, peer) = match listener.cancelable_accept(cancel.clone()).await {
            Ok(c) => c,
            Err(_) if worker.shared.shutting_down() => break,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(address = %bound.address, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snap = worker.snapshot();
        let open = worker.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let here = bound.open.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = ConnectionSlot(worker.clone(), bound.open.clone());
        if open > snap.limits.max_connections || here > bound.max_connections {
            tracing::debug!(%peer, open, here, "connection limit reached, closing");
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let handshake_timeout = snap.limits.header_timeout.0;
        let tls = bound.tls.as_ref().map(|bound_tls| {
            match snap.listeners.get(bound.index) {
                Some(l) if l.address == bound.configured => l.tls.clone(),
                _ => None,
            }
            .unwrap_or_else(|| bound_tls.clone())
        });
        let worker = worker.clone();
        let Some(config) = tls else {
            // A plain connection's task is `serve` alone: the slot is the only
            // thing added to what it holds while idle.
            monoio::spawn(super::serve(worker, ClientStream::plain(tcp), peer, slot));
            continue;
        };
        monoio::spawn(async move {
            // Boxed: the handshake's state (the TLS connection and its timer
            // inline) lives only while it runs.
            let handshake = Box::pin(monoio::time::timeout(
                handshake_timeout,
                crate::proxy::tls::accept(config, tcp),
            ));
            let client = match handshake.await {
                Ok(Ok((tls, info))) => ClientStream::tls(tls, info),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            super::serve(worker, client, peer, slot).await;
        });
    }
}
