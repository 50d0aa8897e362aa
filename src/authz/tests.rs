//! The authorization server's behaviour, driven through [`Server::handle`]
//! with no network: a configuration parsed and compiled as `portcullis`
//! does, a SQLite store in a temporary file, and a small browser that walks
//! the development login and the consent page the way a browser does
//! (cookies kept from `Set-Cookie`, redirects to portcullis followed, forms
//! submitted with their hidden fields and the `Origin` a browser sends)
//! until it lands on the client's redirect URI.

use super::http::{encode, Answer, Call, Form, Verb};
use super::seal::s256;
use super::server::Server;
use super::settings::{compile, Settings};
use crate::identity::minted::Issued;
use crate::identity::verify::AuthError;
use arc_swap::ArcSwapOption;
use base64::Engine;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const ISS: &str = "http://127.0.0.1:8080";
/// The two routes accepting `portcullis` tokens (so a missing `resource`
/// is ambiguous).
const RES_A: &str = "http://127.0.0.1:8080/a";
const RES_B: &str = "http://localhost:8080/b";
/// Public clients from the configuration.
const PUB: &str = "pub-cli";
const PUB_CB: &str = "http://127.0.0.1/callback";
const PUB_APP_CB: &str = "com.example.app:/cb";
const OTHER: &str = "other-cli";
const OTHER_CB: &str = "http://127.0.0.1/other";
/// A confidential client from the configuration (access tokens: 10 min).
const CONF: &str = "conf-app";
const CONF_SECRET: &str = "conf-secret-0123456789";
const CONF_CB: &str = "https://app.example.com/cb";
/// A `state` that needs encoding both ways.
const STATE: &str = "st 1&x=y/é?";

fn config_text(store: &Path) -> String {
    format!(
        r#"
listen:
  - address: 127.0.0.1:8080
authorization_server:
  issuer: {ISS}
  login:
    dev_users:
      - {{ sub: alice, email: alice@example.com, groups: [eng] }}
      - {{ sub: bob, groups: [sales] }}
  clients:
    dynamic_registration: true
    registered:
      - {{ client_id: {PUB}, name: Public CLI, redirect_uris: ["{PUB_CB}", "{PUB_APP_CB}"] }}
      - {{ client_id: {OTHER}, redirect_uris: ["{OTHER_CB}"] }}
      - {{ client_id: {CONF}, name: Confidential App, client_secret: {CONF_SECRET}, access_ttl: 10m, redirect_uris: ["{CONF_CB}"] }}
store:
  path: {store}
routes:
  - name: a
    from: {RES_A}
    to: http://127.0.0.1:9000/mcp
    mcp: {{}}
    auth: {{ issuers: [portcullis], scopes: [mcp] }}
  - name: b
    from: {RES_B}
    to: http://127.0.0.1:9001/mcp
    mcp: {{}}
    auth: {{ issuers: [portcullis], scopes: [mcp, admin] }}
"#,
        store = store.display()
    )
}

/// A store file under the temporary directory, removed (with its `-wal`
/// and `-shm`) when dropped.
struct Db(PathBuf);

impl Db {
    fn new() -> Db {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("portcullis-authz-test-{}-{n}.db", std::process::id());
        let db = Db(std::env::temp_dir().join(name));
        db.remove();
        db
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One authorization server with its settings, and what it publishes to the
/// cores.
struct H {
    server: Server,
    s: Settings,
    issued: Arc<ArcSwapOption<Issued>>,
    _db: Db,
}

/// How a client authenticates at the token and revocation endpoints.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// A public client: `client_id` in the body.
    Public(&'a str),
    /// `client_secret_post`.
    Post(&'a str, &'a str),
    /// `client_secret_basic`.
    Basic(&'a str, &'a str),
}

fn basic(id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", encode(id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request as a core hands it over; `target` may be an absolute URL of
/// the issuer.
fn call(verb: Verb, target: &str, headers: Vec<(&'static str, String)>, body: &[u8]) -> Call {
    let target = target.strip_prefix(ISS).unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Call {
        verb,
        path: path.into(),
        query: query.into(),
        headers,
        body: body.to_vec(),
        peer: [127, 0, 0, 1].into(),
        tls: false,
    }
}

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_slice(&a.body).unwrap_or(Value::Null)
}

/// An OAuth error answer: status, `error`, `no-store`.
#[track_caller]
fn assert_oauth_error(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status, status, "{}", text(a));
    assert_eq!(json_of(a)["error"], error, "{}", text(a));
    assert_eq!(a.header("cache-control"), Some("no-store"));
}

/// The query parameters of a URL.
fn params_of(url: &str) -> Form {
    Form::parse(url.split_once('?').map_or("", |(_, q)| q).as_bytes()).unwrap()
}

/// A redirect back to the client with an error: `error`, `state`, `iss`.
#[track_caller]
fn assert_redirect_error(a: &Answer, redirect: &str, error: &str) {
    assert_eq!(a.status, 302, "{}", text(a));
    let loc = a.header("location").unwrap();
    assert!(loc.starts_with(&format!("{redirect}?")), "{loc}");
    let p = params_of(loc);
    assert_eq!(p.get("error"), Some(error), "{loc}");
    assert_eq!(p.get("state"), Some(STATE), "{loc}");
    assert_eq!(p.get("iss"), Some(ISS), "{loc}");
    assert_eq!(p.get("code"), None, "{loc}");
}

/// An HTML error page: the status, and never a redirect.
#[track_caller]
fn assert_page(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "{}", text(a));
    assert_eq!(a.header("location"), None);
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
}

/// A PKCE verifier and its S256 challenge, different each time.
struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let verifier = format!("verifier-{n:06}-{}", "abcdefghij".repeat(4));
    let challenge = s256(&verifier);
    Pkce {
        verifier,
        challenge,
    }
}

/// An authorization request (`/authorize` query), valid unless changed.
#[derive(Clone)]
struct AuthReq(Vec<(String, String)>);

impl AuthReq {
    fn new(client: &str, redirect: &str, challenge: &str) -> AuthReq {
        AuthReq(
            [
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", redirect),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                ("state", STATE),
                ("resource", RES_A),
                ("scope", "mcp"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
    }

    fn set(mut self, k: &str, v: &str) -> AuthReq {
        match self.0.iter_mut().find(|(n, _)| n == k) {
            Some(p) => p.1 = v.to_string(),
            None => self.0.push((k.to_string(), v.to_string())),
        }
        self
    }

    fn without(mut self, k: &str) -> AuthReq {
        self.0.retain(|(n, _)| n != k);
        self
    }

    fn url(&self) -> String {
        let pairs: Vec<(&str, &str)> = self
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        format!("{ISS}/authorize?{}", form(&pairs))
    }
}

/// Where a browser walk stopped.
#[derive(Debug)]
enum End {
    /// Redirected to the client (this URL).
    Client(String),
    /// A page it cannot go on from.
    Page(Answer),
}

impl End {
    #[track_caller]
    fn location(self) -> String {
        match self {
            End::Client(loc) => loc,
            End::Page(a) => panic!("stopped at a page: {} {}", a.status, text(&a)),
        }
    }
}

/// The value of a hidden form field in a page.
#[track_caller]
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A browser: a cookie jar, the user it logs in as, what it decides on
/// consent pages.
struct Browser {
    jar: Vec<(String, String)>,
    user: &'static str,
    decision: &'static str,
    /// The pages the last walk submitted ("login", "consent").
    shown: Vec<&'static str>,
    /// Every `Set-Cookie` seen.
    set_cookies: Vec<String>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            jar: Vec::new(),
            user: "alice",
            decision: "allow",
            shown: Vec::new(),
            set_cookies: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_cookie(&mut self, name: &str, value: &str) {
        self.jar.retain(|(n, _)| n != name);
        self.jar.push((name.to_string(), value.to_string()));
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        if self.jar.is_empty() {
            return Vec::new();
        }
        let cookies: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        vec![("cookie", cookies.join("; "))]
    }

    fn keep(&mut self, a: &Answer) {
        for (n, v) in &a.headers {
            if *n != "set-cookie" {
                continue;
            }
            self.set_cookies.push(v.clone());
            let mut attrs = v.split(';');
            let (name, value) = attrs.next().unwrap().split_once('=').unwrap();
            let gone =
                value.is_empty() || attrs.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.jar.retain(|(n, _)| n != name);
            if !gone {
                self.jar.push((name.to_string(), value.to_string()));
            }
        }
    }

    fn get(&mut self, h: &H, target: &str) -> Answer {
        let a = h.handle(&call(Verb::Get, target, self.headers(), b""));
        self.keep(&a);
        a
    }

    /// Submit a form of `page` as a browser does: the `Origin` of a
    /// form POST is `null` when the page's referrer policy is
    /// `no-referrer` (Fetch, "append a request Origin header"; Chromium
    /// does this), else the page's origin.
    fn submit(&mut self, h: &H, page: &Answer, action: &str, fields: &[(&str, &str)]) -> Answer {
        let no_referrer = page
            .header("referrer-policy")
            .and_then(|p| p.split(',').next_back())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("no-referrer"));
        let origin = if no_referrer { "null" } else { ISS };
        self.post(h, action, origin, &form(fields))
    }

    fn post(&mut self, h: &H, action: &str, origin: &str, body: &str) -> Answer {
        let mut headers = self.headers();
        headers.push(("content-type", "application/x-www-form-urlencoded".into()));
        headers.push(("origin", origin.into()));
        let a = h.handle(&call(Verb::Post, action, headers, body.as_bytes()));
        self.keep(&a);
        a
    }

    /// Go to `start` and on through login and consent until the browser
    /// leaves portcullis or stops at a page.
    fn walk(&mut self, h: &H, start: &str) -> End {
        self.shown.clear();
        let mut answer = self.get(h, start);
        for _ in 0..12 {
            if answer.status == 302 {
                let loc = answer.header("location").unwrap().to_string();
                if loc.starts_with(&format!("{ISS}/")) {
                    answer = self.get(h, &loc);
                    continue;
                }
                return End::Client(loc);
            }
            let html = text(&answer);
            if answer.status == 200 && html.contains("action=\"/.portcullis/login\"") {
                self.shown.push("login");
                let (tx, csrf) = (hidden(&html, "tx"), hidden(&html, "csrf"));
                let fields = [
                    ("tx", tx.as_str()),
                    ("csrf", csrf.as_str()),
                    ("user", self.user),
                ];
                answer = self.submit(h, &answer, "/.portcullis/login", &fields);
                continue;
            }
            if answer.status == 200 && html.contains("action=\"/.portcullis/consent\"") {
                self.shown.push("consent");
                let (tx, csrf) = (hidden(&html, "tx"), hidden(&html, "csrf"));
                let fields = [
                    ("tx", tx.as_str()),
                    ("csrf", csrf.as_str()),
                    ("decision", self.decision),
                ];
                answer = self.submit(h, &answer, "/.portcullis/consent", &fields);
                continue;
            }
            return End::Page(answer);
        }
        panic!("the browser went round in circles")
    }

    /// Walk to the consent page of `req` (logging in on the way) and stop
    /// there: the page, its `tx` and `csrf`.
    fn reach_consent(&mut self, h: &H, req: &AuthReq) -> (Answer, String, String) {
        // A walk submits consent pages; stop before by stepping by hand.
        let mut answer = self.get(h, &req.url());
        for _ in 0..12 {
            if answer.status == 302 {
                let loc = answer.header("location").unwrap().to_string();
                assert!(
                    loc.starts_with(&format!("{ISS}/")),
                    "left portcullis: {loc}"
                );
                answer = self.get(h, &loc);
                continue;
            }
            let html = text(&answer);
            if html.contains("action=\"/.portcullis/login\"") {
                let (tx, csrf) = (hidden(&html, "tx"), hidden(&html, "csrf"));
                let fields = [
                    ("tx", tx.as_str()),
                    ("csrf", csrf.as_str()),
                    ("user", self.user),
                ];
                answer = self.submit(h, &answer, "/.portcullis/login", &fields);
                continue;
            }
            assert!(
                html.contains("action=\"/.portcullis/consent\""),
                "{} {html}",
                answer.status
            );
            let (tx, csrf) = (hidden(&html, "tx"), hidden(&html, "csrf"));
            return (answer, tx, csrf);
        }
        panic!("the browser went round in circles")
    }
}

/// A code delivered to the client, with what redeems it.
struct Code {
    code: String,
    verifier: String,
    redirect: String,
}

impl H {
    fn new() -> H {
        let db = Db::new();
        let text = config_text(&db.0);
        let cfg = crate::config::parse(&text, Path::new("test.yaml")).unwrap();
        let s = compile(
            cfg.authorization_server.as_ref().unwrap(),
            cfg.store.as_ref(),
            cfg.vault.as_ref(),
            &cfg.routes,
            Path::new("/"),
        )
        .unwrap();
        let store = crate::store::open(&s.store).unwrap();
        let issued: Arc<ArcSwapOption<Issued>> = Arc::default();
        let server = Server::new(&s, store, &[7u8; 32], Arc::clone(&issued)).unwrap();
        H {
            server,
            s,
            issued,
            _db: db,
        }
    }

    fn handle(&self, call: &Call) -> Answer {
        self.server.handle(&self.s, call)
    }

    /// What a core would answer about a token for `audience` now.
    fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<crate::principal::Principal, AuthError> {
        let issued = self
            .issued
            .load_full()
            .expect("the server published its keys");
        issued.verify(token, audience, crate::authz::unix_now())
    }

    /// An OAuth POST (`/token`, `/revoke`) by a client.
    fn post(&self, path: &str, auth: Auth<'_>, params: &[(&str, &str)]) -> Answer {
        let mut p = params.to_vec();
        let mut headers = vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )];
        match auth {
            Auth::Public(id) => p.push(("client_id", id)),
            Auth::Post(id, secret) => {
                p.push(("client_id", id));
                p.push(("client_secret", secret));
            }
            Auth::Basic(id, secret) => headers.push(("authorization", basic(id, secret))),
        }
        self.handle(&call(Verb::Post, path, headers, form(&p).as_bytes()))
    }

