//! Tool pinning's control-plane side: one thread owning a store connection
//! of its own. The cores report what pinning routes' list answers hold
//! (`proxy::pin`, over a bounded channel they never wait on); this thread
//! records first definitions and changes (`record`), audits them, and
//! publishes the pinned set to `Shared::pins`. Every 250 ms (and at once
//! when a shared store notifies a change, `store::watch`) it reads the
//! store's change sequence and publishes again when it moved, so an
//! approval by `portcullis tools approve` (another process, or another
//! instance on a shared store) reaches every core within a second.

mod record;

use crate::pin::{Kind, Pinned, Report};
use crate::proxy::worker::Shared;
use crate::snapshot::SharedSnapshot;
use crate::store::{Store, StoreError};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reports queued for the thread; more are dropped (and made again by the
/// next list answer).
const QUEUE: usize = 256;
/// How often the store's change sequence is read.
const POLL: Duration = Duration::from_millis(250);

/// The pin thread's parts before it starts.
pub(crate) struct Prepared {
    store: Box<dyn Store>,
    location: crate::store::Location,
    receiver: Receiver<Report>,
}

/// Open the store (when a route pins) and publish what it holds; the cores
/// report to `shared.pin_reports` from then on.
pub(crate) fn prepare(
    snapshot: &crate::snapshot::Snapshot,
    shared: &mut Shared,
) -> std::io::Result<Option<Prepared>> {
    let Some(location) = &snapshot.pin_store else {
        return Ok(None);
    };
    let err = |e: StoreError| std::io::Error::other(format!("pin store: {e}"));
    let (store, _) = crate::store::migrate(location).map_err(err)?;
    shared
        .pins
        .store(Arc::new(load(store.as_ref()).map_err(err)?));
    let (tx, receiver) = std::sync::mpsc::sync_channel(QUEUE);
    shared.pin_reports = Some(tx);
    tracing::info!(store = %location, "tool pinning ready");
    Ok(Some(Prepared {
        store,
        location: location.clone(),
        receiver,
    }))
}

/// Start the thread; it ends once every worker has stopped.
pub(crate) fn spawn(
    prepared: Prepared,
    snapshot: SharedSnapshot,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    // A shared store's change notifications (another instance's, or
    // `portcullis tools approve`'s) wake the thread at once.
    if let Some(wake) = shared.pin_reports.clone() {
        let stopped = shared.clone();
        crate::store::watch::spawn(
            &prepared.location,
            move || {
                let _ = wake.try_send(Report::StoreChanged);
            },
            |_| {},
            move || stopped.stopped.load(Ordering::Relaxed),
        )?;
    }
    std::thread::Builder::new()
        .name("portcullis-pins".into())
        .spawn(move || run(prepared, &snapshot, &shared))?;
    Ok(())
}

fn run(prepared: Prepared, snapshot: &SharedSnapshot, shared: &Shared) {
    let Prepared {
        mut store,
        receiver,
        ..
    } = prepared;
    let mut seen_seq = store.seq().unwrap_or(-1);
    let mut polled = Instant::now();
    while !shared.stopped.load(Ordering::Relaxed) {
        let mut changed = false;
        match receiver.recv_timeout(POLL) {
            Ok(Report::StoreChanged) => changed = true,
            Ok(report) => {
                // Only an observed list can change the pins.
                changed = matches!(report, Report::Observed(_));
                let snap = snapshot.load();
                let audit = |line: serde_json::Value| write_audit(shared, line);
                if let Err(e) = record::report(store.as_mut(), &snap, report, &audit) {
                    tracing::warn!(error = %e, "tool pinning: cannot record what a list held");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if polled.elapsed() >= POLL || changed {
            polled = Instant::now();
            match store.seq() {
                Ok(seq) if seq != seen_seq || changed => match load(store.as_ref()) {
                    Ok(pinned) => {
                        seen_seq = seq;
                        shared.pins.store(Arc::new(pinned));
                    }
                    Err(e) => tracing::warn!(error = %e, "tool pinning: cannot read the pins"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "tool pinning: the store does not answer"),
            }
        }
    }
}

/// The pinned set as the store holds it.
pub(crate) fn load(store: &dyn Store) -> Result<Pinned, StoreError> {
    let rows = store.pins(None)?;
    Ok(Pinned::from_rows(rows.iter().filter_map(|p| {
        Some((
            p.route.as_str(),
            Kind::parse(&p.kind)?,
            p.name.as_str(),
            p.hash.as_str(),
            p.approved,
        ))
    })))
}

/// One audit record (`{"v":1,"time":…,"event":"pin.…",…}`) to the audit
/// log, when there is one; the log line in any case.
fn write_audit(shared: &Shared, mut line: serde_json::Value) {
    if let Some(obj) = line.as_object_mut() {
        obj.insert("v".into(), 1.into());
        obj.insert("time".into(), crate::audit::now_rfc3339().into());
    }
    match line["event"].as_str() {
        Some("pin.change" | "pin.flagged") => {
            tracing::warn!(target: "portcullis::pin", record = %line, "tool pinning")
        }
        _ => tracing::info!(target: "portcullis::pin", record = %line, "tool pinning"),
    }
    if let Some(sink) = &shared.audit {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        sink.send(bytes, 1);
    }
}
