use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Client, CodeGrant, CodeTake, Consent, Grant, Rotation, SigningKey, Swept, UpstreamStatus,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

const T0: i64 = 1_800_000_000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(id: &str, byte: u8) -> (String, String) {
    (id.to_string(), hex(&[byte; 32]))
}

fn vault(keys: &[(&str, u8)]) -> Vault {
    let keys: Vec<_> = keys.iter().map(|(id, b)| key(id, *b)).collect();
    Vault::new(&keys).unwrap()
}

/// A record of `user` at `route`, sealed by `v`.
fn record(v: &Vault, user: &str, route: &str, plain: &[u8]) -> UpstreamToken {
    let client_id = format!("{route}-client");
    let (kid, sealed) = v.seal(user, route, &client_id, plain);
    UpstreamToken {
        user: user.into(),
        route: route.into(),
        client_id,
        kid,
        sealed,
        expires: T0 + 3600,
        refresh_due: T0 + 3300,
        status: UpstreamStatus::Connected,
        updated: T0,
        generation: 0,
    }
}

fn opened(v: &Vault, t: &UpstreamToken) -> Option<Vec<u8>> {
    v.open(t).map(|p| p.to_vec())
}

fn secret(access: &str, refresh: Option<&str>) -> Secret {
    Secret {
        access_token: access.into(),
        refresh_token: refresh.map(Into::into),
        token_type: Some("bearer".into()),
        scope: Some("read:user repo".into()),
    }
}

/// A store file under the temp directory, removed (with its `-wal` and
/// `-shm`) when dropped.
struct TempStore(PathBuf);

impl TempStore {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("portcullis-vault-test-{}-{n}.db", std::process::id());
        let t = TempStore(std::env::temp_dir().join(name));
        t.remove();
        t
    }

    fn files(&self) -> Vec<PathBuf> {
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                PathBuf::from(p)
            })
            .collect()
    }

    fn remove(&self) {
        for f in self.files() {
            let _ = std::fs::remove_file(f);
        }
    }

    fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0).unwrap()
    }

    /// Every byte of the store's files, as on disk now.
    fn bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for f in self.files() {
            if let Ok(b) = std::fs::read(f) {
                all.extend_from_slice(&b);
            }
        }
        all
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        self.remove();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_records_open_to_their_plaintext() {
    let v = vault(&[("k1", 1)]);
    let plain = b"gho_16C7e42F292c6912E7710c838347Ae178B4a";
    let t = record(&v, "alice", "github", plain);
    assert_eq!(t.kid, "k1");
    assert_eq!(t.sealed.len(), NONCE_LEN + plain.len() + TAG_LEN);
    assert!(!contains(&t.sealed, plain), "not in the clear");
    assert_eq!(opened(&v, &t).as_deref(), Some(&plain[..]));

    let again = record(&v, "alice", "github", plain);
    assert_ne!(again.sealed, t.sealed, "a fresh nonce every time");
    assert_ne!(again.sealed[..NONCE_LEN], t.sealed[..NONCE_LEN]);
    assert_eq!(opened(&v, &again).as_deref(), Some(&plain[..]));

    let empty = record(&v, "alice", "github", b"");
    assert_eq!(opened(&v, &empty).as_deref(), Some(&b""[..]));
}

