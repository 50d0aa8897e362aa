//! Who the user is: the browser's login session (a sealed `__Host-` cookie),
//! and how it is made: at the company IdP (`oidc`), or on the development
//! login page (`dev_users`, loopback only). Login-CSRF is refused: the IdP
//! round trip is bound to the browser by a sealed cookie holding `state`,
//! `nonce` and the PKCE verifier; the development form by a nonce in a
//! sealed cookie. After login the browser goes on to consent.

use super::authorize::Tx;
use super::http::{with_query, Answer, Call, Form};
use super::pages;
use super::seal::{s256, same, Purpose};
use super::server::{Counters, Server};
use super::settings::{Login, Settings};
use crate::config::authz::DevUser;
use serde::{Deserialize, Serialize};

pub(crate) const SESSION_COOKIE: &str = "__Host-portcullis-session";
const LOGIN_COOKIE: &str = "__Host-portcullis-login";
const SESSION_TTL: i64 = 8 * 3600;
const LOGIN_TTL: i64 = 600;

/// The logged-in user, sealed in the session cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub sub: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Which login made it (`oidc <issuer>`, `dev`).
    pub idp: String,
    /// The IdP's refresh token, when it gave one (inside the sealed cookie).
    #[serde(default)]
    pub idp_refresh: Option<String>,
    pub exp: i64,
}

/// A login in progress, sealed in the login cookie.
#[derive(Serialize, Deserialize)]
struct Pending {
    /// `state` at the IdP, or the development form's nonce.
    st: String,
    nonce: String,
    verifier: String,
    tx: String,
    exp: i64,
}

/// `Set-Cookie` for a `__Host-` cookie: Secure, HttpOnly, SameSite=Lax, path /.
pub(crate) fn cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

pub(crate) fn session(server: &Server, call: &Call, now: i64) -> Option<Session> {
    let raw = server
        .sealer
        .open(Purpose::Session, call.cookie(SESSION_COOKIE)?)?;
    let s: Session = serde_json::from_slice(&raw).ok()?;
    (s.exp > now).then_some(s)
}

/// No session: begin the login, then come back to consent with `tx`.
pub(crate) fn start(server: &Server, s: &Settings, tx: &str, now: i64) -> Answer {
    match &s.login {
        Login::Dev(_) => Answer::redirect(with_query(&s.url("/.portcullis/login"), &[("tx", tx)])),
        Login::Oidc(cfg) => {
            let provider = match server.oidc.get(cfg, now) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "the company IdP is unavailable");
                    return pages::error(
                        503,
                        "The login service is unavailable",
                        "the company identity provider cannot be reached; try again shortly",
                    );
                }
            };
            let pending = Pending {
                st: server.sealer.token(),
                nonce: server.sealer.token(),
                verifier: server.sealer.token(),
                tx: tx.to_string(),
                exp: now + LOGIN_TTL,
            };
            let url = super::oidc::authorize_url(
                &provider,
                cfg,
                &s.url("/.portcullis/callback"),
                &pending.st,
                &pending.nonce,
                &s256(&pending.verifier),
            );
            Answer::redirect(url).with(
                "set-cookie",
                cookie(LOGIN_COOKIE, &seal(server, &pending), LOGIN_TTL),
            )
        }
    }
}

fn seal(server: &Server, p: &Pending) -> String {
    server
        .sealer
        .seal(Purpose::Login, &serde_json::to_vec(p).unwrap_or_default())
}

fn pending(server: &Server, call: &Call, now: i64) -> Option<Pending> {
    let raw = server
        .sealer
        .open(Purpose::Login, call.cookie(LOGIN_COOKIE)?)?;
    let p: Pending = serde_json::from_slice(&raw).ok()?;
    (p.exp > now).then_some(p)
}

/// Set the session and go on to consent.
fn logged_in(server: &Server, s: &Settings, session: Session, tx: &str) -> Answer {
    Counters::bump(&server.counters.logins);
    server.audit_event(
        "user.login",
        &[("user", &session.sub), ("idp", &session.idp)],
    );
    let sealed = server.sealer.seal(
        Purpose::Session,
        &serde_json::to_vec(&session).unwrap_or_default(),
    );
    let next = if tx == super::connect::FROM_CONNECTIONS {
        s.url("/.portcullis/connections")
    } else {
        with_query(&s.url("/.portcullis/consent"), &[("tx", tx)])
    };
    Answer::redirect(next)
        .with("set-cookie", cookie(SESSION_COOKIE, &sealed, SESSION_TTL))
        .with("set-cookie", cookie(LOGIN_COOKIE, "", 0))
}

/// The development login's users, for a loopback caller only.
fn dev_users<'s>(s: &'s Settings, call: &Call) -> Result<&'s [DevUser], Answer> {
    if !call.peer.is_loopback() {
        return Err(pages::error(
            403,
            "The development login is for this machine only",
            "connect from a loopback address",
        ));
    }
    match &s.login {
        Login::Dev(users) => Ok(users),
        Login::Oidc(_) => Err(pages::error(
            404,
            "No login page here",
            "users log in at the company identity provider",
        )),
    }
}

