//! The open-loop load generator of the load test (loadtest/openloop.py):
//! one request every 1/RATE s, on schedule, whatever the answers do. One
//! thread, non-blocking sockets and `epoll_pwait2` (a timeout in ns, timer
//! slack 1 ns): a request is sent within microseconds of when it is due, where
//! a 1 ms timer wheel (tokio's, monoio's) sends them in bursts of RATE/1000
//! and counts up to 1 ms of its own lateness into every latency.
//!
//! ```text
//! ltrate ADDR RATE WARMUP_S MEASURE_S CONNS REQUEST_FILE [GROUP_US]
//! ```
//! With GROUP_US, requests are due in groups, at the start of each GROUP_US
//! (RATE × GROUP_US of them): fewer wakeups of the generator for as many
//! requests, on a machine where its core is shared.
//! REQUEST_FILE holds one whole HTTP/1.1 request (head and body), sent as it
//! is on CONNS keep-alive connections: a due request goes out on a free
//! connection, or waits in a queue until one is free. Latency is counted from
//! when the request was due (coordinated omission corrected: the wait for a
//! connection counts), and also from when it was sent; both only for the
//! requests due in the MEASURE_S after WARMUP_S. Prints one line
//! `RESULT {json}` of those: requests due, sent, answered (per status), errors, answers still
//! missing 2 s after the end (and requests never sent), the achieved rate, latency percentiles (µs),
//! how late the sends were, this process's CPU time while measuring, and
//! the answers to all requests (the warm-up's too). Every number is
//! counted, never assumed.
//!
//! A load-test helper, not part of the proxy: its few syscalls (epoll, the
//! timer slack, its CPU clock) are `unsafe` blocks here, each saying why it
//! is sound.
#![allow(unsafe_code)]

#[path = "ltjson.rs"]
mod ltjson;

use ltjson::{esc, json_pcts};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// After the last due request, how long answers are waited for.
const GRACE_NS: u64 = 2_000_000_000;

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// Due and sent time (ns from the start) of the request in flight.
    due: u64,
    sent: u64,
    busy: bool,
}

#[derive(Default)]
struct Tally {
    due: u64,
    sent: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: Vec<String>,
    n_errors: u64,
    from_due: Vec<u64>,
    from_sent: Vec<u64>,
    lag: Vec<u64>,
    max_queue: usize,
    /// Answers to every request, the warm-up's too.
    answered_all: u64,
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, addr, rate, warmup, measure, conns, file, rest @ ..] = &a[..] else {
        eprintln!("usage: ltrate ADDR RATE WARMUP_S MEASURE_S CONNS REQUEST_FILE [GROUP_US]");
        std::process::exit(2);
    };
    let group = rest
        .first()
        .map_or(0, |g| g.parse::<u64>().expect("GROUP_US") * 1000);
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let rate: f64 = rate.parse().expect("RATE");
    let warmup_ns = (warmup.parse::<f64>().expect("WARMUP_S") * 1e9) as u64;
    let end_ns = warmup_ns + (measure.parse::<f64>().expect("MEASURE_S") * 1e9) as u64;
    let n: usize = conns.parse().expect("CONNS");
    let req = std::fs::read(file).expect("REQUEST_FILE");
    assert!(rate > 0.0 && n > 0, "RATE and CONNS must be positive");
    // SAFETY: prctl with an integer argument; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    // SAFETY: plain syscall; the fd is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let mut conns: Vec<Conn> = (0..n).map(|i| open(ep, addr, i)).collect();
    let mut free: Vec<usize> = (0..n).rev().collect();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut t = Tally::default();
    let interval = 1e9 / rate;
    let due_of = |k: u64| {
        let t = (k as f64 * interval) as u64;
        t - t.checked_rem(group).unwrap_or(0)
    };
    let mut k: u64 = 0; // the next request's number
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; n.min(256)];
    // This process's CPU over the measured part (from the first time the
    // loop runs in it to the first time after it).
    let (mut cpu_from, mut cpu_to) = (None, None);
    loop {
        let mut at = now();
        if at >= warmup_ns && cpu_from.is_none() {
            cpu_from = Some(cpu_ns());
        }
        if at >= end_ns && cpu_to.is_none() {
            cpu_to = Some(cpu_ns());
        }
        while due_of(k) <= at && due_of(k) < end_ns {
            let due = due_of(k);
            queue.push_back(due);
            k += 1;
            t.due += u64::from(due >= warmup_ns);
        }
        t.max_queue = t.max_queue.max(queue.len());
        while let Some(&due) = queue.front() {
            let Some(i) = free.pop() else { break };
            queue.pop_front();
            at = now();
            let c = &mut conns[i];
            match c.s.write(&req) {
                Ok(w) if w == req.len() => {
                    (c.due, c.sent, c.busy) = (due, at, true);
                    c.buf.clear();
                    if due >= warmup_ns {
                        t.sent += 1;
                        t.lag.push(at - due);
                    }
                }
                r => {
                    error(&mut t, format!("send: {r:?}"));
                    conns[i] = open(ep, addr, i);
                    free.push(i);
                }
            }
        }
        let next = due_of(k);
        let in_flight = free.len() < n;
        let wait = if next < end_ns {
            Some(next.saturating_sub(now()))
        } else if in_flight && now() < end_ns + GRACE_NS {
            Some(end_ns + GRACE_NS - now())
        } else {
            break;
        };
        let got = epoll_wait(ep, &mut events, wait);
        for e in &events[..got] {
            let i = e.u64 as usize;
            match read(&mut conns[i]) {
                Ok(None) => {}
                Ok(Some((status, close))) => {
                    let done = now();
                    let c = &mut conns[i];
                    c.busy = false;
                    t.answered_all += 1;
                    if c.due >= warmup_ns {
                        *t.statuses.entry(status).or_default() += 1;
                        t.from_due.push(done - c.due);
                        t.from_sent.push(done - c.sent);
                    }
                    if close {
                        conns[i] = open(ep, addr, i);
                    }
                    free.push(i);
                }
                Err(err) => {
                    error(&mut t, format!("receive: {err}"));
                    conns[i] = open(ep, addr, i);
                    free.push(i);
                }
            }
        }
    }
    let wall = now() as f64 / 1e9;
    let missing = conns.iter().filter(|c| c.busy).count();
    let measured = (end_ns - warmup_ns) as f64 / 1e9;
    let answered: u64 = t.statuses.values().sum();
    let statuses: Vec<String> = t
        .statuses
        .iter()
        .map(|(s, n)| format!("\"{s}\":{n}"))
        .collect();
    let errors: Vec<String> = t.errors.iter().map(|e| format!("\"{}\"", esc(e))).collect();
    println!(
        "RESULT {{\"due\":{},\"sent\":{},\"answered\":{answered},\"statuses\":{{{}}},\"n_errors\":{},\
         \"errors\":[{}],\"missing_at_end\":{missing},\"unsent\":{},\"achieved_rps\":{:.1},\"max_queue\":{},\
         \"from_due\":{},\"from_sent\":{},\"send_lag\":{},\"cpu_s\":{:.4},\"wall_s\":{wall:.3},\"answered_all\":{}}}",
        t.due,
        t.sent,
        statuses.join(","),
        t.n_errors,
        errors.join(","),
        queue.len(),
        answered as f64 / measured,
        t.max_queue,
        json_pcts(&mut t.from_due),
        json_pcts(&mut t.from_sent),
        json_pcts(&mut t.lag),
        (cpu_to.unwrap_or_else(cpu_ns) - cpu_from.unwrap_or(0)) as f64 / 1e9,
        t.answered_all,
    );
}