#[test]
fn a_record_opens_only_as_its_own_user_route_client_and_key() {
    // k1 and k1-copy are the same key under two names: only the associated
    // data tells them apart.
    let v = vault(&[("k1", 1), ("k1-copy", 1)]);
    let t = record(&v, "alice", "github", b"alice's token");
    assert!(v.open(&t).is_some());
    let moved = |f: &dyn Fn(&mut UpstreamToken)| {
        let mut m = t.clone();
        f(&mut m);
        opened(&v, &m)
    };
    assert_eq!(moved(&|m| m.user = "bob".into()), None, "another user");
    assert_eq!(moved(&|m| m.route = "notion".into()), None, "another route");
    assert_eq!(
        moved(&|m| m.client_id = "other-client".into()),
        None,
        "another upstream client registration"
    );
    assert_eq!(moved(&|m| m.kid = "k1-copy".into()), None, "another key id");
    // Lengths are part of the associated data: shifting a byte from one
    // field to the next is another tuple.
    let split = record(&v, "ab", "c", b"x");
    let mut shifted = split.clone();
    shifted.user = "a".into();
    shifted.route = "bc".into();
    assert_eq!(opened(&v, &shifted), None);
    // What the record does not bind can change freely.
    assert_eq!(
        moved(&|m| {
            m.expires = 1;
            m.refresh_due = 2;
            m.updated = 3;
            m.generation = 4;
            m.status = UpstreamStatus::Disconnected { reason: "x".into() };
        })
        .as_deref(),
        Some(&b"alice's token"[..])
    );
}

#[test]
fn an_altered_record_does_not_open() {
    let v = vault(&[("k1", 1)]);
    let t = record(&v, "alice", "github", b"alice's token");
    for at in 0..t.sealed.len() {
        let mut m = t.clone();
        m.sealed[at] ^= 0x01;
        assert_eq!(opened(&v, &m), None, "byte {at} flipped");
    }
    for len in [0, 1, NONCE_LEN, NONCE_LEN + TAG_LEN - 1, t.sealed.len() - 1] {
        let mut m = t.clone();
        m.sealed.truncate(len);
        assert_eq!(opened(&v, &m), None, "cut to {len} bytes");
    }
    let mut longer = t.clone();
    longer.sealed.push(0);
    assert_eq!(opened(&v, &longer), None);
    let mut huge = t.clone();
    huge.sealed.resize(MAX_SEALED + 1, 0);
    assert_eq!(opened(&v, &huge), None);
}

#[test]
fn a_record_of_an_unknown_key_does_not_open() {
    let t = record(&vault(&[("k1", 1)]), "alice", "github", b"token");
    assert_eq!(opened(&vault(&[("k2", 2)]), &t), None, "k1 is not there");
    assert_eq!(
        opened(&vault(&[("k1", 2)]), &t),
        None,
        "another key under the same id"
    );
    let mut renamed = t.clone();
    renamed.kid = "k2".into();
    assert_eq!(opened(&vault(&[("k2", 1)]), &renamed), None);
    assert!(vault(&[("k2", 2), ("k1", 1)]).open(&t).is_some());
}

#[test]
fn keys_rotate_and_rekey_moves_records_to_the_first_key() {
    let place = TempStore::new();
    let mut store = place.open();
    let old = vault(&[("k1", 1)]);
    let tokens = [
        ("alice", "github", &b"alice gh"[..]),
        ("alice", "notion", b"alice notion"),
        ("bob", "github", b"bob gh"),
    ];
    for (user, route, plain) in tokens {
        store
            .put_upstream(&record(&old, user, route, plain))
            .unwrap();
    }
    // One record of a key no longer configured.
    let lost = record(&vault(&[("k0", 9)]), "carol", "github", b"carol gh");
    store.put_upstream(&lost).unwrap();

    let both = vault(&[("k2", 2), ("k1", 1)]);
    // Sealed under k1, still readable with k2 in front.
    for t in store.all_upstream().unwrap() {
        if t.user != "carol" {
            assert!(both.open(&t).is_some(), "{} {}", t.user, t.route);
        }
    }
    // Written after the rotation: sealed by k2 already, left alone.
    let dave = record(&both, "dave", "github", b"dave gh");
    assert_eq!(dave.kid, "k2");
    store.put_upstream(&dave).unwrap();

    let seq = store.seq().unwrap();
    assert_eq!(both.rekey(&mut store).unwrap(), (3, 1));
    assert_eq!(
        store.seq().unwrap(),
        seq + 3,
        "one write per re-sealed record"
    );

    let only_new = vault(&[("k2", 2)]);
    let only_old = vault(&[("k1", 1)]);
    for (user, route, plain) in tokens {
        let t = store.upstream(user, route).unwrap().unwrap();
        assert_eq!(t.kid, "k2");
        assert_eq!(t.generation, 2, "a compare-and-swap write");
        assert_eq!(t.updated, T0, "only the sealing changed");
        assert_eq!(
            opened(&only_new, &t).as_deref(),
            Some(plain),
            "{user} {route}"
        );
        assert_eq!(opened(&only_old, &t), None, "k1 is no longer needed");
    }
    let carol = store.upstream("carol", "github").unwrap().unwrap();
    assert_eq!(
        (carol.kid.as_str(), &carol.sealed, carol.generation),
        ("k0", &lost.sealed, 1),
        "unreadable: left as it was"
    );
    assert_eq!(
        store
            .upstream("dave", "github")
            .unwrap()
            .unwrap()
            .generation,
        1
    );

    assert_eq!(
        both.rekey(&mut store).unwrap(),
        (0, 1),
        "nothing left to move"
    );
    assert_eq!(only_new.rekey(&mut store).unwrap(), (0, 1));
}