    /// A JSON registration request from `peer`.
    fn register(&self, peer: [u8; 4], body: &Value) -> Answer {
        let mut c = call(
            Verb::Post,
            "/register",
            vec![("content-type", "application/json".into())],
            body.to_string().as_bytes(),
        );
        c.peer = IpAddr::from(peer);
        self.handle(&c)
    }

    /// A browser's whole authorization for `client` at `resource`, to the
    /// code the client receives (state and iss checked).
    fn code(&self, b: &mut Browser, client: &str, redirect: &str, resource: &str) -> Code {
        let p = pkce();
        let req = AuthReq::new(client, redirect, &p.challenge).set("resource", resource);
        let loc = b.walk(self, &req.url()).location();
        assert!(loc.starts_with(&format!("{redirect}?")), "{loc}");
        let params = params_of(&loc);
        assert_eq!(params.get("error"), None, "{loc}");
        assert_eq!(params.get("state"), Some(STATE));
        assert_eq!(params.get("iss"), Some(ISS));
        Code {
            code: params.get("code").expect("a code").to_string(),
            verifier: p.verifier,
            redirect: redirect.to_string(),
        }
    }

    fn exchange(&self, auth: Auth<'_>, c: &Code) -> Answer {
        self.post(
            "/token",
            auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", &c.code),
                ("redirect_uri", &c.redirect),
                ("code_verifier", &c.verifier),
            ],
        )
    }

    /// A fresh browser's authorization and the token response (200).
    fn tokens(&self, auth: Auth<'_>, client: &str, redirect: &str, resource: &str) -> Value {
        let c = self.code(&mut Browser::new(), client, redirect, resource);
        let a = self.exchange(auth, &c);
        assert_eq!(a.status, 200, "{}", text(&a));
        json_of(&a)
    }

    fn refresh(&self, auth: Auth<'_>, rt: &str) -> Answer {
        self.post(
            "/token",
            auth,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
    }
}

fn access(v: &Value) -> &str {
    v["access_token"].as_str().expect("an access token")
}

fn refresh_token(v: &Value) -> &str {
    v["refresh_token"].as_str().expect("a refresh token")
}

// ---------------------------------------------------------------- metadata

#[test]
fn metadata_names_absolute_endpoints_s256_only_and_public_clients() {
    let h = H::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let a = h.handle(&call(Verb::Get, path, vec![], b""));
        assert_eq!(a.status, 200, "{path}");
        let m = json_of(&a);
        assert_eq!(m["issuer"], ISS);
        for (endpoint, p) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("revocation_endpoint", "/revoke"),
            ("registration_endpoint", "/register"),
        ] {
            assert_eq!(m[endpoint], format!("{ISS}{p}"), "{endpoint}");
        }
        assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(m["response_types_supported"], json!(["code"]));
        let methods = m["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap();
        assert!(methods.contains(&json!("none")), "{methods:?}");
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
        assert_eq!(m["client_id_metadata_document_supported"], true);
        let grants = m["grant_types_supported"].as_array().unwrap();
        assert!(
            grants.contains(&json!("authorization_code"))
                && grants.contains(&json!("refresh_token"))
        );
        let scopes = m["scopes_supported"].as_array().unwrap();
        for sc in ["mcp", "admin", "offline_access"] {
            assert!(scopes.contains(&json!(sc)), "{sc} in {scopes:?}");
        }
        assert!(!text(&a).contains("null"), "no nulls: {}", text(&a));
    }
}

/// Another instance on the same store made a signing key (two instances
/// started together on an empty database each make one): this one learns it
/// at its next publish, signs with the newest (so every instance converges
/// on one signer) and still verifies tokens of the older.
#[test]
fn a_signing_key_made_elsewhere_is_learned_at_the_next_publish() {
    let h = H::new();
    let before = h.server.keys();
    assert_eq!(before.len(), 1);
    let old = h.server.signing_key();
    let sealer = super::seal::Sealer::new(&[7u8; 32]).unwrap();
    let sealed = sealer.seal(super::seal::Purpose::SigningKey, &[9u8; 32]);
    let mut other = crate::store::open(&h.s.store).unwrap();
    other
        .put_key("zz-other", crate::authz::unix_now() + 1, sealed.as_bytes())
        .unwrap();
    h.server.publish(&h.s).unwrap();
    let after = h.server.keys();
    let kids: Vec<&str> = after.iter().map(|k| k.kid()).collect();
    assert_eq!(kids, ["zz-other", old.kid()]);
    assert_eq!(h.server.signing_key().kid(), "zz-other");
    let issued = h.issued.load_full().unwrap();
    assert_eq!(issued.keys.len(), 2, "the cores verify both");
}

/// The identity assertion key is made once and kept (sealed) in the store:
/// a second server on the same store (another instance, a restart) signs
/// with the same key, and the access-token keys are not disturbed by it.
#[test]
fn the_assertion_key_is_kept_in_the_store_and_shared() {
    let h = H::new();
    let (kid, pkcs8) = h.server.assertion_key().unwrap();
    assert_eq!(h.server.assertion_key().unwrap().0, kid, "made once");
    let store = crate::store::open(&h.s.store).unwrap();
    let stored = store.keys().unwrap();
    let kept = stored
        .iter()
        .find(|k| k.kid == format!("assertion:{kid}"))
        .unwrap();
    assert!(
        !kept
            .sealed
            .windows(16)
            .any(|w| pkcs8.windows(16).any(|p| p == w)),
        "sealed, not in the clear"
    );
    let other = Server::new(&h.s, store, &[7u8; 32], Arc::default()).unwrap();
    let (kid2, pkcs8_2) = other.assertion_key().unwrap();
    assert_eq!((kid2.as_str(), &pkcs8_2[..]), (kid.as_str(), &pkcs8[..]));
    let a = crate::identity::AssertionSigner::from_pkcs8("portcullis", &kid, &pkcs8).unwrap();
    let b = crate::identity::AssertionSigner::from_pkcs8("portcullis", &kid2, &pkcs8_2).unwrap();
    assert_eq!(a.jwks_json(), b.jwks_json(), "one JWKS for both");
    h.server.publish(&h.s).unwrap();
    assert_eq!(h.server.keys().len(), 1, "not an access-token key");
    // Another secret cannot open it: a clear error, not a new key.
    let wrong = Server::new(
        &h.s,
        crate::store::open(&h.s.store).unwrap(),
        &[8u8; 32],
        Arc::default(),
    );
    assert!(wrong.is_err(), "the signing key does not open either");
}

