//! One client connection's state, reused across its requests: buffers, what
//! is known of the client, and what became of the current request. Also the
//! connection's end: a lingering close that never turns into a reset.

use crate::mcp::listfilter::ListFilter;
use crate::metrics::Decision;
use crate::proxy::idle::IdleSlot;
use crate::proxy::stream::{read_more, ClientStream};
use crate::proxy::worker::RequestId;
use monoio::io::AsyncWriteRent;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Buffers and facts of one client connection, reused across its requests.
pub struct Conn {
    pub client: ClientFacts,
    /// Bytes read from the client and not yet consumed.
    pub buf: Vec<u8>,
    /// The upstream request being built / sent.
    pub up: Vec<u8>,
    /// Bytes read from the upstream.
    pub ubuf: Vec<u8>,
    /// Bytes being written to the client.
    pub out: Vec<u8>,
    pub served: u64,
    /// What judging the current request's body found.
    pub judged: Judged,
    /// What became of the current request (metrics).
    pub outcome: Outcome,
    /// A copy of the current request's head, kept for policies that read
    /// headers after the head was consumed (routes with a policy only).
    pub head_copy: Vec<u8>,
    /// The audit hash of the last session id seen on this connection.
    pub session_hash: SessionHash,
    /// This connection's entry in its worker's coarse clock: its idle waits
    /// and its exchanges' timeouts (`proxy::idle`).
    pub slot: IdleSlot,
    /// What cancels a held read past its hold: kept while the connection
    /// is busy (a new one per request cost two allocations and two hashes),
    /// dropped when it goes idle.
    pub canceller: Option<monoio::io::Canceller>,
}

impl Conn {
    pub fn new(peer: SocketAddr, tls: bool, slot: IdleSlot) -> Conn {
        Conn {
            client: ClientFacts::new(peer, tls),
            buf: Vec::with_capacity(4096),
            up: Vec::new(),
            ubuf: Vec::new(),
            out: Vec::new(),
            served: 0,
            judged: Judged::default(),
            outcome: Outcome::default(),
            head_copy: Vec::new(),
            session_hash: SessionHash::default(),
            slot,
            canceller: None,
        }
    }

    /// A connection with a clock of its own, outside a worker (tests and
    /// benches).
    pub fn detached(peer: SocketAddr, tls: bool) -> Conn {
        Conn::new(
            peer,
            tls,
            Rc::new(crate::proxy::idle::IdleClock::default()).slot(),
        )
    }

    /// Forget what the previous request left behind.
    pub fn begin(&mut self) {
        // Empty as a new connection's, with the room a busy connection's
        // last request gave them.
        self.up.clear();
        self.ubuf.clear();
        self.out.clear();
        self.head_copy.clear();
        self.outcome = Outcome::default();
        self.judged.audit = Default::default();
        self.judged.method_slot = crate::metrics::method_slot(None);
        self.judged.ids.clear();
        self.judged.batch = false;
        self.judged.raised = 0;
        self.judged.awaiting = None;
        self.judged.rpc_error = false;
    }

    /// Once a kept-alive connection goes idle it holds only its read buffer:
    /// the upstream read buffer, the upstream head and the client output are
    /// freed (a busy connection keeps them for its next request), so idle
    /// connections stay small.
    pub fn release_idle(&mut self) {
        self.ubuf = Vec::new();
        self.up = Vec::new();
        self.out = Vec::new();
        self.head_copy = Vec::new();
        self.canceller = None;
    }
}

/// What is known of the client connection, computed once per connection.
pub struct ClientFacts {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The complete `X-Forwarded-For: <ip>\r\n` line.
    pub forwarded_for: Vec<u8>,
}

impl ClientFacts {
    pub fn new(peer: SocketAddr, tls: bool) -> ClientFacts {
        let mut forwarded_for = Vec::with_capacity(64);
        let _ = write!(forwarded_for, "X-Forwarded-For: {}\r\n", peer.ip());
        ClientFacts {
            peer,
            tls,
            forwarded_for,
        }
    }
}

