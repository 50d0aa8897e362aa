//! Every local answer: a status and a short JSON body (a JSON-RPC error on
//! MCP routes, naming the refused requests' ids), closing the connection
//! when framing is in doubt or the error requires it.

use crate::error::HttpError;
use crate::http1::encode::{error_response, Detail};
use crate::proxy::conn::{Conn, Next};
use crate::proxy::stream::{write_all, ClientStream};
use crate::proxy::worker::RequestId;

/// A request answered locally.
pub struct Reject {
    pub err: HttpError,
    pub mcp: bool,
    pub close: bool,
    pub id: RequestId,
    pub detail: Option<Box<Detail>>,
    /// The route's index, when the request got as far as one (u32 keeps
    /// this error value small).
    pub route: Option<u32>,
}

/// Answer locally; close when framing is in doubt or the error requires it.
pub(crate) async fn reject(client: &mut ClientStream, conn: &mut Conn, rej: Reject) -> Next {
    conn.outcome.status = rej.err.status();
    conn.outcome.decision = rej.err.decision();
    conn.outcome.reason = rej.err.reason();
    conn.outcome.request_id = rej.id;
    if let Some(route) = rej.route {
        conn.outcome.route = Some(route as usize);
    }
    conn.out.clear();
    error_response(
        &mut conn.out,
        rej.err,
        rej.mcp,
        rej.id.as_bytes(),
        rej.close,
        rej.detail.as_deref(),
    );
    if rej.err.status() >= 500 {
        tracing::warn!(peer = %conn.client.peer, status = rej.err.status(), reason = rej.err.reason(), "request failed");
    } else {
        tracing::debug!(peer = %conn.client.peer, status = rej.err.status(), reason = rej.err.reason(), "request rejected");
    }
    let _ = write_all(client, &mut conn.out).await;
    if rej.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}
