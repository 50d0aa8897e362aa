//! Connecting a user's account at a route's upstream service (issue 12):
//! portcullis is an OAuth client of the upstream (GitHub, Notion, …), gets the
//! user's token there once (authorization code + PKCE S256 + `state`, the
//! `iss` checked on return), keeps it sealed in the vault, refreshes it ahead
//! of expiry in the background, and hands it to the cores on request. The
//! agent never sees it.
//!
//! When: after consent, before the client's code is issued, for a route that
//! has `upstream_auth.oauth2` and a user with no connected token; or from the
//! page `/.portcullis/connections` (`connections`: connect, disconnect).

use super::discover::Upstream;
use super::http::{encode, with_query, Answer, Call, Form};
use super::login::cookie;
use super::pages;
use super::seal::{s256, same, Purpose};
use super::server::{unavailable, Server};
use super::settings::{Resource, Settings};
use super::upstream::UpstreamAnswer;
use crate::config::authz::UpstreamOAuth2;
use crate::store::{UpstreamStatus, UpstreamToken};
use crate::vault::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

const PENDING_COOKIE: &str = "__Host-portcullis-upstream";
pub(crate) const PENDING_TTL: i64 = 600;
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refresher holds the tokens it claimed.
const LEASE: i64 = 60;
/// After a failed refresh (upstream down): the longest wait before the next try.
const RETRY_MAX: i64 = 600;

/// When to try a refresh again that failed for want of an answer: double
/// the time since the last attempt, at most `RETRY_MAX`, and at most half of
/// what the current token has left (so retries get denser before it expires).
fn retry_in(t: &UpstreamToken, now: i64) -> i64 {
    let step = ((now - t.updated).max(1) * 2).min(RETRY_MAX);
    if t.expires > now {
        step.min(((t.expires - now) / 2).max(1))
    } else {
        step
    }
}
/// What `back` says when the connection started on the connections page.
pub(crate) const FROM_CONNECTIONS: &str = "connections";

/// A connection in progress, sealed in a cookie.
#[derive(Serialize, Deserialize)]
struct Pending {
    route: String,
    state: String,
    verifier: String,
    /// The sealed authorization transaction to finish, or `connections`.
    back: String,
    user: String,
    exp: i64,
}

/// The routes whose upstream wants the user's own token.
pub(crate) fn upstream_of<'s>(s: &'s Settings, route: &str) -> Option<&'s UpstreamOAuth2> {
    s.resources
        .iter()
        .find(|r| r.route == route)
        .and_then(|r| r.upstream.as_ref())
}

/// Whether `user` must connect `resource`'s upstream before a code is issued.
pub(crate) fn needed(server: &Server, resource: &Resource, user: &str) -> bool {
    if resource.upstream.is_none() || server.vault().is_none() {
        return false;
    }
    let found = server.store().upstream(user, &resource.route);
    !matches!(found, Ok(Some(t)) if t.status == UpstreamStatus::Connected)
}

/// Send the browser to the upstream to connect `route` for `user`.
pub(crate) fn start(
    server: &Server,
    s: &Settings,
    route: &str,
    user: &str,
    back: &str,
    now: i64,
) -> Answer {
    if upstream_of(s, route).is_none() {
        return pages::error(
            404,
            "No such connection",
            "this MCP server has no upstream account to connect",
        );
    }
    let o = match server.upstream_client(s, route) {
        Ok(o) => o,
        Err(e) => {
            server.audit_event(
                "upstream.discovery_failed",
                &[("user", user), ("route", route), ("why", &e)],
            );
            return pages::error(
                502,
                "The upstream service cannot be reached for sign-in",
                &e,
            );
        }
    };
    let pending = Pending {
        route: route.to_string(),
        state: server.sealer.token(),
        verifier: server.sealer.token(),
        back: back.to_string(),
        user: user.to_string(),
        exp: now + PENDING_TTL,
    };
    let challenge = s256(&pending.verifier);
    let scope = o.scopes.join(" ");
    let redirect = s.url("/.portcullis/upstream/callback");
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", o.client_id.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("state", pending.state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if !scope.is_empty() {
        params.push(("scope", &scope));
    }
    if let Some(r) = &o.resource {
        params.push(("resource", r));
    }
    let url = with_query(&o.authorization_url, &params);
    let sealed = server.sealer.seal(
        Purpose::Upstream,
        &serde_json::to_vec(&pending).unwrap_or_default(),
    );
    Answer::redirect(url).with("set-cookie", cookie(PENDING_COOKIE, &sealed, PENDING_TTL))
}

