//! `GET /authorize` (OAuth 2.1 §4.1.1), in the order the MCP security best
//! practices demand: the client and its exact redirect URI are checked
//! before anything can redirect (a bad one gets an error page, never a
//! redirect); then PKCE S256 (required of every client), `resource`
//! (RFC 8707, canonical, one of the routes; absent: the only one), scopes
//! (the route's; unknown ones dropped). The request travels on sealed, as
//! the transaction `tx`, to login and consent; the code is issued at the end
//! of consent. Every error after the redirect URI is known redirects with
//! `error`, `state` and `iss` (RFC 9207).

use super::http::{with_query, Answer, Call, Form};
use super::pages;
use super::seal::Purpose;
use super::server::{Counters, Server};
use super::settings::Settings;
use serde::{Deserialize, Serialize};

/// How long an authorization may take from `/authorize` to the code.
const TX_TTL: i64 = 600;

/// An authorization request in flight, sealed into the `tx` parameter.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Tx {
    /// client_id
    pub c: String,
    /// The redirect URI as the client sent it (the code is bound to it).
    pub r: String,
    /// The PKCE S256 challenge.
    pub ch: String,
    /// The client's `state`.
    pub st: Option<String>,
    /// The canonical resource.
    pub res: String,
    /// Granted scopes.
    pub sc: Vec<String>,
    /// `prompt=consent`: ask again even when remembered.
    pub pc: bool,
    pub exp: i64,
}

impl Tx {
    pub(crate) fn seal(&self, server: &Server) -> String {
        server.sealer.seal(
            Purpose::Transaction,
            &serde_json::to_vec(self).unwrap_or_default(),
        )
    }

    /// The transaction named by a `tx` parameter, unless tampered or expired.
    pub(crate) fn open(server: &Server, sealed: Option<&str>, now: i64) -> Option<Tx> {
        let raw = server.sealer.open(Purpose::Transaction, sealed?)?;
        let tx: Tx = serde_json::from_slice(&raw).ok()?;
        (tx.exp > now).then_some(tx)
    }

    /// Back to the client with an error (RFC 6749 §4.1.2.1 + RFC 9207 `iss`).
    pub(crate) fn error(&self, s: &Settings, code: &str, description: &str) -> Answer {
        redirect_error(s, &self.r, self.st.as_deref(), code, description)
    }
}

pub(crate) fn redirect_error(
    s: &Settings,
    redirect: &str,
    state: Option<&str>,
    code: &str,
    description: &str,
) -> Answer {
    let mut params = vec![("error", code), ("error_description", description)];
    if let Some(st) = state {
        params.push(("state", st));
    }
    params.push(("iss", &s.issuer));
    Answer::redirect(with_query(redirect, &params))
}

pub(crate) fn authorize(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let form = match Form::parse(call.query.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            return pages::error(
                400,
                "This authorization request is malformed",
                &e.to_string(),
            )
        }
    };
    let Some(client_id) = form.get("client_id") else {
        return pages::error(
            400,
            "This authorization request names no client",
            "client_id is required",
        );
    };
    let client = match super::clients::find(server, s, client_id, now) {
        Ok(c) => c,
        Err(super::clients::ClientError::Store(e)) => return super::server::unavailable(&e),
        Err(e) => return pages::error(400, "This application is not known here", &e.to_string()),
    };
    let Some(redirect) = form.get("redirect_uri") else {
        return pages::error(
            400,
            "This authorization request has no redirect URI",
            "redirect_uri is required",
        );
    };
    if !client
        .redirect_uris
        .iter()
        .any(|r| super::redirect::matches(r, redirect))
    {
        return pages::error(
            400,
            "This redirect URI is not registered for this application",
            &format!(
                "{} is not one of the client's redirect URIs",
                super::register::clip(redirect)
            ),
        );
    }
    let state = form.get("state");
    let fail = |code: &str, why: &str| redirect_error(s, redirect, state, code, why);
    if form.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let challenge = match (
        form.get("code_challenge"),
        form.get("code_challenge_method"),
    ) {
        (None, _) => {
            return fail(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method=S256",
            )
        }
        (Some(_), m) if m != Some("S256") => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            )
        }
        (Some(c), _) if !is_challenge(c) => {
            return fail(
                "invalid_request",
                "code_challenge must be 43 base64url characters",
            )
        }
        (Some(c), _) => c,
    };
    let resource = match form.get("resource") {
        Some(r) => match super::resource::canonical(r)
            .ok()
            .and_then(|c| s.resource(&c))
        {
            Some(res) => res,
            None => {
                return fail(
                    "invalid_target",
                    "resource is not an MCP server of this authorization server",
                )
            }
        },
        None if s.resources.len() == 1 => &s.resources[0],
        None => {
            return fail(
                "invalid_target",
                "resource is required: this server protects several MCP servers",
            )
        }
    };
    let tx = Tx {
        c: client.id.clone(),
        r: redirect.to_string(),
        ch: challenge.to_string(),
        st: state.map(str::to_string),
        res: resource.canonical.clone(),
        sc: resource.scopes.clone(),
        pc: form
            .get("prompt")
            .is_some_and(|p| p.split(' ').any(|p| p == "consent" || p == "login")),
        exp: now + TX_TTL,
    };
    Counters::bump(&server.counters.authorizations);
    Answer::redirect(with_query(
        &s.url("/.portcullis/consent"),
        &[("tx", &tx.seal(server))],
    ))
}

/// 43 to 128 characters of the verifier alphabet; S256 gives exactly 43.
fn is_challenge(c: &str) -> bool {
    (43..=128).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}
