//! `POST /token` (authorization_code, refresh_token) and `POST /revoke`
//! (RFC 7009). Answers are JSON with `Cache-Control: no-store`; a client that
//! fails authentication gets 401 `invalid_client` (claude.ai re-registers on
//! it). Codes: single use, PKCE S256 checked, bound to client, redirect URI
//! and resource; a replay revokes the grant issued from the code. Refresh
//! tokens rotate on every use (the store serializes a grant's refreshes),
//! a just-replaced one gets an access token only within the grace window,
//! later the whole grant is revoked. Access tokens: `aud` = the one route.

use super::clients::{self, ClientError};
use super::consent::CODE_TTL;
use super::http::{Answer, Call, Form};
use super::seal::{hash, s256, same};
use super::server::{max_access_ttl, unavailable, Counters, Server};
use super::settings::Settings;
use crate::identity::minted::{grant_of, mint, AccessClaims};
use crate::store::{Client, CodeTake, Grant, Rotation};
use serde_json::json;

/// An OAuth error answer (RFC 6749 §5.2).
pub(crate) fn oauth_error(status: u16, code: &str, description: &str) -> Answer {
    let a = Answer::json(
        status,
        &json!({"error": code, "error_description": description}),
    )
    .with("cache-control", "no-store")
    .with("pragma", "no-cache");
    if status == 401 {
        a.with("www-authenticate", "Basic realm=\"portcullis\"")
    } else {
        a
    }
}

fn client_error(e: ClientError) -> Answer {
    match e {
        ClientError::Store(e) => unavailable(&e),
        e => oauth_error(401, "invalid_client", &e.to_string()),
    }
}

