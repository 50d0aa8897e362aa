//! The behaviour suite every [`Store`] backend must pass, written once
//! against the trait. A backend runs it with `store_suite!(place)`, where
//! `place` makes a [`Place`]: a new, empty store that can be opened more
//! than once (each `open` is its own connection), so the suite can race two
//! handles and check that data survives reopening.

use super::{
    Client, ClientKind, CodeGrant, CodeTake, Consent, Grant, Pin, Rotation, SigningKey, Store,
    StoreError, UpstreamClient, UpstreamStatus, UpstreamToken, CODE_MEMORY_SECS,
};
use std::sync::Barrier;

/// One empty store for one test case; dropping it removes it.
pub(crate) trait Place: Sync {
    /// A new handle (connection) to this place's store.
    fn open(&self) -> Box<dyn Store>;
}

/// One `#[test]` per case of the suite, each on a new place made by `$place`.
macro_rules! store_suite {
    ($place:expr) => {
        $crate::store::tests::store_suite!(@cases $place;
            clients_put_get_replace_expire,
            consents_cover_scopes_expire_and_revoke,
            codes_are_single_use,
            code_replay_reports_the_grant_issued_from_it,
            code_replayed_before_issue_revokes_the_new_grant,
            refresh_rotates_then_grace_then_reuse_revokes_family,
            refresh_reuse_after_grace_window_revokes_family,
            refresh_expired_revoked_unknown,
            grants_listed_and_revoked_by_user_and_client,
            signing_keys_kept_as_bytes,
            seq_grows_with_every_write_only,
            sweep_removes_what_expired,
            reopening_keeps_everything,
            concurrent_rotation_has_one_winner,
            concurrent_code_take_has_one_winner,
            errors_name_no_secret,
            upstream_put_get_list_and_generations,
            upstream_replace_if_is_compare_and_swap,
            upstream_due_lists_connected_records_soonest_first,
            upstream_delete,
            concurrent_upstream_replace_has_one_winner,
            upstream_clients_first_registration_wins,
            claiming_due_records_leases_them,
            concurrent_claims_are_disjoint,
            pins_are_kept_replaced_and_approved
        );
    };
    (@cases $place:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                let place = $place;
                $crate::store::tests::$case(&place);
            }
        )*
    };
}
pub(crate) use store_suite;

const T0: i64 = 1_800_000_000;

