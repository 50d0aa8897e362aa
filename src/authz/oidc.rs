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
    // OIDC Core §11: offline access is asked with prompt=consent.
    let offline = cfg.scopes.iter().any(|s| s == "offline_access");
    let url = with_query(
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
    );
    if offline {
        with_query(&url, &[("prompt", "consent")])
    } else {
        url
    }
}

/// What logging in at the IdP gave: the user, and the IdP's refresh token
/// when it issued one (`offline_access`), kept to re-check the user later.
pub(crate) struct LoggedIn {
    pub user: Principal,
    pub refresh_token: Option<String>,
}

/// A POST to the IdP's token endpoint, authenticated as our client: the
/// answer's status and JSON (`None` when it is not JSON).
fn token_request(
    p: &Provider,
    cfg: &OidcLoginConfig,
    mut body: String,
) -> Result<(u16, Option<Value>), String> {
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
    let mut resp = req
        .content_type("application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .map_err(|e| format!("IdP token endpoint: {e}"))?;
    let status = resp.status().as_u16();
    let raw = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|e| format!("IdP token endpoint: {e}"))?;
    Ok((status, serde_json::from_slice(&raw).ok()))
}

/// Verify an ID token of the IdP (refetching its keys once for an unknown one).
fn verify_id_token(
    p: &Provider,
    cfg: &OidcLoginConfig,
    id_token: &str,
    now: i64,
) -> Result<Principal, String> {
    let verified = match p.id_tokens.verify(id_token, &cfg.client_id, now) {
        Err(crate::identity::AuthError::UnknownKey) => {
            let _ = p.id_tokens.refresh(0);
            p.id_tokens.verify(id_token, &cfg.client_id, now)
        }
        other => other,
    };
    verified.map_err(|e| format!("the IdP's ID token was refused: {}", e.reason()))
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
) -> Result<LoggedIn, String> {
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        encode(code),
        encode(redirect_uri),
        encode(verifier)
    );
    let tokens = match token_request(p, cfg, body)? {
        (200, Some(v)) => v,
        (status, v) => {
            let err = v
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            return Err(format!("IdP token endpoint: status {status}, error {err}"));
        }
    };
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or("the IdP answered without an id_token")?;
    let user = verify_id_token(p, cfg, id_token, now)?;
    if user.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err("the IdP's ID token does not carry this login's nonce".into());
    }
    let refresh_token = tokens
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(LoggedIn {
        user,
        refresh_token,
    })
}

/// What asking the IdP again about a user found.
pub(crate) enum Recheck {
    /// Still valid: its next refresh token (rotated or the same), and the
    /// user's claims when it sent a new ID token for the same subject.
    Valid {
        refresh_token: String,
        user: Option<Box<Principal>>,
    },
    /// The IdP refused (`invalid_grant`: the user was disabled, logged out
    /// everywhere, or the IdP forgot the session).
    Refused(String),
    /// The IdP could not be asked (network, 5xx): nothing is concluded.
    Unreachable(String),
}

/// Refresh at the IdP with its refresh token: is the user still there?
pub(crate) fn recheck(
    p: &Provider,
    cfg: &OidcLoginConfig,
    refresh_token: &str,
    sub: &str,
    now: i64,
) -> Recheck {
    let body = format!(
        "grant_type=refresh_token&refresh_token={}",
        encode(refresh_token)
    );
    let (status, answer) = match token_request(p, cfg, body) {
        Ok(r) => r,
        Err(e) => return Recheck::Unreachable(e),
    };
    let error = answer
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str);
    match (status, answer.as_ref()) {
        (200, Some(v)) => {
            let user = v
                .get("id_token")
                .and_then(Value::as_str)
                .and_then(|t| verify_id_token(p, cfg, t, now).ok())
                .filter(|u| u.sub == sub)
                .map(Box::new);
            Recheck::Valid {
                refresh_token: v
                    .get("refresh_token")
                    .and_then(Value::as_str)
                    .unwrap_or(refresh_token)
                    .to_string(),
                user,
            }
        }
        (400 | 401, _)
            if matches!(
                error,
                Some("invalid_grant" | "unauthorized_client" | "invalid_client")
            ) =>
        {
            Recheck::Refused(error.unwrap_or("?").to_string())
        }
        (status, _) => Recheck::Unreachable(format!(
            "IdP token endpoint: status {status}, error {}",
            error.unwrap_or("?")
        )),
    }
}