/// A store whose record is rewritten (as by a refresh) between rekey's read
/// and its write.
struct Racing<'a> {
    inner: &'a mut SqliteStore,
    raced: usize,
}

impl Store for Racing<'_> {
    fn replace_upstream_if(
        &mut self,
        t: &UpstreamToken,
        expected_generation: i64,
    ) -> Result<bool, StoreError> {
        let now = self.inner.upstream(&t.user, &t.route)?.unwrap();
        self.inner.put_upstream(&now)?;
        self.raced += 1;
        self.inner.replace_upstream_if(t, expected_generation)
    }
    fn all_upstream(&self) -> Result<Vec<UpstreamToken>, StoreError> {
        self.inner.all_upstream()
    }
    fn put_upstream(&mut self, t: &UpstreamToken) -> Result<i64, StoreError> {
        self.inner.put_upstream(t)
    }
    fn upstream(&self, user: &str, route: &str) -> Result<Option<UpstreamToken>, StoreError> {
        self.inner.upstream(user, route)
    }
    fn upstream_of(&self, user: &str) -> Result<Vec<UpstreamToken>, StoreError> {
        self.inner.upstream_of(user)
    }
    fn delete_upstream(&mut self, user: &str, route: &str) -> Result<bool, StoreError> {
        self.inner.delete_upstream(user, route)
    }
    fn upstream_due(&self, now: i64, limit: usize) -> Result<Vec<UpstreamToken>, StoreError> {
        self.inner.upstream_due(now, limit)
    }
    fn claim_upstream_due(
        &mut self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<UpstreamToken>, StoreError> {
        self.inner.claim_upstream_due(now, until, limit)
    }
    fn seq(&self) -> Result<i64, StoreError> {
        self.inner.seq()
    }
    fn pins(&self, route: Option<&str>) -> Result<Vec<crate::store::Pin>, StoreError> {
        self.inner.pins(route)
    }
    fn put_pin(&mut self, pin: &crate::store::Pin) -> Result<(), StoreError> {
        self.inner.put_pin(pin)
    }
    fn delete_pin(
        &mut self,
        route: &str,
        kind: &str,
        name: &str,
        pending_only: bool,
    ) -> Result<usize, StoreError> {
        self.inner.delete_pin(route, kind, name, pending_only)
    }
    fn approve_pins(
        &mut self,
        route: &str,
        kind: Option<&str>,
        name: Option<&str>,
        now: i64,
    ) -> Result<Vec<crate::store::Pin>, StoreError> {
        self.inner.approve_pins(route, kind, name, now)
    }
    // The rest: as the store underneath.
    fn upstream_client(
        &self,
        a0: &str,
        a1: &str,
    ) -> Result<Option<crate::store::UpstreamClient>, StoreError> {
        self.inner.upstream_client(a0, a1)
    }
    fn put_upstream_client(
        &mut self,
        a0: &crate::store::UpstreamClient,
    ) -> Result<crate::store::UpstreamClient, StoreError> {
        self.inner.put_upstream_client(a0)
    }
    fn delete_upstream_client(&mut self, a0: &str, a1: &str, a2: &str) -> Result<bool, StoreError> {
        self.inner.delete_upstream_client(a0, a1, a2)
    }
    fn put_client(&mut self, a0: &Client) -> Result<(), StoreError> {
        self.inner.put_client(a0)
    }
    fn client(&self, a0: &str, a1: i64) -> Result<Option<Client>, StoreError> {
        self.inner.client(a0, a1)
    }
    fn sweep_expired(&mut self, a0: i64) -> Result<Swept, StoreError> {
        self.inner.sweep_expired(a0)
    }
    fn put_consent(&mut self, a0: &Consent) -> Result<(), StoreError> {
        self.inner.put_consent(a0)
    }
    fn consented(
        &self,
        a0: &str,
        a1: &str,
        a2: &str,
        a3: &[String],
        a4: i64,
    ) -> Result<bool, StoreError> {
        self.inner.consented(a0, a1, a2, a3, a4)
    }
    fn revoke_consents(&mut self, a0: Option<&str>, a1: Option<&str>) -> Result<usize, StoreError> {
        self.inner.revoke_consents(a0, a1)
    }
    fn put_code(&mut self, a0: &CodeGrant) -> Result<(), StoreError> {
        self.inner.put_code(a0)
    }
    fn take_code(&mut self, a0: &[u8; 32], a1: i64) -> Result<CodeTake, StoreError> {
        self.inner.take_code(a0, a1)
    }
    fn code_issued(&mut self, a0: &[u8; 32], a1: &str) -> Result<bool, StoreError> {
        self.inner.code_issued(a0, a1)
    }
    fn create_grant(&mut self, a0: &Grant, a1: Option<&[u8; 32]>) -> Result<(), StoreError> {
        self.inner.create_grant(a0, a1)
    }
    fn rotate_refresh(
        &mut self,
        a0: &[u8; 32],
        a1: &[u8; 32],
        a2: i64,
        a3: i64,
    ) -> Result<Rotation, StoreError> {
        self.inner.rotate_refresh(a0, a1, a2, a3)
    }
    fn refresh_grant(&self, a0: &[u8; 32]) -> Result<Option<String>, StoreError> {
        self.inner.refresh_grant(a0)
    }
    fn grant(&self, a0: &str) -> Result<Option<Grant>, StoreError> {
        self.inner.grant(a0)
    }
    fn revoked_grants(&self, a0: i64) -> Result<Vec<String>, StoreError> {
        self.inner.revoked_grants(a0)
    }
    fn grants(&self, a0: Option<&str>, a1: Option<&str>) -> Result<Vec<Grant>, StoreError> {
        self.inner.grants(a0, a1)
    }
    fn set_grant_claims(&mut self, a0: &str, a1: &str) -> Result<bool, StoreError> {
        self.inner.set_grant_claims(a0, a1)
    }
    fn revoke_grant(&mut self, a0: &str) -> Result<bool, StoreError> {
        self.inner.revoke_grant(a0)
    }
    fn revoke_grants(&mut self, a0: Option<&str>, a1: Option<&str>) -> Result<usize, StoreError> {
        self.inner.revoke_grants(a0, a1)
    }
    fn put_key(&mut self, a0: &str, a1: i64, a2: &[u8]) -> Result<(), StoreError> {
        self.inner.put_key(a0, a1, a2)
    }
    fn keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        self.inner.keys()
    }
}

