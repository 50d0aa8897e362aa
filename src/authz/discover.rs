//! portcullis as an OAuth client of a route's upstream (issue 12): either the
//! endpoints and registration the route configures, or, with `discover:
//! true`, what the upstream publishes. Discovery reads the upstream's RFC 9728
//! protected resource metadata (at the path-suffixed well-known URL of the
//! route's `to`, then the root one), takes its authorization server, reads
//! that server's RFC 8414 metadata (then OpenID discovery), checks the
//! `issuer` is byte-identical and PKCE S256 is supported, and registers
//! portcullis there when no `client_id` is configured: a client metadata
//! document (portcullis's own, served at `/.portcullis/upstream/client`) when
//! the server supports them and portcullis's issuer is https, else dynamic
//! registration (RFC 7591), kept in the store so every restart and every
//! instance uses the client the users' tokens were issued to.
//!
//! Control-plane code: blocking HTTP with deadlines; the result is kept an
//! hour (a failure 30 s, so the refresher does not hammer a broken upstream).

use super::http::Answer;
use super::server::Server;
use super::settings::{Resource, Settings};
use crate::config::authz::UpstreamOAuth2;
use crate::store::UpstreamClient;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: u64 = 64 * 1024;
const KEEP_SECS: i64 = 3600;
const FAILED_SECS: i64 = 30;
/// Where portcullis's own client metadata document is served.
pub(crate) const DOCUMENT_PATH: &str = "/.portcullis/upstream/client";
const CALLBACK_PATH: &str = "/.portcullis/upstream/callback";

