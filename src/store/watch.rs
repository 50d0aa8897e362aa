//! Change notification: a wake-up when another connection (another
//! instance, `portcullis grants revoke`) changed the store, so revocations
//! reach this instance's cores at once instead of at the next poll.
//!
//! PostgreSQL: every write that changed something also sends `NOTIFY
//! portcullis_changes` (delivered at commit); a thread of its own holds a
//! connection that `LISTEN`s and calls `wake` for each. After a lost
//! connection it reconnects (backing off up to 10 s) and calls `wake` once:
//! what changed meanwhile is read again from the change sequence, which is
//! the change log the caller resyncs from. SQLite (one host): no thread; the
//! caller's poll does it all.

use super::Location;
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;

/// The channel writes notify.
pub(crate) const CHANNEL: &str = "portcullis_changes";

/// Starts the watcher for `location`, if it has one; it runs until `stop`
/// says so.
pub(crate) fn spawn(
    location: &Location,
    wake: impl Fn() + Send + 'static,
    listening: impl Fn(bool) + Send + 'static,
    stop: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<()> {
    let Location::Postgres(target) = location else {
        return Ok(());
    };
    let target = (**target).clone();
    std::thread::Builder::new()
        .name("portcullis-store-watch".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while !stop() {
                let ended = listen(&target, &wake, &listening, &stop);
                listening(false);
                match ended {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "store change notifications lost; the poll carries on");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })?;
    Ok(())
}

/// One connection's life: LISTEN, then wake for every notification.
/// `Ok` only when stopped.
fn listen(
    target: &super::postgres::Target,
    wake: &impl Fn(),
    listening: &impl Fn(bool),
    stop: &impl Fn() -> bool,
) -> Result<(), String> {
    let mut client = target.connect().map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| super::postgres::describe(&e))?;
    tracing::info!(store = %target, "listening for store changes");
    listening(true);
    // Anything missed while no connection listened is read again now.
    wake();
    while !stop() {
        {
            let mut notes = client.notifications();
            let mut it = notes.timeout_iter(Duration::from_millis(500));
            // `None`: nothing for half a second, or the server went away.
            while let Some(n) = it.next().map_err(|e| super::postgres::describe(&e))? {
                if n.channel() == CHANNEL {
                    wake();
                }
            }
        }
        // A cheap round trip tells a quiet connection from a dead one.
        client
            .simple_query("")
            .map_err(|e| super::postgres::describe(&e))?;
    }
    Ok(())
}