#[test]
fn rekey_skips_a_record_written_meanwhile() {
    let place = TempStore::new();
    let mut store = place.open();
    let t = record(&vault(&[("k1", 1)]), "alice", "github", b"token");
    store.put_upstream(&t).unwrap();
    let v = vault(&[("k2", 2), ("k1", 1)]);
    let mut racing = Racing {
        inner: &mut store,
        raced: 0,
    };
    assert_eq!(
        v.rekey(&mut racing).unwrap(),
        (0, 0),
        "lost the race: skipped"
    );
    assert_eq!(racing.raced, 1);
    let now = store.upstream("alice", "github").unwrap().unwrap();
    assert_eq!(
        (now.kid.as_str(), now.generation),
        ("k1", 2),
        "the other write stands"
    );
    assert_eq!(
        v.rekey(&mut store).unwrap(),
        (1, 0),
        "the next run moves it"
    );
}

#[test]
fn keys_are_32_bytes_in_hex_or_base64_and_errors_show_no_key() {
    let bytes: Vec<u8> = (0..32).collect();
    let forms = [
        hex(&bytes),
        hex(&bytes).to_uppercase(),
        STANDARD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(&bytes),
        STANDARD.encode(&bytes).trim_end_matches('=').to_string(),
        format!("  {}\n", STANDARD.encode(&bytes)),
    ];
    // Every form is the same key: what one seals, the others open.
    let t = record(
        &Vault::new(&[("k".into(), forms[0].clone())]).unwrap(),
        "alice",
        "github",
        b"token",
    );
    for form in &forms {
        let v = Vault::new(&[("k".into(), form.clone())]).unwrap();
        assert_eq!(opened(&v, &t).as_deref(), Some(&b"token"[..]), "{form}");
    }

    let err = |keys: &[(&str, &str)]| {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(i, k)| (i.to_string(), k.to_string()))
            .collect();
        let e = Vault::new(&keys).expect_err("refused");
        for (_, k) in &keys {
            if k.len() > 4 {
                assert!(!e.contains(k.as_str()), "{e}");
            }
        }
        e
    };
    assert!(err(&[]).contains("at least one key"));
    let good = hex(&bytes);
    assert!(err(&[("k1", &good), ("k1", &good)]).contains("\"k1\" is used twice"));
    assert!(err(&[("", &good)]).contains("empty id"));
    let short = hex(&bytes[..31]);
    let long = format!("{good}00");
    let b64_31 = STANDARD.encode(&bytes[..31]);
    let b64_33 = STANDARD.encode([7u8; 33]);
    let not_hex = format!("{}zz", &good[..62]);
    for bad in [
        short.as_str(),
        &long,
        &b64_31,
        &b64_33,
        &not_hex,
        "",
        "not a key at all, just a passphrase!",
    ] {
        let e = err(&[("k2", &good), ("k9", bad)]);
        assert!(
            e.contains("\"k9\"") && e.contains("32 bytes"),
            "{bad:?}: {e}"
        );
    }
    // Debug shows key ids, not keys.
    let v = Vault::new(&[("k1".into(), good.clone())]).unwrap();
    let shown = format!("{v:?}");
    assert!(
        shown.contains("k1") && !shown.contains(&good[..16]),
        "{shown}"
    );
    assert_eq!(v.keys().len(), 1);
    assert_eq!(v.keys()[0].id, "k1");
}