/// portcullis's own client metadata document, for upstream authorization
/// servers that register clients by document (discovery mode): its id is
/// its URL, public, portcullis's upstream callback only.
#[test]
fn upstream_client_metadata_document_names_itself_and_the_callback() {
    let h = H::new();
    let a = h.handle(&call(
        Verb::Get,
        "/.portcullis/upstream/client",
        vec![],
        b"",
    ));
    assert_eq!(a.status, 200, "{}", text(&a));
    let d = json_of(&a);
    assert_eq!(d["client_id"], format!("{ISS}/.portcullis/upstream/client"));
    assert_eq!(
        d["redirect_uris"],
        json!([format!("{ISS}/.portcullis/upstream/callback")])
    );
    assert_eq!(d["token_endpoint_auth_method"], "none");
    assert_eq!(
        d["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert!(a
        .header("cache-control")
        .is_some_and(|c| c.contains("max-age")));
    let post = h.handle(&call(
        Verb::Post,
        "/.portcullis/upstream/client",
        vec![],
        b"",
    ));
    assert_eq!(post.status, 405);
}

#[test]
fn registration_endpoint_only_when_dynamic_registration_is_on() {
    let mut h = H::new();
    h.s.dynamic_registration = false;
    let a = h.handle(&call(
        Verb::Get,
        "/.well-known/oauth-authorization-server",
        vec![],
        b"",
    ));
    assert_eq!(a.status, 200);
    assert!(
        json_of(&a).get("registration_endpoint").is_none(),
        "{}",
        text(&a)
    );
    let a = h.register([10, 0, 0, 1], &json!({"redirect_uris": [PUB_CB]}));
    assert!(a.status == 404 || a.status == 400, "{}", a.status);
    assert_ne!(a.status, 201);
}

#[test]
fn oauth_endpoints_allow_cors_and_answer_preflights() {
    let h = H::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/register",
        "/token",
        "/revoke",
    ] {
        let pre = h.handle(&call(
            Verb::Options,
            path,
            vec![("origin", "http://localhost:6274".into())],
            b"",
        ));
        assert_eq!(pre.status, 204, "{path}");
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        let methods = pre.header("access-control-allow-methods").unwrap_or("");
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{path}: {methods}"
        );
        let allowed = pre
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{path}: {allowed}"
        );
        // The answers themselves, errors included.
        let verb = if path.starts_with("/.well-known/") {
            Verb::Get
        } else {
            Verb::Post
        };
        let a = h.handle(&call(
            verb,
            path,
            vec![("origin", "http://localhost:6274".into())],
            b"",
        ));
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("*"),
            "{path}: {}",
            a.status
        );
    }
    // A successful token answer too.
    let t = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let a = h.exchange(Auth::Public(PUB), &t);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn wrong_methods_get_405_and_unknown_paths_404() {
    let h = H::new();
    let a = h.handle(&call(Verb::Get, "/token", vec![], b""));
    assert_eq!(a.status, 405);
    assert!(a.header("allow").is_some_and(|m| m.contains("POST")));
    let a = h.handle(&call(Verb::Post, "/authorize", vec![], b""));
    assert_eq!(a.status, 405);
    let a = h.handle(&call(Verb::Get, "/.portcullis/nothing", vec![], b""));
    assert_eq!(a.status, 404);
}

// ------------------------------------------------- dynamic registration

#[test]
fn dcr_registers_a_public_client_without_nulls_and_echoes_grant_types() {
    let h = H::new();
    let a = h.register(
        [10, 0, 0, 2],
        &json!({
            "client_name": "Cursor",
            "redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback", "http://127.0.0.1/cb"],
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
            "token_endpoint_auth_method": "none",
            "client_uri": null,
            "logo_uri": null,
        }),
    );
    assert_eq!(a.status, 201, "{}", text(&a));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let c = json_of(&a);
    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(a) => a.iter().all(no_nulls),
            Value::Object(o) => o.values().all(no_nulls),
            _ => true,
        }
    }
    assert!(no_nulls(&c), "{c}");
    assert!(c["client_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        c["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(c["token_endpoint_auth_method"], "none");
    assert_eq!(
        c["redirect_uris"],
        json!([
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "http://127.0.0.1/cb"
        ])
    );
    assert!(c.get("client_secret").is_none(), "{c}");
    // Absent grant_types: the defaults, echoed.
    let a = h.register(
        [10, 0, 0, 2],
        &json!({"redirect_uris": ["http://localhost/cb"]}),
    );
    assert_eq!(a.status, 201, "{}", text(&a));
    let c = json_of(&a);
    assert_eq!(
        c["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert!(no_nulls(&c), "{c}");
}

#[test]
fn dcr_clients_use_private_schemes_exactly_and_loopback_on_any_port() {
    let h = H::new();
    let a = h.register(
        [10, 0, 0, 3],
        &json!({"redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback", "http://127.0.0.1/cb"]}),
    );
    assert_eq!(a.status, 201, "{}", text(&a));
    let id = json_of(&a)["client_id"].as_str().unwrap().to_string();
    // Loopback: another port is the same redirect URI.
    let c = h.code(&mut Browser::new(), &id, "http://127.0.0.1:49152/cb", RES_A);
    let t = h.exchange(Auth::Public(&id), &c);
    assert_eq!(t.status, 200, "{}", text(&t));
    // The private-use scheme: exactly.
    let c = h.code(
        &mut Browser::new(),
        &id,
        "cursor://anysphere.cursor-mcp/oauth/callback",
        RES_A,
    );
    assert_eq!(h.exchange(Auth::Public(&id), &c).status, 200);
    let p = pkce();
    for wrong in [
        "cursor://anysphere.cursor-mcp/oauth/callback2",
        "cursor://evil/oauth/callback",
        "http://127.0.0.1:49152/cb/x",
        "http://localhost/cb",
    ] {
        let a = h.handle(&call(
            Verb::Get,
            &AuthReq::new(&id, wrong, &p.challenge).url(),
            vec![],
            b"",
        ));
        assert_page(&a, 400);
    }
}

#[test]
fn dcr_refuses_dangerous_redirects() {
    let h = H::new();
    for bad in [
        "javascript:alert(1)",
        "data:text/html,x",
        "http://evil.example.com/cb",
        "https://app.example.com/cb#frag",
        "not a uri",
    ] {
        let a = h.register([10, 0, 0, 4], &json!({"redirect_uris": [PUB_CB, bad]}));
        assert_oauth_error(&a, 400, "invalid_redirect_uri");
    }
    let a = h.register([10, 0, 0, 4], &json!({"redirect_uris": []}));
    assert_oauth_error(&a, 400, "invalid_redirect_uri");
    // A confidential client may not use a private-use scheme.
    let a = h.register(
        [10, 0, 0, 4],
        &json!({"redirect_uris": ["myapp://cb"], "token_endpoint_auth_method": "client_secret_post"}),
    );
    assert_oauth_error(&a, 400, "invalid_redirect_uri");
}

#[test]
fn dcr_confidential_client_gets_a_secret_that_authenticates_it() {
    let h = H::new();
    let a = h.register(
        [10, 0, 0, 5],
        &json!({"redirect_uris": ["https://app.example.net/cb"], "token_endpoint_auth_method": "client_secret_post", "grant_types": ["authorization_code"]}),
    );
    assert_eq!(a.status, 201, "{}", text(&a));
    let c = json_of(&a);
    let id = c["client_id"].as_str().unwrap().to_string();
    let secret = c["client_secret"]
        .as_str()
        .expect("a client secret")
        .to_string();
    assert!(secret.len() >= 32);
    assert_eq!(c["token_endpoint_auth_method"], "client_secret_post");
    assert_eq!(c["grant_types"], json!(["authorization_code"]));
    let code = h.code(
        &mut Browser::new(),
        &id,
        "https://app.example.net/cb",
        RES_A,
    );
    assert_oauth_error(
        &h.exchange(Auth::Post(&id, "wrong"), &code),
        401,
        "invalid_client",
    );
    assert_oauth_error(&h.exchange(Auth::Public(&id), &code), 401, "invalid_client");
    let t = h.exchange(Auth::Post(&id, &secret), &code);
    assert_eq!(t.status, 200, "{}", text(&t));
    // No refresh_token grant type: no refresh token.
    let t = json_of(&t);
    assert!(t.get("refresh_token").is_none(), "{t}");
    assert!(h.verify(access(&t), RES_A).is_ok());
}

#[test]
fn dcr_is_rate_limited_per_source_address() {
    let h = H::new();
    let body = json!({"redirect_uris": [PUB_CB]});
    // The window is a calendar minute: retry if one ended during the burst.
    for attempt in 0..4u8 {
        let peer = [10, 1, 0, attempt];
        let minute = crate::authz::unix_now() / 60;
        let answers: Vec<Answer> = (0..22).map(|_| h.register(peer, &body)).collect();
        if crate::authz::unix_now() / 60 != minute && attempt < 3 {
            continue;
        }
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert!(statuses[..20].iter().all(|&s| s == 201), "{statuses:?}");
        assert_eq!(statuses[20..], [429, 429], "{statuses:?}");
        assert!(answers[20].header("retry-after").is_some());
        assert_eq!(json_of(&answers[20])["error"], "invalid_request");
        break;
    }
    // Another address is not limited by that one.
    assert_eq!(h.register([10, 2, 0, 1], &body).status, 201);
}

#[test]
fn dcr_refuses_what_is_not_a_json_object() {
    let h = H::new();
    for (ct, body) in [
        ("application/json", &b"redirect_uris=x"[..]),
        ("application/json", b"[1,2]"),
        ("application/json", b""),
        ("application/json", b"{\"redirect_uris\": "),
        (
            "application/x-www-form-urlencoded",
            b"{\"redirect_uris\": [\"http://127.0.0.1/cb\"]}",
        ),
        ("text/plain", b"{}"),
    ] {
        let mut c = call(
            Verb::Post,
            "/register",
            vec![("content-type", ct.into())],
            body,
        );
        c.peer = [10, 0, 0, 6].into();
        let a = h.handle(&c);
        assert_eq!(a.status, 400, "{ct} {body:?}: {}", text(&a));
        assert!(json_of(&a)["error"].is_string(), "{}", text(&a));
    }
    let a = h.register(
        [10, 0, 0, 6],
        &json!({"redirect_uris": "http://127.0.0.1/cb"}),
    );
    assert_eq!(a.status, 400);
    let a = h.register(
        [10, 0, 0, 6],
        &json!({"redirect_uris": [PUB_CB], "token_endpoint_auth_method": "private_key_jwt"}),
    );
    assert_oauth_error(&a, 400, "invalid_client_metadata");
    let a = h.register(
        [10, 0, 0, 6],
        &json!({"redirect_uris": [PUB_CB], "grant_types": ["refresh_token"]}),
    );
    assert_oauth_error(&a, 400, "invalid_client_metadata");
}

// --------------------------------------------------------------- authorize

#[test]
fn a_bad_client_or_redirect_gets_an_error_page_never_a_redirect() {
    let h = H::new();
    let p = pkce();
    for req in [
        AuthReq::new("nobody", PUB_CB, &p.challenge),
        AuthReq::new(PUB, "http://127.0.0.1/elsewhere", &p.challenge),
        AuthReq::new(PUB, "https://evil.example.com/callback", &p.challenge),
        AuthReq::new(PUB, "http://localhost/callback", &p.challenge),
        AuthReq::new(PUB, OTHER_CB, &p.challenge),
        AuthReq::new(CONF, "https://app.example.com/cb/", &p.challenge),
        AuthReq::new(PUB, PUB_CB, &p.challenge).without("redirect_uri"),
        AuthReq::new(PUB, PUB_CB, &p.challenge).without("client_id"),
        // Later problems too, while the client is unknown.
        AuthReq::new("nobody", PUB_CB, &p.challenge).without("code_challenge"),
    ] {
        let a = h.handle(&call(Verb::Get, &req.url(), vec![], b""));
        assert_page(&a, 400);
    }
    // A repeated parameter: not guessed at, and not redirected.
    let url = format!(
        "{}&redirect_uri={}",
        AuthReq::new(PUB, PUB_CB, &p.challenge).url(),
        encode("https://evil.example.com/cb")
    );
    assert_page(&h.handle(&call(Verb::Get, &url, vec![], b"")), 400);
}

#[test]
fn a_loopback_redirect_on_another_port_is_accepted() {
    let h = H::new();
    let cb = "http://127.0.0.1:53127/callback";
    let c = h.code(&mut Browser::new(), PUB, cb, RES_A);
    // The code is bound to the URI as sent, port included.
    let wrong = Code {
        redirect: PUB_CB.into(),
        ..c
    };
    assert_oauth_error(&h.exchange(Auth::Public(PUB), &wrong), 400, "invalid_grant");
    let c = h.code(&mut Browser::new(), PUB, cb, RES_A);
    assert_eq!(h.exchange(Auth::Public(PUB), &c).status, 200);
}

#[test]
fn pkce_s256_is_required() {
    let h = H::new();
    let p = pkce();
    let base = AuthReq::new(PUB, PUB_CB, &p.challenge);
    for req in [
        base.clone().without("code_challenge"),
        base.clone()
            .without("code_challenge")
            .without("code_challenge_method"),
        base.clone().set("code_challenge_method", "plain"),
        base.clone().without("code_challenge_method"),
        base.clone().set("code_challenge_method", "s256"),
        base.clone().set("code_challenge", "too-short"),
        base.clone().set("code_challenge", &"a".repeat(129)),
        base.clone()
            .set("code_challenge", &format!("{}+/=", &p.challenge[..40])),
    ] {
        let a = h.handle(&call(Verb::Get, &req.url(), vec![], b""));
        assert_redirect_error(&a, PUB_CB, "invalid_request");
    }
    let a = h.handle(&call(
        Verb::Get,
        &base.clone().set("response_type", "token").url(),
        vec![],
        b"",
    ));
    assert_redirect_error(&a, PUB_CB, "unsupported_response_type");
    // The valid request goes on to portcullis's own pages.
    let a = h.handle(&call(Verb::Get, &base.url(), vec![], b""));
    assert_eq!(a.status, 302);
    assert!(a
        .header("location")
        .unwrap()
        .starts_with(&format!("{ISS}/.portcullis/")));
}

#[test]
fn resource_is_required_when_ambiguous_canonicalised_and_checked() {
    let h = H::new();
    let p = pkce();
    let base = AuthReq::new(PUB, PUB_CB, &p.challenge);
    for req in [
        base.clone().without("resource"),
        base.clone().set("resource", "http://127.0.0.1:8080/c"),
        base.clone().set("resource", "http://127.0.0.1:8080/a/sub"),
        base.clone().set("resource", "http://127.0.0.1:8080/a#x"),
        base.clone().set("resource", "http://127.0.0.1:9000/mcp"),
        base.clone().set("resource", "https://127.0.0.1:8080/a"),
        base.clone().set("resource", "urn:a"),
        base.clone().set("resource", "a"),
    ] {
        let a = h.handle(&call(Verb::Get, &req.url(), vec![], b""));
        assert_redirect_error(&a, PUB_CB, "invalid_target");
    }
    // Trailing slash, upper case: the same resources; tokens name the route.
    for (sent, aud, other) in [
        ("http://127.0.0.1:8080/a/", RES_A, RES_B),
        ("HTTP://127.0.0.1:8080/a", RES_A, RES_B),
        ("http://LOCALHOST:8080/b/", RES_B, RES_A),
    ] {
        let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, sent);
        let p = h
            .verify(access(&t), aud)
            .unwrap_or_else(|e| panic!("{sent}: {e:?}"));
        assert_eq!(p.claims["aud"], aud);
        assert_eq!(
            h.verify(access(&t), other).unwrap_err(),
            AuthError::WrongAudience
        );
    }
}

// -------------------------------------------------------- login, consent

#[test]
fn the_browser_flow_delivers_code_state_and_iss() {
    let h = H::new();
    let mut b = Browser::new();
    let c = h.code(&mut b, PUB, PUB_CB, RES_A);
    assert_eq!(b.shown, ["login", "consent"]);
    assert_eq!(c.code.len(), 43);
    // Every cookie: __Host-, Secure, HttpOnly, SameSite=Lax, Path=/.
    assert!(!b.set_cookies.is_empty());
    for sc in &b.set_cookies {
        assert!(sc.starts_with("__Host-"), "{sc}");
        let attrs: Vec<String> = sc
            .split(';')
            .skip(1)
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        for want in ["secure", "httponly", "samesite=lax", "path=/"] {
            assert!(attrs.iter().any(|a| a == want), "{want} in {sc}");
        }
        assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{sc}");
    }
    // The same browser, another client: logged in already, asked to consent.
    h.code(&mut b, OTHER, OTHER_CB, RES_A);
    assert_eq!(b.shown, ["consent"]);
}

#[test]
fn the_consent_page_names_client_redirect_and_server_and_cannot_be_framed() {
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let (page, _, _) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge));
    let html = text(&page);
    assert!(html.contains("Public CLI"), "{html}");
    assert!(html.contains(PUB_CB), "{html}");
    // It also has a private-use redirect URI: not loopback-only.
    assert!(!html.contains("loopback-warning"), "{html}");
    assert!(html.contains(RES_A) && html.contains("mcp"), "{html}");
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    // A self-registered client: named as unverified, its name escaped, and
    // a warning when it only receives codes on loopback.
    let a = h.register(
        [10, 0, 0, 8],
        &json!({"client_name": "<script>alert(1)</script>", "redirect_uris": ["http://localhost/cb"]}),
    );
    let id = json_of(&a)["client_id"].as_str().unwrap().to_string();
    let (page, _, _) = b.reach_consent(
        &h,
        &AuthReq::new(&id, "http://localhost:3000/cb", &p.challenge),
    );
    let html = text(&page);
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("unverified"), "{html}");
    assert!(html.contains("loopback-warning"), "{html}");
    assert!(html.contains("http://localhost:3000/cb"), "{html}");
}

