//! The last stage of every exchange, answered or not: count it in its
//! route's metrics and write its audit record.

use crate::proxy::conn::Conn;
use crate::proxy::stream::ClientStream;
use crate::proxy::worker::Worker;
use crate::snapshot::Snapshot;
use std::time::Instant;

/// Count a finished request in its route's metrics and write its audit
/// record; `bytes` are what the client connection carried for it (in, out).
pub(crate) fn record(
    worker: &Worker,
    snap: &Snapshot,
    conn: &Conn,
    client: &ClientStream,
    started: Instant,
    bytes: (u64, u64),
) {
    let outcome = &conn.outcome;
    let route = outcome
        .route
        .filter(|&i| i < snap.routes.all().len())
        .map(|i| snap.routes.get(i));
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if outcome.status != 0 {
        let metrics = route.map_or(&snap.unrouted, |r| &r.metrics);
        metrics.record(
            outcome.status,
            outcome.decision,
            conn.judged.method_slot,
            micros,
        );
    } else if route.is_none() {
        return; // the client left before a request could be read
    }
    crate::proxy::baseline::answered(worker, conn);
    if worker.shared.audit.is_none() {
        return;
    }
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    worker.audit(&crate::audit::Record {
        unix_micros,
        request_id: outcome.request_id.as_str(),
        worker: worker.id,
        client: conn.client.peer,
        tls: client.tls_info(),
        route: route.map(|r| r.name.as_str()),
        facts: &conn.judged.audit,
        decision: outcome.decision,
        reason: if outcome.status == 0 {
            "the client went away before the answer"
        } else {
            outcome.reason
        },
        status: outcome.status,
        latency_us: micros,
        upstream: outcome.upstream,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
    });
}
