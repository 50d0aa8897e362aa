//! RFC 8414 authorization server metadata, also served at the OIDC discovery
//! path (MCP clients of the 2025-11-25 revision try both). Absolute URLs;
//! `S256` only; `none` among the token endpoint's methods (claude.ai uses
//! metadata documents only then); the metadata-document and `iss` flags;
//! `offline_access` listed (claude-ai-mcp#42).

use super::http::Answer;
use super::settings::Settings;

pub(crate) fn answer(s: &Settings) -> Answer {
    let mut scopes: Vec<&str> = Vec::new();
    for r in &s.resources {
        for sc in &r.scopes {
            if !scopes.contains(&sc.as_str()) {
                scopes.push(sc);
            }
        }
    }
    scopes.push("offline_access");
    let mut doc = serde_json::json!({
        "issuer": s.issuer,
        "authorization_endpoint": s.url("/authorize"),
        "token_endpoint": s.url("/token"),
        "revocation_endpoint": s.url("/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": s.cimd.is_some(),
    });
    if s.dynamic_registration {
        doc["registration_endpoint"] = s.url("/register").into();
    }
    Answer::json(200, &doc).with("cache-control", "max-age=300")
}

/// The answer to a CORS preflight of the OAuth endpoints (browser clients
/// such as the MCP Inspector): any origin, no credentials.
pub(crate) fn preflight() -> Answer {
    Answer::new(204)
        .with("access-control-allow-origin", "*")
        .with("access-control-allow-methods", "GET, POST, OPTIONS")
        .with(
            "access-control-allow-headers",
            "Authorization, Content-Type, MCP-Protocol-Version",
        )
        .with("access-control-max-age", "600")
}