#[test]
fn the_login_form_needs_its_csrf_token() {
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let a = b.get(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge).url());
    let a = b.get(&h, a.header("location").unwrap());
    let a = b.get(&h, a.header("location").unwrap());
    let html = text(&a);
    assert!(html.contains("action=\"/.portcullis/login\""), "{html}");
    let tx = hidden(&html, "tx");
    for fields in [
        vec![("tx", tx.as_str()), ("user", "alice")],
        vec![("tx", tx.as_str()), ("csrf", "forged"), ("user", "alice")],
    ] {
        let r = b.post(&h, "/.portcullis/login", ISS, &form(&fields));
        assert_page(&r, 403);
        assert!(b.cookie("__Host-portcullis-session").is_none());
    }
    let csrf = hidden(&html, "csrf");
    let r = b.post(
        &h,
        "/.portcullis/login",
        ISS,
        &form(&[("tx", &tx), ("csrf", &csrf), ("user", "mallory")]),
    );
    assert_page(&r, 400);
    assert!(b.cookie("__Host-portcullis-session").is_none());
}

#[test]
fn consent_without_csrf_is_refused() {
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let (_, tx, _) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge));
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx), ("decision", "allow")]),
    );
    assert_page(&a, 403);
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx), ("csrf", ""), ("decision", "allow")]),
    );
    assert_page(&a, 403);
}

#[test]
fn consent_with_the_csrf_of_another_render_is_refused() {
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let req = AuthReq::new(PUB, PUB_CB, &p.challenge);
    let (_, tx1, csrf1) = b.reach_consent(&h, &req);
    // The same page rendered again (the cookie now holds the second nonce).
    let (_, tx2, csrf2) = b.reach_consent(&h, &req);
    assert_ne!(csrf1, csrf2);
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx1), ("csrf", &csrf1), ("decision", "allow")]),
    );
    assert_page(&a, 403);
    // The current render's works.
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx2), ("csrf", &csrf2), ("decision", "allow")]),
    );
    assert_eq!(a.status, 302, "{}", text(&a));
    assert!(a
        .header("location")
        .unwrap()
        .starts_with(&format!("{PUB_CB}?code=")));
}

#[test]
fn consent_cookie_of_another_client_is_refused() {
    let h = H::new();
    let mut b = Browser::new();
    let (p, q) = (pkce(), pkce());
    let (_, tx_pub, _) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge));
    // The consent page of another client: its cookie and csrf (consistent
    // with each other) replace the first ones.
    let (_, _, csrf_other) = b.reach_consent(&h, &AuthReq::new(OTHER, OTHER_CB, &q.challenge));
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[
            ("tx", &tx_pub),
            ("csrf", &csrf_other),
            ("decision", "allow"),
        ]),
    );
    assert_page(&a, 403);
    // The same client with another redirect URI is another binding too.
    let r = pkce();
    let (_, tx_app, _) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_APP_CB, &r.challenge));
    let (_, _, csrf_cb) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &r.challenge));
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx_app), ("csrf", &csrf_cb), ("decision", "allow")]),
    );
    assert_page(&a, 403);
}