#[test]
fn secrets_round_trip_and_never_print() {
    let v = vault(&[("k1", 1)]);
    let s = secret("gho_alice_access", Some("ghr_alice_refresh"));
    let shown = format!("{s:?} {s:#?}");
    assert_eq!(format!("{s:?}"), "Secret { .. }");
    for token in [
        "gho_alice_access",
        "ghr_alice_refresh",
        "read:user",
        "bearer",
    ] {
        assert!(!shown.contains(token), "{shown}");
    }

    let (kid, sealed) = v.seal_secret("alice", "github", "github-client", &s);
    let mut t = record(&v, "alice", "github", b"");
    (t.kid, t.sealed) = (kid, sealed);
    let back = v.open_secret(&t).expect("opens");
    assert_eq!(back.access_token, "gho_alice_access");
    assert_eq!(back.refresh_token.as_deref(), Some("ghr_alice_refresh"));
    assert_eq!(back.token_type.as_deref(), Some("bearer"));
    assert_eq!(back.scope.as_deref(), Some("read:user repo"));

    // Only an access token; escapes survive.
    let bare = Secret {
        access_token: "tok\"en\\\n\u{1}é".into(),
        refresh_token: None,
        token_type: None,
        scope: None,
    };
    let (kid, sealed) = v.seal_secret("alice", "github", "github-client", &bare);
    (t.kid, t.sealed) = (kid, sealed);
    let back = v.open_secret(&t).unwrap();
    assert_eq!(back.access_token, bare.access_token);
    assert_eq!(back.refresh_token, None);
    assert_eq!(
        opened(&v, &t).unwrap(),
        serde_json::to_vec(&bare).unwrap(),
        "JSON, absent fields left out"
    );

    // Not a sealed Secret, or moved: nothing.
    let not_json = record(&v, "alice", "github", b"plain bytes");
    assert!(v.open_secret(&not_json).is_none());
    t.user = "bob".into();
    assert!(v.open_secret(&t).is_none());
}

