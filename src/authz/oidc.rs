//! Logging users in at the company's OpenID Connect IdP, as a relying party
//! written on what the crate already has (ureq, the JWT verification of
//! `identity`): discovery, the authorization request (code + PKCE S256 +
//! `state` + `nonce`), the code exchange (`client_secret_basic`), and the ID
//! token verified with the IdP's JWKS (algorithm allowlist, `iss`, `aud` =
//! our client id, `exp`, `nonce`). Blocking: runs on the control plane.

use super::http::{encode, with_query};
use crate::config::authz::OidcLoginConfig;
use crate::config::identity::IssuerConfig;
use crate::identity::Issuers;
use crate::principal::Principal;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: u64 = 256 * 1024;
/// How long discovery (and the JWKS fetched with it) is kept.
const REDISCOVER_SECS: i64 = 3600;

/// The IdP as its discovery document describes it.
pub(crate) struct Provider {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    id_tokens: Issuers,
}

/// The discovered provider, fetched on first use and again hourly.
#[derive(Default)]
pub(crate) struct Cache(Mutex<Option<(Arc<Provider>, i64)>>);

impl Cache {
    pub(crate) fn get(&self, cfg: &OidcLoginConfig, now: i64) -> Result<Arc<Provider>, String> {
        if let Some((p, at)) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            if now - at < REDISCOVER_SECS {
                return Ok(p.clone());
            }
        }
        let p = Arc::new(discover(cfg)?);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((p.clone(), now));
        Ok(p)
    }
}

fn agent(cfg: &OidcLoginConfig) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false);
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(&ca.0).map_err(|e| format!("reading {}: {e}", ca.0.display()))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .filter_map(Result::ok)
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().into())
}

fn read_json(mut resp: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value, String> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{what}: {e}"))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("{what}: the answer is not JSON (status {status})"))?;
    if status != 200 {
        let err = v.get("error").and_then(Value::as_str).unwrap_or("?");
        return Err(format!("{what}: status {status}, error {err}"));
    }
    Ok(v)
}

fn discover(cfg: &OidcLoginConfig) -> Result<Provider, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        cfg.issuer.trim_end_matches('/')
    );
    let resp = agent(cfg)?
        .get(&url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("IdP discovery {url}: {e}"))?;
    let doc = read_json(resp, "IdP discovery")?;
    let field = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("IdP discovery: no {k}"))
    };
    if field("issuer")? != cfg.issuer {
        return Err(format!(
            "IdP discovery: its issuer is {:?}, not the configured {:?}",
            field("issuer")?,
            cfg.issuer
        ));
    }
    let jwks_uri = field("jwks_uri")?;
    let issuer = IssuerConfig {
        name: "login".into(),
        issuer: cfg.issuer.clone(),
        jwks_uri: Some(jwks_uri),
        jwks_file: None,
        jwks: None,
        algorithms: cfg.algorithms.clone(),
        audiences: Some(vec![cfg.client_id.clone()]),
        leeway: None,
        typ: None,
        max_lifetime: None,
        refresh_interval: None,
    };
    let id_tokens = Issuers::compile(&[issuer], std::path::Path::new(".")).map_err(|e| {
        format!(
            "IdP keys: {}",
            e.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ")
        )
    })?;
    Ok(Provider {
        authorization_endpoint: field("authorization_endpoint")?,
        token_endpoint: field("token_endpoint")?,
        id_tokens,
    })
}

/// Where the browser goes to log in.
pub(crate) fn authorize_url(
    p: &Provider,
    cfg: &OidcLoginConfig,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> String {
    let scope = cfg.scopes.join(" ");
    with_query(
        &p.authorization_endpoint,
        &[
            ("response_type", "code"),
            ("client_id", &cfg.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", &scope),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )
}

/// Exchange the IdP's code and verify its ID token: the user.
pub(crate) fn exchange(
    p: &Provider,
    cfg: &OidcLoginConfig,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
    nonce: &str,
    now: i64,
) -> Result<Principal, String> {
    let mut body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        encode(code),
        encode(redirect_uri),
        encode(verifier)
    );
    let mut req = agent(cfg)?
        .post(&p.token_endpoint)
        .header("accept", "application/json");
    match &cfg.client_secret {
        Some(secret) => {
            let basic = format!("{}:{}", encode(&cfg.client_id), encode(secret));
            req = req.header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, basic)
                ),
            );
        }
        None => body.push_str(&format!("&client_id={}", encode(&cfg.client_id))),
    }
    let resp = req
        .content_type("application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .map_err(|e| format!("IdP token endpoint: {e}"))?;
    let tokens = read_json(resp, "IdP token endpoint")?;
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or("the IdP answered without an id_token")?;
    // A key the IdP rotated in since discovery: fetch its keys once more.
    let verified = match p.id_tokens.verify(id_token, &cfg.client_id, now) {
        Err(crate::identity::AuthError::UnknownKey) => {
            let _ = p.id_tokens.refresh(0);
            p.id_tokens.verify(id_token, &cfg.client_id, now)
        }
        other => other,
    };
    let principal =
        verified.map_err(|e| format!("the IdP's ID token was refused: {}", e.reason()))?;
    if principal.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err("the IdP's ID token does not carry this login's nonce".into());
    }
    Ok(principal)
}