/// A stand-in for the SHA-256 of a secret.
pub(crate) fn h(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().try_into().unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn client(id: &str, kind: ClientKind, expires: Option<i64>) -> Client {
    Client {
        id: id.into(),
        name: format!("client {id}"),
        redirect_uris: strings(&["http://127.0.0.1/callback", "cursor://x/oauth"]),
        kind,
        secret_hash: None,
        grant_types: strings(&["authorization_code", "refresh_token"]),
        created: T0,
        expires,
    }
}

fn consent(user: &str, client_id: &str, scopes: &[&str], expires: i64) -> Consent {
    Consent {
        user: user.into(),
        client_id: client_id.into(),
        redirect_uri: "http://127.0.0.1/callback".into(),
        scopes: strings(scopes),
        expires,
    }
}

fn code(secret: &str, expires: i64) -> CodeGrant {
    CodeGrant {
        code_hash: h(secret),
        client_id: "c1".into(),
        redirect_uri: "http://127.0.0.1:4711/callback".into(),
        challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        resource: "https://mcp.example.com/github".into(),
        scopes: strings(&["mcp:tools", "offline_access"]),
        user: "alice".into(),
        claims: r#"{"sub":"alice","email":"alice@example.com","groups":["eng"]}"#.into(),
        expires,
    }
}

/// A grant `id` of `user` to `client_id`, created at T0 + `at`, alive for a day.
pub(crate) fn grant(id: &str, user: &str, client_id: &str, at: i64) -> Grant {
    Grant {
        id: id.into(),
        user: user.into(),
        claims: format!(r#"{{"sub":"{user}"}}"#),
        client_id: client_id.into(),
        redirect_uri: "http://127.0.0.1/callback".into(),
        resource: "https://mcp.example.com/github".into(),
        scopes: strings(&["mcp:tools"]),
        created: T0 + at,
        expires: T0 + at + 86_400,
        revoked: false,
    }
}

/// `user`'s upstream record at `route`, due for refresh at T0 + `due`.
pub(crate) fn upstream_token(user: &str, route: &str, due: i64) -> UpstreamToken {
    UpstreamToken {
        user: user.into(),
        route: route.into(),
        client_id: format!("{route}-client"),
        kid: "k1".into(),
        sealed: format!("\0sealed {user} {route}\u{ff}").into_bytes(),
        expires: T0 + due + 300,
        refresh_due: T0 + due,
        status: UpstreamStatus::Connected,
        updated: T0,
        generation: 0,
    }
}

fn routes(list: &[UpstreamToken]) -> Vec<(&str, &str)> {
    list.iter()
        .map(|t| (t.user.as_str(), t.route.as_str()))
        .collect()
}

fn ids(grants: &[Grant]) -> Vec<&str> {
    grants.iter().map(|g| g.id.as_str()).collect()
}

fn revoked(s: &dyn Store, id: &str) -> bool {
    s.grant(id).unwrap().unwrap().revoked
}

pub(crate) fn clients_put_get_replace_expire(place: &dyn Place) {
    let mut s = place.open();
    let mut c = client(
        "https://claude.ai/oauth/client.json",
        ClientKind::MetadataDocument,
        Some(T0 + 100),
    );
    s.put_client(&c).unwrap();
    assert_eq!(s.client(&c.id, T0).unwrap(), Some(c.clone()));
    assert_eq!(
        s.client(&c.id, T0 + 100).unwrap(),
        None,
        "expired: not returned"
    );
    assert_eq!(s.client("nobody", T0).unwrap(), None);

    c.name = "Claude".into();
    c.expires = Some(T0 + 200);
    s.put_client(&c).unwrap();
    assert_eq!(
        s.client(&c.id, T0 + 150).unwrap(),
        Some(c.clone()),
        "replaced"
    );

    let mut confidential = client("ops-cli", ClientKind::Registered, None);
    confidential.secret_hash = Some(h("client secret"));
    s.put_client(&confidential).unwrap();
    let dynamic = client("dcr-1", ClientKind::Dynamic, Some(T0 + 90 * 86_400));
    s.put_client(&dynamic).unwrap();
    assert_eq!(s.client("ops-cli", i64::MAX).unwrap(), Some(confidential));
    assert_eq!(s.client("dcr-1", T0).unwrap(), Some(dynamic));
}

pub(crate) fn consents_cover_scopes_expire_and_revoke(place: &dyn Place) {
    let mut s = place.open();
    let uri = "http://127.0.0.1/callback";
    let want = |scopes: &[&str]| strings(scopes);
    s.put_consent(&consent("alice", "c1", &["read", "write"], T0 + 60))
        .unwrap();
    assert!(s
        .consented("alice", "c1", uri, &want(&["read"]), T0)
        .unwrap());
    assert!(s
        .consented("alice", "c1", uri, &want(&["read", "write"]), T0)
        .unwrap());
    assert!(s.consented("alice", "c1", uri, &[], T0).unwrap());
    assert!(
        !s.consented("alice", "c1", uri, &want(&["admin"]), T0)
            .unwrap(),
        "more scopes"
    );
    assert!(
        !s.consented("alice", "c1", "http://127.0.0.1:9/evil", &[], T0)
            .unwrap(),
        "other redirect"
    );
    assert!(
        !s.consented("alice", "c2", uri, &[], T0).unwrap(),
        "other client"
    );
    assert!(
        !s.consented("bob", "c1", uri, &[], T0).unwrap(),
        "other user"
    );
    assert!(
        !s.consented("alice", "c1", uri, &[], T0 + 60).unwrap(),
        "expired"
    );

    // Replaced: the new consent's scopes, not a union.
    s.put_consent(&consent("alice", "c1", &["read"], T0 + 60))
        .unwrap();
    assert!(!s
        .consented("alice", "c1", uri, &want(&["write"]), T0)
        .unwrap());

    s.put_consent(&consent("alice", "c2", &[], T0 + 60))
        .unwrap();
    s.put_consent(&consent("bob", "c1", &[], T0 + 60)).unwrap();
    s.put_consent(&consent("bob", "c2", &[], T0 + 60)).unwrap();
    assert!(matches!(
        s.revoke_consents(None, None),
        Err(StoreError::NoFilter)
    ));
    assert_eq!(s.revoke_consents(Some("bob"), Some("c2")).unwrap(), 1);
    assert!(s.consented("bob", "c1", uri, &[], T0).unwrap());
    assert_eq!(s.revoke_consents(None, Some("c1")).unwrap(), 2);
    assert!(!s.consented("alice", "c1", uri, &[], T0).unwrap());
    assert!(s.consented("alice", "c2", uri, &[], T0).unwrap());
    assert_eq!(s.revoke_consents(Some("alice"), None).unwrap(), 1);
    assert_eq!(s.revoke_consents(Some("alice"), None).unwrap(), 0);
}

pub(crate) fn codes_are_single_use(place: &dyn Place) {
    let mut s = place.open();
    let c = code("code-1", T0 + 60);
    s.put_code(&c).unwrap();
    assert!(matches!(s.put_code(&c), Err(StoreError::Exists("code"))));
    assert_eq!(
        s.take_code(&h("code-1"), T0).unwrap(),
        CodeTake::Granted(Box::new(c))
    );
    assert_eq!(
        s.take_code(&h("code-1"), T0 + 1).unwrap(),
        CodeTake::Replayed { grant_id: None }
    );
    assert_eq!(
        s.take_code(&h("never issued"), T0).unwrap(),
        CodeTake::Unknown
    );

    s.put_code(&code("code-2", T0 + 60)).unwrap();
    assert_eq!(
        s.take_code(&h("code-2"), T0 + 60).unwrap(),
        CodeTake::Expired
    );
    assert_eq!(
        s.take_code(&h("code-2"), T0 + 61).unwrap(),
        CodeTake::Expired,
        "an expired code never granted is not a replay"
    );
    assert!(matches!(
        s.code_issued(&h("code-2"), "g"),
        Err(StoreError::NotFound(_))
    ));
}

pub(crate) fn code_replay_reports_the_grant_issued_from_it(place: &dyn Place) {
    let mut s = place.open();
    s.put_code(&code("code-1", T0 + 60)).unwrap();
    assert!(matches!(
        s.take_code(&h("code-1"), T0).unwrap(),
        CodeTake::Granted(_)
    ));
    s.create_grant(&grant("g1", "alice", "c1", 0), Some(&h("rt-0")))
        .unwrap();
    assert!(s.code_issued(&h("code-1"), "g1").unwrap());
    assert_eq!(
        s.take_code(&h("code-1"), T0 + 5).unwrap(),
        CodeTake::Replayed {
            grant_id: Some("g1".into())
        }
    );
    // Even after the code's own expiry: a late replay is still a replay.
    assert_eq!(
        s.take_code(&h("code-1"), T0 + 3600).unwrap(),
        CodeTake::Replayed {
            grant_id: Some("g1".into())
        }
    );
    assert!(!revoked(&*s, "g1"), "revoking is the caller's decision");
}

pub(crate) fn code_replayed_before_issue_revokes_the_new_grant(place: &dyn Place) {
    let mut s = place.open();
    s.put_code(&code("code-1", T0 + 60)).unwrap();
    assert!(matches!(
        s.take_code(&h("code-1"), T0).unwrap(),
        CodeTake::Granted(_)
    ));
    // A replay lands between the exchange and the grant being recorded.
    assert_eq!(
        s.take_code(&h("code-1"), T0).unwrap(),
        CodeTake::Replayed { grant_id: None }
    );
    s.create_grant(&grant("g1", "alice", "c1", 0), Some(&h("rt-0")))
        .unwrap();
    assert!(!s.code_issued(&h("code-1"), "g1").unwrap());
    assert!(revoked(&*s, "g1"));
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), T0 + 1, 30)
            .unwrap(),
        Rotation::Revoked
    );
}

