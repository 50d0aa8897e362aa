//! Many-connections helper of the load test scenarios (loadtest/sse.py,
//! loadtest/memory.py). One thread, monoio with the epoll driver (no
//! io_uring locked-memory needs), so its own CPU time is one process's.
//!
//! ```text
//! ltconn sse-upstream ADDR INTERVAL_MS PAD_BYTES
//!     Answers every request with `200 text/event-stream` (chunked) and then,
//!     every INTERVAL_MS, one event per stream: a JSON-RPC notification whose
//!     params carry "t": the wall-clock send time in ns (CLOCK_REALTIME, the
//!     same clock for every process on the machine) and PAD_BYTES of padding.
//! ltconn sse-client ADDR PATH STREAMS RAMP_BATCH WARMUP_S MEASURE_S
//!     Opens STREAMS event streams (GET PATH, Accept: text/event-stream),
//!     RAMP_BATCH connects in flight at a time; prints `READY {json}` when all
//!     are open (or failed), then after WARMUP_S measures for MEASURE_S: events
//!     received, per-event latency (receive time − "t"), streams that ended or
//!     erred. Prints `RESULT {json}` and exits.
//! ltconn idle-client ADDR PATH CONNS RAMP_BATCH
//!     Opens CONNS keep-alive connections, each sends one GET PATH and reads
//!     the whole answer (Content-Length or chunked), then idles. Prints
//!     `READY {json}`; on a line `stop` or EOF on stdin prints `RESULT {json}`
//!     (how many were closed by the peer meanwhile) and exits.
//! ```
//! Every number it prints is counted, never assumed.

#[path = "ltjson.rs"]
mod ltjson;

use ltjson::{esc, json_pcts};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn cpu_s() -> f64 {
    // utime + stime of this process, from /proc (std only).
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tck = 100.0; // USER_HZ is 100 on Linux
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

fn usage() -> ! {
    eprintln!("usage: see the top of loadtest/ltconn.rs");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        usage()
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let addr: SocketAddr = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage());
    match args[1].as_str() {
        "sse-upstream" => rt.block_on(sse_upstream(addr, num(3), num(4) as usize)),
        "sse-client" => {
            let path = args.get(3).cloned().unwrap_or_else(|| usage());
            rt.block_on(sse_client(
                addr,
                path,
                num(4) as usize,
                num(5) as usize,
                num(6),
                num(7),
            ))
        }
        "idle-client" => {
            let path = args.get(3).cloned().unwrap_or_else(|| usage());
            rt.block_on(idle_client(addr, path, num(4) as usize, num(5) as usize))
        }
        _ => usage(),
    }
}

// ---------------------------------------------------------------------------
// upstream

async fn sse_upstream(addr: SocketAddr, interval_ms: u64, pad: usize) {
    let opts = ListenerOpts::new().reuse_addr(true).backlog(8192);
    let listener = TcpListener::bind_with_config(addr, &opts).expect("bind");
    let pad: Rc<str> = "x".repeat(pad).into();
    let open = Rc::new(Cell::new(0u64));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let pad = pad.clone();
        let open = open.clone();
        monoio::spawn(async move {
            open.set(open.get() + 1);
            let _ = upstream_conn(stream, interval_ms, &pad).await;
            open.set(open.get() - 1);
        });
    }
}

async fn upstream_conn(mut s: TcpStream, interval_ms: u64, pad: &str) -> std::io::Result<()> {
    // Read the request head (a GET: no body).
    let mut buf = Vec::with_capacity(2048);
    loop {
        let (res, b) = s.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(());
        }
        if memchr_end(&buf) {
            break;
        }
        if buf.len() == buf.capacity() {
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            buf.reserve(2048);
        }
    }
    drop(buf);
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let (res, _) = s.write_all(head).await;
    res?;
    let interval = Duration::from_millis(interval_ms);
    let mut seq = 0u64;
    loop {
        monoio::time::sleep(interval).await;
        seq += 1;
        let event = format!(
            "id: {seq}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":{seq},\"t\":{},\"pad\":\"{pad}\"}}}}\n\n",
            now_ns()
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len()).into_bytes();
        let (res, _) = s.write_all(chunk).await;
        res?;
    }
}

