//! The data plane: one client connection on one core, in flow order.
//!
//! ```text
//! listener ─► tls ─► serve (keep-alive loop) ─► exchange:
//!   request::read_head   head parsed (http1) ─► wellknown answers, or
//!                        handoff to the authorization server (control plane), or
//!                        admit: route ─► gate ─► authenticate ─► session
//!                        ─► upstream::head written
//!   body::read           held whole when bounded (MCP routes: always)
//!   inject::lookup       the user's upstream token (oauth2 routes): per-core cache,
//!                        else the control plane; written into the head
//!   judge                MCP decoded in full, gate + policy per message ─► Permit
//!   upstream::send       pooled or new connection; needs the Permit
//!   upstream::relay      response head checked, body streamed (lists filtered)
//!   reject               every local answer
//! record                 metrics + audit record, once per request
//! ```
//!
//! Every timeout closes the connection, so a dropped in-flight read never
//! loses request bytes.

pub(crate) mod admit;
pub(crate) mod auth;
pub(crate) mod baseline;
pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod gate;
pub(crate) mod handoff;
pub(crate) mod idle;
pub(crate) mod inject;
pub(crate) mod judge;
pub(crate) mod listener;
pub(crate) mod pin;
pub(crate) mod record;
pub(crate) mod reject;
pub(crate) mod request;
pub(crate) mod screen;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod wellknown;
pub(crate) mod worker;

use crate::error::HttpError;
use crate::http1::Framing;
use crate::metrics::Decision;
use crate::proxy::admit::Request;
use crate::proxy::conn::{linger_close, Conn, Next};
use crate::proxy::reject::{reject, Reject};
use crate::proxy::request::Step;
use crate::proxy::stream::{write_all, ClientStream, UpstreamStream};
use crate::proxy::worker::Worker;
use crate::snapshot::Snapshot;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Serve one client connection until it closes, errs, idles out or the
/// worker shuts down. `held` is dropped with it (the listener's connection
/// count). An async block, not an async fn: its captures are not copied
/// again into locals, and this future is what an idle connection holds.
#[allow(clippy::manual_async_fn)] // the async fn form is 150 bytes bigger
pub fn serve<Held>(
    worker: Rc<Worker>,
    mut client: ClientStream,
    peer: SocketAddr,
    held: Held,
) -> impl std::future::Future<Output = ()> {
    async move {
        // What a wait or a timeout costs this connection: one entry in the
        // worker's coarse clock, no timer of its own.
        let mut conn = Conn::new(peer, client.is_tls(), worker.idle.slot());
        // The client's byte counts at the end of the previous request.
        let mut counted = (0, 0);
        loop {
            // Boxed: a busy spell's state (the held read, the exchange:
            // several KiB) exists only while requests come and are served,
            // one allocation for all of them.
            let busy = Box::pin(busy(&worker, &mut client, &mut conn, &mut counted));
            match busy.await {
                Turn::Idle(left) => {
                    // Idle: the exchange buffers go (a busy connection keeps
                    // them, so its requests do not allocate and grow them).
                    conn.release_idle();
                    if !request::idle(&worker, &mut client, &mut conn, left).await {
                        break;
                    }
                }
                Turn::Close => break,
            }
        }
        // Boxed too: only a closing connection holds its state.
        Box::pin(linger_close(&mut client, &mut conn)).await;
        drop(held);
    }
}

/// How a connection's busy spell ended.
enum Turn {
    /// Nothing came while the read was held: wait this long more for
    /// readability, holding no buffer.
    Idle(std::time::Duration),
    Close,
}

/// Requests as they come: each waited for with a read held, then served
/// and recorded, until none comes in time or the connection closes.
async fn busy(
    worker: &Worker,
    client: &mut ClientStream,
    conn: &mut Conn,
    counted: &mut (u64, u64),
) -> Turn {
    loop {
        match request::wait(worker, client, conn).await {
            request::Waited::Ready => {}
            request::Waited::Idle(left) => return Turn::Idle(left),
            request::Waited::Gone => return Turn::Close,
        }
        if turn(worker, client, conn, counted).await == Next::Close {
            return Turn::Close;
        }
    }
}