/// portcullis as a client of one route's upstream authorization server.
pub(crate) struct Upstream {
    pub client_id: String,
    pub client_secret: Option<zeroize::Zeroizing<String>>,
    pub authorization_url: String,
    pub token_url: String,
    pub revocation_url: Option<String>,
    /// The upstream's issuer: the callback's `iss` must equal it.
    pub issuer: Option<String>,
    /// The server says it sends `iss` (RFC 9207): a callback without it is refused.
    pub iss_required: bool,
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` sent with every request.
    pub resource: Option<String>,
    /// Registered dynamically by portcullis (forgotten when the upstream no
    /// longer knows it).
    pub registered: bool,
}

impl Upstream {
    fn configured(o: &UpstreamOAuth2) -> Upstream {
        Upstream {
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone().map(zeroize::Zeroizing::new),
            authorization_url: o.authorization_url.clone(),
            token_url: o.token_url.clone(),
            revocation_url: o.revocation_url.clone(),
            issuer: o.issuer.clone(),
            iss_required: false,
            scopes: o.scopes.clone(),
            resource: o.resource.clone(),
            registered: false,
        }
    }
}

type Found = Result<Arc<Upstream>, String>;

/// What discovery found per route, and when; one slot per route, so a slow
/// upstream holds up only its own route.
#[derive(Default)]
pub(crate) struct Cache(Mutex<HashMap<String, Slot>>);

type Slot = Arc<Mutex<Option<(Found, i64)>>>;

impl Cache {
    fn slot(&self, route: &str) -> Slot {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(route.to_string()).or_default().clone()
    }
}

impl Server {
    /// portcullis as a client of `route`'s upstream, or why not (a text
    /// naming URLs, never a secret).
    pub(crate) fn upstream_client(&self, s: &Settings, route: &str) -> Found {
        let r = s
            .resources
            .iter()
            .find(|r| r.route == route)
            .ok_or_else(|| format!("route {route:?} accepts no portcullis tokens"))?;
        let o = r
            .upstream
            .as_ref()
            .ok_or_else(|| format!("route {route:?} has no upstream_auth.oauth2"))?;
        if !o.discover {
            return Ok(Arc::new(Upstream::configured(o)));
        }
        let now = crate::authz::unix_now();
        let slot = self.discovered.slot(route);
        // One discovery per route at a time: the others wait for its result.
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((found, at)) = &*slot {
            let keep = if found.is_ok() {
                KEEP_SECS
            } else {
                FAILED_SECS
            };
            if now - at < keep {
                return found.clone();
            }
        }
        let found = discover(self, s, r, o, now).map(Arc::new);
        match &found {
            Ok(u) => {
                tracing::info!(route, issuer = ?u.issuer, client_id = %u.client_id, "upstream discovered")
            }
            Err(e) => tracing::warn!(route, error = %e, "upstream discovery failed"),
        }
        *slot = Some((found.clone(), now));
        found
    }

    /// The upstream refused our client (`invalid_client`): a dynamic
    /// registration is forgotten, so that the next use registers anew.
    pub(crate) fn forget_upstream_client(&self, route: &str, up: &Upstream) {
        if !up.registered {
            return;
        }
        let issuer = up.issuer.as_deref().unwrap_or_default();
        let deleted = self
            .store()
            .delete_upstream_client(route, issuer, &up.client_id);
        if let Err(e) = deleted {
            tracing::warn!(route, error = %e, "cannot forget an upstream registration");
        }
        *self
            .discovered
            .slot(route)
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// `GET /.portcullis/upstream/client`: portcullis's client metadata
/// document, for upstream authorization servers that take them.
pub(crate) fn document(s: &Settings) -> Answer {
    Answer::json(200, &client_metadata(s, Some(&s.url(DOCUMENT_PATH))))
        .with("cache-control", "public, max-age=3600")
}

fn client_metadata(s: &Settings, client_id: Option<&str>) -> Value {
    let host = crate::authz::Uri::parse(&s.issuer)
        .and_then(|u| u.authority.map(|a| a.host.to_string()))
        .unwrap_or_default();
    let mut doc = json!({
        "client_name": format!("portcullis at {host}"),
        "client_uri": s.issuer,
        "redirect_uris": [s.url(CALLBACK_PATH)],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    if let Some(id) = client_id {
        doc["client_id"] = json!(id);
    }
    doc
}

fn discover(
    server: &Server,
    s: &Settings,
    r: &Resource,
    o: &UpstreamOAuth2,
    now: i64,
) -> Result<Upstream, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let expected = o.resource.as_deref().unwrap_or(&r.upstream_url);
    let prm = protected_resource(&agent, expected)?;
    let issuer = prm
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or("the upstream's resource metadata names no authorization server")?
        .to_string();
    checked_url("authorization server", &issuer)?;
    let meta = server_metadata(&agent, &issuer)?;
    let endpoint = |k: &str| -> Result<Option<String>, String> {
        match meta.get(k).and_then(Value::as_str) {
            Some(u) => checked_url(k, u).map(|_| Some(u.to_string())),
            None => Ok(None),
        }
    };
    let authorization_url = endpoint("authorization_endpoint")?
        .ok_or(format!("{issuer}'s metadata has no authorization_endpoint"))?;
    let token_url =
        endpoint("token_endpoint")?.ok_or(format!("{issuer}'s metadata has no token_endpoint"))?;
    let scopes = if o.scopes.is_empty() {
        strings(prm.get("scopes_supported"))
    } else {
        o.scopes.clone()
    };
    let mut up = Upstream {
        client_id: o.client_id.clone(),
        client_secret: o.client_secret.clone().map(zeroize::Zeroizing::new),
        authorization_url,
        token_url,
        revocation_url: endpoint("revocation_endpoint")?,
        iss_required: meta
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        issuer: Some(issuer),
        scopes,
        resource: prm
            .get("resource")
            .and_then(Value::as_str)
            .map(str::to_string),
        registered: false,
    };
    if up.client_id.is_empty() {
        register(server, s, &r.route, &meta, &mut up, &agent, now)?;
    }
    Ok(up)
}

/// RFC 9728 metadata of `resource`: path-suffixed well-known URL, then the
/// root one. Its `resource` must be `resource` (RFC 9728 §3.3).
fn protected_resource(agent: &ureq::Agent, resource: &str) -> Result<Value, String> {
    let (origin, path) = split(resource)?;
    let mut urls = Vec::new();
    if !path.is_empty() && path != "/" {
        urls.push(format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ));
    }
    urls.push(format!("{origin}/.well-known/oauth-protected-resource"));
    let (url, doc) = first_json(agent, &urls, "resource metadata")?;
    let named = doc.get("resource").and_then(Value::as_str).unwrap_or("");
    if named.trim_end_matches('/') != resource.trim_end_matches('/') {
        return Err(format!(
            "{url} describes the resource {named:?}, not {resource:?} (set oauth2.resource to the upstream's public identifier)"
        ));
    }
    Ok(doc)
}

/// RFC 8414 metadata of `issuer`, then OpenID discovery (both insertion
/// orders for an issuer with a path); `issuer` byte-identical, PKCE S256.
fn server_metadata(agent: &ureq::Agent, issuer: &str) -> Result<Value, String> {
    let (origin, path) = split(issuer)?;
    let path = path.trim_end_matches('/');
    let urls = [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}/.well-known/openid-configuration{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ];
    let urls = if path.is_empty() {
        &urls[..2]
    } else {
        &urls[..]
    };
    let (url, doc) = first_json(agent, urls, "authorization server metadata")?;
    let named = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if named != issuer {
        return Err(format!(
            "{url} names the issuer {named:?}, not {issuer:?}: discarded (RFC 8414 §3.3)"
        ));
    }
    if !strings(doc.get("code_challenge_methods_supported"))
        .iter()
        .any(|m| m == "S256")
    {
        return Err(format!(
            "{issuer} does not say it supports PKCE S256 (code_challenge_methods_supported)"
        ));
    }
    Ok(doc)
}

/// Registers portcullis at the upstream's authorization server, or takes
/// the registration kept in the store.
fn register(
    server: &Server,
    s: &Settings,
    route: &str,
    meta: &Value,
    up: &mut Upstream,
    agent: &ureq::Agent,
    now: i64,
) -> Result<(), String> {
    let issuer = up.issuer.clone().unwrap_or_default();
    let documents = meta
        .get("client_id_metadata_document_supported")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if documents && s.issuer.starts_with("https://") {
        up.client_id = s.url(DOCUMENT_PATH);
        return Ok(());
    }
    let vault = server.vault().ok_or("no vault")?;
    let kept = server.store().upstream_client(route, &issuer);
    if let Some(c) = kept.map_err(|e| e.to_string())? {
        let secret = match &c.secret {
            None => Some(None),
            Some((kid, sealed)) => vault
                .open_client_secret(route, &issuer, &c.client_id, (kid, sealed))
                .map(Some),
        };
        if let Some(secret) = secret {
            up.client_id = c.client_id;
            up.client_secret = secret;
            up.registered = true;
            return Ok(());
        }
        // Sealed under a key no longer configured: register anew.
        let _ = server
            .store()
            .delete_upstream_client(route, &issuer, &c.client_id);
    }
    let endpoint = meta
        .get("registration_endpoint")
        .and_then(Value::as_str)
        .ok_or(format!(
            "{issuer} offers neither dynamic registration nor (for an https portcullis) client metadata documents: set oauth2.client_id"
        ))?;
    checked_url("registration_endpoint", endpoint)?;
    // No `scope`: servers refuse a registration naming scopes they do not
    // list, and the authorization request names them anyway.
    let body = client_metadata(s, None);
    let resp = agent
        .post(endpoint)
        .header("accept", "application/json")
        .content_type("application/json")
        .send(body.to_string().as_bytes())
        .map_err(|e| format!("registering at {endpoint}: {e}"))?;
    let (status, answer) = read_json(resp, endpoint)?;
    if status != 201 && status != 200 {
        let field =
            |k: &str| super::register::clip(answer.get(k).and_then(Value::as_str).unwrap_or("?"));
        return Err(format!(
            "registering at {endpoint}: status {status}, error {} ({})",
            field("error"),
            field("error_description")
        ));
    }
    let client_id = answer
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or(format!("registering at {endpoint}: no client_id"))?;
    let secret = answer.get("client_secret").and_then(Value::as_str);
    let record = UpstreamClient {
        route: route.to_string(),
        issuer: issuer.clone(),
        client_id: client_id.to_string(),
        secret: secret.map(|x| vault.seal_client_secret(route, &issuer, client_id, x)),
        created: now,
    };
    let stored = server.store().put_upstream_client(&record);
    let stored = stored.map_err(|e| e.to_string())?;
    if stored.client_id == client_id {
        up.client_secret = secret.map(|x| zeroize::Zeroizing::new(x.to_string()));
        server.audit_event(
            "upstream.registered",
            &[
                ("route", route),
                ("issuer", &issuer),
                ("client_id", client_id),
            ],
        );
    } else {
        // Another thread or instance registered first: use its registration.
        up.client_secret = match &stored.secret {
            None => None,
            Some((kid, sealed)) => Some(
                vault
                    .open_client_secret(route, &issuer, &stored.client_id, (kid, sealed))
                    .ok_or("the kept upstream registration does not open")?,
            ),
        };
    }
    up.client_id = stored.client_id;
    up.registered = true;
    Ok(())
}

/// The first of `urls` that answers 200 with a JSON object.
fn first_json(agent: &ureq::Agent, urls: &[String], what: &str) -> Result<(String, Value), String> {
    let mut tried = Vec::new();
    for url in urls {
        match agent.get(url).header("accept", "application/json").call() {
            Ok(resp) => match read_json(resp, url) {
                Ok((200, doc)) if doc.is_object() => return Ok((url.clone(), doc)),
                Ok((status, _)) => tried.push(format!("{url}: status {status}")),
                Err(e) => tried.push(e),
            },
            Err(e) => tried.push(format!("{url}: {e}")),
        }
    }
    Err(format!("no {what}: {}", tried.join("; ")))
}

fn read_json(
    mut resp: ureq::http::Response<ureq::Body>,
    url: &str,
) -> Result<(u16, Value), String> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    let v = serde_json::from_slice(&body)
        .map_err(|_| format!("{url}: status {status}, the answer is not JSON"))?;
    Ok((status, v))
}

/// `https://host:port` and the path of an absolute http(s) URL.
fn split(url: &str) -> Result<(String, String), String> {
    let u = crate::authz::Uri::parse(url).ok_or(format!("{url:?} is not a URL"))?;
    let a = u.authority.as_ref().ok_or(format!("{url:?} has no host"))?;
    let port = a.port.map(|p| format!(":{p}")).unwrap_or_default();
    Ok((
        format!("{}://{}{port}", u.scheme, a.host),
        u.path.to_string(),
    ))
}

/// https, or http on loopback.
fn checked_url(what: &str, url: &str) -> Result<(), String> {
    let ok = crate::authz::Uri::parse(url).is_some_and(|u| {
        u.scheme == "https"
            || (u.scheme == "http" && u.authority.as_ref().is_some_and(|a| a.is_loopback()))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {url:?} must be https (http on loopback only)"
        ))
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