#[test]
fn consent_cookie_of_another_user_is_refused() {
    let h = H::new();
    let p = pkce();
    let req = AuthReq::new(PUB, PUB_CB, &p.challenge);
    let mut alice = Browser::new();
    let (_, tx, csrf) = alice.reach_consent(&h, &req);
    let mut bob = Browser::new();
    bob.user = "bob";
    bob.reach_consent(&h, &req);
    // Bob's session with Alice's consent form and cookie.
    let consent = alice
        .cookie("__Host-portcullis-consent")
        .unwrap()
        .to_string();
    bob.set_cookie("__Host-portcullis-consent", &consent);
    let a = bob.post(
        &h,
        "/.portcullis/consent",
        ISS,
        &form(&[("tx", &tx), ("csrf", &csrf), ("decision", "allow")]),
    );
    assert_page(&a, 403);
}

#[test]
fn consent_from_a_foreign_origin_is_refused() {
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let (_, tx, csrf) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge));
    let body = form(&[("tx", &tx), ("csrf", &csrf), ("decision", "allow")]);
    for origin in [
        "https://evil.example.com",
        "http://127.0.0.1:8081",
        "http://localhost:8080",
    ] {
        let a = b.post(&h, "/.portcullis/consent", origin, &body);
        assert_page(&a, 403);
    }
    let a = b.post(&h, "/.portcullis/consent", ISS, &body);
    assert_eq!(a.status, 302, "{}", text(&a));
}

#[test]
fn a_browser_posting_the_consent_form_is_accepted() {
    // What a real browser sends: the Origin its referrer policy allows
    // (Chromium sends `Origin: null` from a `no-referrer` page).
    let h = H::new();
    let mut b = Browser::new();
    let p = pkce();
    let (page, tx, csrf) = b.reach_consent(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge));
    let a = b.submit(
        &h,
        &page,
        "/.portcullis/consent",
        &[("tx", &tx), ("csrf", &csrf), ("decision", "allow")],
    );
    assert_eq!(a.status, 302, "{}", text(&a));
    assert!(a
        .header("location")
        .unwrap()
        .starts_with(&format!("{PUB_CB}?code=")));
}

#[test]
fn consent_denied_goes_back_with_access_denied_state_and_iss() {
    let h = H::new();
    let mut b = Browser::new();
    b.decision = "deny";
    let p = pkce();
    let loc = b
        .walk(&h, &AuthReq::new(PUB, PUB_CB, &p.challenge).url())
        .location();
    let params = params_of(&loc);
    assert!(loc.starts_with(&format!("{PUB_CB}?")), "{loc}");
    assert_eq!(params.get("error"), Some("access_denied"));
    assert_eq!(params.get("state"), Some(STATE));
    assert_eq!(params.get("iss"), Some(ISS));
    assert_eq!(params.get("code"), None);
    // Nothing was remembered: asked again.
    b.decision = "allow";
    h.code(&mut b, PUB, PUB_CB, RES_A);
    assert_eq!(b.shown, ["consent"]);
}

#[test]
fn a_remembered_consent_skips_the_page_and_prompt_consent_asks_again() {
    let h = H::new();
    let mut b = Browser::new();
    h.code(&mut b, PUB, PUB_CB, RES_A);
    assert_eq!(b.shown, ["login", "consent"]);
    // Remembered per (user, client, redirect URI).
    let c = h.code(&mut b, PUB, PUB_CB, RES_A);
    assert!(b.shown.is_empty(), "{:?}", b.shown);
    assert_eq!(h.exchange(Auth::Public(PUB), &c).status, 200);
    // prompt=consent asks again.
    let p = pkce();
    let req = AuthReq::new(PUB, PUB_CB, &p.challenge).set("prompt", "consent");
    let loc = b.walk(&h, &req.url()).location();
    assert_eq!(b.shown, ["consent"]);
    assert!(params_of(&loc).get("code").is_some());
    // Another redirect URI of the same client is another consent.
    h.code(&mut b, PUB, PUB_APP_CB, RES_A);
    assert_eq!(b.shown, ["consent"]);
    // Another user in another browser is asked.
    let mut bob = Browser::new();
    bob.user = "bob";
    h.code(&mut bob, PUB, PUB_CB, RES_A);
    assert_eq!(bob.shown, ["login", "consent"]);
}

#[test]
fn a_remembered_consent_is_for_its_mcp_server_only() {
    // The page names the MCP server: consent to one route is not consent to
    // another, whatever their scopes (route b's include route a's).
    let h = H::new();
    let mut b = Browser::new();
    h.code(&mut b, PUB, PUB_CB, RES_B);
    assert_eq!(b.shown, ["login", "consent"]);
    h.code(&mut b, PUB, PUB_CB, RES_A);
    assert_eq!(b.shown, ["consent"]);
    // Remembered for that one (the store keeps one consent per user, client
    // and redirect URI: the latest).
    h.code(&mut b, PUB, PUB_CB, RES_A);
    assert!(b.shown.is_empty(), "{:?}", b.shown);
}

#[test]
fn an_expired_or_forged_transaction_is_an_error_page() {
    let h = H::new();
    let mut b = Browser::new();
    h.code(&mut b, PUB, PUB_CB, RES_A);
    for target in [
        "/.portcullis/consent",
        "/.portcullis/consent?tx=",
        "/.portcullis/consent?tx=AAAA",
        "/.portcullis/login?tx=AAAA",
    ] {
        let a = b.get(&h, target);
        assert_page(&a, 400);
    }
    let a = b.post(
        &h,
        "/.portcullis/consent",
        ISS,
        "tx=AAAA&csrf=x&decision=allow",
    );
    assert_page(&a, 400);
}

// ------------------------------------------------------------------ token

#[test]
fn a_code_is_exchanged_for_tokens() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let a = h.exchange(Auth::Public(PUB), &c);
    assert_eq!(a.status, 200, "{}", text(&a));
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let t = json_of(&a);
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["scope"], "mcp");
    assert!(
        t["refresh_token"].as_str().is_some_and(|r| r.len() >= 32),
        "{t}"
    );
    let p = h.verify(access(&t), RES_A).unwrap();
    assert_eq!(p.sub, "alice");
    assert_eq!(p.email.as_deref(), Some("alice@example.com"));
    assert_eq!(p.groups, ["eng"]);
    assert_eq!(p.client_id.as_deref(), Some(PUB));
    assert_eq!(p.scopes, ["mcp"]);
    assert_eq!(p.issuer, ISS);
    assert_eq!(p.claims["aud"], RES_A);
    // Bound to its route only.
    assert_eq!(
        h.verify(access(&t), RES_B).unwrap_err(),
        AuthError::WrongAudience
    );
    // The other route's scopes for a token of that route; per-client TTL.
    let t = h.tokens(Auth::Basic(CONF, CONF_SECRET), CONF, CONF_CB, RES_B);
    assert_eq!(t["scope"], "mcp admin");
    assert_eq!(t["expires_in"], 600);
    assert!(t.get("refresh_token").is_some());
    assert_eq!(h.verify(access(&t), RES_B).unwrap().claims["aud"], RES_B);
    assert_eq!(
        h.verify(access(&t), RES_A).unwrap_err(),
        AuthError::WrongAudience
    );
}

#[test]
fn a_wrong_verifier_is_invalid_grant() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let wrong = Code {
        verifier: pkce().verifier,
        code: c.code.clone(),
        redirect: c.redirect.clone(),
    };
    assert_oauth_error(&h.exchange(Auth::Public(PUB), &wrong), 400, "invalid_grant");
    // A verifier of the wrong length, or none.
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let short = Code {
        verifier: "short".into(),
        code: c.code.clone(),
        redirect: c.redirect.clone(),
    };
    assert_oauth_error(
        &h.exchange(Auth::Public(PUB), &short),
        400,
        "invalid_request",
    );
    let a = h.post(
        "/token",
        Auth::Public(PUB),
        &[
            ("grant_type", "authorization_code"),
            ("code", &c.code),
            ("redirect_uri", &c.redirect),
        ],
    );
    assert_oauth_error(&a, 400, "invalid_request");
    // The verifier whose challenge it is still works then.
    assert_eq!(h.exchange(Auth::Public(PUB), &c).status, 200);
}

#[test]
fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let first = h.exchange(Auth::Public(PUB), &c);
    assert_eq!(first.status, 200);
    let t = json_of(&first);
    assert!(h.verify(access(&t), RES_A).is_ok());
    assert_oauth_error(&h.exchange(Auth::Public(PUB), &c), 400, "invalid_grant");
    assert_eq!(h.verify(access(&t), RES_A).unwrap_err(), AuthError::Revoked);
    assert_oauth_error(
        &h.refresh(Auth::Public(PUB), refresh_token(&t)),
        400,
        "invalid_grant",
    );
    // Unknown codes are just unknown.
    let unknown = Code {
        code: "x".repeat(43),
        ..c
    };
    assert_oauth_error(
        &h.exchange(Auth::Public(PUB), &unknown),
        400,
        "invalid_grant",
    );
}

#[test]
fn a_code_of_one_client_is_refused_to_another() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    // Another public client, claiming the first one's redirect URI.
    assert_oauth_error(&h.exchange(Auth::Public(OTHER), &c), 400, "invalid_grant");
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    assert_oauth_error(
        &h.exchange(Auth::Basic(CONF, CONF_SECRET), &c),
        400,
        "invalid_grant",
    );
}

#[test]
fn a_redirect_uri_other_than_the_authorization_requests_is_refused() {
    let h = H::new();
    for other in [
        PUB_APP_CB,
        "http://127.0.0.1/callback/",
        "http://127.0.0.1:80/callback",
        "http://127.0.0.1:53127/callback",
    ] {
        let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
        let wrong = Code {
            redirect: other.into(),
            ..c
        };
        assert_oauth_error(&h.exchange(Auth::Public(PUB), &wrong), 400, "invalid_grant");
    }
}

#[test]
fn an_oauth_2_1_client_may_leave_redirect_uri_out_of_the_token_request() {
    // OAuth 2.1 §10.2: PKCE binds the code; the parameter was removed.
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let a = h.post(
        "/token",
        Auth::Public(PUB),
        &[
            ("grant_type", "authorization_code"),
            ("code", &c.code),
            ("code_verifier", &c.verifier),
        ],
    );
    assert_eq!(a.status, 200, "{}", text(&a));
    assert!(h.verify(access(&json_of(&a)), RES_A).is_ok());
}