pub(crate) fn refresh_rotates_then_grace_then_reuse_revokes_family(place: &dyn Place) {
    let mut s = place.open();
    let g = grant("g1", "alice", "c1", 0);
    s.create_grant(&g, Some(&h("rt-0"))).unwrap();
    assert_eq!(s.grant("g1").unwrap(), Some(g.clone()));

    let t = T0 + 100;
    let seq = s.seq().unwrap();
    assert!(s.set_grant_claims("g1", &g.claims).unwrap());
    assert!(s.seq().unwrap() > seq, "a claims update is a change");
    assert!(!s.set_grant_claims("nope", "{}").unwrap());
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), t, 30).unwrap(),
        Rotation::Rotated(Box::new(g.clone()))
    );
    // The previous token again within the grace window: valid, nothing rotated.
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-x"), t + 29, 30)
            .unwrap(),
        Rotation::Grace(Box::new(g.clone()))
    );
    assert_eq!(
        s.rotate_refresh(&h("rt-x"), &h("rt-y"), t + 29, 30)
            .unwrap(),
        Rotation::Unknown,
        "a grace answer stores no new token"
    );
    // The current token still rotates.
    assert_eq!(
        s.rotate_refresh(&h("rt-1"), &h("rt-2"), t + 30, 30)
            .unwrap(),
        Rotation::Rotated(Box::new(g.clone()))
    );
    // rt-0 is now two generations old: reuse, the family is revoked.
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-z"), t + 31, 30)
            .unwrap(),
        Rotation::Reused {
            grant_id: "g1".into()
        }
    );
    assert!(revoked(&*s, "g1"));
    assert_eq!(s.revoked_grants(T0).unwrap(), ["g1"]);
    assert!(
        !s.set_grant_claims("g1", r#"{"sub":"x"}"#).unwrap(),
        "a revoked grant keeps its claims"
    );
    assert!(s.revoked_grants(T0 + 10 * 86_400 * 365).unwrap().is_empty());
    // Every token of the family still names its grant (for RFC 7009).
    assert_eq!(s.refresh_grant(&h("rt-1")).unwrap().as_deref(), Some("g1"));
    assert_eq!(s.refresh_grant(&h("rt-x")).unwrap(), None);
    for rt in ["rt-0", "rt-1", "rt-2"] {
        assert_eq!(
            s.rotate_refresh(&h(rt), &h("rt-9"), t + 32, 30).unwrap(),
            Rotation::Revoked,
            "{rt}"
        );
    }
}

pub(crate) fn refresh_reuse_after_grace_window_revokes_family(place: &dyn Place) {
    let mut s = place.open();
    s.create_grant(&grant("g1", "alice", "c1", 0), Some(&h("rt-0")))
        .unwrap();
    s.create_grant(&grant("g2", "alice", "c1", 0), Some(&h("other-0")))
        .unwrap();
    let t = T0 + 100;
    assert!(matches!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), t, 30).unwrap(),
        Rotation::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-x"), t + 30, 30)
            .unwrap(),
        Rotation::Reused {
            grant_id: "g1".into()
        }
    );
    assert_eq!(
        s.rotate_refresh(&h("rt-1"), &h("rt-2"), t + 31, 30)
            .unwrap(),
        Rotation::Revoked,
        "the current token of a revoked family"
    );
    assert!(!revoked(&*s, "g2"), "other grants untouched");
    assert!(matches!(
        s.rotate_refresh(&h("other-0"), &h("other-1"), t + 31, 30)
            .unwrap(),
        Rotation::Rotated(_)
    ));
    // No grace at all.
    s.create_grant(&grant("g3", "bob", "c1", 0), Some(&h("b-0")))
        .unwrap();
    assert!(matches!(
        s.rotate_refresh(&h("b-0"), &h("b-1"), t, 0).unwrap(),
        Rotation::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh(&h("b-0"), &h("b-x"), t, 0).unwrap(),
        Rotation::Reused {
            grant_id: "g3".into()
        }
    );
}

pub(crate) fn refresh_expired_revoked_unknown(place: &dyn Place) {
    let mut s = place.open();
    let g = grant("g1", "alice", "c1", 0);
    s.create_grant(&g, Some(&h("rt-0"))).unwrap();
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), g.expires, 30)
            .unwrap(),
        Rotation::Expired
    );
    assert!(matches!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), g.expires - 1, 30)
            .unwrap(),
        Rotation::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh(&h("nope"), &h("rt-2"), T0, 30).unwrap(),
        Rotation::Unknown
    );
    // A grant without refresh tokens (the client asked for none).
    s.create_grant(&grant("g2", "alice", "c2", 0), None)
        .unwrap();
    assert!(s.grant("g2").unwrap().is_some());
    assert!(s.revoke_grant("g1").unwrap());
    assert_eq!(
        s.rotate_refresh(&h("rt-1"), &h("rt-2"), T0, 30).unwrap(),
        Rotation::Revoked
    );
}

pub(crate) fn grants_listed_and_revoked_by_user_and_client(place: &dyn Place) {
    let mut s = place.open();
    for (i, (id, user, client_id)) in [
        ("g1", "alice", "c1"),
        ("g2", "alice", "c2"),
        ("g3", "bob", "c1"),
        ("g4", "bob", "c2"),
        ("g5", "alice", "c1"),
    ]
    .into_iter()
    .enumerate()
    {
        s.create_grant(&grant(id, user, client_id, i as i64), Some(&h(id)))
            .unwrap();
    }
    assert!(matches!(
        s.create_grant(&grant("g1", "eve", "c9", 9), None),
        Err(StoreError::Exists("grant"))
    ));
    assert_eq!(
        s.grant("g1").unwrap().unwrap().user,
        "alice",
        "not replaced"
    );
    assert_eq!(s.grant("g9").unwrap(), None);

    assert_eq!(
        ids(&s.grants(None, None).unwrap()),
        ["g1", "g2", "g3", "g4", "g5"]
    );
    assert_eq!(
        ids(&s.grants(Some("alice"), None).unwrap()),
        ["g1", "g2", "g5"]
    );
    assert_eq!(ids(&s.grants(None, Some("c2")).unwrap()), ["g2", "g4"]);
    assert_eq!(
        ids(&s.grants(Some("alice"), Some("c1")).unwrap()),
        ["g1", "g5"]
    );
    assert!(s.grants(Some("carol"), None).unwrap().is_empty());

    assert!(matches!(
        s.revoke_grants(None, None),
        Err(StoreError::NoFilter)
    ));
    assert!(s.revoke_grant("g3").unwrap());
    assert!(!s.revoke_grant("g3").unwrap(), "already revoked");
    assert!(!s.revoke_grant("g9").unwrap(), "unknown");
    assert_eq!(
        s.revoke_grants(None, Some("c1")).unwrap(),
        2,
        "g1 and g5; g3 was"
    );
    assert_eq!(s.revoke_grants(Some("alice"), Some("c2")).unwrap(), 1);
    assert_eq!(s.revoke_grants(Some("alice"), None).unwrap(), 0);
    let live: Vec<_> = s
        .grants(None, None)
        .unwrap()
        .into_iter()
        .filter(|g| !g.revoked)
        .collect();
    assert_eq!(ids(&live), ["g4"]);
    assert_eq!(
        s.grants(None, None).unwrap().len(),
        5,
        "revoked grants are still listed"
    );
}