/// Serve and record one request whose first bytes are in.
async fn turn(
    worker: &Worker,
    client: &mut ClientStream,
    conn: &mut Conn,
    counted: &mut (u64, u64),
) -> Next {
    // Loaded once the request has begun, so a connection idle across a
    // reload is served by the new snapshot.
    let snap = worker.snapshot();
    let started = Instant::now();
    conn.begin();
    let next = {
        let _busy = InFlight::enter(worker);
        exchange(worker, &snap, client, conn).await
    };
    let bytes = (client.bytes_in - counted.0, client.bytes_out - counted.1);
    *counted = (client.bytes_in, client.bytes_out);
    record::record(worker, &snap, conn, client, started, bytes);
    conn.served += 1;
    if worker.shared.shutting_down() {
        Next::Close
    } else {
        next
    }
}

/// One request/response exchange, stage by stage.
async fn exchange(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
) -> Next {
    let req = match request::read_head(worker, snap, client, conn).await {
        Ok(Step::Forward(req)) => req,
        Ok(Step::Refuse(rej)) | Err(Some(rej)) => return reject(client, conn, rej).await,
        Ok(Step::Answered(close)) => return answered(client, conn, close).await,
        Ok(Step::Authz(pending)) => {
            return handoff::serve(worker, snap, client, conn, pending).await
        }
        Err(None) => return Next::Close,
    };
    let upstream = match forward(worker, snap, client, conn, &req).await {
        Ok(upstream) => upstream,
        Err(Some(err)) => {
            // A body not read to its end leaves the connection unusable.
            let close = err.must_close()
                || !req.keep_alive
                || (req.framing != Framing::None && !err.judged_whole_body());
            let detail = conn.judged.detail.take();
            return reject(client, conn, refusal(&req, err, close, detail)).await;
        }
        Err(None) => return Next::Close,
    };
    let route = snap.routes.get(req.route);
    match upstream::relay::response(worker, snap, route, &req, client, upstream, conn).await {
        Ok(next) => next,
        Err(Some(err)) => {
            let detail = conn.judged.detail.take();
            reject(client, conn, refusal(&req, err, true, detail)).await
        }
        Err(None) => Next::Close,
    }
}

/// What an admitted request must pass to reach its upstream: its body is
/// read as far as it is held, judged into a `Permit`, and sent with it.
async fn forward(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
) -> Result<UpstreamStream, Option<HttpError>> {
    // The upstream latency is counted from here, as it always was (the
    // body's arrival and judging included).
    conn.outcome.upstream_sent = Some(Instant::now());
    let body = body::read(snap, client, conn, req).await?;
    // The user's own upstream token (routes with `oauth2`), written into the
    // head before judging frames the body; refused only once judged.
    let token = inject::lookup(worker, snap.routes.get(req.route), req, &mut conn.up).await;
    let written = matches!(token, inject::Found::Written);
    let sent = match judge::judge(worker, snap, req, body, conn) {
        Err(e) => Err(Some(e)),
        Ok(permit) => match token {
            inject::Found::NotConnected(_) | inject::Found::Unavailable => {
                Err(Some(inject::refuse(conn, token)))
            }
            _ => upstream::send::send(worker, snap, client, conn, req, permit).await,
        },
    };
    if written && sent.is_err() {
        // Refused or failed with the user's token in the head: wiped.
        zeroize::Zeroize::zeroize(&mut conn.up);
    }
    sent
}

/// Send an answer portcullis wrote itself (`wellknown`) from `conn.out`.
async fn answered(client: &mut ClientStream, conn: &mut Conn, close: bool) -> Next {
    conn.outcome.status = 200;
    conn.outcome.decision = Decision::Allowed;
    let sent = write_all(client, &mut conn.out).await;
    if close || sent.is_err() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// The local answer to an admitted request that could not be forwarded.
fn refusal(
    req: &Request,
    err: HttpError,
    close: bool,
    detail: Option<Box<crate::http1::encode::Detail>>,
) -> Reject {
    Reject {
        err,
        mcp: req.mcp,
        close,
        id: req.id,
        detail,
        route: u32::try_from(req.route).ok(),
    }
}

/// Counts a request as in flight (graceful shutdown waits for these).
struct InFlight<'a>(&'a Worker);

impl<'a> InFlight<'a> {
    fn enter(w: &'a Worker) -> Self {
        w.in_flight.set(w.in_flight.get() + 1);
        InFlight(w)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}