/// `GET /.portcullis/upstream/callback`: back from the upstream.
pub(crate) fn callback(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let form = Form::parse(call.query.as_bytes()).unwrap_or_default();
    let Some(p) = call
        .cookie(PENDING_COOKIE)
        .and_then(|c| server.sealer.open(Purpose::Upstream, c))
        .and_then(|raw| serde_json::from_slice::<Pending>(&raw).ok())
        .filter(|p| p.exp > now)
    else {
        return pages::error(400, "This connection has expired", "start again");
    };
    let clear = cookie(PENDING_COOKIE, "", 0);
    if !form
        .get("state")
        .is_some_and(|st| same(st.as_bytes(), p.state.as_bytes()))
    {
        return pages::error(
            403,
            "This answer belongs to another connection",
            "state mismatch",
        )
        .with("set-cookie", clear);
    }
    let Ok(o) = server.upstream_client(s, &p.route) else {
        return pages::error(
            404,
            "No such connection",
            "the route is no longer configured, or its upstream cannot be reached",
        )
        .with("set-cookie", clear);
    };
    let iss_ok = match (&o.issuer, form.get("iss")) {
        (Some(want), Some(got)) => want == got,
        (Some(_), None) => !o.iss_required,
        (None, _) => true,
    };
    if !iss_ok {
        return pages::error(
            403,
            "This answer comes from another authorization server",
            "iss missing or mismatched (RFC 9207)",
        )
        .with("set-cookie", clear);
    }
    if let Some(err) = form.get("error") {
        server.audit_event(
            "upstream.connect_refused",
            &[
                ("user", &p.user),
                ("route", &p.route),
                ("upstream_error", &super::register::clip(err)),
            ],
        );
        // In a client's authorization: back to the client with the refusal,
        // so it does not wait for a code that will not come.
        if let Some(tx) = super::authorize::Tx::open(server, Some(&p.back), now) {
            return tx
                .error(
                    s,
                    "access_denied",
                    "the user's account at the upstream service was not connected",
                )
                .with("set-cookie", clear);
        }
        return pages::error(
            403,
            "The upstream service refused the connection",
            &super::register::clip(err),
        )
        .with("set-cookie", clear);
    }
    let Some(code) = form.get("code") else {
        return pages::error(400, "The upstream service sent no code", "code is missing")
            .with("set-cookie", clear);
    };
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        encode(code),
        encode(&s.url("/.portcullis/upstream/callback")),
        encode(&p.verifier)
    );
    let tokens = match token_request(&o, body) {
        Ok(t) => t,
        Err(e) => {
            if e.is_invalid_client() {
                server.forget_upstream_client(&p.route, &o);
            }
            tracing::warn!(route = %p.route, error = %e, "connecting an upstream account failed");
            return pages::error(
                502,
                "The upstream service did not give a token",
                &e.to_string(),
            )
            .with("set-cookie", clear);
        }
    };
    if let Err(e) = store_tokens(
        server,
        s,
        &Account {
            user: &p.user,
            route: &p.route,
            o: &o,
        },
        tokens,
        now,
        None,
    ) {
        return unavailable(&e).with("set-cookie", clear);
    }
    server.audit_event(
        "upstream.connected",
        &[("user", &p.user), ("route", &p.route)],
    );
    let next = if p.back == FROM_CONNECTIONS {
        Answer::redirect(s.url("/.portcullis/connections"))
    } else {
        Answer::redirect(with_query(
            &s.url("/.portcullis/consent"),
            &[("tx", &p.back)],
        ))
    };
    next.with("set-cookie", clear)
}

/// A token response, parsed; the strings are secrets.
#[derive(Clone)]
struct Tokens {
    secret: Secret,
    expires_in: Option<i64>,
}