#[test]
fn a_resource_other_than_the_grants_is_invalid_target_and_a_bad_one_keeps_the_code() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let with = |resource: &str| {
        h.post(
            "/token",
            Auth::Public(PUB),
            &[
                ("grant_type", "authorization_code"),
                ("code", &c.code),
                ("redirect_uri", &c.redirect),
                ("code_verifier", &c.verifier),
                ("resource", resource),
            ],
        )
    };
    for bad in [
        "http://127.0.0.1:8080/nothing",
        "http://127.0.0.1:8080/a#f",
        "not a uri",
    ] {
        assert_oauth_error(&with(bad), 400, "invalid_target");
    }
    // The code was not used up by those: the right resource still gets it.
    let a = with("http://127.0.0.1:8080/a/");
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(
        h.verify(access(&json_of(&a)), RES_A).unwrap().claims["aud"],
        RES_A
    );
    // The other route's resource: not this code's.
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let a = h.post(
        "/token",
        Auth::Public(PUB),
        &[
            ("grant_type", "authorization_code"),
            ("code", &c.code),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &c.verifier),
            ("resource", RES_B),
        ],
    );
    assert_oauth_error(&a, 400, "invalid_target");
}

#[test]
fn unknown_clients_and_bad_credentials_are_401_invalid_client() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), CONF, CONF_CB, RES_A);
    for auth in [
        Auth::Public("nobody"),
        Auth::Basic("nobody", "x"),
        Auth::Post(CONF, "wrong"),
        Auth::Basic(CONF, "wrong"),
        Auth::Basic(CONF, &CONF_SECRET[..CONF_SECRET.len() - 1]),
        Auth::Public(CONF),
        // A public client sending a secret.
        Auth::Post(PUB, "anything"),
        Auth::Basic(PUB, "anything"),
    ] {
        let a = h.exchange(auth, &c);
        assert_oauth_error(&a, 401, "invalid_client");
        assert!(
            a.header("www-authenticate")
                .is_some_and(|w| w.starts_with("Basic")),
            "{:?}",
            a.headers
        );
    }
    // No client at all.
    let a = h.post(
        "/token",
        Auth::Basic("", ""),
        &[("grant_type", "authorization_code")],
    );
    assert_oauth_error(&a, 401, "invalid_client");
    // Two methods at once.
    let mut p = vec![
        ("grant_type", "authorization_code"),
        ("code", c.code.as_str()),
        ("redirect_uri", CONF_CB),
        ("code_verifier", c.verifier.as_str()),
        ("client_secret", CONF_SECRET),
    ];
    let a = h.post("/token", Auth::Basic(CONF, CONF_SECRET), &p);
    assert_oauth_error(&a, 401, "invalid_client");
    // None of those used the code up.
    p.pop();
    let a = h.post("/token", Auth::Post(CONF, CONF_SECRET), &p);
    assert_eq!(a.status, 200, "{}", text(&a));
}

#[test]
fn confidential_clients_authenticate_with_basic_or_post() {
    let h = H::new();
    for auth in [
        Auth::Basic(CONF, CONF_SECRET),
        Auth::Post(CONF, CONF_SECRET),
    ] {
        let t = h.tokens(auth, CONF, CONF_CB, RES_A);
        let p = h.verify(access(&t), RES_A).unwrap();
        assert_eq!(p.client_id.as_deref(), Some(CONF));
        let r = h.refresh(auth, refresh_token(&t));
        assert_eq!(r.status, 200, "{}", text(&r));
    }
}

#[test]
fn malformed_token_requests_are_invalid_request() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let good = form(&[
        ("grant_type", "authorization_code"),
        ("code", &c.code),
        ("redirect_uri", &c.redirect),
        ("code_verifier", &c.verifier),
        ("client_id", PUB),
    ]);
    let send = |ct: &str, target: &str, body: &str| {
        h.handle(&call(
            Verb::Post,
            target,
            vec![("content-type", ct.into())],
            body.as_bytes(),
        ))
    };
    const FORM: &str = "application/x-www-form-urlencoded";
    // A repeated parameter.
    let a = send(FORM, "/token", &format!("{good}&code=other"));
    assert_oauth_error(&a, 400, "invalid_request");
    let a = send(FORM, "/token", &format!("{good}&client_id={OTHER}"));
    assert_oauth_error(&a, 400, "invalid_request");
    // Not a form.
    for ct in [
        "application/json",
        "text/plain",
        "",
        "multipart/form-data; boundary=x",
    ] {
        let a = send(ct, "/token", &good);
        assert_eq!(a.status, 400, "{ct}");
        assert_eq!(json_of(&a)["error"], "invalid_request");
    }
    let a = send(FORM, "/token", "code=%zz");
    assert_oauth_error(&a, 400, "invalid_request");
    // Parameters in the query.
    let a = send(FORM, &format!("/token?code={}", c.code), &good);
    assert_oauth_error(&a, 400, "invalid_request");
    // Grant types.
    for (gt, want) in [
        ("client_credentials", "unsupported_grant_type"),
        ("password", "unsupported_grant_type"),
        (
            "urn:ietf:params:oauth:grant-type:device_code",
            "unsupported_grant_type",
        ),
    ] {
        let a = h.post("/token", Auth::Public(PUB), &[("grant_type", gt)]);
        assert_oauth_error(&a, 400, want);
    }
    let a = h.post("/token", Auth::Public(PUB), &[("code", &c.code)]);
    assert_oauth_error(&a, 400, "invalid_request");
    // The content type with a charset is fine; the code is still good.
    let a = send(
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        "/token",
        &good,
    );
    assert_eq!(a.status, 200, "{}", text(&a));
}

// ---------------------------------------------------------------- refresh

#[test]
fn refresh_tokens_rotate_and_the_previous_one_gets_a_grace_window() {
    let h = H::new();
    let t0 = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let rt0 = refresh_token(&t0);
    let a = h.refresh(Auth::Public(PUB), rt0);
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let t1 = json_of(&a);
    let rt1 = refresh_token(&t1);
    assert_ne!(rt0, rt1);
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["scope"], "mcp");
    assert!(t1["expires_in"].as_i64().is_some_and(|e| e > 0));
    assert_eq!(h.verify(access(&t1), RES_A).unwrap().sub, "alice");
    // The one just replaced, within the grace window: an access token only.
    let a = h.refresh(Auth::Public(PUB), rt0);
    assert_eq!(a.status, 200, "{}", text(&a));
    let g = json_of(&a);
    assert!(g.get("refresh_token").is_none(), "{g}");
    assert!(h.verify(access(&g), RES_A).is_ok());
    // The current one still rotates.
    let t2 = json_of(&h.refresh(Auth::Public(PUB), rt1));
    assert_ne!(refresh_token(&t2), rt1);
    // Unknown refresh tokens, or none.
    assert_oauth_error(
        &h.refresh(Auth::Public(PUB), &"x".repeat(43)),
        400,
        "invalid_grant",
    );
    let a = h.post(
        "/token",
        Auth::Public(PUB),
        &[("grant_type", "refresh_token")],
    );
    assert_oauth_error(&a, 400, "invalid_request");
}

#[test]
fn a_refresh_token_reused_after_its_grace_window_revokes_the_whole_grant() {
    let mut h = H::new();
    let t0 = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let rt0 = refresh_token(&t0).to_string();
    let t1 = json_of(&h.refresh(Auth::Public(PUB), &rt0));
    let rt1 = refresh_token(&t1).to_string();
    let t2 = json_of(&h.refresh(Auth::Public(PUB), &rt1));
    let rt2 = refresh_token(&t2).to_string();
    // An older one than the just-replaced one is reuse even within the window.
    assert_oauth_error(&h.refresh(Auth::Public(PUB), &rt0), 400, "invalid_grant");
    for t in [&t0, &t1, &t2] {
        assert_eq!(h.verify(access(t), RES_A).unwrap_err(), AuthError::Revoked);
    }
    assert_oauth_error(&h.refresh(Auth::Public(PUB), &rt2), 400, "invalid_grant");
    // The grace window over (no sleep: a zero window).
    let t0 = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let rt0 = refresh_token(&t0).to_string();
    let t1 = json_of(&h.refresh(Auth::Public(PUB), &rt0));
    let rt1 = refresh_token(&t1).to_string();
    h.s.refresh_grace = 0;
    assert_oauth_error(&h.refresh(Auth::Public(PUB), &rt0), 400, "invalid_grant");
    assert_oauth_error(&h.refresh(Auth::Public(PUB), &rt1), 400, "invalid_grant");
    assert_eq!(
        h.verify(access(&t0), RES_A).unwrap_err(),
        AuthError::Revoked
    );
    assert_eq!(
        h.verify(access(&t1), RES_A).unwrap_err(),
        AuthError::Revoked
    );
    // Other grants of the same user and client live on.
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    assert!(h.verify(access(&t), RES_A).is_ok());
    assert_eq!(h.refresh(Auth::Public(PUB), refresh_token(&t)).status, 200);
}

#[test]
fn a_refresh_token_presented_by_another_client_is_refused() {
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    assert_oauth_error(
        &h.refresh(Auth::Public(OTHER), refresh_token(&t)),
        400,
        "invalid_grant",
    );
    // Stolen: the grant is revoked.
    assert_eq!(h.verify(access(&t), RES_A).unwrap_err(), AuthError::Revoked);
}

#[test]
fn a_refresh_for_another_resource_is_refused_and_changes_nothing() {
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let rt = refresh_token(&t);
    for resource in [RES_B, "http://127.0.0.1:8080/nothing"] {
        let a = h.post(
            "/token",
            Auth::Public(PUB),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("resource", resource),
            ],
        );
        assert_oauth_error(&a, 400, "invalid_target");
    }
    // The refused requests rotated nothing: the token is still current.
    let a = h.post(
        "/token",
        Auth::Public(PUB),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("resource", "http://127.0.0.1:8080/a/"),
        ],
    );
    assert_eq!(a.status, 200, "{}", text(&a));
    let t1 = json_of(&a);
    assert!(
        t1.get("refresh_token").is_some(),
        "rotated, not a grace answer: {t1}"
    );
    assert_eq!(h.verify(access(&t1), RES_A).unwrap().claims["aud"], RES_A);
}

#[test]
fn a_client_without_the_refresh_token_grant_type_gets_no_refresh_token() {
    let h = H::new();
    let a = h.register(
        [10, 0, 0, 7],
        &json!({"redirect_uris": [PUB_CB], "grant_types": ["authorization_code"]}),
    );
    assert_eq!(a.status, 201, "{}", text(&a));
    let id = json_of(&a)["client_id"].as_str().unwrap().to_string();
    let t = h.tokens(Auth::Public(&id), &id, PUB_CB, RES_A);
    assert!(t.get("refresh_token").is_none(), "{t}");
    assert!(
        t["expires_in"].as_i64().is_some() && t["scope"] == "mcp",
        "{t}"
    );
}

