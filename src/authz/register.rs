//! RFC 7591 dynamic client registration, for the clients that need it
//! (Cursor; claude.ai when metadata documents are off). Public clients
//! (`none`) and confidential ones (`client_secret_post`/`_basic`, a secret
//! generated here, kept only as a hash). Redirect URIs checked by `redirect`
//! (private-use schemes for public clients, loopback any port); unknown
//! grant types dropped, `grant_types` echoed; absent fields omitted, never
//! `null` (the TypeScript SDK refuses nulls). Rate-limited per source
//! address; a registration lapses after `registration_ttl` and is swept.

use super::http::{Answer, Call};
use super::server::{Counters, Server};
use super::settings::Settings;
use super::token::oauth_error;
use crate::store::{Client, ClientKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Registrations per source address per minute.
const PER_MINUTE: u32 = 20;

/// A fixed-window count of registrations per source address.
#[derive(Default)]
pub(crate) struct Limiter(Mutex<HashMap<IpAddr, (i64, u32)>>);

impl Limiter {
    fn allow(&self, ip: IpAddr, now: i64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, (minute, _)| *minute == now / 60);
        }
        let e = m.entry(ip).or_insert((now / 60, 0));
        if e.0 != now / 60 {
            *e = (now / 60, 0);
        }
        e.1 += 1;
        e.1 <= PER_MINUTE
    }
}

fn invalid_metadata(why: &str) -> Answer {
    oauth_error(400, "invalid_client_metadata", why)
}

pub(crate) fn register(server: &Server, s: &Settings, call: &Call) -> Answer {
    if !s.dynamic_registration {
        return oauth_error(
            404,
            "invalid_request",
            "dynamic client registration is off on this server",
        );
    }
    let now = crate::authz::unix_now();
    if !server.limiter.allow(call.peer, now) {
        return oauth_error(
            429,
            "invalid_request",
            "too many registrations from this address; try again in a minute",
        )
        .with("retry-after", "60");
    }
    if !call.header("content-type").is_some_and(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    }) {
        return oauth_error(
            400,
            "invalid_request",
            "the registration request must be application/json",
        );
    }
    let meta: Value = match serde_json::from_slice(&call.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid_metadata("the body is not a JSON object"),
    };
    let method = match meta.get("token_endpoint_auth_method") {
        None | Some(Value::Null) => "none",
        Some(Value::String(m))
            if matches!(
                m.as_str(),
                "none" | "client_secret_post" | "client_secret_basic"
            ) =>
        {
            m.as_str()
        }
        Some(_) => return invalid_metadata(
            "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
        ),
    };
    let public = method == "none";
    let redirect_uris = match strings(&meta, "redirect_uris") {
        Some(v) if !v.is_empty() => v,
        _ => {
            return oauth_error(
                400,
                "invalid_redirect_uri",
                "redirect_uris must be a non-empty array of strings",
            )
        }
    };
    for uri in &redirect_uris {
        if let Err(e) = super::redirect::check(uri, public) {
            return oauth_error(
                400,
                "invalid_redirect_uri",
                &format!("{}: {}", e.reason(), clip(uri)),
            );
        }
    }
    let grant_types = match meta.get("grant_types") {
        None | Some(Value::Null) => vec![
            "authorization_code".to_string(),
            "refresh_token".to_string(),
        ],
        Some(_) => match strings(&meta, "grant_types") {
            Some(g) => g
                .into_iter()
                .filter(|g| g == "authorization_code" || g == "refresh_token")
                .collect(),
            None => return invalid_metadata("grant_types must be an array of strings"),
        },
    };
    if !grant_types.iter().any(|g| g == "authorization_code") {
        return invalid_metadata("grant_types must include authorization_code");
    }
    if let Some(rt) = strings(&meta, "response_types") {
        if rt.iter().any(|t| t != "code") {
            return invalid_metadata("only the response type `code` is supported");
        }
    }
    let name = match meta.get("client_name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.chars().take(100).collect(),
        _ => "unnamed client".to_string(),
    };
    let id = format!("dyn-{}", server.sealer.token());
    let secret = (!public).then(|| server.sealer.token());
    let client = Client {
        id: id.clone(),
        name: name.clone(),
        redirect_uris: redirect_uris.clone(),
        kind: ClientKind::Dynamic,
        secret_hash: secret.as_deref().map(super::seal::hash),
        grant_types: grant_types.clone(),
        created: now,
        expires: Some(now + s.registration_ttl),
    };
    if let Err(e) = server.store().put_client(&client) {
        return super::server::unavailable(&e);
    }
    Counters::bump(&server.counters.registrations);
    server.audit_event(
        "client.registered",
        &[
            ("client_id", &id),
            ("client_name", &name),
            ("auth_method", method),
            ("source", &call.peer.to_string()),
        ],
    );
    let mut out = json!({
        "client_id": id,
        "client_id_issued_at": now,
        "client_name": name,
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    });
    if let Some(secret) = secret {
        out["client_secret"] = secret.into();
        out["client_secret_expires_at"] = 0.into();
    }
    for echo in [
        "application_type",
        "scope",
        "client_uri",
        "logo_uri",
        "software_id",
        "software_version",
    ] {
        if let Some(Value::String(v)) = meta.get(echo) {
            out[echo] = v.clone().into();
        }
    }
    Answer::json(201, &out).with("cache-control", "no-store")
}

fn strings(meta: &Value, key: &str) -> Option<Vec<String>> {
    meta.get(key)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// A client-supplied value, shortened for an error description.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(120).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}
