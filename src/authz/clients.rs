//! Who a client is: one from the configuration, a dynamically registered
//! one (store), or a Client ID Metadata Document (an `https://` client id,
//! fetched hardened by `cimd` and kept in the store as a cached record that
//! every thread, and later every instance, sees). And client authentication
//! at the token and revocation endpoints.

use super::http::{Call, Form};
use super::seal;
use super::server::{Counters, Server};
use super::settings::Settings;
use crate::store::{Client, ClientKind, StoreError};

#[derive(Debug)]
pub(crate) enum ClientError {
    Unknown,
    /// The metadata document could not be used (why, never its content).
    Document(String),
    BadCredentials,
    /// A confidential client that did not authenticate, or a public one
    /// that sent a secret.
    WrongMethod(&'static str),
    Store(StoreError),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unknown => f.write_str("unknown client"),
            ClientError::Document(why) => write!(f, "client metadata document refused: {why}"),
            ClientError::BadCredentials => f.write_str("client authentication failed"),
            ClientError::WrongMethod(why) => f.write_str(why),
            ClientError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Store(e)
    }
}

/// The client with this id, wherever it is known from.
pub(crate) fn find(
    server: &Server,
    s: &Settings,
    id: &str,
    now: i64,
) -> Result<Client, ClientError> {
    if let Some(c) = s.registered.iter().find(|c| c.client_id == id) {
        return Ok(Client {
            id: c.client_id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.client_id.clone()),
            redirect_uris: c.redirect_uris.clone(),
            kind: ClientKind::Registered,
            secret_hash: c.client_secret.as_deref().map(seal::hash),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            created: 0,
            expires: None,
        });
    }
    let stored = server.store().client(id, now)?;
    if let Some(c) = stored {
        return Ok(c);
    }
    if id.starts_with("https://") {
        return resolve_document(server, s, id, now);
    }
    Err(ClientError::Unknown)
}

/// Fetch, check and keep a Client ID Metadata Document.
fn resolve_document(
    server: &Server,
    s: &Settings,
    url: &str,
    now: i64,
) -> Result<Client, ClientError> {
    let Some(policy) = server.cimd_policy(s) else {
        return Err(ClientError::Document(
            "this server does not accept client metadata documents".into(),
        ));
    };
    let client = super::cimd::resolve(&policy, url, now)
        .map_err(|e| ClientError::Document(e.reason().to_string()))?;
    Counters::bump(&server.counters.metadata_documents);
    // A document that must not be cached is used for this request only.
    if client.expires.is_some_and(|e| e > now) {
        server.store().put_client(&client)?;
    }
    Ok(client)
}

/// The client a token or revocation request comes from, authenticated:
/// HTTP Basic (`client_secret_basic`), form fields (`client_secret_post`), or
/// a public client's bare `client_id` (`none`).
pub(crate) fn authenticate(
    server: &Server,
    s: &Settings,
    call: &Call,
    form: &Form,
    now: i64,
) -> Result<Client, ClientError> {
    let basic = call.header("authorization").and_then(basic_credentials);
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(_), _, Some(_)) => {
            return Err(ClientError::WrongMethod(
                "use one client authentication method, not two",
            ))
        }
        (Some((id, secret)), form_id, None) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(ClientError::BadCredentials);
            }
            (id, Some(secret))
        }
        (None, Some(id), secret) => (id.to_string(), secret.map(str::to_string)),
        (None, None, _) => return Err(ClientError::WrongMethod("client_id is required")),
    };
    let client = find(server, s, &id, now)?;
    match (&client.secret_hash, secret) {
        (None, None) => Ok(client),
        (None, Some(_)) => Err(ClientError::WrongMethod(
            "this is a public client: it authenticates with no secret",
        )),
        (Some(_), None) => Err(ClientError::WrongMethod(
            "this client must authenticate with its secret",
        )),
        (Some(want), Some(got)) if seal::same(want, &seal::hash(&got)) => Ok(client),
        (Some(_), Some(_)) => Err(ClientError::BadCredentials),
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, rest.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let v = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "ops%3Acli:s3cr%2Bt"
            )
        );
        assert_eq!(
            basic_credentials(&v),
            Some(("ops:cli".into(), "s3cr+t".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!"), None);
    }
}