pub(crate) fn signing_keys_kept_as_bytes(place: &dyn Place) {
    let mut s = place.open();
    assert!(s.keys().unwrap().is_empty());
    let sealed: Vec<u8> = (0..=255).collect();
    s.put_key("k2", T0 + 10, &sealed).unwrap();
    s.put_key("k1", T0, b"\0sealed\xff").unwrap();
    assert!(matches!(
        s.put_key("k1", T0, b"other"),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(
        s.keys().unwrap(),
        [
            SigningKey {
                kid: "k1".into(),
                created: T0,
                sealed: b"\0sealed\xff".to_vec()
            },
            SigningKey {
                kid: "k2".into(),
                created: T0 + 10,
                sealed
            },
        ]
    );
}

pub(crate) fn seq_grows_with_every_write_only(place: &dyn Place) {
    let mut s = place.open();
    let mut last = s.seq().unwrap();
    let mut grew = |s: &dyn Store, what: &str| {
        let now = s.seq().unwrap();
        assert!(now > last, "{what}: seq {now} after {last}");
        last = now;
    };
    s.put_client(&client("c1", ClientKind::Dynamic, None))
        .unwrap();
    grew(&*s, "put_client");
    s.put_consent(&consent("alice", "c1", &[], T0 + 60))
        .unwrap();
    grew(&*s, "put_consent");
    s.put_code(&code("code", T0 + 60)).unwrap();
    grew(&*s, "put_code");
    s.take_code(&h("code"), T0).unwrap();
    grew(&*s, "take_code");
    s.create_grant(&grant("g1", "alice", "c1", 0), Some(&h("rt-0")))
        .unwrap();
    grew(&*s, "create_grant");
    s.code_issued(&h("code"), "g1").unwrap();
    grew(&*s, "code_issued");
    s.rotate_refresh(&h("rt-0"), &h("rt-1"), T0, 30).unwrap();
    grew(&*s, "rotate_refresh");
    s.put_key("k", T0, b"k").unwrap();
    grew(&*s, "put_key");
    s.revoke_grant("g1").unwrap();
    grew(&*s, "revoke_grant");
    s.revoke_consents(Some("alice"), None).unwrap();
    grew(&*s, "revoke_consents");
    let t = upstream_token("alice", "github", 0);
    s.put_upstream(&t).unwrap();
    grew(&*s, "put_upstream (new)");
    s.put_upstream(&t).unwrap();
    grew(&*s, "put_upstream (replacing)");
    assert!(s.replace_upstream_if(&t, 2).unwrap());
    grew(&*s, "replace_upstream_if");
    assert!(s.delete_upstream("alice", "github").unwrap());
    grew(&*s, "delete_upstream");

    // Reads, and writes that change nothing, leave it.
    let before = s.seq().unwrap();
    s.client("c1", T0).unwrap();
    s.grants(None, None).unwrap();
    s.keys().unwrap();
    assert!(!s.revoke_grant("g1").unwrap());
    assert_eq!(s.take_code(&h("unknown"), T0).unwrap(), CodeTake::Unknown);
    assert_eq!(s.sweep_expired(T0).unwrap().total(), 0);
    assert_eq!(s.seq().unwrap(), before);
    s.put_upstream(&upstream_token("bob", "github", 0)).unwrap();
    grew(&*s, "put_upstream");
    let before = s.seq().unwrap();
    s.upstream("bob", "github").unwrap();
    s.upstream_of("bob").unwrap();
    s.upstream_due(T0, 10).unwrap();
    s.all_upstream().unwrap();
    assert!(!s
        .replace_upstream_if(&upstream_token("bob", "github", 0), 7)
        .unwrap());
    assert!(!s.delete_upstream("alice", "github").unwrap());
    assert_eq!(s.seq().unwrap(), before);

    // Another handle sees the same sequence.
    assert_eq!(place.open().seq().unwrap(), before);
}

pub(crate) fn sweep_removes_what_expired(place: &dyn Place) {
    let mut s = place.open();
    s.put_client(&client("forever", ClientKind::Registered, None))
        .unwrap();
    s.put_client(&client("dcr-old", ClientKind::Dynamic, Some(T0 + 10)))
        .unwrap();
    s.put_client(&client("dcr-new", ClientKind::Dynamic, Some(T0 + 1000)))
        .unwrap();
    s.put_consent(&consent("alice", "c1", &[], T0 + 10))
        .unwrap();
    s.put_consent(&consent("bob", "c1", &[], T0 + 1000))
        .unwrap();
    s.put_code(&code("unused", T0 + 10)).unwrap();
    s.put_code(&code("used", T0 + 10)).unwrap();
    assert!(matches!(
        s.take_code(&h("used"), T0).unwrap(),
        CodeTake::Granted(_)
    ));
    let mut old = grant("g-old", "alice", "c1", 0);
    old.expires = T0 + 10;
    s.create_grant(&old, Some(&h("old-rt"))).unwrap();
    s.create_grant(&grant("g-new", "alice", "c1", 0), Some(&h("new-rt")))
        .unwrap();

    let swept = s.sweep_expired(T0 + 10).unwrap();
    assert_eq!(
        (swept.clients, swept.consents, swept.codes, swept.grants),
        (1, 1, 1, 1)
    );
    assert_eq!(swept.total(), 4);
    assert!(s.client("forever", T0 + 10).unwrap().is_some());
    assert!(s.client("dcr-new", T0 + 10).unwrap().is_some());
    assert!(s
        .consented("bob", "c1", "http://127.0.0.1/callback", &[], T0 + 10)
        .unwrap());
    assert_eq!(s.grant("g-old").unwrap(), None);
    assert!(s.grant("g-new").unwrap().is_some());
    assert_eq!(
        s.rotate_refresh(&h("old-rt"), &h("x"), T0, 30).unwrap(),
        Rotation::Unknown,
        "a swept grant's refresh tokens went with it"
    );
    assert_eq!(s.take_code(&h("unused"), T0).unwrap(), CodeTake::Unknown);
    // A used code is remembered past its expiry, then forgotten.
    assert!(matches!(
        s.take_code(&h("used"), T0 + 11).unwrap(),
        CodeTake::Replayed { .. }
    ));
    assert_eq!(
        s.sweep_expired(T0 + 10 + CODE_MEMORY_SECS - 1)
            .unwrap()
            .codes,
        0
    );
    assert_eq!(
        s.sweep_expired(T0 + 10 + CODE_MEMORY_SECS).unwrap().codes,
        1
    );
    assert_eq!(s.take_code(&h("used"), T0).unwrap(), CodeTake::Unknown);
}

pub(crate) fn reopening_keeps_everything(place: &dyn Place) {
    let mut s = place.open();
    let c = client("c1", ClientKind::Dynamic, Some(T0 + 1000));
    s.put_client(&c).unwrap();
    s.put_consent(&consent("alice", "c1", &["read"], T0 + 1000))
        .unwrap();
    s.put_code(&code("code", T0 + 60)).unwrap();
    let g = grant("g1", "alice", "c1", 0);
    s.create_grant(&g, Some(&h("rt-0"))).unwrap();
    assert!(matches!(
        s.rotate_refresh(&h("rt-0"), &h("rt-1"), T0, 30).unwrap(),
        Rotation::Rotated(_)
    ));
    s.put_key("k1", T0, b"sealed").unwrap();
    let mut t = upstream_token("alice", "github", 0);
    s.put_upstream(&t).unwrap();
    t.generation = s.put_upstream(&t).unwrap();
    let seq = s.seq().unwrap();
    drop(s);

    let mut s = place.open();
    assert_eq!(s.seq().unwrap(), seq);
    assert_eq!(s.client("c1", T0).unwrap(), Some(c));
    assert!(s
        .consented(
            "alice",
            "c1",
            "http://127.0.0.1/callback",
            &strings(&["read"]),
            T0
        )
        .unwrap());
    assert_eq!(s.grant("g1").unwrap(), Some(g.clone()));
    assert_eq!(s.keys().unwrap().len(), 1);
    assert_eq!(s.upstream("alice", "github").unwrap(), Some(t.clone()));
    assert!(
        s.replace_upstream_if(&t, 2).unwrap(),
        "the generation survives"
    );
    assert!(matches!(
        s.take_code(&h("code"), T0).unwrap(),
        CodeTake::Granted(_)
    ));
    assert_eq!(
        s.rotate_refresh(&h("rt-0"), &h("x"), T0 + 1, 30).unwrap(),
        Rotation::Grace(Box::new(g.clone())),
        "the family's history survives"
    );
    assert_eq!(
        s.rotate_refresh(&h("rt-1"), &h("rt-2"), T0 + 1, 30)
            .unwrap(),
        Rotation::Rotated(Box::new(g))
    );
}

/// Two handles (connections) present the same token at once, round after
/// round: one rotation, one grace answer, never two rotations.
pub(crate) fn concurrent_rotation_has_one_winner(place: &dyn Place) {
    let mut a = place.open();
    let mut b = place.open();
    let rounds = 25;
    for round in 0..rounds {
        let id = format!("g{round}");
        a.create_grant(&grant(&id, "alice", "c1", 0), Some(&h(&format!("{id}-0"))))
            .unwrap();
    }
    let barrier = Barrier::new(2);
    // No panic inside a round: the other thread would wait at the barrier forever.
    let race = |s: &mut Box<dyn Store>, who: &str| -> Vec<Result<Rotation, StoreError>> {
        (0..rounds)
            .map(|round| {
                let old = h(&format!("g{round}-0"));
                let new = h(&format!("g{round}-{who}"));
                barrier.wait();
                s.rotate_refresh(&old, &new, T0 + 100, 30)
            })
            .collect()
    };
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| race(&mut a, "a"));
        let tb = scope.spawn(|| race(&mut b, "b"));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for (round, pair) in ra.iter().zip(&rb).enumerate() {
        let (winner, loser) = match pair {
            (Ok(Rotation::Rotated(_)), Ok(Rotation::Grace(_))) => ("a", "b"),
            (Ok(Rotation::Grace(_)), Ok(Rotation::Rotated(_))) => ("b", "a"),
            other => panic!("round {round}: {other:?}"),
        };
        let won = h(&format!("g{round}-{winner}"));
        let lost = h(&format!("g{round}-{loser}"));
        assert_eq!(
            a.rotate_refresh(&lost, &h("z"), T0 + 101, 30).unwrap(),
            Rotation::Unknown
        );
        assert!(matches!(
            a.rotate_refresh(&won, &h(&format!("g{round}-next")), T0 + 101, 30)
                .unwrap(),
            Rotation::Rotated(_)
        ));
    }
}

/// Two handles present the same code at once: one is granted, one is a replay.
pub(crate) fn concurrent_code_take_has_one_winner(place: &dyn Place) {
    let mut a = place.open();
    let mut b = place.open();
    let rounds = 25;
    for round in 0..rounds {
        a.put_code(&code(&format!("code-{round}"), T0 + 60))
            .unwrap();
    }
    let barrier = Barrier::new(2);
    let race = |s: &mut Box<dyn Store>| -> Vec<Result<CodeTake, StoreError>> {
        (0..rounds)
            .map(|round| {
                barrier.wait();
                s.take_code(&h(&format!("code-{round}")), T0)
            })
            .collect()
    };
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| race(&mut a));
        let tb = scope.spawn(|| race(&mut b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for (round, pair) in ra.iter().zip(&rb).enumerate() {
        match pair {
            (Ok(CodeTake::Granted(_)), Ok(CodeTake::Replayed { grant_id: None }))
            | (Ok(CodeTake::Replayed { grant_id: None }), Ok(CodeTake::Granted(_))) => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
}

pub(crate) fn errors_name_no_secret(place: &dyn Place) {
    let mut s = place.open();
    s.put_code(&code("code-secret", T0 + 60)).unwrap();
    let err = s
        .put_code(&code("code-secret", T0 + 60))
        .unwrap_err()
        .to_string();
    let hex: String = h("code-secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!err.contains(&hex) && !err.contains("code-secret"), "{err}");
    s.create_grant(&grant("g1", "alice", "c1", 0), Some(&h("rt-secret")))
        .unwrap();
    let err = s
        .create_grant(&grant("g2", "alice", "c1", 0), Some(&h("rt-secret")))
        .unwrap_err();
    assert!(matches!(err, StoreError::Exists(_)), "{err}");
    assert!(
        s.grant("g2").unwrap().is_none(),
        "the failed transaction left nothing"
    );
    let hex: String = h("rt-secret").iter().map(|b| format!("{b:02x}")).collect();
    assert!(!err.to_string().contains(&hex), "{err}");
}

pub(crate) fn upstream_put_get_list_and_generations(place: &dyn Place) {
    let mut s = place.open();
    assert_eq!(s.upstream("alice", "github").unwrap(), None);
    assert!(s.upstream_of("alice").unwrap().is_empty());
    assert!(s.all_upstream().unwrap().is_empty());

    let mut t = upstream_token("alice", "github", 0);
    t.generation = 42;
    assert_eq!(
        s.put_upstream(&t).unwrap(),
        1,
        "a new record: 1, whatever it says"
    );
    t.generation = 1;
    assert_eq!(s.upstream("alice", "github").unwrap(), Some(t.clone()));

    // Replaced whole: every field but the key, and the generation grows.
    let mut t2 = upstream_token("alice", "github", 500);
    t2.client_id = "github-client-2".into();
    t2.kid = "k2".into();
    t2.sealed = (0..=255).collect();
    t2.expires = 0;
    t2.refresh_due = i64::MAX;
    t2.status = UpstreamStatus::Disconnected {
        reason: "invalid_grant: the upstream refused the refresh token".into(),
    };
    t2.updated = T0 + 60;
    t2.generation = -5;
    assert_eq!(s.put_upstream(&t2).unwrap(), 2);
    t2.generation = 2;
    assert_eq!(s.upstream("alice", "github").unwrap(), Some(t2.clone()));
    t2.status = UpstreamStatus::Disconnected {
        reason: String::new(),
    };
    assert_eq!(s.put_upstream(&t2).unwrap(), 3);
    t2.generation = 3;
    assert_eq!(
        s.upstream("alice", "github").unwrap(),
        Some(t2.clone()),
        "an empty reason is still disconnected"
    );
    t2.status = UpstreamStatus::Connected;
    assert_eq!(s.put_upstream(&t2).unwrap(), 4);
    assert_eq!(
        s.upstream("alice", "github").unwrap().unwrap().status,
        UpstreamStatus::Connected
    );

    for (user, route) in [
        ("alice", "notion"),
        ("bob", "github"),
        ("alice", "atlassian"),
    ] {
        assert_eq!(s.put_upstream(&upstream_token(user, route, 0)).unwrap(), 1);
    }
    assert_eq!(s.upstream("alice", "jira").unwrap(), None);
    assert_eq!(s.upstream("carol", "github").unwrap(), None);
    assert_eq!(
        routes(&s.upstream_of("alice").unwrap()),
        [
            ("alice", "atlassian"),
            ("alice", "github"),
            ("alice", "notion")
        ],
        "by route"
    );
    assert_eq!(routes(&s.upstream_of("bob").unwrap()), [("bob", "github")]);
    assert!(s.upstream_of("carol").unwrap().is_empty());
    let all = s.all_upstream().unwrap();
    assert_eq!(
        routes(&all),
        [
            ("alice", "atlassian"),
            ("alice", "github"),
            ("alice", "notion"),
            ("bob", "github")
        ]
    );
    assert_eq!(all[1].generation, 4);
    assert_eq!(all[3], {
        let mut b = upstream_token("bob", "github", 0);
        b.generation = 1;
        b
    });
}

pub(crate) fn upstream_replace_if_is_compare_and_swap(place: &dyn Place) {
    let mut s = place.open();
    let t = upstream_token("alice", "github", 0);
    assert!(
        !s.replace_upstream_if(&t, 0).unwrap(),
        "no record: nothing to replace"
    );
    assert!(!s.replace_upstream_if(&t, 1).unwrap());
    assert_eq!(s.upstream("alice", "github").unwrap(), None, "nor inserted");

    assert_eq!(s.put_upstream(&t).unwrap(), 1);
    let mut refreshed = upstream_token("alice", "github", 3600);
    refreshed.sealed = b"new tokens".to_vec();
    refreshed.updated = T0 + 10;
    refreshed.generation = 99; // ignored
    assert!(!s.replace_upstream_if(&refreshed, 0).unwrap(), "stale");
    assert!(
        !s.replace_upstream_if(&refreshed, 2).unwrap(),
        "from the future"
    );
    assert_eq!(
        s.upstream("alice", "github").unwrap().unwrap().generation,
        1
    );
    assert!(s.replace_upstream_if(&refreshed, 1).unwrap());
    let stored = s.upstream("alice", "github").unwrap().unwrap();
    refreshed.generation = 2;
    assert_eq!(stored, refreshed);
    assert!(
        !s.replace_upstream_if(&t, 1).unwrap(),
        "a second refresh from the same read loses"
    );
    assert_eq!(
        s.upstream("alice", "github").unwrap(),
        Some(refreshed.clone())
    );

    // A disconnect through the same compare-and-swap.
    let mut gone = refreshed.clone();
    gone.status = UpstreamStatus::Disconnected {
        reason: "invalid_grant".into(),
    };
    assert!(s.replace_upstream_if(&gone, 2).unwrap());
    gone.generation = 3;
    assert_eq!(s.upstream("alice", "github").unwrap(), Some(gone));
    assert_eq!(s.put_upstream(&t).unwrap(), 4, "a put continues the count");

    // Another (user, route) with the same generation is not touched.
    s.put_upstream(&upstream_token("bob", "github", 0)).unwrap();
    let mut other = upstream_token("bob", "notion", 0);
    assert!(!s.replace_upstream_if(&other, 1).unwrap());
    other.route = "github".into();
    other.sealed = b"bob's".to_vec();
    assert!(s.replace_upstream_if(&other, 1).unwrap());
    assert_eq!(
        s.upstream("alice", "github").unwrap().unwrap().generation,
        4
    );
    assert_eq!(
        s.upstream("bob", "github").unwrap().unwrap().sealed,
        b"bob's"
    );
}

pub(crate) fn upstream_due_lists_connected_records_soonest_first(place: &dyn Place) {
    let mut s = place.open();
    assert!(s.upstream_due(i64::MAX - 1, 10).unwrap().is_empty());
    for (user, route, due) in [
        ("alice", "github", 30),
        ("bob", "github", 10),
        ("alice", "notion", 20),
        ("carol", "github", 20),
        ("alice", "jira", 40),
    ] {
        s.put_upstream(&upstream_token(user, route, due)).unwrap();
    }
    let mut never = upstream_token("dave", "github", 0);
    never.refresh_due = i64::MAX;
    s.put_upstream(&never).unwrap();
    let mut disconnected = upstream_token("erin", "github", -100);
    disconnected.status = UpstreamStatus::Disconnected {
        reason: "invalid_grant".into(),
    };
    s.put_upstream(&disconnected).unwrap();

    assert!(
        s.upstream_due(T0 + 9, 10).unwrap().is_empty(),
        "none due yet"
    );
    assert_eq!(
        routes(&s.upstream_due(T0 + 10, 10).unwrap()),
        [("bob", "github")]
    );
    assert_eq!(
        routes(&s.upstream_due(T0 + 25, 10).unwrap()),
        [("bob", "github"), ("alice", "notion"), ("carol", "github")],
        "soonest first; a tie by user"
    );
    assert_eq!(
        routes(&s.upstream_due(T0 + 25, 2).unwrap()),
        [("bob", "github"), ("alice", "notion")],
        "limited"
    );
    assert!(s.upstream_due(T0 + 25, 0).unwrap().is_empty());
    let due = s.upstream_due(T0 + 86_400 * 365 * 100, usize::MAX).unwrap();
    assert_eq!(
        routes(&due),
        [
            ("bob", "github"),
            ("alice", "notion"),
            ("carol", "github"),
            ("alice", "github"),
            ("alice", "jira")
        ],
        "neither the disconnected one nor the one never due"
    );
    assert_eq!(due[0], {
        let mut b = upstream_token("bob", "github", 10);
        b.generation = 1;
        b
    });

    // Refreshed: due later; disconnected: never listed again.
    let mut bob = due[0].clone();
    bob.refresh_due = T0 + 1000;
    assert!(s.replace_upstream_if(&bob, 1).unwrap());
    let mut alice = due[1].clone();
    alice.status = UpstreamStatus::Disconnected {
        reason: "invalid_grant".into(),
    };
    assert!(s.replace_upstream_if(&alice, 1).unwrap());
    assert_eq!(
        routes(&s.upstream_due(T0 + 25, 10).unwrap()),
        [("carol", "github")]
    );
}

pub(crate) fn upstream_delete(place: &dyn Place) {
    let mut s = place.open();
    assert!(!s.delete_upstream("alice", "github").unwrap());
    for (user, route) in [("alice", "github"), ("alice", "notion"), ("bob", "github")] {
        s.put_upstream(&upstream_token(user, route, 0)).unwrap();
    }
    assert!(s.delete_upstream("alice", "github").unwrap());
    assert!(
        !s.delete_upstream("alice", "github").unwrap(),
        "already gone"
    );
    assert_eq!(s.upstream("alice", "github").unwrap(), None);
    assert_eq!(
        routes(&s.all_upstream().unwrap()),
        [("alice", "notion"), ("bob", "github")],
        "the others stay"
    );
    assert!(s
        .upstream_due(T0, 10)
        .unwrap()
        .iter()
        .all(|t| t.route != "github" || t.user != "alice"));
    assert_eq!(
        s.put_upstream(&upstream_token("alice", "github", 0))
            .unwrap(),
        1,
        "connected again: a new record"
    );
}

/// Two handles (say two refreshers) read the same record and race to
/// replace it: exactly one write lands per round.
pub(crate) fn concurrent_upstream_replace_has_one_winner(place: &dyn Place) {
    let mut a = place.open();
    let mut b = place.open();
    let rounds = 25;
    a.put_upstream(&upstream_token("alice", "github", 0))
        .unwrap();
    let barrier = Barrier::new(2);
    // No panic inside a round: the other thread would wait at the barrier forever.
    let race = |s: &mut Box<dyn Store>, who: &str| -> Vec<Result<(i64, bool), StoreError>> {
        (0..rounds)
            .map(|round| {
                barrier.wait();
                let read = s
                    .upstream("alice", "github")
                    .and_then(|t| t.ok_or(StoreError::NotFound("upstream token")));
                barrier.wait(); // both have read before either writes
                let wrote = read.and_then(|mut t| {
                    let seen = t.generation;
                    t.sealed = format!("{who} {round}").into_bytes();
                    s.replace_upstream_if(&t, seen).map(|won| (seen, won))
                });
                barrier.wait(); // both have written before the next read
                wrote
            })
            .collect()
    };
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| race(&mut a, "a"));
        let tb = scope.spawn(|| race(&mut b, "b"));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut winners = Vec::new();
    for (round, pair) in ra.iter().zip(&rb).enumerate() {
        let generation = round as i64 + 1;
        match pair {
            (Ok((ga, true)), Ok((gb, false))) if *ga == generation && *gb == generation => {
                winners.push("a")
            }
            (Ok((ga, false)), Ok((gb, true))) if *ga == generation && *gb == generation => {
                winners.push("b")
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    let last = a.upstream("alice", "github").unwrap().unwrap();
    assert_eq!(last.generation, rounds as i64 + 1);
    assert_eq!(
        last.sealed,
        format!("{} {}", winners[rounds - 1], rounds - 1).into_bytes()
    );
}

pub(crate) fn upstream_clients_first_registration_wins(place: &dyn Place) {
    let mut s = place.open();
    let iss = "https://as.example";
    assert_eq!(s.upstream_client("github", iss).unwrap(), None);
    let first = UpstreamClient {
        route: "github".into(),
        issuer: iss.into(),
        client_id: "c-1".into(),
        secret: Some(("k1".into(), vec![1, 2, 3])),
        created: T0,
    };
    let before = s.seq().unwrap();
    assert_eq!(s.put_upstream_client(&first).unwrap(), first);
    assert!(s.seq().unwrap() > before);
    // A second registration racing the first: the stored one is answered.
    let second = UpstreamClient {
        client_id: "c-2".into(),
        secret: None,
        ..first.clone()
    };
    let before = s.seq().unwrap();
    assert_eq!(s.put_upstream_client(&second).unwrap(), first);
    assert_eq!(s.seq().unwrap(), before, "nothing written");
    // Another route or issuer is another registration.
    let other = UpstreamClient {
        route: "notion".into(),
        ..second.clone()
    };
    assert_eq!(s.put_upstream_client(&other).unwrap(), other);
    assert_eq!(s.upstream_client("github", iss).unwrap(), Some(first));
    // Deleting names the client id: a stale delete leaves a newer one.
    assert!(!s.delete_upstream_client("github", iss, "c-2").unwrap());
    assert!(s.delete_upstream_client("github", iss, "c-1").unwrap());
    assert_eq!(s.upstream_client("github", iss).unwrap(), None);
    drop(s);
    let s = place.open();
    assert_eq!(s.upstream_client("notion", iss).unwrap(), Some(other));
}

pub(crate) fn claiming_due_records_leases_them(place: &dyn Place) {
    let mut s = place.open();
    for (user, due) in [("alice", 10), ("bob", 20), ("carol", 30)] {
        s.put_upstream(&upstream_token(user, "github", due))
            .unwrap();
    }
    let mut gone = upstream_token("dave", "github", 0);
    gone.status = UpstreamStatus::Disconnected {
        reason: "refused".into(),
    };
    s.put_upstream(&gone).unwrap();
    let before = s.seq().unwrap();
    assert!(s
        .claim_upstream_due(T0 + 9, T0 + 100, 10)
        .unwrap()
        .is_empty());
    assert_eq!(s.seq().unwrap(), before, "an empty claim writes nothing");
    let claimed = s.claim_upstream_due(T0 + 25, T0 + 100, 10).unwrap();
    let mut got: Vec<(&str, i64, i64)> = claimed
        .iter()
        .map(|t| (t.user.as_str(), t.refresh_due, t.generation))
        .collect();
    got.sort();
    assert_eq!(got, [("alice", T0 + 100, 2), ("bob", T0 + 100, 2)]);
    assert!(s.seq().unwrap() > before);
    // As stored, and the claim's generation is the one to compare-and-set with.
    assert_eq!(
        s.upstream("alice", "github").unwrap().unwrap(),
        claimed.iter().find(|t| t.user == "alice").unwrap().clone()
    );
    // Claimed: not due again until the lease ends (carol now is).
    let next = s.claim_upstream_due(T0 + 99, T0 + 200, 10).unwrap();
    assert_eq!(routes(&next), [("carol", "github")]);
    let again = s.claim_upstream_due(T0 + 100, T0 + 300, 1).unwrap();
    assert_eq!(again.len(), 1, "the limit holds");
    assert!(s
        .claim_upstream_due(T0 + 100, T0 + 300, 0)
        .unwrap()
        .is_empty());
}

pub(crate) fn concurrent_claims_are_disjoint(place: &dyn Place) {
    let mut a = place.open();
    let mut b = place.open();
    for i in 0..40 {
        a.put_upstream(&upstream_token(&format!("user{i:02}"), "github", i))
            .unwrap();
    }
    let barrier = Barrier::new(2);
    let claim = |s: &mut Box<dyn Store>| -> Vec<String> {
        barrier.wait();
        let mut mine = Vec::new();
        for _ in 0..20 {
            match s.claim_upstream_due(T0 + 100, T0 + 1000, 3) {
                Ok(got) => mine.extend(got.into_iter().map(|t| t.user)),
                Err(StoreError::Busy) => {}
                Err(e) => return vec![format!("error: {e}")],
            }
        }
        mine
    };
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| claim(&mut a));
        let tb = scope.spawn(|| claim(&mut b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut all: Vec<&String> = ra.iter().chain(&rb).collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a record claimed twice: {ra:?} {rb:?}");
    assert_eq!(
        all.len(),
        40,
        "every due record claimed once: {ra:?} {rb:?}"
    );
}

fn pin(name: &str, approved: bool, hash: &str) -> Pin {
    Pin {
        route: "gh".into(),
        kind: "tool".into(),
        name: name.into(),
        approved,
        hash: hash.into(),
        definition: format!(r#"{{"name":"{name}","description":"{hash}"}}"#),
        flagged: if hash == "h-bad" {
            strings(&["override_phrase", "unicode_tags"])
        } else {
            Vec::new()
        },
        first_seen: T0,
        approved_at: approved.then_some(T0),
    }
}

pub(crate) fn pins_are_kept_replaced_and_approved(place: &dyn Place) {
    let mut s = place.open();
    assert!(s.pins(None).unwrap().is_empty());
    let before = s.seq().unwrap();
    for p in [
        pin("add", true, "h1"),
        pin("echo", true, "h2"),
        pin("add", false, "h-bad"),
    ] {
        s.put_pin(&p).unwrap();
    }
    assert!(s.seq().unwrap() > before, "a pin is a change");
    let other = Pin {
        route: "notion".into(),
        kind: "prompt".into(),
        ..pin("p", true, "h3")
    };
    s.put_pin(&other).unwrap();
    // One approved and one pending per name: a second pending replaces the first.
    s.put_pin(&pin("new", false, "h4")).unwrap();
    s.put_pin(&pin("new", false, "h5")).unwrap();
    let gh = s.pins(Some("gh")).unwrap();
    let shown: Vec<(&str, bool, &str)> = gh
        .iter()
        .map(|p| (p.name.as_str(), p.approved, p.hash.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("add", true, "h1"),
            ("add", false, "h-bad"),
            ("echo", true, "h2"),
            ("new", false, "h5")
        ]
    );
    assert_eq!(gh[1], pin("add", false, "h-bad"), "every column kept");
    assert_eq!(s.pins(None).unwrap().len(), 5);
    assert_eq!(s.pins(Some("notion")).unwrap(), [other]);
    // Approving one name: its pending pin replaces the approved one.
    let before = s.seq().unwrap();
    let approved = s.approve_pins("gh", None, Some("add"), T0 + 5).unwrap();
    assert_eq!(
        approved,
        [Pin {
            approved_at: Some(T0 + 5),
            ..pin("add", true, "h-bad")
        }]
    );
    assert!(s.seq().unwrap() > before);
    let before = s.seq().unwrap();
    assert!(s
        .approve_pins("gh", None, Some("add"), T0 + 6)
        .unwrap()
        .is_empty());
    assert!(s
        .approve_pins("gh", Some("prompt"), None, T0 + 6)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.seq().unwrap(),
        before,
        "nothing to approve, nothing written"
    );
    // Deleting: the pending one only, or both.
    s.put_pin(&pin("echo", false, "h6")).unwrap();
    assert_eq!(s.delete_pin("gh", "tool", "echo", true).unwrap(), 1);
    assert_eq!(s.delete_pin("gh", "tool", "echo", true).unwrap(), 0);
    s.put_pin(&pin("echo", false, "h6")).unwrap();
    assert_eq!(s.delete_pin("gh", "tool", "echo", false).unwrap(), 2);
    // Approving a route's every pending pin.
    let approved = s.approve_pins("gh", Some("tool"), None, T0 + 7).unwrap();
    assert_eq!(approved.len(), 1);
    assert_eq!(
        (approved[0].name.as_str(), approved[0].hash.as_str()),
        ("new", "h5")
    );
    drop(s);
    let s = place.open();
    let names: Vec<(String, bool)> = s
        .pins(Some("gh"))
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.approved))
        .collect();
    assert_eq!(
        names,
        [("add".to_string(), true), ("new".to_string(), true)]
    );
}
