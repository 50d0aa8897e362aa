//! The behaviour suite on PostgreSQL (a new database per case, on the
//! private cluster `tests/pg-cluster` starts and `PORTCULLIS_TEST_POSTGRES`
//! names), and what is PostgreSQL's own: schema versions and migrating
//! instances, constraints, reconnecting, errors without the password, TLS.
//!
//! Without `PORTCULLIS_TEST_POSTGRES` these tests fail in CI (`CI` set) and
//! are skipped elsewhere, with a note on standard error.

use super::{PostgresStore, Target, TlsSetting};
use crate::store::tests::{grant, h, store_suite, upstream_token, Place};
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Barrier, Once};

/// The cluster's URL (a superuser, database `postgres`).
const CLUSTER: &str = "PORTCULLIS_TEST_POSTGRES";
/// The CA of the cluster's TLS certificate, when it has one.
const CLUSTER_CA: &str = "PORTCULLIS_TEST_POSTGRES_CA";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The cluster, or `None` where there is none (outside CI).
fn cluster() -> Option<Target> {
    let Ok(url) = std::env::var(CLUSTER) else {
        if in_ci() {
            panic!(
                "{CLUSTER} is not set: CI runs the store suite against PostgreSQL too. \
                 tests/run starts a private cluster (tests/pg-cluster start DIR) and sets it"
            );
        }
        static NOTE: Once = Once::new();
        NOTE.call_once(|| {
            // Straight to standard error: the test harness captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: {CLUSTER} is not set: the PostgreSQL store tests are SKIPPED \
                 (`eval \"$(tests/pg-cluster start /tmp/pg)\"` starts a private cluster)"
            );
        });
        return None;
    };
    Some(Target::new(&url, None).expect("PORTCULLIS_TEST_POSTGRES is a connection URL"))
}

/// A new database on the cluster, dropped (with its connections) at the end.
pub(crate) struct PgPlace {
    admin: Target,
    name: String,
    target: Target,
}

impl PgPlace {
    fn new() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = cluster()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("portcullis_test_{}_{n}", std::process::id());
        let mut c = admin.connect().expect("the test cluster answers");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let target = admin.with_dbname(&name);
        Some(PgPlace {
            admin,
            name,
            target,
        })
    }

    /// A connection of its own to the place's database.
    fn raw(&self) -> ::postgres::Client {
        self.target.connect().unwrap()
    }

    fn versions(&self) -> Vec<i64> {
        self.raw()
            .query("SELECT version FROM schema_version ORDER BY version", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for PgPlace {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.connect() {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

impl Place for PgPlace {
    fn open(&self) -> Box<dyn Store> {
        Box::new(PostgresStore::open(&self.target).unwrap())
    }
}

store_suite!(match PgPlace::new() {
    Some(place) => place,
    None => return,
});

#[test]
fn schema_version_is_recorded_once() {
    let Some(place) = PgPlace::new() else { return };
    let (_, found) = PostgresStore::open_migrated(&place.target).unwrap();
    assert_eq!(found, 0, "an empty database");
    let (_, found) = PostgresStore::open_migrated(&place.target).unwrap();
    assert_eq!(found, 4);
    assert_eq!(place.versions(), [1, 2, 3, 4]);
    assert_eq!(PostgresStore::SCHEMA_VERSION, 4);
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(place) = PgPlace::new() else { return };
    drop(PostgresStore::open(&place.target).unwrap());
    place
        .raw()
        .execute("INSERT INTO schema_version (version) VALUES (5)", &[])
        .unwrap();
    let err = PostgresStore::open(&place.target).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 5, known: 4 }),
        "{err:?}"
    );
    assert_eq!(place.versions(), [1, 2, 3, 4, 5], "nothing changed");
}

/// Instances starting together on an empty database: one migrates, the
/// others wait for its lock and find the schema current.
#[test]
fn instances_starting_together_migrate_once() {
    let Some(place) = PgPlace::new() else { return };
    let starting = 6;
    let barrier = Barrier::new(starting);
    let found: Vec<Result<i64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..starting)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    PostgresStore::open_migrated(&place.target)
                        .map(|(_, found)| found)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut found: Vec<i64> = found.into_iter().map(Result::unwrap).collect();
    found.sort();
    assert_eq!(found[0], 0, "one migrated: {found:?}");
    assert!(found[1..].iter().all(|f| *f == 4), "{found:?}");
    assert_eq!(place.versions(), [1, 2, 3, 4]);
}