#[test]
fn parallel_refreshes_of_one_token_rotate_it_once_and_keep_the_grant() {
    // Parallel sessions of one client racing a refresh (Claude Code).
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let rt = refresh_token(&t).to_string();
    let answers: Vec<Answer> = std::thread::scope(|sc| {
        let racers: Vec<_> = (0..6)
            .map(|_| sc.spawn(|| h.refresh(Auth::Public(PUB), &rt)))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let bodies: Vec<Value> = answers.iter().map(json_of).collect();
    assert!(answers.iter().all(|a| a.status == 200), "{bodies:?}");
    let rotated: Vec<&Value> = bodies
        .iter()
        .filter(|b| b.get("refresh_token").is_some())
        .collect();
    assert_eq!(rotated.len(), 1, "{bodies:?}");
    for b in &bodies {
        assert!(h.verify(access(b), RES_A).is_ok());
    }
    assert!(h.verify(access(&t), RES_A).is_ok());
    let next = h.refresh(Auth::Public(PUB), refresh_token(rotated[0]));
    assert_eq!(next.status, 200, "{}", text(&next));
    assert!(json_of(&next).get("refresh_token").is_some());
}

#[test]
fn parallel_redemptions_of_one_code_issue_at_most_once_and_revoke_it() {
    let h = H::new();
    let c = h.code(&mut Browser::new(), PUB, PUB_CB, RES_A);
    let answers: Vec<Answer> = std::thread::scope(|sc| {
        let racers: Vec<_> = (0..6)
            .map(|_| sc.spawn(|| h.exchange(Auth::Public(PUB), &c)))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(won.len() <= 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_oauth_error(a, 400, "invalid_grant");
    }
    // Whatever was issued from the replayed code is revoked.
    for a in won {
        assert_eq!(
            h.verify(access(&json_of(a)), RES_A).unwrap_err(),
            AuthError::Revoked
        );
    }
    let grants = h.server.store().grants(None, None).unwrap();
    assert!(
        !grants.is_empty() && grants.iter().all(|g| g.revoked),
        "{grants:?}"
    );
}

// ----------------------------------------------------------------- revoke

#[test]
fn revoking_a_refresh_token_revokes_the_grant() {
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let other = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let a = h.post(
        "/revoke",
        Auth::Public(PUB),
        &[
            ("token", refresh_token(&t)),
            ("token_type_hint", "refresh_token"),
        ],
    );
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(h.verify(access(&t), RES_A).unwrap_err(), AuthError::Revoked);
    assert_oauth_error(
        &h.refresh(Auth::Public(PUB), refresh_token(&t)),
        400,
        "invalid_grant",
    );
    // Only that grant.
    assert!(h.verify(access(&other), RES_A).is_ok());
    assert_eq!(
        h.refresh(Auth::Public(PUB), refresh_token(&other)).status,
        200
    );
    // Again: still 200.
    let a = h.post(
        "/revoke",
        Auth::Public(PUB),
        &[("token", refresh_token(&t))],
    );
    assert_eq!(a.status, 200);
}

#[test]
fn revoking_an_access_token_revokes_the_grant() {
    let h = H::new();
    let t = h.tokens(Auth::Basic(CONF, CONF_SECRET), CONF, CONF_CB, RES_B);
    let a = h.post(
        "/revoke",
        Auth::Basic(CONF, CONF_SECRET),
        &[("token", access(&t)), ("token_type_hint", "access_token")],
    );
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(h.verify(access(&t), RES_B).unwrap_err(), AuthError::Revoked);
    assert_oauth_error(
        &h.refresh(Auth::Basic(CONF, CONF_SECRET), refresh_token(&t)),
        400,
        "invalid_grant",
    );
}

#[test]
fn revoking_another_clients_token_does_nothing() {
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    for token in [refresh_token(&t), access(&t)] {
        let a = h.post(
            "/revoke",
            Auth::Basic(CONF, CONF_SECRET),
            &[("token", token)],
        );
        assert_eq!(a.status, 200, "{}", text(&a));
        let a = h.post("/revoke", Auth::Public(OTHER), &[("token", token)]);
        assert_eq!(a.status, 200, "{}", text(&a));
    }
    assert!(h.verify(access(&t), RES_A).is_ok());
    assert_eq!(h.refresh(Auth::Public(PUB), refresh_token(&t)).status, 200);
}

#[test]
fn revoking_an_unknown_token_is_200_but_clients_must_authenticate() {
    let h = H::new();
    for token in ["nothing", &"x".repeat(43), "a.b.c"] {
        let a = h.post("/revoke", Auth::Public(PUB), &[("token", token)]);
        assert_eq!(a.status, 200, "{}", text(&a));
    }
    let a = h.post("/revoke", Auth::Public(PUB), &[]);
    assert_oauth_error(&a, 400, "invalid_request");
    let a = h.post("/revoke", Auth::Basic(CONF, "wrong"), &[("token", "x")]);
    assert_oauth_error(&a, 401, "invalid_client");
    let a = h.post("/revoke", Auth::Public("nobody"), &[("token", "x")]);
    assert_oauth_error(&a, 401, "invalid_client");
}

// ------------------------------------------------------- audit, sweeping

#[test]
fn audit_records_name_every_step_and_never_a_secret() {
    let h = H::new();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&lines);
    let set = h.server.audit.set(Box::new(move |line: Vec<u8>| {
        sink.lock().unwrap().extend_from_slice(&line);
    }));
    assert!(set.is_ok());
    let reg = json_of(&h.register(
        [10, 0, 0, 9],
        &json!({"redirect_uris": [CONF_CB], "token_endpoint_auth_method": "client_secret_basic"}),
    ));
    let (id, secret) = (
        reg["client_id"].as_str().unwrap(),
        reg["client_secret"].as_str().unwrap(),
    );
    let c = h.code(&mut Browser::new(), id, CONF_CB, RES_A);
    let t = json_of(&h.exchange(Auth::Basic(id, secret), &c));
    let r = json_of(&h.refresh(Auth::Basic(id, secret), refresh_token(&t)));
    h.exchange(Auth::Basic(id, secret), &c); // replayed
    h.post(
        "/revoke",
        Auth::Basic(id, secret),
        &[("token", refresh_token(&r))],
    );
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    for want in [
        "client.registered",
        "user.login",
        "consent.given",
        "code.issued",
        "token.issued",
        "token.refreshed",
        "code.replayed",
        "grant.revoked",
    ] {
        assert!(events.contains(&want), "{want} in {events:?}");
    }
    for secret in [
        secret,
        &c.code,
        &c.verifier,
        access(&t),
        refresh_token(&t),
        access(&r),
        refresh_token(&r),
    ] {
        assert!(!text.contains(secret), "a secret in the audit log: {text}");
    }
    // Digests of them neither (what the store keeps).
    for secret in [&c.code, refresh_token(&t)] {
        let digest = super::seal::hash(secret);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&b64) && !text.contains(&hex), "{text}");
    }
}

#[test]
fn sweeping_keeps_what_is_live() {
    let h = H::new();
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let a = h.register([10, 0, 0, 10], &json!({"redirect_uris": [PUB_CB]}));
    let id = json_of(&a)["client_id"].as_str().unwrap().to_string();
    let mut b = Browser::new();
    h.code(&mut b, PUB, PUB_CB, RES_A);
    h.server.sweep().unwrap();
    assert_eq!(h.refresh(Auth::Public(PUB), refresh_token(&t)).status, 200);
    h.code(&mut b, &id, PUB_CB, RES_A);
    // The consent given before the sweep is still remembered.
    h.code(&mut b, PUB, PUB_CB, RES_A);
    assert!(b.shown.is_empty(), "{:?}", b.shown);
}

// ------------------------------------------------------------- bad input

/// xorshift64*: reproducible garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const NAMES: [&str; 24] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "code_challenge",
    "code_challenge_method",
    "state",
    "resource",
    "scope",
    "prompt",
    "tx",
    "csrf",
    "user",
    "decision",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_secret",
    "token",
    "token_type_hint",
    "redirect_uris",
    "x",
    "",
    "%",
];

const ATOMS: [&str; 40] = [
    "",
    "%",
    "%zz",
    "%ff%fe",
    "%00",
    "%C3%28",
    "+",
    "&&&",
    "==",
    "a=b=c",
    "\u{202e}é\u{0}",
    "http://[",
    "http://[::1",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:8080/a#f",
    "http://u@127.0.0.1:8080/a",
    "HTTP://LOCALHOST:8080/b/",
    "javascript:alert(1)",
    "cursor://",
    ":",
    "//",
    "pub-cli",
    "conf-app",
    "other-cli",
    "https://claude.ai/x",
    "authorization_code",
    "refresh_token",
    "S256",
    "plain",
    "code",
    "allow",
    "deny",
    "alice",
    "consent login",
    "null",
    "[]",
    "{}",
    "http://127.0.0.1/callback",
    "http://127.0.0.1:1/callback",
    "com.example.app:/cb",
];

