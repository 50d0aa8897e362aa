//! Requests for the built-in authorization server: the core reads the head
//! and the (small, Content-Length) body, hands the request to the control
//! plane over a bounded channel, and writes the answer when it comes back.
//! The core never blocks: a full channel is 503, a slow answer 504. No MCP
//! request ever comes here.

use crate::authz::http::{Answer, Call, Verb, HEADERS, MAX_BODY};
use crate::error::HttpError;
use crate::http1::{Framing, Method, RequestHead};
use crate::metrics::Decision;
use crate::proxy::conn::{Conn, Next};
use crate::proxy::reject::Reject;
use crate::proxy::stream::{read_more, write_all, ClientStream};
use crate::proxy::worker::Worker;
use crate::snapshot::Snapshot;
use std::time::Duration;

/// How long a core waits for the authorization server's answer (it may
/// call the company IdP or fetch a client's metadata document).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Work handed to the control plane, and where its answer goes.
pub enum Job {
    /// A request for the authorization server.
    Http {
        call: Call,
        reply: futures_channel::oneshot::Sender<Answer>,
    },
    /// The upstream refused a user's token with `status` (401/403): the
    /// connection is marked disconnected (no answer).
    Refused {
        user: String,
        route: String,
        status: u16,
    },
    /// A user's token at a route's upstream service (a per-core cache miss).
    Upstream {
        user: String,
        route: String,
        reply: futures_channel::oneshot::Sender<crate::authz::upstream::UpstreamAnswer>,
    },
}

/// The sending side, one per process (cloned into `Shared`).
pub(crate) type Control = std::sync::mpsc::SyncSender<Job>;

/// What pinning routes' list answers hold, for the pin thread
/// (`runtime::pins`): sent with `try_send`, never awaited; a full queue
/// drops the report (the next list answer makes it again).
pub(crate) type PinReports = std::sync::mpsc::SyncSender<crate::pin::Report>;

/// A request for the authorization server, its body still to be read.
pub struct Pending {
    call: Call,
    body_len: usize,
    expect_continue: bool,
    keep_alive: bool,
}

impl Pending {
    fn head_only(&self) -> bool {
        self.call.verb == Verb::Head
    }
}

/// Whether this head is for the authorization server: its endpoints, when it
/// is configured. Refused here: bodies that are chunked or too large.
pub(crate) fn claim(
    worker: &Worker,
    snap: &Snapshot,
    head: &RequestHead<'_>,
    tls: bool,
    peer: std::net::IpAddr,
) -> Option<Result<Pending, Reject>> {
    snap.authz.as_ref()?;
    worker.shared.control.as_ref()?;
    let (path, query) = head.path.split_once('?').unwrap_or((head.path, ""));
    if !crate::authz::server::is_endpoint(path) {
        return None;
    }
    let refuse = |err| {
        Some(Err(Reject {
            err,
            mcp: false,
            close: true,
            id: Default::default(),
            detail: None,
            route: None,
        }))
    };
    let body_len = match head.framing {
        Framing::None => 0,
        Framing::Length(n) if n as usize <= MAX_BODY => n as usize,
        Framing::Length(_) => return refuse(HttpError::PayloadTooLarge),
        _ => {
            return refuse(HttpError::BadRequest(
                "authorization server requests need a Content-Length",
            ))
        }
    };
    let verb = match head.method {
        Method::Get => Verb::Get,
        Method::Head => Verb::Head,
        Method::Post => Verb::Post,
        Method::Options => Verb::Options,
        _ => Verb::Other,
    };
    let headers = head
        .headers
        .iter()
        .filter_map(|h| {
            let name = HEADERS.iter().find(|n| h.name.eq_ignore_ascii_case(n))?;
            Some((*name, String::from_utf8_lossy(h.value).into_owned()))
        })
        .collect();
    Some(Ok(Pending {
        call: Call {
            verb,
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: Vec::new(),
            peer,
            tls,
        },
        body_len,
        expect_continue: head.expect_continue,
        keep_alive: head.keep_alive,
    }))
}

/// Read the body, hand the request over, write the answer.
pub(crate) async fn serve(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut ClientStream,
    conn: &mut Conn,
    mut p: Pending,
) -> Next {
    conn.outcome.status = 0;
    if p.body_len > 0 {
        if p.expect_continue && conn.buf.is_empty() {
            let mut cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if write_all(client, &mut cont).await.is_err() {
                return Next::Close;
            }
        }
        while conn.buf.len() < p.body_len {
            match monoio::time::timeout(
                snap.limits.body_timeout.0,
                read_more(client, &mut conn.buf, MAX_BODY),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Close,
            }
        }
        p.call.body = conn.buf.drain(..p.body_len).collect();
    }
    let head_only = p.head_only();
    let answer = ask(worker, p.call).await;
    conn.outcome.status = answer.status;
    conn.outcome.decision = if answer.status < 400 {
        Decision::Allowed
    } else {
        Decision::Denied
    };
    conn.out.clear();
    write_answer(&mut conn.out, &answer, !p.keep_alive, head_only);
    let sent = write_all(client, &mut conn.out).await;
    if sent.is_err() || !p.keep_alive {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Ask the control plane; a full queue, a stopped control plane or a late
/// answer are answered here.
async fn ask(worker: &Worker, call: Call) -> Answer {
    let unavailable = |why: &str| {
        Answer::json(
            503,
            &serde_json::json!({"error": "temporarily_unavailable", "error_description": why}),
        )
        .with("retry-after", "1")
    };
    let Some(control) = &worker.shared.control else {
        return unavailable("the authorization server is not running");
    };
    let (tx, rx) = futures_channel::oneshot::channel();
    match control.try_send(Job::Http { call, reply: tx }) {
        Ok(()) => {}
        Err(std::sync::mpsc::TrySendError::Full(_)) => {
            return unavailable("the authorization server is busy; try again")
        }
        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
            return unavailable("the authorization server is not running")
        }
    }
    match monoio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => unavailable("the authorization server failed on this request"),
        Err(_) => Answer::json(
            504,
            &serde_json::json!({"error": "temporarily_unavailable", "error_description": "the authorization server did not answer in time"}),
        ),
    }
}

fn write_answer(out: &mut Vec<u8>, a: &Answer, close: bool, head_only: bool) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        a.status,
        crate::http1::encode::reason_phrase(a.status)
    );
    for (name, value) in &a.headers {
        // Values come from the authorization server, never raw client input
        // with line breaks; refuse any that would split the head.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", a.body.len());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&a.body);
    }
}