/// The form of an OAuth POST, or the error answer.
fn form_of(call: &Call) -> Result<Form, Answer> {
    let ct = call.header("content-type").unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(oauth_error(
            400,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    if !call.query.is_empty() {
        return Err(oauth_error(
            400,
            "invalid_request",
            "parameters belong in the body, not the query",
        ));
    }
    Form::parse(&call.body).map_err(|e| oauth_error(400, "invalid_request", &e.to_string()))
}

pub(crate) fn token(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let form = match form_of(call) {
        Ok(f) => f,
        Err(a) => return a,
    };
    let client = match clients::authenticate(server, s, call, &form, now) {
        Ok(c) => c,
        Err(e) => return client_error(e),
    };
    match form.get("grant_type") {
        Some("authorization_code") => code_grant(server, s, &client, &form, now),
        Some("refresh_token") => refresh_grant(server, s, &client, &form, now),
        Some(_) => oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
        None => oauth_error(400, "invalid_request", "grant_type is required"),
    }
}

/// A `resource` parameter given on the token request: canonical, one of ours.
fn requested_resource(s: &Settings, form: &Form) -> Result<Option<String>, Answer> {
    match form.get("resource") {
        None => Ok(None),
        Some(r) => match super::resource::canonical(r) {
            Ok(c) if s.resource(&c).is_some() => Ok(Some(c)),
            _ => Err(oauth_error(
                400,
                "invalid_target",
                "resource is not an MCP server of this authorization server",
            )),
        },
    }
}

fn code_grant(server: &Server, s: &Settings, client: &Client, form: &Form, now: i64) -> Answer {
    // `redirect_uri` is optional (OAuth 2.1 §10.2: PKCE does its job, and
    // 2.1 clients do not send it); sent, it must match (OAuth 2.0 clients).
    let redirect = form.get("redirect_uri");
    let (Some(code), Some(verifier)) = (form.get("code"), form.get("code_verifier")) else {
        return oauth_error(
            400,
            "invalid_request",
            "code and code_verifier are required",
        );
    };
    if !(43..=128).contains(&verifier.len()) {
        return oauth_error(
            400,
            "invalid_request",
            "code_verifier must be 43 to 128 characters",
        );
    }
    // Checked before the code is used up (a bad resource must not burn it).
    let resource = match requested_resource(s, form) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let code_hash = hash(code);
    let taken = server.store().take_code(&code_hash, now);
    let g = match taken {
        Ok(CodeTake::Granted(g)) => g,
        Ok(CodeTake::Replayed { grant_id }) => {
            Counters::bump(&server.counters.reuse_detected);
            server.audit_event(
                "code.replayed",
                &[
                    ("client_id", &client.id),
                    ("grant", grant_id.as_deref().unwrap_or("")),
                ],
            );
            if let Some(id) = grant_id {
                server.revoke_grant(s, &id, "authorization code replayed");
            }
            return oauth_error(
                400,
                "invalid_grant",
                "the authorization code was already used; what it issued is revoked",
            );
        }
        Ok(CodeTake::Expired) => {
            return oauth_error(
                400,
                "invalid_grant",
                &format!("the authorization code expired (codes live {CODE_TTL} s)"),
            )
        }
        Ok(CodeTake::Unknown) => {
            return oauth_error(400, "invalid_grant", "unknown authorization code")
        }
        Err(e) => return unavailable(&e),
    };
    if g.client_id != client.id {
        return oauth_error(
            400,
            "invalid_grant",
            "the authorization code was issued to another client",
        );
    }
    if redirect.is_some_and(|r| r != g.redirect_uri) {
        return oauth_error(
            400,
            "invalid_grant",
            "redirect_uri differs from the authorization request's",
        );
    }
    if !same(s256(verifier).as_bytes(), g.challenge.as_bytes()) {
        return oauth_error(
            400,
            "invalid_grant",
            "code_verifier does not match the code challenge (PKCE)",
        );
    }
    if resource.as_ref().is_some_and(|r| *r != g.resource) {
        return oauth_error(
            400,
            "invalid_target",
            "resource differs from the authorization request's",
        );
    }
    let refresh = client.grant_types.iter().any(|t| t == "refresh_token");
    let grant = Grant {
        id: server.sealer.token()[..22].to_string(),
        user: g.user.clone(),
        claims: g.claims.clone(),
        client_id: client.id.clone(),
        redirect_uri: g.redirect_uri.clone(),
        resource: g.resource.clone(),
        scopes: g.scopes.clone(),
        created: now,
        expires: now + s.refresh_ttl,
        revoked: false,
    };
    let rt = refresh.then(|| server.sealer.token());
    let stored = {
        let mut store = server.store();
        store
            .create_grant(&grant, rt.as_deref().map(hash).as_ref())
            .and_then(|()| store.code_issued(&code_hash, &grant.id))
    };
    match stored {
        Ok(true) => {}
        Ok(false) => {
            let _ = server.publish(s);
            return oauth_error(
                400,
                "invalid_grant",
                "the authorization code was replayed while it was being used",
            );
        }
        Err(e) => return unavailable(&e),
    }
    Counters::bump(&server.counters.tokens);
    server.audit_event(
        "token.issued",
        &[
            ("user", &grant.user),
            ("client_id", &client.id),
            ("grant", &grant.id),
            ("resource", &grant.resource),
        ],
    );
    issue(server, s, client, &grant, rt, now)
}

fn refresh_grant(server: &Server, s: &Settings, client: &Client, form: &Form, now: i64) -> Answer {
    let Some(old) = form.get("refresh_token") else {
        return oauth_error(400, "invalid_request", "refresh_token is required");
    };
    let resource = match requested_resource(s, form) {
        Ok(r) => r,
        Err(a) => return a,
    };
    // Checked before rotating: a refused request must not use the token up
    // (the client would keep the replaced one and lose the grant to reuse
    // detection after the grace window).
    if let Some(r) = &resource {
        let found = server.store().refresh_grant(&hash(old));
        let grant = match found {
            Ok(Some(id)) => server.store().grant(&id),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match grant {
            Ok(Some(g)) if g.client_id == client.id && g.resource != *r => {
                return oauth_error(400, "invalid_target", "resource differs from the grant's");
            }
            Ok(_) => {}
            Err(e) => return unavailable(&e),
        }
    }
    let new = server.sealer.token();
    let rotation = server
        .store()
        .rotate_refresh(&hash(old), &hash(&new), now, s.refresh_grace);
    let (grant, rt) = match rotation {
        Ok(Rotation::Rotated(g)) => (g, Some(new)),
        Ok(Rotation::Grace(g)) => (g, None),
        Ok(Rotation::Reused { grant_id }) => {
            Counters::bump(&server.counters.reuse_detected);
            server.audit_event(
                "refresh.reused",
                &[("client_id", &client.id), ("grant", &grant_id)],
            );
            server.revoke_grant(s, &grant_id, "refresh token reused after its grace window");
            return oauth_error(
                400,
                "invalid_grant",
                "the refresh token was already used; the grant is revoked, authorize again",
            );
        }
        Ok(Rotation::Revoked) => {
            return oauth_error(
                400,
                "invalid_grant",
                "the grant was revoked; authorize again",
            )
        }
        Ok(Rotation::Expired) => {
            return oauth_error(400, "invalid_grant", "the grant expired; authorize again")
        }
        Ok(Rotation::Unknown) => return oauth_error(400, "invalid_grant", "unknown refresh token"),
        Err(e) => return unavailable(&e),
    };
    if grant.client_id != client.id {
        // A refresh token presented by another client: stolen. The rotation
        // already happened, so the family is revoked.
        server.revoke_grant(s, &grant.id, "refresh token presented by another client");
        return oauth_error(
            400,
            "invalid_grant",
            "the refresh token was issued to another client",
        );
    }
    if resource.as_ref().is_some_and(|r| *r != grant.resource) {
        return oauth_error(400, "invalid_target", "resource differs from the grant's");
    }
    let grant = match recheck_user(server, s, grant, now) {
        Ok(g) => g,
        Err(answer) => return answer,
    };
    Counters::bump(&server.counters.refreshes);
    server.audit_event(
        "token.refreshed",
        &[
            ("user", &grant.user),
            ("client_id", &client.id),
            ("grant", &grant.id),
            (
                "rotated",
                if rt.is_some() {
                    "true"
                } else {
                    "false (grace)"
                },
            ),
        ],
    );
    issue(server, s, client, &grant, rt, now)
}

/// Ask the company IdP again, with the refresh token it gave at login, whether
/// the grant's user is still there (at most every `login.oidc.recheck`). A
/// refusal revokes the grant; an unreachable IdP refuses nothing. The IdP's
/// new refresh token (rotation) and the user's current email and groups are
/// kept with the grant.
fn recheck_user(
    server: &Server,
    s: &Settings,
    mut grant: Box<Grant>,
    now: i64,
) -> Result<Box<Grant>, Answer> {
    use super::seal::Purpose;
    let super::settings::Login::Oidc(cfg) = &s.login else {
        return Ok(grant);
    };
    let mut claims: serde_json::Value = serde_json::from_str(&grant.claims).unwrap_or_default();
    let checked = claims["idp_checked"].as_i64().unwrap_or(0);
    let Some(sealed) = claims["idp_refresh"].as_str() else {
        return Ok(grant);
    };
    if now - checked < cfg.recheck.0.as_secs() as i64 {
        return Ok(grant);
    }
    let Some(idp_rt) = server
        .sealer
        .open(Purpose::IdpToken, sealed)
        .and_then(|b| String::from_utf8(b).ok())
    else {
        tracing::warn!(grant = %grant.id, "the IdP refresh token kept with a grant does not open (another secret?)");
        return Ok(grant);
    };
    let provider = match server.oidc.get(cfg, now) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-check a user at the IdP: it is unreachable");
            return Ok(grant);
        }
    };
    match super::oidc::recheck(&provider, cfg, &idp_rt, &grant.user, now) {
        super::oidc::Recheck::Valid {
            refresh_token,
            user,
        } => {
            claims["idp_refresh"] = server
                .sealer
                .seal(Purpose::IdpToken, refresh_token.as_bytes())
                .into();
            claims["idp_checked"] = now.into();
            if let Some(user) = user {
                let (email, groups) = super::login::idp_claims(cfg, &user);
                claims["email"] = email.into();
                claims["groups"] = groups.into();
            }
            grant.claims = claims.to_string();
            let stored = server.store().set_grant_claims(&grant.id, &grant.claims);
            match stored {
                Ok(_) => Ok(grant),
                Err(e) => Err(unavailable(&e)),
            }
        }
        super::oidc::Recheck::Refused(why) => {
            server.audit_event(
                "user.refused_by_idp",
                &[
                    ("user", &grant.user),
                    ("grant", &grant.id),
                    ("idp_error", &why),
                ],
            );
            server.revoke_grant(s, &grant.id, "the company IdP no longer accepts the user");
            Err(oauth_error(
                400,
                "invalid_grant",
                "the company identity provider no longer accepts this user's login; authorize again",
            ))
        }
        super::oidc::Recheck::Unreachable(e) => {
            tracing::warn!(error = %e, grant = %grant.id, "cannot re-check a user at the IdP; the refresh goes on");
            Ok(grant)
        }
    }
}

/// The token response: an access token for the grant's one resource.
fn issue(
    server: &Server,
    s: &Settings,
    client: &Client,
    grant: &Grant,
    refresh: Option<String>,
    now: i64,
) -> Answer {
    let Some(resource) = s.resource(&grant.resource) else {
        return oauth_error(
            400,
            "invalid_target",
            "the grant's MCP server is no longer served here",
        );
    };
    let ttl = s
        .registered
        .iter()
        .find(|c| c.client_id == client.id)
        .and_then(|c| c.access_ttl)
        .map_or(s.access_ttl, |t| t.0.as_secs() as i64)
        .min(max_access_ttl(s));
    let expires = (now + ttl).min(grant.expires);
    let claims: serde_json::Value = serde_json::from_str(&grant.claims).unwrap_or_default();
    let groups: Vec<String> = claims["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let suffix = server.sealer.token();
    let jti = format!("{}.{}", grant.id, &suffix[..8]);
    let token = mint(
        &server.signing_key(),
        &AccessClaims {
            issuer: &s.issuer,
            subject: &grant.user,
            audience: &resource.audience,
            client_id: &client.id,
            scopes: &grant.scopes,
            email: claims["email"].as_str(),
            groups: &groups,
            issued_at: now,
            expires,
            token_id: &jti,
        },
    );
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires - now,
        "scope": grant.scopes.join(" "),
    });
    if let Some(rt) = refresh {
        body["refresh_token"] = rt.into();
    }
    Answer::json(200, &body)
        .with("cache-control", "no-store")
        .with("pragma", "no-cache")
}

