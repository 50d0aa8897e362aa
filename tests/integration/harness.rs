//! Test fixtures: a proxy started in-process on an ephemeral port, a
//! recording upstream on plain std threads, and a raw client.

use portcullis::Running;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an upstream answers to one request (given its raw bytes).
pub type Responder = fn(&[u8]) -> Vec<u8>;

pub struct Upstream {
    pub addr: SocketAddr,
    /// Every request received: head and body bytes.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    /// Clones of the accepted connections, to close them from the test.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Upstream {
    pub fn start(respond: Responder) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (rec, conns, opened) = (received.clone(), connections.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                conns.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    opened.lock().unwrap().push(clone);
                }
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let keep = stream.try_clone();
                    serve_upstream(stream, respond, rec);
                    // The clone kept for `close_idle` must not keep it open.
                    if let Ok(s) = keep {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                });
            }
        });
        Upstream {
            addr,
            received,
            connections,
            open,
        }
    }

    /// Close every connection accepted so far, as an upstream whose
    /// keep-alive timeout expired would.
    pub fn close_idle(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

fn serve_upstream(mut stream: TcpStream, respond: Responder, rec: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let chunked = head.contains("transfer-encoding: chunked");
        let total = loop {
            if chunked {
                if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    break head_end + i + 5;
                }
            } else if buf.len() >= head_end + length {
                break head_end + length;
            }
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let request: Vec<u8> = buf.drain(..total).collect();
        rec.lock().unwrap().push(request.clone());
        let answer = respond(&request);
        // An answer ending in `CLOSE` is followed by closing the connection.
        if stream.write_all(&answer).is_err() || answer.ends_with(b"CLOSE") {
            return;
        }
    }
}

/// A fixed small JSON answer.
pub fn ok_json(_: &[u8]) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: upstream-id\r\nContent-Length: 11\r\n\r\n{\"ok\":true}".to_vec()
}

pub struct Proxy {
    pub addr: SocketAddr,
    running: Option<Running>,
}

impl Proxy {
    /// Start a proxy for `routes_yaml` (with `{upstream}` replaced) plus
    /// optional extra top-level YAML.
    pub fn start(upstream: SocketAddr, routes_yaml: &str, extra: &str) -> Proxy {
        let text = format!(
            "workers: 1\nlisten:\n  - address: 127.0.0.1:0\n{extra}\nroutes:\n{routes_yaml}"
        );
        Proxy::from_config(upstream, &text)
    }

    /// Start a proxy from a whole configuration (with `{upstream}` replaced).
    pub fn from_config(upstream: SocketAddr, text: &str) -> Proxy {
        let text = text.replace("{upstream}", &upstream.to_string());
        let snap = portcullis::from_text(&text, std::path::Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let running = portcullis::start(snap).unwrap();
        let addr = running.addresses[0];
        Proxy {
            addr,
            running: Some(running),
        }
    }

    /// The admin listener's address, when the configuration has one.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.admin)
    }

    /// A proxy with one MCP route `http://proxy.test/` → the upstream's `/`.
    pub fn mcp(upstream: SocketAddr, extra: &str) -> Proxy {
        Proxy::start(
            upstream,
            "  - name: t\n    from: http://proxy.test/\n    to: http://{upstream}/\n    mcp: {}\n",
            extra,
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.join();
        }
    }
}

/// Send `raw`, read until the proxy closes or `wait` passes without data.
/// Returns the bytes read and whether the connection was closed.
pub fn exchange(addr: SocketAddr, raw: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw).unwrap();
    read_all(&mut s, wait)
}

pub fn read_all(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut tmp = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match s.read(&mut tmp) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Status codes of every response in `text`, in order.
pub fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}
