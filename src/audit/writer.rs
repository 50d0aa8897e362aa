//! The sink workers hand their full buffers to, and the one writer thread
//! that appends them to the file (or stdout), reopening it on SIGUSR1.

use super::record::TAG_PREFIX;
use crate::config::audit::{AuditConfig, Overflow};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// The process's audit sink: the channel to the writer and its counters.
pub struct Sink {
    tx: SyncSender<(Vec<u8>, u64)>,
    overflow: Overflow,
    key: ring::hmac::Key,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
    /// Records handed to the writer, and records its writes failed to store.
    pub accepted: AtomicU64,
    pub failed: Arc<AtomicU64>,
    pub reopen: Arc<AtomicBool>,
    /// `block`: workers waiting for the writer right now, and the time all
    /// of them have waited in total (µs).
    pub blocked: AtomicU64,
    pub blocked_micros: AtomicU64,
    /// When a wait was last logged (µs since `started`): once per 10 s.
    last_warned: AtomicU64,
    started: std::time::Instant,
}

impl Sink {
    /// Open the file and start the writer thread.
    pub fn start(config: &AuditConfig) -> std::io::Result<(Sink, std::thread::JoinHandle<()>)> {
        let out = Output::open(&config.path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(config.buffers.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let key_bytes = match &config.hash_key {
            Some(k) => k.as_bytes().to_vec(),
            None => {
                let mut k = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| std::io::Error::other("no randomness for the audit hash key"))?;
                k.to_vec()
            }
        };
        let writer = Writer {
            out,
            path: config.path.clone(),
            fsync: config.fsync,
            written: written.clone(),
            failed: failed.clone(),
            reopen: reopen.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Sink {
                tx,
                overflow: config.on_overflow,
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes),
                written,
                dropped: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                failed,
                reopen,
                blocked: AtomicU64::new(0),
                blocked_micros: AtomicU64::new(0),
                last_warned: AtomicU64::new(0),
                started: std::time::Instant::now(),
            },
            handle,
        ))
    }

    /// Hand a buffer of `lines` complete records to the writer.
    pub fn send(&self, buf: Vec<u8>, lines: u64) {
        if buf.is_empty() {
            return;
        }
        // Counted before the hand-over so the backlog never reads negative.
        self.accepted.fetch_add(lines, Ordering::Relaxed);
        let sent = match self.overflow {
            Overflow::Block => match self.tx.try_send((buf, lines)) {
                Ok(()) => true,
                Err(TrySendError::Full(batch)) => self.wait_for_writer(batch),
                Err(TrySendError::Disconnected(_)) => false,
            },
            Overflow::Drop => match self.tx.try_send((buf, lines)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            self.accepted.fetch_sub(lines, Ordering::Relaxed);
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// `block` with `buffers` buffers already waiting: stop this worker's
    /// thread until the writer takes one (counted while it lasts, and logged
    /// once per 10 s).
    fn wait_for_writer(&self, batch: (Vec<u8>, u64)) -> bool {
        let start = std::time::Instant::now();
        let now = u64::try_from((start - self.started).as_micros()).unwrap_or(u64::MAX);
        let last = self.last_warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000_000)
            && self
                .last_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                backlog = self.backlog(),
                "the audit writer is behind: a worker stops until it catches up (on_overflow: block)"
            );
        }
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(batch).is_ok();
        self.blocked.fetch_sub(1, Ordering::Relaxed);
        let waited = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.blocked_micros.fetch_add(waited, Ordering::Relaxed);
        sent
    }

    /// Records handed to the writer and not yet written (or failed).
    pub fn backlog(&self) -> u64 {
        let done = self.written.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.accepted.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Tell the writer to finish (after every worker has handed over);
    /// `false` while the channel is full (try again).
    pub fn finish(&self) -> bool {
        !matches!(
            self.tx.try_send((Vec::new(), 0)),
            Err(TrySendError::Full(_))
        )
    }

    /// The HMAC-SHA256 of `data` under the audit key.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::hmac::sign(&self.key, data).as_ref());
        out
    }

    /// `hmac-sha256:<hex>` of `data` under the audit key.
    pub fn hash(&self, data: &[u8]) -> String {
        crate::sys::prefixed_hex(TAG_PREFIX, &self.tag(data))
    }
}

enum Output {
    Stdout,
    File(std::fs::File),
}

impl Output {
    fn open(path: &std::path::Path) -> std::io::Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Output::File)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                )
            })
    }
}

struct Writer {
    out: Output,
    path: PathBuf,
    fsync: bool,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<(Vec<u8>, u64)>) {
        loop {
            let (buf, lines) = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_reopen();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.maybe_reopen();
            if buf.is_empty() {
                return; // finish: everything before it is written
            }
            let result = match &mut self.out {
                Output::Stdout => std::io::stdout().lock().write_all(&buf),
                Output::File(f) => {
                    f.write_all(&buf)
                        .and_then(|()| if self.fsync { f.sync_data() } else { Ok(()) })
                }
            };
            match result {
                Ok(()) => {
                    self.written.fetch_add(lines, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(lines, Ordering::Relaxed);
                    tracing::error!(error = %e, records = lines, "audit write failed");
                }
            }
        }
    }

    fn maybe_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::Relaxed) {
            match Output::open(&self.path) {
                Ok(o) => {
                    self.out = o;
                    tracing::info!(path = %self.path.display(), "audit log reopened");
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log reopen failed, keeping the old file")
                }
            }
        }
    }
}
