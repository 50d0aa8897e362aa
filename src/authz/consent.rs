//! Consent per (user, client, redirect URI), before any code is issued (the
//! confused-deputy protection of the MCP security best practices). The page
//! names the client, where it will send the code (host emphasized, a warning
//! for loopback-only clients), the MCP server and scopes. The form is bound
//! to this browser and this client by a sealed `__Host-` cookie holding a
//! CSRF nonce, the client id, the redirect URI and the user; an `Origin`
//! other than ours is refused. A consent is remembered for `consent_ttl`
//! (unless the client asks `prompt=consent`) and revocable with the grants.

use super::authorize::Tx;
use super::http::{with_query, Answer, Call, Form};
use super::login::{cookie, session, Session};
use super::pages;
use super::seal::{same, Purpose};
use super::server::{unavailable, Counters, Server};
use super::settings::Settings;
use crate::store::{CodeGrant, Consent};
use serde::{Deserialize, Serialize};

const CONSENT_COOKIE: &str = "__Host-portcullis-consent";
const FORM_TTL: i64 = 600;
/// Authorization codes live at most this long (OAuth 2.1 recommends ≤ 10 min; we use 60 s).
pub(crate) const CODE_TTL: i64 = 60;

#[derive(Serialize, Deserialize)]
struct Bound {
    n: String,
    c: String,
    r: String,
    u: String,
    exp: i64,
}

/// `GET /.portcullis/consent?tx=…`
pub(crate) fn page(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let query = Form::parse(call.query.as_bytes()).unwrap_or_default();
    let Some(tx_text) = query.get("tx") else {
        return pages::error(
            400,
            "This authorization has expired",
            "start again from the application",
        );
    };
    let Some(tx) = Tx::open(server, Some(tx_text), now) else {
        return pages::error(
            400,
            "This authorization has expired",
            "start again from the application",
        );
    };
    let Some(user) = session(server, call, now) else {
        return super::login::start(server, s, tx_text, now);
    };
    let client = match super::clients::find(server, s, &tx.c, now) {
        Ok(c) => c,
        Err(super::clients::ClientError::Store(e)) => return unavailable(&e),
        Err(e) => return pages::error(400, "This application is not known here", &e.to_string()),
    };
    if !tx.pc {
        let remembered = server
            .store()
            .consented(&user.sub, &tx.c, &tx.r, &covered(&tx), now);
        match remembered {
            Ok(true) => return finish(server, s, &tx, tx_text, &user, now),
            Ok(false) => {}
            Err(e) => return unavailable(&e),
        }
    }
    let nonce = server.sealer.token();
    let f = Bound {
        n: nonce.clone(),
        c: tx.c.clone(),
        r: tx.r.clone(),
        u: user.sub.clone(),
        exp: now + FORM_TTL,
    };
    let sealed = server.sealer.seal(
        Purpose::Consent,
        &serde_json::to_vec(&f).unwrap_or_default(),
    );
    let resource = s.resource(&tx.res);
    pages::consent(&pages::ConsentView {
        client: &client,
        redirect_uri: &tx.r,
        resource: resource.map_or(tx.res.as_str(), |r| r.audience.as_str()),
        route: resource.map_or("", |r| r.route.as_str()),
        scopes: &tx.sc,
        user: &user,
        tx: tx_text,
        csrf: &nonce,
    })
    .with("set-cookie", cookie(CONSENT_COOKIE, &sealed, FORM_TTL))
}