fn memchr_end(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

// ---------------------------------------------------------------------------
// ramp: open connections RAMP_BATCH at a time

struct Ramp {
    in_flight: Cell<usize>,
}

async fn ramp_wait(r: &Ramp, batch: usize) {
    while r.in_flight.get() >= batch {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    r.in_flight.set(r.in_flight.get() + 1);
}

fn ramp_done(r: &Ramp) {
    r.in_flight.set(r.in_flight.get() - 1);
}

#[derive(Default)]
struct Counts {
    opened: Cell<u64>,
    connect_err: Cell<u64>,
    bad_status: Cell<u64>,
    io_err: Cell<u64>,
    eof: Cell<u64>,
    /// Set once the measurement window opens / closes.
    measuring: Cell<bool>,
    events: Cell<u64>,
    events_all: Cell<u64>,
    lat_ns: RefCell<Vec<u64>>,
    ended_in_window: Cell<u64>,
    /// Streams that were open and then ended (EOF or error).
    ended: Cell<u64>,
    first_err: RefCell<Option<String>>,
}

fn note_err(c: &Counts, e: String) {
    let mut f = c.first_err.borrow_mut();
    if f.is_none() {
        *f = Some(e);
    }
}

async fn connect_and_send(addr: SocketAddr, req: &[u8]) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_addr(addr).await?;
    let _ = s.set_nodelay(true);
    let mut s = s;
    let (res, _) = s.write_all(req.to_vec()).await;
    res?;
    Ok(s)
}

/// Read until the response head is complete; returns (status, head_len, buf).
async fn read_head(s: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<(u16, usize, Vec<u8>)> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = std::str::from_utf8(buf.get(9..12).unwrap_or(b"000"))
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return Ok((status, i + 4, buf));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = s
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        buf = slice.into_inner();
        if res? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof before head",
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// SSE client

async fn sse_client(
    addr: SocketAddr,
    path: String,
    streams: usize,
    batch: usize,
    warmup_s: u64,
    measure_s: u64,
) {
    let req: Rc<[u8]> = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
Mcp-Protocol-Version: 2025-06-18\r\nCache-Control: no-cache\r\n\r\n"
    )
    .into_bytes()
    .into();
    let c = Rc::new(Counts::default());
    let ramp = Rc::new(Ramp {
        in_flight: Cell::new(0),
    });
    let t0 = Instant::now();
    let cpu0 = cpu_s();
    for _ in 0..streams {
        ramp_wait(&ramp, batch).await;
        let (c, ramp, req) = (c.clone(), ramp.clone(), req.clone());
        monoio::spawn(async move {
            let mut s = match connect_and_send(addr, &req).await {
                Ok(s) => s,
                Err(e) => {
                    c.connect_err.set(c.connect_err.get() + 1);
                    note_err(&c, format!("connect: {e}"));
                    ramp_done(&ramp);
                    return;
                }
            };
            let (status, head_len, buf) = match read_head(&mut s, Vec::with_capacity(1024)).await {
                Ok(h) => h,
                Err(e) => {
                    c.io_err.set(c.io_err.get() + 1);
                    note_err(&c, format!("head: {e}"));
                    ramp_done(&ramp);
                    return;
                }
            };
            ramp_done(&ramp);
            if status != 200 {
                c.bad_status.set(c.bad_status.get() + 1);
                note_err(&c, format!("status {status}"));
                return;
            }
            c.opened.set(c.opened.get() + 1);
            let mut pending: Vec<u8> = buf[head_len..].to_vec();
            let mut rbuf = Vec::with_capacity(4096);
            loop {
                scan_events(&c, &mut pending);
                rbuf.clear();
                let (res, b) = s.read(rbuf).await;
                rbuf = b;
                match res {
                    Ok(0) => {
                        c.eof.set(c.eof.get() + 1);
                        c.ended.set(c.ended.get() + 1);
                        if c.measuring.get() {
                            c.ended_in_window.set(c.ended_in_window.get() + 1);
                        }
                        note_err(&c, "stream ended by peer".into());
                        return;
                    }
                    Ok(_) => pending.extend_from_slice(&rbuf),
                    Err(e) => {
                        c.io_err.set(c.io_err.get() + 1);
                        c.ended.set(c.ended.get() + 1);
                        if c.measuring.get() {
                            c.ended_in_window.set(c.ended_in_window.get() + 1);
                        }
                        note_err(&c, format!("read: {e}"));
                        return;
                    }
                }
            }
        });
    }
    while ramp.in_flight.get() > 0 {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let ramp_s = t0.elapsed().as_secs_f64();
    println!(
        "READY {{\"requested\":{streams},\"opened\":{},\"connect_err\":{},\"bad_status\":{},\"io_err\":{},\"ramp_s\":{ramp_s:.3}}}",
        c.opened.get(),
        c.connect_err.get(),
        c.bad_status.get(),
        c.io_err.get()
    );
    monoio::time::sleep(Duration::from_secs(warmup_s)).await;
    let open_at_start = c.opened.get() - c.ended.get();
    let ev0 = c.events_all.get();
    let cpu1 = cpu_s();
    c.measuring.set(true);
    let m0 = Instant::now();
    monoio::time::sleep(Duration::from_secs(measure_s)).await;
    c.measuring.set(false);
    let window = m0.elapsed().as_secs_f64();
    let cpu2 = cpu_s();
    let mut lat = std::mem::take(&mut *c.lat_ns.borrow_mut());
    let pcts = json_pcts(&mut lat);
    let open_at_end = c.opened.get() - c.ended.get();
    println!(
        "RESULT {{\"open_at_window_end\":{open_at_end},\"requested\":{streams},\"opened\":{},\"connect_err\":{},\"bad_status\":{},\"io_err\":{},\"eof\":{},\
\"open_at_window_start\":{open_at_start},\"ended_in_window\":{},\"events\":{},\"events_all\":{},\"window_s\":{window:.3},\
\"ramp_s\":{ramp_s:.3},\"client_cpu_ramp_s\":{:.2},\"client_cpu_window_s\":{:.2},\"latency\":{pcts},\"first_error\":{}}}",
        c.opened.get(),
        c.connect_err.get(),
        c.bad_status.get(),
        c.io_err.get(),
        c.eof.get(),
        c.ended_in_window.get(),
        c.events.get(),
        c.events_all.get() - ev0,
        cpu1 - cpu0,
        cpu2 - cpu1,
        c.first_err
            .borrow()
            .as_ref()
            .map_or("null".to_string(), |e| format!("\"{}\"", esc(e)))
    );
    std::process::exit(0);
}

/// Find complete `"t":<digits>` in the pending bytes (chunk framing lines
/// cannot contain it); keep the unfinished tail.
fn scan_events(c: &Counts, pending: &mut Vec<u8>) {
    const MARK: &[u8] = b"\"t\":";
    let now = now_ns();
    let mut i = 0;
    let mut keep_from = None;
    while let Some(pos) = find(&pending[i..], MARK) {
        let start = i + pos + MARK.len();
        let mut j = start;
        while j < pending.len() && pending[j].is_ascii_digit() {
            j += 1;
        }
        if j == pending.len() {
            keep_from = Some(i + pos);
            break;
        }
        if let Some(t) = std::str::from_utf8(&pending[start..j])
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            c.events_all.set(c.events_all.get() + 1);
            if c.measuring.get() {
                c.events.set(c.events.get() + 1);
                c.lat_ns.borrow_mut().push(now.saturating_sub(t));
            }
        }
        i = j;
    }
    match keep_from {
        Some(k) => {
            pending.drain(..k);
        }
        None => {
            // Keep a few bytes in case the mark itself is split.
            let keep = pending.len().min(MARK.len() - 1);
            let cut = pending.len() - keep;
            pending.drain(..cut);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// idle keep-alive client

async fn idle_client(addr: SocketAddr, path: String, conns: usize, batch: usize) {
    let req: Rc<[u8]> = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
        .into_bytes()
        .into();
    let c = Rc::new(Counts::default());
    let ramp = Rc::new(Ramp {
        in_flight: Cell::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match std::io::stdin().read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "stop" => break,
                    Ok(_) => {}
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let t0 = Instant::now();
    let cpu0 = cpu_s();
    for _ in 0..conns {
        ramp_wait(&ramp, batch).await;
        let (c, ramp, req) = (c.clone(), ramp.clone(), req.clone());
        monoio::spawn(async move {
            let mut s = match connect_and_send(addr, &req).await {
                Ok(s) => s,
                Err(e) => {
                    c.connect_err.set(c.connect_err.get() + 1);
                    note_err(&c, format!("connect: {e}"));
                    ramp_done(&ramp);
                    return;
                }
            };
            let got = read_whole(&mut s).await;
            ramp_done(&ramp);
            match got {
                Ok(200) => c.opened.set(c.opened.get() + 1),
                Ok(st) => {
                    c.bad_status.set(c.bad_status.get() + 1);
                    note_err(&c, format!("status {st}"));
                    return;
                }
                Err(e) => {
                    c.io_err.set(c.io_err.get() + 1);
                    note_err(&c, format!("response: {e}"));
                    return;
                }
            }
            // Idle: a read returns only if the peer closes (or sends junk).
            let buf = Vec::with_capacity(64);
            let (res, _) = s.read(buf).await;
            match res {
                Ok(0) => c.eof.set(c.eof.get() + 1),
                Ok(_) => c.events_all.set(c.events_all.get() + 1), // unexpected bytes
                Err(_) => c.io_err.set(c.io_err.get() + 1),
            }
            note_err(&c, "idle connection closed by peer".into());
            // Hold the socket until exit so the count stays honest.
            std::future::pending::<()>().await;
        });
    }
    while ramp.in_flight.get() > 0 {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "READY {{\"requested\":{conns},\"opened\":{},\"connect_err\":{},\"bad_status\":{},\"io_err\":{},\"ramp_s\":{:.3},\"client_cpu_s\":{:.2}}}",
        c.opened.get(),
        c.connect_err.get(),
        c.bad_status.get(),
        c.io_err.get(),
        t0.elapsed().as_secs_f64(),
        cpu_s() - cpu0
    );
    while !stop.load(Ordering::SeqCst) {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "RESULT {{\"requested\":{conns},\"opened\":{},\"connect_err\":{},\"bad_status\":{},\"io_err\":{},\"closed_by_peer\":{},\"unexpected_bytes\":{},\"held_s\":{:.3},\"first_error\":{}}}",
        c.opened.get(),
        c.connect_err.get(),
        c.bad_status.get(),
        c.io_err.get(),
        c.eof.get(),
        c.events_all.get(),
        t0.elapsed().as_secs_f64(),
        c.first_err
            .borrow()
            .as_ref()
            .map_or("null".to_string(), |e| format!("\"{}\"", esc(e)))
    );
    std::process::exit(0);
}

/// Read one whole response (Content-Length or chunked); returns its status.
async fn read_whole(s: &mut TcpStream) -> std::io::Result<u16> {
    let (status, head_len, mut buf) = read_head(s, Vec::with_capacity(1024)).await?;
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    let need_more = |b: &[u8]| -> bool {
        if let Some(l) = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            let n: usize = l.trim().parse().unwrap_or(0);
            b.len() < head_len + n
        } else if head.contains("transfer-encoding: chunked") {
            !b[head_len..].ends_with(b"0\r\n\r\n")
        } else {
            false
        }
    };
    while need_more(&buf) {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = s
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        buf = slice.into_inner();
        if res? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof in body",
            ));
        }
    }
    Ok(status)
}