/// A keep-alive connection `i`, registered for reading.
fn open(ep: i32, addr: SocketAddr, i: usize) -> Conn {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("ltrate: connect {addr}: {e}");
        std::process::exit(1)
    });
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_nonblocking(true).expect("O_NONBLOCK");
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: i as u64,
    };
    // SAFETY: a valid epoll fd and socket fd, and a live event struct. A
    // socket replaced after an error was closed (and left the set) first.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    assert_eq!(r, 0, "epoll_ctl");
    Conn {
        s,
        buf: Vec::with_capacity(16 * 1024),
        due: 0,
        sent: 0,
        busy: false,
    }
}

/// Wait up to `ns` (none: forever) for readable connections.
fn epoll_wait(ep: i32, events: &mut [libc::epoll_event], ns: Option<u64>) -> usize {
    let ts = ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    let tp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: epoll_pwait2(epfd, events, maxevents, timeout, sigmask=NULL,
    // sigsetsize=0) with a buffer of `events.len()` entries (Linux ≥ 5.11).
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait2,
            ep,
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            tp,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "epoll_pwait2: {e}"
        );
        return 0;
    }
    r as usize
}

/// Read what is there (one `recv`, again only while they fill the chunk);
/// the answer's status (and whether the connection ends with it) once it is
/// whole: Content-Length or chunked.
fn read(c: &mut Conn) -> std::io::Result<Option<(u16, bool)>> {
    let mut chunk = [0u8; 16 * 1024];
    let mut eof = false;
    loop {
        match c.s.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(got) => {
                c.buf.extend_from_slice(&chunk[..got]);
                if got == chunk.len() {
                    continue;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        break;
    }
    let ended = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    if !c.busy {
        return Err(match c.buf.is_empty() {
            true => ended(),
            false => std::io::Error::other("bytes nobody asked for"),
        });
    }
    let Some(head_len) = c
        .buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
    else {
        return if eof { Err(ended()) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(&c.buf[..head_len]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let close = eof || head.contains("\r\nconnection: close");
    let whole = match head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        Some(n) => match n.trim().parse::<usize>() {
            Ok(n) => c.buf.len() >= head_len + n,
            Err(_) => return Err(std::io::Error::other("unreadable Content-Length")),
        },
        None if head.contains("transfer-encoding: chunked") => c.buf.ends_with(b"0\r\n\r\n"),
        None => eof,
    };
    match (whole, eof) {
        (true, _) => Ok(Some((status, close))),
        (false, true) => Err(ended()),
        (false, false) => Ok(None),
    }
}

fn error(t: &mut Tally, e: String) {
    t.n_errors += 1;
    if t.errors.len() < 5 && !t.errors.contains(&e) {
        t.errors.push(e);
    }
}

/// This process's CPU time (user + system), ns.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