/// A database written by a build that knew schema version 1 only.
#[test]
fn a_version_1_database_is_migrated_to_the_newest() {
    let Some(place) = PgPlace::new() else { return };
    {
        let mut c = place.raw();
        c.batch_execute("CREATE TABLE schema_version (version BIGINT PRIMARY KEY)")
            .unwrap();
        c.batch_execute(super::schema::V1).unwrap();
        c.batch_execute(
            "INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO grants (id, subject, claims, client_id, redirect_uri, resource, scopes,
                 created, expires) VALUES ('g1', 'alice', '{}', 'c1', 'r', 'res', '[]', 1, 2);
             UPDATE changes SET seq = 7",
        )
        .unwrap();
    }
    let (mut s, found) = PostgresStore::open_migrated(&place.target).unwrap();
    assert_eq!(found, 1);
    assert_eq!(s.grant("g1").unwrap().unwrap().user, "alice");
    assert_eq!(s.seq().unwrap(), 7);
    assert!(s.all_upstream().unwrap().is_empty());
    assert_eq!(
        s.put_upstream(&upstream_token("alice", "github", 0))
            .unwrap(),
        1
    );
    assert_eq!(s.seq().unwrap(), 8);
    assert_eq!(place.versions(), [1, 2, 3, 4]);
}

/// The tables' constraints, as on SQLite.
#[test]
fn constraints_refuse_malformed_rows() {
    let Some(place) = PgPlace::new() else { return };
    let mut s = PostgresStore::open(&place.target).unwrap();
    s.put_upstream(&upstream_token("alice", "github", 0))
        .unwrap();
    let mut raw = place.raw();
    let mut set = |status: &str, reason: Option<&str>| {
        raw.execute(
            "UPDATE upstream_tokens SET status = $1, reason = $2",
            &[&status, &reason],
        )
        .map(|_| ())
    };
    assert!(set("disconnected", None).is_err());
    assert!(set("connected", Some("x")).is_err());
    assert!(set("gone", None).is_err());
    set("disconnected", Some("invalid_grant")).unwrap();
    assert!(matches!(
        s.upstream("alice", "github").unwrap().unwrap().status,
        crate::store::UpstreamStatus::Disconnected { .. }
    ));
    let short: &[u8] = &[1, 2, 3];
    for sql in [
        "INSERT INTO codes (code_hash, client_id, redirect_uri, challenge, resource, scopes, \
         subject, claims, expires) VALUES ($1, 'c', 'r', 'x', 'res', '[]', 'u', '{}', 1)",
        "INSERT INTO clients (id, name, redirect_uris, kind, secret_hash, grant_types, created) \
         VALUES ('c', 'n', '[]', 'registered', $1, '[]', 1)",
    ] {
        assert!(place.raw().execute(sql, &[&short]).is_err(), "{sql}");
    }
    assert!(place
        .raw()
        .execute(
            "INSERT INTO clients (id, name, redirect_uris, kind, grant_types, created) \
             VALUES ('c', 'n', '[]', 'other', '[]', 1)",
            &[],
        )
        .is_err());
}

