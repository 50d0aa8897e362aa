//! `portcullis vault rekey` (the `vault_rekey` behind it): re-seals the
//! upstream tokens in the configuration's store under its first vault key.

use portcullis::internal::store::{SqliteStore, Store, UpstreamStatus, UpstreamToken};
use portcullis::internal::vault::{Secret, Vault};
use std::path::{Path, PathBuf};

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A directory under the temp directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A configuration with a store beside it and these vault keys.
    fn config(&self, vault: &str) -> PathBuf {
        let path = self.0.join("portcullis.yaml");
        let text = format!(
            "listen: [{{address: 127.0.0.1:1}}]\n\
             routes: [{{name: github, from: http://a/, to: http://b/}}]\n\
             store: {{ path: state/store.db }}\n{vault}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn store(&self) -> SqliteStore {
        std::fs::create_dir_all(self.0.join("state")).unwrap();
        SqliteStore::open(self.0.join("state/store.db")).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vault(keys: &[(&str, &str)]) -> Vault {
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(i, k)| (i.to_string(), k.to_string()))
        .collect();
    Vault::new(&keys).unwrap()
}

fn put(store: &mut SqliteStore, v: &Vault, user: &str, access: &str) {
    let secret = Secret {
        access_token: access.into(),
        refresh_token: Some(format!("{access}-refresh")),
        token_type: Some("bearer".into()),
        scope: None,
    };
    let (kid, sealed) = v.seal_secret(user, "github", "gh-client", &secret);
    store
        .put_upstream(&UpstreamToken {
            user: user.into(),
            route: "github".into(),
            client_id: "gh-client".into(),
            kid,
            sealed,
            expires: 0,
            refresh_due: i64::MAX,
            status: UpstreamStatus::Connected,
            updated: 1,
            generation: 0,
        })
        .unwrap();
}

#[test]
fn rekey_moves_every_token_to_the_first_key() {
    let dir = Dir::new("vault-rekey");
    let mut store = dir.store();
    let k1 = vault(&[("k1", K1)]);
    put(&mut store, &k1, "alice", "alice-token");
    put(&mut store, &k1, "bob", "bob-token");
    put(&mut store, &vault(&[("k0", K2)]), "carol", "carol-token");

    let config = dir.config(&format!(
        "vault:\n  keys:\n    - {{ id: k2, key: \"{K2}\" }}\n    - {{ id: k1, key: \"{K1}\" }}\n"
    ));
    let out = portcullis::vault_rekey(&config).unwrap();
    assert!(
        out.contains("re-sealed 2 upstream token(s) under vault key k2"),
        "{out}"
    );
    assert!(
        out.contains("1 upstream token(s) cannot be opened"),
        "{out}"
    );
    assert!(!out.contains(K1) && !out.contains(K2), "{out}");

    let k2 = vault(&[("k2", K2)]);
    for (user, access) in [("alice", "alice-token"), ("bob", "bob-token")] {
        let t = store.upstream(user, "github").unwrap().unwrap();
        assert_eq!(t.kid, "k2");
        let s = k2.open_secret(&t).expect("opens with k2 alone");
        assert_eq!(s.access_token, access);
        assert_eq!(
            s.refresh_token.as_deref(),
            Some(&*format!("{access}-refresh"))
        );
    }
    assert_eq!(
        store.upstream("carol", "github").unwrap().unwrap().kid,
        "k0"
    );

    let again = portcullis::vault_rekey(&config).unwrap();
    assert!(again.contains("re-sealed 0 "), "{again}");
}

#[test]
fn rekey_needs_a_vault_good_keys_and_a_store() {
    let dir = Dir::new("vault-rekey-errors");
    let err = |config: &Path| portcullis::vault_rekey(config).unwrap_err();

    assert!(err(&dir.config("")).contains("no `vault` section"));
    let short = &K1[..62];
    let e = err(&dir.config(&format!(
        "vault: {{ keys: [{{ id: k1, key: \"{short}\" }}] }}\n"
    )));
    assert!(
        e.contains("\"k1\"") && e.contains("32 bytes") && !e.contains(short),
        "{e}"
    );
    assert!(err(&dir.config("vault: { keys: [] }\n")).contains("at least one key"));
    let e = err(&dir.config(&format!(
        "vault: {{ keys: [{{ id: k1, key: \"{K1}\" }}] }}\n"
    )));
    assert!(e.contains("no store yet"), "{e}");
    let e = err(&dir.0.join("missing.yaml"));
    assert!(e.contains("cannot read"), "{e}");
}