/// `POST /revoke`: a refresh token or an access token of this client; its
/// grant is revoked (every token of it, on every core at once). Unknown
/// tokens get 200 too (RFC 7009 §2.2).
pub(crate) fn revoke(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let form = match form_of(call) {
        Ok(f) => f,
        Err(a) => return a,
    };
    let client = match clients::authenticate(server, s, call, &form, now) {
        Ok(c) => c,
        Err(e) => return client_error(e),
    };
    let Some(token) = form.get("token") else {
        return oauth_error(400, "invalid_request", "token is required");
    };
    let found = server.store().refresh_grant(&hash(token));
    let grant_id = match found {
        Ok(found) => found,
        Err(e) => return unavailable(&e),
    }
    .or_else(|| server.access_token_grant(s, token));
    if let Some(id) = grant_id {
        let grant = server.store().grant(&id);
        match grant {
            Ok(Some(g)) if g.client_id == client.id => {
                server.revoke_grant(s, &id, "revoked by the client (RFC 7009)");
            }
            Ok(_) => tracing::debug!("revocation of another client's token ignored"),
            Err(e) => return unavailable(&e),
        }
    }
    Answer::new(200).with("cache-control", "no-store")
}

impl Server {
    /// The grant of one of our access tokens (expired ones too), by its
    /// signature: never by its unverified claims.
    fn access_token_grant(&self, s: &Settings, token: &str) -> Option<String> {
        s.resources.iter().find_map(|r| {
            let name: std::sync::Arc<str> = super::settings::ISSUER_NAME.into();
            let expect = crate::identity::minted::Expect {
                issuer_name: &name,
                issuer: &s.issuer,
                audience: &r.audience,
                max_lifetime: i64::MAX,
            };
            // Verified as of its issue time, so an expired token still names its grant.
            let iat = crate::identity::minted::issued_at(token)?;
            crate::identity::minted::verify(&self.keys(), token, &expect, iat)
                .ok()
                .map(|p| grant_of(&p).to_string())
        })
    }
}