#[test]
fn the_store_file_holds_no_plaintext_token() {
    let access = "gho_PLAINTEXT_access_token_of_alice_0123456789";
    let refresh = "ghr_PLAINTEXT_refresh_token_of_alice_0123456789";
    let v = vault(&[("k1", 1)]);

    let place = TempStore::new();
    let mut store = place.open();
    let (kid, sealed) = v.seal_secret(
        "alice",
        "github",
        "github-client",
        &secret(access, Some(refresh)),
    );
    let mut t = record(&v, "alice", "github", b"");
    (t.kid, t.sealed) = (kid, sealed);
    store.put_upstream(&t).unwrap();
    // A refresh, then a rekey: every write goes through the file.
    let (kid, sealed) = v.seal_secret(
        "alice",
        "github",
        "github-client",
        &secret(access, Some(refresh)),
    );
    (t.kid, t.sealed) = (kid, sealed);
    assert!(store.replace_upstream_if(&t, 1).unwrap());
    vault(&[("k2", 2), ("k1", 1)]).rekey(&mut store).unwrap();
    drop(store);
    let on_disk = place.bytes();
    assert!(contains(&on_disk, b"alice"), "the check reads the records");
    for token in [access, refresh] {
        assert!(!contains(&on_disk, token.as_bytes()), "{token} is on disk");
        assert!(!contains(&on_disk, &token.as_bytes()[..16]));
    }

    // The same check catches a token stored in the clear.
    let control = TempStore::new();
    let mut store = control.open();
    let mut clear = t.clone();
    clear.sealed = access.as_bytes().to_vec();
    store.put_upstream(&clear).unwrap();
    drop(store);
    assert!(contains(&control.bytes(), access.as_bytes()));
}

/// A registration's client secret opens only for the (route, issuer,
/// client id, key) it was sealed for, and never as a user's token.
#[test]
fn client_secrets_are_bound_to_their_registration() {
    let v = Vault::new(&[("k1".into(), "ab".repeat(32))]).unwrap();
    let (kid, sealed) = v.seal_client_secret("github", "https://as", "c1", "s3cret");
    assert_eq!(kid, "k1");
    assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
    let opened = v.open_client_secret("github", "https://as", "c1", (&kid, &sealed));
    assert_eq!(opened.as_deref().map(String::as_str), Some("s3cret"));
    for (route, issuer, client) in [
        ("notion", "https://as", "c1"),
        ("github", "https://other", "c1"),
        ("github", "https://as", "c2"),
    ] {
        assert!(v
            .open_client_secret(route, issuer, client, (&kid, &sealed))
            .is_none());
    }
    assert!(v
        .open_client_secret("github", "https://as", "c1", ("k2", &sealed))
        .is_none());
    // As a token record of the same names: refused (another label).
    let as_token = UpstreamToken {
        user: "github".into(),
        route: "https://as".into(),
        client_id: "c1".into(),
        kid,
        sealed,
        expires: 0,
        refresh_due: 0,
        status: crate::store::UpstreamStatus::Connected,
        updated: 0,
        generation: 1,
    };
    assert!(v.open(&as_token).is_none());
}
