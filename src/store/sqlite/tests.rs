//! The behaviour suite on SQLite files, and what is SQLite's own: pragmas,
//! schema versions, the file's mode, and surviving `kill -9`.

use super::SqliteStore;
use crate::store::tests::{grant, h, store_suite, upstream_token, Place};
use crate::store::{Store, StoreError};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A store file under the temp directory, removed (with its `-wal` and
/// `-shm`) when dropped.
struct SqlitePlace {
    path: PathBuf,
}

impl SqlitePlace {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("portcullis-store-test-{}-{n}.db", std::process::id());
        let path = std::env::temp_dir().join(name);
        let place = SqlitePlace { path };
        place.remove();
        place
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).unwrap()
    }
}

impl Drop for SqlitePlace {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Place for SqlitePlace {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.path).unwrap())
    }
}

store_suite!(SqlitePlace::new());

#[test]
fn opens_in_wal_with_full_sync_and_foreign_keys() {
    let place = SqlitePlace::new();
    let s = SqliteStore::open(&place.path).unwrap();
    let pragma = |name: &str| -> String {
        s.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
    assert_eq!(pragma("synchronous"), "Integer(2)", "FULL");
    assert_eq!(pragma("foreign_keys"), "Integer(1)");
    assert_eq!(pragma("busy_timeout"), "Integer(5000)");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&place.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner only");
}

#[test]
fn schema_version_is_recorded_once() {
    let place = SqlitePlace::new();
    drop(SqliteStore::open(&place.path).unwrap());
    drop(SqliteStore::open(&place.path).unwrap());
    let versions: Vec<i64> = place
        .raw()
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(SqliteStore::SCHEMA_VERSION, 4);
}

#[test]
fn a_newer_schema_is_refused() {
    let place = SqlitePlace::new();
    drop(SqliteStore::open(&place.path).unwrap());
    place
        .raw()
        .execute("INSERT INTO schema_version (version) VALUES (?1)", [5])
        .unwrap();
    let err = SqliteStore::open(&place.path).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 5, known: 4 }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("newer portcullis") && text.contains("refusing"),
        "{text}"
    );
}

/// A file written by a build that knew schema version 1 only: opening it
/// adds the upstream tokens' and registrations' tables and keeps what was there.
#[test]
fn a_version_1_file_is_migrated_to_the_newest() {
    let place = SqlitePlace::new();
    {
        let conn = place.raw();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER PRIMARY KEY) STRICT;")
            .unwrap();
        conn.execute_batch(super::V1).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (1)", [])
            .unwrap();
        conn.execute(
            "INSERT INTO grants (id, subject, claims, client_id, redirect_uri, resource, scopes, \
             created, expires) VALUES ('g1', 'alice', '{}', 'c1', 'r', 'res', '[]', 1, 2)",
            [],
        )
        .unwrap();
        conn.execute("UPDATE changes SET seq = 7", []).unwrap();
    }
    let mut s = SqliteStore::open(&place.path).unwrap();
    assert_eq!(s.grant("g1").unwrap().unwrap().user, "alice");
    assert_eq!(s.seq().unwrap(), 7);
    assert!(s.all_upstream().unwrap().is_empty());
    assert_eq!(
        s.put_upstream(&upstream_token("alice", "github", 0))
            .unwrap(),
        1
    );
    assert_eq!(s.seq().unwrap(), 8);
    let versions: Vec<i64> = place
        .raw()
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
}

/// The row's constraint: a reason exactly when disconnected.
#[test]
fn an_upstream_status_without_its_reason_is_corrupt() {
    let place = SqlitePlace::new();
    let mut s = SqliteStore::open(&place.path).unwrap();
    s.put_upstream(&upstream_token("alice", "github", 0))
        .unwrap();
    let set = |status: &str, reason: Option<&str>| {
        place.raw().execute(
            "UPDATE upstream_tokens SET status = ?1, reason = ?2",
            rusqlite::params![status, reason],
        )
    };
    assert!(set("disconnected", None).is_err());
    assert!(set("connected", Some("x")).is_err());
    assert!(set("gone", None).is_err());
    set("disconnected", Some("invalid_grant")).unwrap();
    assert!(matches!(
        s.upstream("alice", "github").unwrap().unwrap().status,
        crate::store::UpstreamStatus::Disconnected { .. }
    ));
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let place = SqlitePlace::new();
    std::fs::write(&place.path, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&place.path).err().expect("refused");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*place.path.to_string_lossy()),
        "{err}"
    );
}

/// Set for the child of `kill_9_mid_burst_loses_no_committed_grant`: the
/// store file it writes to.
const CRASH_CHILD: &str = "PORTCULLIS_STORE_CRASH_CHILD";

/// Not a test on its own (returns at once): the child process of the crash
/// test, writing grants as fast as it can and printing each committed id.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD) else {
        return;
    };
    let mut store = SqliteStore::open(&path).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..1_000_000 {
        let id = format!("g{i}");
        store
            .create_grant(&grant(&id, "alice", "c1", i), Some(&h(&id)))
            .unwrap();
        writeln!(out, "committed {id}").unwrap();
        out.flush().unwrap();
    }
}

/// The test binary runs itself as a child that writes grants in a loop;
/// SIGKILL lands mid-burst. The file passes `integrity_check` and holds
/// every grant the child reported committed.
#[test]
fn kill_9_mid_burst_loses_no_committed_grant() {
    let place = SqlitePlace::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::sqlite::tests::crash_child"])
        .args(["--nocapture", "--test-threads", "1"])
        .env(CRASH_CHILD, &place.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut committed = Vec::new();
    for line in lines {
        if let Some(id) = line.unwrap().strip_prefix("committed ") {
            committed.push(id.to_string());
            if committed.len() == 200 {
                child.kill().unwrap(); // SIGKILL
            }
        }
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed, not finished: {status:?}");
    assert!(
        committed.len() >= 200,
        "the child reported {}",
        committed.len()
    );

    let check: String = place
        .raw()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let s = SqliteStore::open(&place.path).unwrap();
    for id in &committed {
        assert!(
            s.grant(id).unwrap().is_some(),
            "{id} was committed and is lost"
        );
    }
    // Commits the child had not reported yet when the signal landed may be
    // there too (seen: up to two); none that it reported may be missing.
    let stored = s.grants(None, None).unwrap().len();
    assert!(
        stored >= committed.len(),
        "{stored} stored, {} reported",
        committed.len()
    );
}

#[test]
fn swept_grants_take_their_refresh_tokens() {
    let place = SqlitePlace::new();
    let mut s = SqliteStore::open(&place.path).unwrap();
    let g = grant("g1", "alice", "c1", 0);
    s.create_grant(&g, Some(&h("rt-0"))).unwrap();
    s.rotate_refresh(&h("rt-0"), &h("rt-1"), g.created, 30)
        .unwrap();
    let tokens = |s: &SqliteStore| -> i64 {
        s.conn
            .query_row("SELECT count(*) FROM refresh_tokens", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(tokens(&s), 2);
    assert_eq!(s.sweep_expired(g.expires).unwrap().grants, 1);
    assert_eq!(
        tokens(&s),
        0,
        "deleted with the grant (foreign key cascade)"
    );
}