/// A connection's last `Mcp-Session-Id` and its keyed hash: a client sends
/// the same id on every request of its session, so it is hashed once.
#[derive(Default)]
pub struct SessionHash(Option<(Box<[u8]>, Rc<str>)>);

impl SessionHash {
    pub fn get(&mut self, id: &[u8], sink: &crate::audit::Sink) -> Rc<str> {
        match &self.0 {
            Some((last, hash)) if **last == *id => hash.clone(),
            _ => {
                let hash: Rc<str> = sink.hash(id).into();
                self.0 = Some((id.into(), hash.clone()));
                hash
            }
        }
    }
}

/// What became of one request: its route, the status the client got, and
/// how portcullis decided.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub route: Option<usize>,
    pub request_id: RequestId,
    /// Why it was refused or failed ("" when forwarded).
    pub reason: &'static str,
    /// When the request went to the upstream, and how long its answer's
    /// head took (µs), with its status.
    pub upstream_sent: Option<Instant>,
    pub upstream: Option<(u16, u64)>,
    /// 0 until an answer is known.
    pub status: u16,
    pub decision: Decision,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            route: None,
            request_id: Default::default(),
            reason: "",
            upstream_sent: None,
            upstream: None,
            status: 0,
            decision: Decision::Failed,
        }
    }
}

/// The outcome of judging a body, beyond pass or refuse.
#[derive(Default)]
pub struct Judged {
    /// What the local answer being built says beyond its error (ids, headers).
    pub detail: Option<Box<crate::http1::encode::Detail>>,
    /// The list request whose answer is to be filtered.
    pub list: Option<ListFilter>,
    /// What the audit record says of the request (filled when audit is on).
    pub audit: crate::audit::Facts,
    /// The metrics slot of the body's (first) MCP method.
    pub method_slot: u8,
    /// The ids of the permitted body's requests (every one of a batch), for
    /// a local answer after judging (an upstream not connected).
    pub ids: Vec<crate::mcp::jsonrpc::RpcId>,
    pub batch: bool,
    /// Behaviour signals already reported for this request (a bit each).
    pub raised: u8,
    /// The caller whose allowed request the baseline settles once the
    /// answer is known (`baseline::answered`).
    pub awaiting: Option<u64>,
    /// The answer's first bytes were a JSON-RPC error.
    pub rpc_error: bool,
}

/// What happens to the connection after an exchange.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    KeepAlive,
    Close,
}

/// Close the way RFC 9112 §9.6 asks: send FIN, then read and discard what the
/// client still sends for a moment. Closing with unread bytes in the receive
/// buffer would make the kernel send a reset, which can destroy the response
/// the client has not read yet (e.g. a 413 sent before its body).
pub(crate) async fn linger_close(client: &mut ClientStream, conn: &mut Conn) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_DRAIN: usize = 256 * 1024;
    if client.shutdown().await.is_err() {
        return;
    }
    let due = conn.slot.due_in(LINGER);
    let mut drained = 0;
    while drained < MAX_DRAIN {
        conn.buf.clear();
        match conn
            .slot
            .by(due, read_more(client, &mut conn.buf, 16 * 1024))
            .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_keeps_only_its_read_buffer() {
        let mut conn = Conn::detached("127.0.0.1:1".parse().unwrap(), false);
        conn.served = 1;
        conn.up.reserve(512);
        conn.ubuf.reserve(4096);
        conn.out.reserve(512);
        conn.head_copy.reserve(512);
        // Pipelined bytes of the next request stay where they are.
        conn.buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        conn.release_idle();
        assert_eq!(conn.buf, b"GET / HTTP/1.1\r\n");
        assert_eq!(conn.buf.capacity(), 4096);
        for (name, v) in [
            ("ubuf", &conn.ubuf),
            ("up", &conn.up),
            ("out", &conn.out),
            ("head_copy", &conn.head_copy),
        ] {
            assert_eq!(v.capacity(), 0, "{name} still holds memory");
        }
    }
}