/// POST to the upstream's token endpoint as our client, naming the resource (RFC 8707).
fn token_request(o: &Upstream, mut body: String) -> Result<Tokens, TokenError> {
    if let Some(r) = &o.resource {
        body.push_str(&format!("&resource={}", encode(r)));
    }
    token_request_at(o, &o.token_url, body)
}

/// POST a form to one of the upstream's endpoints with our client's authentication.
fn token_request_at(o: &Upstream, url: &str, mut body: String) -> Result<Tokens, TokenError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(url).header("accept", "application/json");
    match &o.client_secret {
        Some(secret) => {
            let basic =
                zeroize::Zeroizing::new(format!("{}:{}", encode(&o.client_id), encode(secret)));
            req = req.header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &*basic)
                ),
            );
        }
        None => body.push_str(&format!("&client_id={}", encode(&o.client_id))),
    }
    let mut resp = req
        .content_type("application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .map_err(|e| TokenError::Unreachable(format!("token endpoint: {e}")))?;
    let status = resp.status().as_u16();
    let raw = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec()
        .map_err(|e| TokenError::Unreachable(format!("token endpoint: {e}")))?;
    let v: Value = serde_json::from_slice(&raw).unwrap_or_default();
    let error = v.get("error").and_then(Value::as_str);
    if status == 200 && error.is_none() {
        let access = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or(TokenError::Refused("no access_token in the answer".into()))?;
        return Ok(Tokens {
            secret: Secret {
                access_token: access.to_string(),
                refresh_token: v
                    .get("refresh_token")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                token_type: v
                    .get("token_type")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                scope: v.get("scope").and_then(Value::as_str).map(str::to_string),
            },
            expires_in: v.get("expires_in").and_then(Value::as_i64),
        });
    }
    match (status, error) {
        (400 | 401, Some(e @ ("invalid_grant" | "invalid_client" | "unauthorized_client"))) => {
            Err(TokenError::Refused(e.to_string()))
        }
        (s, e) if s >= 500 || s == 429 => Err(TokenError::Unreachable(format!(
            "status {s}, error {}",
            e.unwrap_or("?")
        ))),
        (s, e) => Err(TokenError::Refused(format!(
            "status {s}, error {}",
            e.unwrap_or("?")
        ))),
    }
}

enum TokenError {
    /// The upstream refused (`invalid_grant`…): the connection is over.
    Refused(String),
    /// Network, 5xx, 429: nothing is concluded.
    Unreachable(String),
}