#[test]
fn swept_grants_take_their_refresh_tokens() {
    let Some(place) = PgPlace::new() else { return };
    let mut s = PostgresStore::open(&place.target).unwrap();
    let g = grant("g1", "alice", "c1", 0);
    s.create_grant(&g, Some(&h("rt-0"))).unwrap();
    s.rotate_refresh(&h("rt-0"), &h("rt-1"), g.created, 30)
        .unwrap();
    let tokens = || -> i64 {
        place
            .raw()
            .query_one("SELECT count(*) FROM refresh_tokens", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(tokens(), 2);
    assert_eq!(s.sweep_expired(g.expires).unwrap().grants, 1);
    assert_eq!(tokens(), 0, "deleted with the grant (foreign key cascade)");
}

/// The server ends the session (as a restart or a failover would): the
/// next calls connect again by themselves, reads and writes alike.
#[test]
fn a_lost_connection_is_replaced() {
    let Some(place) = PgPlace::new() else { return };
    let mut s = PostgresStore::open(&place.target).unwrap();
    s.create_grant(&grant("g1", "alice", "c1", 0), None)
        .unwrap();
    let terminate = || {
        let n: i64 = place
            .raw()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        // The store's session (and maybe one of `raw`'s still closing).
        assert!(n >= 1, "the store's session was there");
    };
    terminate();
    assert_eq!(s.seq().unwrap(), 1, "a read on a new connection");
    terminate();
    assert!(s.revoke_grant("g1").unwrap(), "a write on a new connection");
    assert!(s.grant("g1").unwrap().unwrap().revoked);
    assert_eq!(s.seq().unwrap(), 2);
}

/// A row lock held past the lock timeout is `Busy`, as SQLite's busy
/// timeout is.
#[test]
fn a_lock_held_too_long_is_busy() {
    let Some(place) = PgPlace::new() else { return };
    let mut s = PostgresStore::open(&place.target).unwrap();
    s.create_grant(&grant("g1", "alice", "c1", 0), None)
        .unwrap();
    let mut raw = place.raw();
    let mut holder = raw.transaction().unwrap();
    holder
        .batch_execute("SELECT * FROM grants WHERE id = 'g1' FOR UPDATE")
        .unwrap();
    let err = s.revoke_grant("g1").unwrap_err();
    assert!(matches!(err, StoreError::Busy), "{err:?}");
    holder.rollback().unwrap();
    assert!(s.revoke_grant("g1").unwrap());
}

#[test]
fn an_unreachable_server_is_a_clear_error_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    let target = Target::new(
        "postgres://portcullis:s3cret-Pa55@127.0.0.1:1/portcullis?connect_timeout=2",
        None,
    )
    .unwrap();
    let err = PostgresStore::open(&target).err().expect("unreachable");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        text.contains("PostgreSQL at portcullis@127.0.0.1:1/portcullis unreachable"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    for shown in [target.to_string(), format!("{target:?}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

#[test]
fn urls_are_checked_without_echoing_them() {
    let bad = [
        (
            "postgres://u:s3cret@127.0.0.1:5432/db?bogus=1",
            "unknown option",
        ),
        ("postgres://u:s3cret@127.0.0.1:notaport/db", "port"),
        ("postgres://u:s3cret@127.0.0.1:5432", "no database"),
        (
            "postgres://u:s3cret@127.0.0.1:5432/db?sslmode=require",
            "sslmode=require",
        ),
    ];
    for (url, want) in bad {
        let err = Target::new(url, None).expect_err(url);
        assert!(err.contains(want), "{url}: {err}");
        assert!(!err.contains("s3cret"), "{url}: {err}");
    }
    let tls = TlsSetting { ca_file: None };
    let err = Target::new("postgres://u@h/db?sslmode=disable", Some(&tls)).unwrap_err();
    assert!(err.contains("sslmode=disable"), "{err}");
    let missing = TlsSetting {
        ca_file: Some("/nonexistent/ca.pem".into()),
    };
    let err = Target::new("postgres://u@h/db", Some(&missing)).unwrap_err();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let ok = Target::new("postgres://u:s3cret@db.example:6543/portcullis", None).unwrap();
    assert_eq!(ok.to_string(), "u@db.example:6543/portcullis");
}

/// With `tls`, the session is encrypted and the server's certificate
/// checked against `ca_file`; another CA is refused. Runs where the
/// cluster has a certificate (`tests/pg-cluster` makes one when the
/// openssl command is there).
#[test]
fn tls_verifies_the_server() {
    let Some(place) = PgPlace::new() else { return };
    let Ok(ca) = std::env::var(CLUSTER_CA) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: {CLUSTER_CA} is not set: the PostgreSQL TLS test is SKIPPED"
        );
        assert!(!in_ci(), "CI runs the TLS test: {CLUSTER_CA} must be set");
        return;
    };
    let url = std::env::var(CLUSTER).unwrap();
    let tls = TlsSetting {
        ca_file: Some(ca.into()),
    };
    let target = Target::new(&url, Some(&tls))
        .unwrap()
        .with_dbname(&place.name);
    let mut s = PostgresStore::open(&target).unwrap();
    s.create_grant(&grant("g1", "alice", "c1", 0), None)
        .unwrap();
    let ssl: bool = target
        .connect()
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "the session is encrypted");

    let other =
        std::env::temp_dir().join(format!("portcullis-other-ca-{}.pem", std::process::id()));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["other CA".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(&other, cert.pem()).unwrap();
    let wrong = TlsSetting {
        ca_file: Some(other.clone()),
    };
    let wrong = Target::new(&url, Some(&wrong))
        .unwrap()
        .with_dbname(&place.name);
    let err = PostgresStore::open(&wrong)
        .err()
        .expect("another CA is refused");
    let _ = std::fs::remove_file(&other);
    assert!(err.to_string().contains("unreachable"), "{err}");
}

/// A write at another connection wakes the watcher (LISTEN/NOTIFY), a
/// read-only call does not; after its connection is killed the watcher
/// reconnects by itself and wakes once (the resync), then again per write.
#[test]
fn the_watcher_wakes_on_every_change_and_survives_a_lost_connection() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let Some(place) = PgPlace::new() else { return };
    let mut store = PostgresStore::open(&place.target).unwrap();
    let wakes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, s) = (wakes.clone(), stop.clone());
    crate::store::watch::spawn(
        &crate::store::Location::Postgres(Box::new(place.target.clone())),
        move || {
            w.fetch_add(1, Ordering::SeqCst);
        },
        |_| {},
        move || s.load(Ordering::SeqCst),
    )
    .unwrap();
    let wait_for = |n: usize| {
        let t = Instant::now();
        while wakes.load(Ordering::SeqCst) < n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "woken {} times, not {n}",
                wakes.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(1); // listening: the initial resync
    let listening = wakes.load(Ordering::SeqCst);
    store.put_key("k1", 1, b"sealed").unwrap();
    wait_for(listening + 1);
    store.keys().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        wakes.load(Ordering::SeqCst),
        listening + 1,
        "a read notifies nothing"
    );
    // Kill the watcher's connection: it comes back and resyncs.
    let mut admin = place.raw();
    let killed = admin
        .query(
            // Every other connection to this database: the watcher's, and
            // the store's (which reconnects on its next call).
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len();
    assert!(killed >= 1, "the watcher's connection was found");
    let before = wakes.load(Ordering::SeqCst);
    wait_for(before + 1);
    let resynced = wakes.load(Ordering::SeqCst);
    store.put_key("k2", 2, b"sealed").unwrap();
    wait_for(resynced + 1);
    stop.store(true, Ordering::SeqCst);
}