/// `GET /.portcullis/login?tx=…`: the development login page.
pub(crate) fn page(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let users = match dev_users(s, call) {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    let form = Form::parse(call.query.as_bytes()).unwrap_or_default();
    let Some(tx) = form.get("tx").filter(|t| {
        *t == super::connect::FROM_CONNECTIONS || Tx::open(server, Some(t), now).is_some()
    }) else {
        return pages::error(
            400,
            "This login has expired",
            "start again from the application",
        );
    };
    let nonce = server.sealer.token();
    let p = Pending {
        st: nonce.clone(),
        nonce: String::new(),
        verifier: String::new(),
        tx: tx.to_string(),
        exp: now + LOGIN_TTL,
    };
    pages::dev_login(users, tx, &nonce).with(
        "set-cookie",
        cookie(LOGIN_COOKIE, &seal(server, &p), LOGIN_TTL),
    )
}

/// `POST /.portcullis/login`: a user picked on the development page.
pub(crate) fn dev_login(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let users = match dev_users(s, call) {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    let form = match Form::parse(&call.body) {
        Ok(f) => f,
        Err(e) => return pages::error(400, "This login form is malformed", &e.to_string()),
    };
    let Some(p) = pending(server, call, now) else {
        return pages::error(
            400,
            "This login has expired",
            "the login cookie is missing or expired: start again from the application",
        );
    };
    if !form
        .get("csrf")
        .is_some_and(|c| same(c.as_bytes(), p.st.as_bytes()))
        || form.get("tx") != Some(p.tx.as_str())
    {
        return pages::error(
            403,
            "This login form was not sent from this browser's login page",
            "CSRF check failed",
        );
    }
    let Some(user) = form
        .get("user")
        .and_then(|u| users.iter().find(|d| d.sub == u))
    else {
        return pages::error(400, "No such user", "pick one of the listed users");
    };
    let session = Session {
        sub: user.sub.clone(),
        email: user.email.clone(),
        groups: user.groups.clone(),
        idp: "dev".into(),
        idp_refresh: None,
        exp: now + SESSION_TTL,
    };
    logged_in(server, s, session, &p.tx)
}

/// `GET /.portcullis/callback`: back from the company IdP.
pub(crate) fn callback(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let Login::Oidc(cfg) = &s.login else {
        return pages::error(
            404,
            "No login callback here",
            "this server has no company IdP login",
        );
    };
    let form = match Form::parse(call.query.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            return pages::error(
                400,
                "The identity provider's answer is malformed",
                &e.to_string(),
            )
        }
    };
    let Some(p) = pending(server, call, now) else {
        return pages::error(
            400,
            "This login has expired",
            "the login cookie is missing or expired: start again from the application",
        );
    };
    if !form
        .get("state")
        .is_some_and(|st| same(st.as_bytes(), p.st.as_bytes()))
    {
        return pages::error(
            403,
            "This login answer belongs to another login",
            "state mismatch",
        );
    }
    if let Some(iss) = form.get("iss") {
        if iss != cfg.issuer {
            return pages::error(
                403,
                "This login answer comes from another identity provider",
                "iss mismatch (RFC 9207)",
            );
        }
    }
    if let Some(err) = form.get("error") {
        return pages::error(
            403,
            "The identity provider refused the login",
            &super::register::clip(err),
        );
    }
    let Some(code) = form.get("code") else {
        return pages::error(400, "The identity provider sent no code", "code is missing");
    };
    let provider = match server.oidc.get(cfg, now) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the company IdP is unavailable");
            return pages::error(
                503,
                "The login service is unavailable",
                "the company identity provider cannot be reached; try again shortly",
            );
        }
    };
    let logged = match super::oidc::exchange(
        &provider,
        cfg,
        code,
        &p.verifier,
        &s.url("/.portcullis/callback"),
        &p.nonce,
        now,
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "IdP login failed");
            return pages::error(403, "The login could not be completed", &e);
        }
    };
    let (email, groups) = idp_claims(cfg, &logged.user);
    let session = Session {
        sub: logged.user.sub,
        email,
        groups,
        idp: format!("oidc {}", cfg.issuer),
        idp_refresh: logged.refresh_token,
        exp: now + SESSION_TTL,
    };
    logged_in(server, s, session, &p.tx)
}

/// The principal's email and groups from the IdP's claims, as configured.
pub(crate) fn idp_claims(
    cfg: &crate::config::authz::OidcLoginConfig,
    user: &crate::principal::Principal,
) -> (Option<String>, Vec<String>) {
    let claim = |name: &str| user.claims.get(name);
    let email = claim(&cfg.claims.email)
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let groups = match claim(&cfg.claims.groups) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    (email, groups)
}