impl TokenError {
    fn is_invalid_client(&self) -> bool {
        matches!(self, TokenError::Refused(e) if e == "invalid_client")
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Refused(e) => write!(f, "refused: {e}"),
            TokenError::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

/// Seal and store a token response; with `generation`, only if nobody
/// changed the record since (compare-and-set). The rotated refresh token is
/// in the same write as the new access token.
/// One user's account at one route's upstream.
struct Account<'a> {
    user: &'a str,
    route: &'a str,
    o: &'a Upstream,
}

fn store_tokens(
    server: &Server,
    s: &Settings,
    account: &Account<'_>,
    mut tokens: Tokens,
    now: i64,
    previous: Option<(&Secret, i64)>,
) -> Result<bool, crate::store::StoreError> {
    let Account { user, route, o } = *account;
    let Some(vault) = server.vault() else {
        return Ok(false);
    };
    // Upstreams may leave the refresh token out when it did not rotate.
    if tokens.secret.refresh_token.is_none() {
        tokens.secret.refresh_token = previous.and_then(|(p, _)| p.refresh_token.clone());
    }
    let expires = tokens.expires_in.map_or(0, |e| now + e.max(1));
    let refresh_due = match (expires, &tokens.secret.refresh_token) {
        (0, _) | (_, None) => i64::MAX,
        (e, Some(_)) => (e - s.vault_refresh_ahead).max(now + (e - now) / 2),
    };
    let (kid, sealed) = vault.seal_secret(user, route, &o.client_id, &tokens.secret);
    let record = UpstreamToken {
        user: user.to_string(),
        route: route.to_string(),
        client_id: o.client_id.clone(),
        kid,
        sealed,
        expires,
        refresh_due,
        status: UpstreamStatus::Connected,
        updated: now,
        generation: 0,
    };
    let mut store = server.store();
    match previous {
        Some((_, generation)) => store.replace_upstream_if(&record, generation),
        None => store.put_upstream(&record).map(|_| true),
    }
}

impl Server {
    /// A core's cache miss: the user's token for `route`, or why there is none.
    pub fn upstream_token(&self, s: &Settings, user: &str, route: &str) -> UpstreamAnswer {
        let connect_url = s.url("/.portcullis/connections");
        let not_connected = |why: &str| UpstreamAnswer::NotConnected {
            why: why.to_string(),
            connect_url: connect_url.clone(),
        };
        let Some(vault) = self.vault() else {
            return UpstreamAnswer::Unavailable;
        };
        let found = self.store().upstream(user, route);
        let t = match found {
            Ok(Some(t)) => t,
            Ok(None) => {
                return not_connected(
                    "your account at this MCP server's upstream service is not connected",
                )
            }
            Err(_) => return UpstreamAnswer::Unavailable,
        };
        if let UpstreamStatus::Disconnected { reason } = &t.status {
            return not_connected(&format!(
                "your upstream account was disconnected ({reason})"
            ));
        }
        let Some(secret) = vault.open_secret(&t) else {
            tracing::error!(
                route,
                "an upstream token in the vault does not open (a missing vault key?)"
            );
            return UpstreamAnswer::Unavailable;
        };
        let now = crate::authz::unix_now();
        if t.expires != 0 && t.expires <= now {
            return not_connected("your upstream token expired and could not be refreshed");
        }
        UpstreamAnswer::Token {
            value: zeroize::Zeroizing::new(secret.access_token.clone()),
            // Unknown expiry: cores re-ask every few minutes.
            expires: if t.expires == 0 { now + 300 } else { t.expires },
        }
    }

    /// Refresh the tokens that are due (one control thread calls this while
    /// idle): claimed first, so one refresher calls the upstream per token
    /// across threads and instances, and stored by compare-and-set.
    pub fn refresh_upstream(&self, s: &Settings, now: i64) -> usize {
        let Some(vault) = self.vault() else { return 0 };
        // Claimed for this refresher alone (other threads and instances
        // skip them) until `now + LEASE`: each outcome below rewrites
        // `refresh_due`; one skipped here (discovery failing, a key missing),
        // or claimed by a refresher that died, is due again then.
        let due = self.store().claim_upstream_due(now, now + LEASE, 16);
        let Ok(due) = due else { return 0 };
        let mut done = 0;
        for t in due {
            let Ok(o) = self.upstream_client(s, &t.route) else {
                continue; // not configured now, or discovery failed: tried again later
            };
            let o = &*o;
            let Some(secret) = vault.open_secret(&t) else {
                continue;
            };
            let Some(rt) = secret.refresh_token.clone() else {
                continue;
            };
            let body = format!("grant_type=refresh_token&refresh_token={}", encode(&rt));
            match token_request(o, body) {
                Ok(tokens) => {
                    // Stored in one compare-and-set with the rotated refresh
                    // token; a race lost to a rekey is retried on the re-read
                    // record while it still holds the refresh token used.
                    let retry = tokens.clone();
                    let mut stored = store_tokens(
                        self,
                        s,
                        &Account {
                            user: &t.user,
                            route: &t.route,
                            o,
                        },
                        tokens,
                        now,
                        Some((&secret, t.generation)),
                    );
                    if let Ok(false) = stored {
                        let reread = self.store().upstream(&t.user, &t.route);
                        if let Ok(Some(cur)) = reread {
                            let same = cur.status == UpstreamStatus::Connected
                                && vault
                                    .open_secret(&cur)
                                    .is_some_and(|x| x.refresh_token == secret.refresh_token);
                            if same {
                                stored = store_tokens(
                                    self,
                                    s,
                                    &Account {
                                        user: &t.user,
                                        route: &t.route,
                                        o,
                                    },
                                    retry,
                                    now,
                                    Some((&secret, cur.generation)),
                                );
                            }
                        }
                    }
                    match stored {
                        Ok(true) => {
                            done += 1;
                            self.audit_event(
                                "upstream.refreshed",
                                &[("user", &t.user), ("route", &t.route)],
                            );
                        }
                        Ok(false) => {
                            tracing::debug!(route = %t.route, "upstream refresh lost a race: another refresh won")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot store a refreshed upstream token")
                        }
                    }
                }
                Err(TokenError::Refused(why)) => {
                    if why == "invalid_client" {
                        self.forget_upstream_client(&t.route, o);
                    }
                    let mut gone = t.clone();
                    gone.status = UpstreamStatus::Disconnected {
                        reason: format!("the upstream refused the refresh: {why}"),
                    };
                    gone.refresh_due = i64::MAX;
                    gone.updated = now;
                    let _ = self.store().replace_upstream_if(&gone, t.generation);
                    self.bump_vault_epoch();
                    self.audit_event(
                        "upstream.refresh_failed",
                        &[
                            ("user", &t.user),
                            ("route", &t.route),
                            ("why", &why),
                            ("outcome", "disconnected"),
                        ],
                    );
                }
                Err(TokenError::Unreachable(why)) => {
                    let mut later = t.clone();
                    later.refresh_due = now + retry_in(&t, now);
                    later.updated = now;
                    let _ = self.store().replace_upstream_if(&later, t.generation);
                    self.audit_event(
                        "upstream.refresh_failed",
                        &[
                            ("user", &t.user),
                            ("route", &t.route),
                            ("why", &why),
                            ("outcome", "kept, retried later"),
                        ],
                    );
                }
            }
        }
        done
    }

