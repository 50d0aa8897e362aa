//! `portcullis store migrate` (the `store_migrate` behind it) on both
//! backends, `portcullis grants` on PostgreSQL, and `portcullis tools`'
//! errors. The PostgreSQL case needs the cluster `tests/pg-cluster` starts
//! (`PORTCULLIS_TEST_POSTGRES`): it fails without it in CI and is skipped
//! with a note elsewhere.

use std::path::{Path, PathBuf};

/// A directory under the temp directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A configuration with this `store` section.
    fn config(&self, store: &str) -> PathBuf {
        let path = self.0.join("portcullis.yaml");
        let text = format!(
            "listen: [{{address: 127.0.0.1:1}}]\n\
             routes: [{{name: github, from: http://a/, to: http://b/}}]\n{store}\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn migrate_creates_a_file_then_finds_it_current() {
    let dir = Dir::new("store-migrate-file");
    let config = dir.config("store: { path: state/store.db }");
    let file = dir.0.join("state/store.db");
    let out = portcullis::store_migrate(&config).unwrap();
    assert_eq!(
        out,
        format!("{}: created, schema version 4\n", file.display())
    );
    assert!(file.is_file(), "made with its directory");
    let out = portcullis::store_migrate(&config).unwrap();
    assert!(out.ends_with(": schema version 4, up to date\n"), "{out}");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("INSERT INTO schema_version (version) VALUES (5)", [])
        .unwrap();
    let err = portcullis::store_migrate(&config).unwrap_err();
    assert!(err.contains("newer portcullis (schema version 5"), "{err}");
}

#[test]
fn migrate_says_what_is_wrong() {
    let dir = Dir::new("store-migrate-errors");
    let err = |store: &str| portcullis::store_migrate(&dir.config(store)).unwrap_err();
    assert!(err("").contains("no `store` section"));
    assert!(err("store: {}").contains("store needs `path: FILE`"));
    let e = err("store: { path: a.db, postgres: { url: 'postgres://u@h/db' } }");
    assert!(e.contains("not both"), "{e}");
    let e = err("store: { postgres: { url: 'postgres://u:pw-s3cret@127.0.0.1:1/db' } }");
    assert!(
        e.contains("PostgreSQL at u@127.0.0.1:1/db unreachable") && !e.contains("pw-s3cret"),
        "{e}"
    );
}

#[test]
fn migrate_and_grants_on_postgres() {
    let Ok(cluster) = std::env::var("PORTCULLIS_TEST_POSTGRES") else {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !ci,
            "PORTCULLIS_TEST_POSTGRES is not set: tests/run starts a private cluster for CI"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: PORTCULLIS_TEST_POSTGRES is not set: `store migrate` on PostgreSQL is SKIPPED"
        );
        return;
    };
    let name = format!("portcullis_it_store_{}", std::process::id());
    let mut admin = postgres::Client::connect(&cluster, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let (server, _) = cluster.rsplit_once('/').unwrap();
    let dir = Dir::new("store-migrate-pg");
    let config = dir.config(&format!(
        "store: {{ postgres: {{ url: '{server}/{name}' }} }}"
    ));
    let shown = server.trim_start_matches("postgres://");
    let out = portcullis::store_migrate(&config).unwrap();
    assert_eq!(
        out,
        format!("postgresql://{shown}/{name}: created, schema version 4\n")
    );
    let out = portcullis::store_migrate(&config).unwrap();
    assert!(out.ends_with(": schema version 4, up to date\n"), "{out}");
    let listed = portcullis::grants(
        Path::new(&config),
        portcullis::GrantsCommand::List,
        None,
        None,
    )
    .unwrap();
    assert!(listed.ends_with("0 grant(s)\n"), "{listed}");
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// `portcullis tools`: every wrong input says what is wrong; on a migrated
/// store with nothing pinned, `diff` shows nothing pending and `approve`
/// finds nothing to approve.
#[test]
fn tools_says_what_is_wrong() {
    use portcullis::{tools, ToolsCommand};
    let dir = Dir::new("tools-errors");
    let write = |route: &str| {
        let path = dir.0.join("portcullis.yaml");
        let text = format!(
            "listen: [{{address: 127.0.0.1:1}}]\nstore: {{ path: pins.db }}\n\
             routes: [{{name: gh, from: http://a/, to: http://b/, mcp: {{}}{route}}}]\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = write(", pin: { tools: enforce }");
    let err = tools(&config, "gh", ToolsCommand::Diff, Some("widget")).unwrap_err();
    assert!(
        err.contains("one of tool, prompt, resource_template"),
        "{err}"
    );
    let err = tools(&config, "nope", ToolsCommand::Diff, None).unwrap_err();
    assert!(err.contains("no route \"nope\" (routes: gh)"), "{err}");
    let err = tools(&config, "gh", ToolsCommand::Diff, None).unwrap_err();
    assert!(err.contains("no store yet"), "{err}");
    portcullis::store_migrate(&config).unwrap();
    let out = tools(&config, "gh", ToolsCommand::Diff, None).unwrap();
    assert_eq!(out, "route \"gh\": 0 pending, 0 approved\n");
    let err = tools(&config, "gh", ToolsCommand::Approve(None), None).unwrap_err();
    assert!(err.contains("nothing pending"), "{err}");
    let err = tools(&config, "gh", ToolsCommand::Approve(Some("x")), None).unwrap_err();
    assert!(err.contains("nothing pending named \"x\""), "{err}");
    let unpinned = write("");
    let err = tools(&unpinned, "gh", ToolsCommand::Diff, None).unwrap_err();
    assert!(err.contains("route \"gh\" has no `pin` section"), "{err}");
}