/// `POST /.portcullis/consent`: allow or deny.
pub(crate) fn decide(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    if let Some(refused) = pages::foreign_origin(call, &s.issuer) {
        return refused;
    }
    let form = match Form::parse(&call.body) {
        Ok(f) => f,
        Err(e) => return pages::error(400, "This consent form is malformed", &e.to_string()),
    };
    let Some(tx) = Tx::open(server, form.get("tx"), now) else {
        return pages::error(
            400,
            "This authorization has expired",
            "start again from the application",
        );
    };
    let Some(user) = session(server, call, now) else {
        return pages::error(
            403,
            "You are not logged in",
            "the login session is missing or expired: start again from the application",
        );
    };
    let bound = call
        .cookie(CONSENT_COOKIE)
        .and_then(|c| server.sealer.open(Purpose::Consent, c))
        .and_then(|raw| serde_json::from_slice::<Bound>(&raw).ok())
        .filter(|f| f.exp > now && f.c == tx.c && f.r == tx.r && f.u == user.sub);
    let csrf_ok = match (&bound, form.get("csrf")) {
        (Some(f), Some(csrf)) => same(f.n.as_bytes(), csrf.as_bytes()),
        _ => false,
    };
    if !csrf_ok {
        return pages::error(
            403,
            "This consent was not given on this browser's consent page",
            "CSRF check failed: reload the application's sign-in",
        );
    }
    let clear = cookie(CONSENT_COOKIE, "", 0);
    match form.get("decision") {
        Some("allow") => {}
        Some("deny") => {
            server.audit_event(
                "consent.denied",
                &[
                    ("user", &user.sub),
                    ("client_id", &tx.c),
                    ("redirect_uri", &tx.r),
                ],
            );
            return tx
                .error(s, "access_denied", "the user denied the request")
                .with("set-cookie", clear);
        }
        _ => return pages::error(400, "No decision", "choose Allow or Deny"),
    }
    let consent = Consent {
        user: user.sub.clone(),
        client_id: tx.c.clone(),
        redirect_uri: tx.r.clone(),
        scopes: covered(&tx),
        expires: now + s.consent_ttl,
    };
    if let Err(e) = server.store().put_consent(&consent) {
        return unavailable(&e);
    }
    Counters::bump(&server.counters.consents);
    server.audit_event(
        "consent.given",
        &[
            ("user", &user.sub),
            ("client_id", &tx.c),
            ("redirect_uri", &tx.r),
            ("resource", &tx.res),
        ],
    );
    let tx_text = form.get("tx").unwrap_or_default();
    finish(server, s, &tx, tx_text, &user, now).with("set-cookie", clear)
}

/// What a consent covers: the scopes, and the MCP server the page named
/// (kept among them as `resource:<canonical>`, so that consent to one route
/// is not consent to another with the same or fewer scopes).
fn covered(tx: &Tx) -> Vec<String> {
    let mut v = tx.sc.clone();
    v.push(format!("resource:{}", tx.res));
    v
}

/// Issue the code and send the browser back to the client.
/// After consent: connect the user's upstream account first where the route
/// needs one (the flow comes back here), then issue the code.
fn finish(
    server: &Server,
    s: &Settings,
    tx: &Tx,
    tx_text: &str,
    user: &Session,
    now: i64,
) -> Answer {
    if let Some(resource) = s.resource(&tx.res) {
        if super::connect::needed(server, resource, &user.sub) {
            return super::connect::start(server, s, &resource.route, &user.sub, tx_text, now);
        }
    }
    issue_code(server, s, tx, user, now)
}

fn issue_code(server: &Server, s: &Settings, tx: &Tx, user: &Session, now: i64) -> Answer {
    let code = server.sealer.token();
    let mut claims = serde_json::json!({"sub": user.sub, "email": user.email, "groups": user.groups, "idp": user.idp});
    if let Some(rt) = &user.idp_refresh {
        // Sealed: the store never holds the IdP's token in the clear.
        claims["idp_refresh"] = server.sealer.seal(Purpose::IdpToken, rt.as_bytes()).into();
        claims["idp_checked"] = now.into();
    }

    let grant = CodeGrant {
        code_hash: super::seal::hash(&code),
        client_id: tx.c.clone(),
        redirect_uri: tx.r.clone(),
        challenge: tx.ch.clone(),
        resource: tx.res.clone(),
        scopes: tx.sc.clone(),
        user: user.sub.clone(),
        claims: claims.to_string(),
        expires: now + CODE_TTL,
    };
    if let Err(e) = server.store().put_code(&grant) {
        return unavailable(&e);
    }
    Counters::bump(&server.counters.codes);
    server.audit_event(
        "code.issued",
        &[
            ("user", &user.sub),
            ("client_id", &tx.c),
            ("resource", &tx.res),
        ],
    );
    let mut params = vec![("code", code.as_str())];
    if let Some(st) = &tx.st {
        params.push(("state", st));
    }
    params.push(("iss", &s.issuer));
    Answer::redirect(with_query(&tx.r, &params))
}
