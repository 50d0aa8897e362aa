//! Sending a judged request: a pooled or new upstream connection, head and
//! held body in one write, then the unread body streamed. A held request is
//! replayable: when a pooled connection proves dead before any answer, it
//! goes out once more on a fresh one.

use crate::error::HttpError;
use crate::proxy::admit::Request;
use crate::proxy::conn::Conn;
use crate::proxy::judge::Permit;
use crate::proxy::stream::{read_more, ClientStream, UpstreamStream};
use crate::proxy::upstream::connect;
use crate::proxy::worker::{Worker, WorkerCounters};
use crate::snapshot::Snapshot;
use monoio::io::AsyncWriteRentExt;

/// Send the request `permit` allows: `conn.up` holds its complete head (and
/// held body); a body still unread streams from the client after it.
pub(crate) async fn send(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    req: &Request,
    permit: Permit,
) -> Result<UpstreamStream, Option<HttpError>> {
    let route = snap.routes.get(req.route);
    let settings = &snap.upstream;
    let replayable = permit.unread().is_none();
    let mut pooled = worker.pool.take(route.pool_key, replayable, worker.now());
    loop {
        let reused = pooled.is_some();
        let mut upstream = match pooled.take() {
            Some(u) => {
                WorkerCounters::bump(&worker.counters.upstream_reuses);
                u
            }
            None => {
                let u = connect(route, settings).await.map_err(Some)?;
                WorkerCounters::bump(&worker.counters.upstream_connects);
                u
            }
        };
        // A replayable request on a pooled connection waits for the first
        // bytes of the answer under the same timer as its write: a dead
        // connection shows as EOF or reset, and the request goes out again.
        let probe = reused && replayable;
        let limit = if probe {
            settings.response_header_timeout
        } else {
            snap.limits.write_timeout.0
        };
        // The head of a route that injects the user's token is wiped
        // whatever happens to it (sent, failed, or timed out in the kernel).
        let secret = route.auth.as_ref().is_some_and(|a| a.oauth2.is_some());
        let head = crate::sys::WipeOnDrop {
            buf: std::mem::take(&mut conn.up),
            wipe: secret,
        };
        let ubuf = &mut conn.ubuf;
        ubuf.clear();
        let sent = conn
            .slot
            .within(limit, async {
                let (res, head) = upstream.write_all(head).await;
                let got = match res {
                    Ok(_) if probe => read_more(&mut upstream, ubuf, 64 * 1024).await.map(Some),
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                };
                (got, head)
            })
            .await;
        let got = match sent {
            Ok((got, head)) => {
                conn.up = head.into_inner();
                got
            }
            Err(_) => return Err(Some(HttpError::GatewayTimeout)),
        };
        match got {
            Err(_) | Ok(Some(0)) if probe => continue,
            Err(_) | Ok(Some(0)) => {
                wipe(conn, secret);
                return Err(Some(HttpError::BadGateway(
                    "upstream closed the connection",
                )));
            }
            Ok(_) => {}
        }
        wipe(conn, secret);
        if let Some(framing) = permit.unread() {
            crate::proxy::body::stream(snap, client, &mut upstream, conn, req, framing).await?;
        }
        return Ok(upstream);
    }
}

/// Empties the upstream head buffer; one that held the user's upstream
/// token is wiped, capacity too.
fn wipe(conn: &mut Conn, secret: bool) {
    if secret {
        zeroize::Zeroize::zeroize(&mut conn.up);
    } else {
        conn.up.clear();
    }
}