    /// A core saw the upstream refuse a user's token (401/403): the
    /// connection is marked disconnected, and every core forgets its copy.
    pub fn upstream_refused(&self, user: &str, route: &str, status: u16) {
        let now = crate::authz::unix_now();
        let found = self.store().upstream(user, route);
        if let Ok(Some(t)) = found {
            if t.status == UpstreamStatus::Connected {
                let mut gone = t.clone();
                gone.status = UpstreamStatus::Disconnected {
                    reason: format!("the upstream refused the token (HTTP {status})"),
                };
                gone.refresh_due = i64::MAX;
                gone.updated = now;
                let _ = self.store().replace_upstream_if(&gone, t.generation);
            }
        }
        self.bump_vault_epoch();
        self.audit_event(
            "upstream.token_refused",
            &[
                ("user", user),
                ("route", route),
                ("status", &status.to_string()),
            ],
        );
    }

    /// Disconnect: revoke at the upstream where it can, delete the record,
    /// and make every core forget its cached copy.
    pub(crate) fn disconnect(
        &self,
        s: &Settings,
        user: &str,
        route: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let found = self.store().upstream(user, route)?;
        let client = match found {
            Some(_) => self.upstream_client(s, route).ok(),
            None => None,
        };
        if let (Some(t), Some(o), Some(vault)) = (&found, client, self.vault()) {
            if let (Some(url), Some(secret)) = (&o.revocation_url, vault.open_secret(t)) {
                let token = secret
                    .refresh_token
                    .as_deref()
                    .unwrap_or(&secret.access_token);
                let body = format!("token={}", encode(token));
                if let Err(e) = token_request_ok(&o, url, body) {
                    tracing::warn!(route, error = %e, "revoking at the upstream failed; the record is deleted anyway");
                }
            }
        }
        let deleted = self.store().delete_upstream(user, route)?;
        self.bump_vault_epoch();
        if deleted {
            self.audit_event("upstream.disconnected", &[("user", user), ("route", route)]);
        }
        Ok(deleted)
    }
}

/// A POST whose answer needs no body (revocation: 200 is success).
fn token_request_ok(o: &Upstream, url: &str, body: String) -> Result<(), String> {
    match token_request_at(o, url, body) {
        Ok(_) => Ok(()),
        Err(TokenError::Refused(e)) if e.contains("no access_token") => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