/// A garbage value: an atom, random bytes (encoded or raw), a huge run,
/// or a real value seen in this test (a code, a token, a challenge).
fn garbage(rng: &mut Rng, real: &[String]) -> String {
    match rng.below(8) {
        0 | 1 => rng.pick(&ATOMS).to_string(),
        2 => {
            let n = rng.below(64);
            encode(&String::from_utf8_lossy(&rng.bytes(n)))
        }
        3 => {
            let n = rng.below(64);
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
        4 => {
            let n = rng.below(40_000);
            rng.pick(&["a", "%", "%41", "é", "/", "&", "="]).repeat(n)
        }
        5 if !real.is_empty() => {
            let mut v = rng.pick(real).clone();
            // Sometimes damaged.
            if rng.below(2) == 0 && !v.is_empty() {
                let i = rng.below(v.len());
                if v.is_char_boundary(i) {
                    v.insert(i, *rng.pick(&['A', '.', '%', '\0']));
                }
            }
            v
        }
        _ => {
            let atom: &&str = rng.pick(&ATOMS);
            encode(atom)
        }
    }
}

fn garbage_form(rng: &mut Rng, real: &[String]) -> String {
    if rng.below(6) == 0 {
        return garbage(rng, real);
    }
    let n = rng.below(8);
    (0..n)
        .map(|_| {
            let name = if rng.below(8) == 0 {
                garbage(rng, real)
            } else {
                rng.pick(&NAMES).to_string()
            };
            let value = garbage(rng, real);
            if rng.below(2) == 0 {
                format!("{name}={}", encode(&value))
            } else {
                format!("{name}={value}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn garbage_never_gets_a_5xx_or_a_panic() {
    let h = H::new();
    // Real values, for requests that get past the first checks.
    let mut b = Browser::new();
    let c = h.code(&mut b, PUB, PUB_CB, RES_A);
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let p = pkce();
    let (_, tx, csrf) = Browser::new().reach_consent(
        &h,
        &AuthReq::new(PUB, PUB_CB, &p.challenge).set("prompt", "consent"),
    );
    let mut real: Vec<String> = vec![
        c.code.clone(),
        c.verifier.clone(),
        access(&t).to_string(),
        refresh_token(&t).to_string(),
        p.challenge.clone(),
        tx,
        csrf,
        PUB_CB.to_string(),
        RES_A.to_string(),
        CONF_SECRET.to_string(),
    ];
    real.extend(b.jar.iter().map(|(_, v)| v.clone()));
    let cookie_names = [
        "__Host-portcullis-session",
        "__Host-portcullis-login",
        "__Host-portcullis-consent",
    ];
    let paths = [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/register",
        "/authorize",
        "/token",
        "/revoke",
        "/.portcullis/login",
        "/.portcullis/callback",
        "/.portcullis/consent",
        "/.portcullis/",
        "/.portcullis/x/../login",
    ];
    let verbs = [
        Verb::Get,
        Verb::Head,
        Verb::Post,
        Verb::Options,
        Verb::Other,
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..2000 {
        let path = *rng.pick(&paths);
        let verb = if rng.below(3) == 0 {
            *rng.pick(&verbs)
        } else if path.starts_with("/.portcullis/")
            || path == "/authorize"
            || path.starts_with("/.well-known")
        {
            Verb::Get
        } else {
            Verb::Post
        };
        let verb = if path.starts_with("/.portcullis/") && rng.below(2) == 0 {
            Verb::Post
        } else {
            verb
        };
        let query = if rng.below(2) == 0 {
            String::new()
        } else {
            garbage_form(&mut rng, &real)
        };
        let body: Vec<u8> = match rng.below(5) {
            0 => Vec::new(),
            1 => {
                let n = rng.below(4096);
                rng.bytes(n)
            }
            2 => json!({
                "redirect_uris": [garbage(&mut rng, &real), garbage(&mut rng, &real)],
                "grant_types": [garbage(&mut rng, &real)],
                "token_endpoint_auth_method": garbage(&mut rng, &real),
                "client_name": garbage(&mut rng, &real),
                "response_types": [garbage(&mut rng, &real)],
            })
            .to_string()
            .into_bytes(),
            _ => garbage_form(&mut rng, &real).into_bytes(),
        };
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if rng.below(4) != 0 {
            let ct = *rng.pick(&[
                "application/x-www-form-urlencoded",
                "application/json",
                "text/plain; charset=utf-8",
                "",
                "application/x-www-form-urlencoded; charset=x",
                "\u{0}",
            ]);
            headers.push(("content-type", ct.into()));
        }
        if rng.below(2) == 0 {
            let cookies: Vec<String> = (0..rng.below(4))
                .map(|_| format!("{}={}", rng.pick(&cookie_names), garbage(&mut rng, &real)))
                .collect();
            headers.push(("cookie", cookies.join("; ")));
        }
        if rng.below(3) == 0 {
            let auth = match rng.below(5) {
                0 => basic(&garbage(&mut rng, &real), &garbage(&mut rng, &real)),
                1 => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(rng.bytes(40))
                ),
                2 => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(garbage(&mut rng, &real))
                ),
                3 => basic(PUB, &garbage(&mut rng, &real)),
                _ => garbage(&mut rng, &real),
            };
            headers.push(("authorization", auth));
        }
        if rng.below(3) == 0 {
            headers.push(("origin", garbage(&mut rng, &real)));
        }
        let mut c = call(verb, path, headers, &body);
        c.query = query;
        c.peer = [10, 9, (i % 7) as u8, 1].into();
        let a = h.handle(&c);
        assert!(
            (200..500).contains(&a.status),
            "{} {path}?{:.200} body {:.200}: {} {}",
            i,
            c.query,
            String::from_utf8_lossy(&c.body),
            a.status,
            text(&a)
        );
    }
    // And the server still works.
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    assert!(h.verify(access(&t), RES_A).is_ok());
}

/// Valid requests with one parameter replaced by garbage get deeper.
#[test]
fn valid_requests_with_one_bad_parameter_never_get_a_5xx() {
    let h = H::new();
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let mut b = Browser::new();
    let c = h.code(&mut b, PUB, PUB_CB, RES_A);
    let t = h.tokens(Auth::Public(PUB), PUB, PUB_CB, RES_A);
    let real = vec![
        c.code.clone(),
        c.verifier.clone(),
        refresh_token(&t).to_string(),
        access(&t).to_string(),
    ];
    let p = pkce();
    for i in 0..600 {
        let (path, verb, mut params): (&str, Verb, Vec<(&str, String)>) = match i % 4 {
            0 => (
                "/authorize",
                Verb::Get,
                AuthReq::new(PUB, PUB_CB, &p.challenge)
                    .0
                    .iter()
                    .map(|(k, v)| {
                        (
                            NAMES
                                .iter()
                                .find(|n| **n == k.as_str())
                                .copied()
                                .unwrap_or("x"),
                            v.clone(),
                        )
                    })
                    .collect(),
            ),
            1 => (
                "/token",
                Verb::Post,
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", c.code.clone()),
                    ("redirect_uri", PUB_CB.into()),
                    ("code_verifier", c.verifier.clone()),
                    ("client_id", PUB.into()),
                    ("resource", RES_A.into()),
                ],
            ),
            2 => (
                "/token",
                Verb::Post,
                vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", refresh_token(&t).into()),
                    ("client_id", PUB.into()),
                    ("resource", RES_A.into()),
                ],
            ),
            _ => (
                "/revoke",
                Verb::Post,
                vec![("token", "x".into()), ("client_id", PUB.into())],
            ),
        };
        let k = rng.below(params.len());
        params[k].1 = garbage(&mut rng, &real);
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let encoded = form(&pairs);
        let a = if verb == Verb::Get {
            b.get(&h, &format!("{path}?{encoded}"))
        } else {
            h.handle(&call(
                verb,
                path,
                vec![("content-type", "application/x-www-form-urlencoded".into())],
                encoded.as_bytes(),
            ))
        };
        assert!(
            a.status < 500,
            "{path} {:.300}: {} {}",
            encoded,
            a.status,
            text(&a)
        );
        if a.status == 302 {
            // Follow it as a browser would, through portcullis's pages.
            if let Some(loc) = a.header("location").filter(|l| l.starts_with(ISS)) {
                let a = b.get(&h, loc);
                assert!(a.status < 500, "{loc:.300}: {}", a.status);
            }
        }
    }
}

/// A user who refuses at the upstream while connecting their account in a
/// client's authorization: the client gets `access_denied` with its state
/// and `iss` (it must not wait for a code that will not come).
#[test]
fn refusing_at_the_upstream_sends_the_client_access_denied() {
    let db = Db::new();
    let text = format!(
        "listen: [{{address: 127.0.0.1:8080}}]
authorization_server:
  issuer: {ISS}
  login: {{dev_users: [{{sub: alice}}]}}
  clients: {{registered: [{{client_id: {PUB}, redirect_uris: ['{PUB_CB}']}}]}}
store: {{path: {}}}
vault: {{keys: [{{id: k1, key: '{}'}}]}}
routes:
  - name: a
    from: {RES_A}
    to: http://127.0.0.1:9/mcp
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
    upstream_auth:
      oauth2: {{client_id: gh, authorization_url: 'http://127.0.0.1:7/authorize', token_url: 'http://127.0.0.1:7/token'}}
",
        db.0.display(),
        "ab".repeat(32)
    );
    let cfg = crate::config::parse(&text, Path::new("t.yaml")).unwrap();
    let s = compile(
        cfg.authorization_server.as_ref().unwrap(),
        cfg.store.as_ref(),
        cfg.vault.as_ref(),
        &cfg.routes,
        Path::new("/"),
    )
    .unwrap();
    let store = crate::store::open(&s.store).unwrap();
    let server = Server::new(&s, store, &[7u8; 32], Arc::default()).unwrap();
    let now = crate::authz::unix_now();
    let tx = super::authorize::Tx {
        c: PUB.into(),
        r: PUB_CB.into(),
        ch: s256("v".repeat(43).as_str()),
        st: Some("st-1".into()),
        res: RES_A.into(),
        sc: vec![],
        pc: false,
        exp: now + 600,
    };
    let sealed_tx = tx.seal(&server);
    let go = super::connect::start(&server, &s, "a", "alice", &sealed_tx, now);
    assert_eq!(go.status, 302);
    let location = go.header("location").unwrap();
    assert!(
        location.starts_with("http://127.0.0.1:7/authorize?"),
        "{location}"
    );
    let q = Form::parse(location.split_once('?').unwrap().1.as_bytes()).unwrap();
    assert_eq!(q.get("code_challenge_method"), Some("S256"));
    let cookie = go
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let back = call(
        Verb::Get,
        &format!(
            "/.portcullis/upstream/callback?error=access_denied&state={}",
            encode(q.get("state").unwrap())
        ),
        vec![("cookie", cookie)],
        b"",
    );
    let answer = server.handle(&s, &back);
    assert_eq!(
        answer.status,
        302,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let to = answer.header("location").unwrap();
    assert!(to.starts_with(PUB_CB), "{to}");
    let q = Form::parse(to.split_once('?').unwrap().1.as_bytes()).unwrap();
    assert_eq!(q.get("error"), Some("access_denied"));
    assert_eq!(q.get("state"), Some("st-1"));
    assert_eq!(q.get("iss"), Some(ISS));
    // A wrong state is refused outright (no redirect).
    let forged = call(
        Verb::Get,
        "/.portcullis/upstream/callback?code=x&state=forged",
        vec![(
            "cookie",
            go.header("set-cookie")
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string(),
        )],
        b"",
    );
    let answer = server.handle(&s, &forged);
    assert_eq!(answer.status, 403);
    assert!(answer.header("location").is_none());
}
