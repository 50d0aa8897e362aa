//! Discovery's refusals, against a loopback server answering fixed
//! documents (the flow itself runs against oidc-provider and the mcp SDK in
//! tests/e2e/test_vault_discovery.py).

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

type Asked = Arc<Mutex<Vec<String>>>;

/// Serves the documents `docs(origin)` gives (path, status, body) on
/// loopback until the test ends, 404 for any other path. Returns the origin
/// and the paths asked, in order.
fn serve(docs: impl FnOnce(&str) -> Vec<(&'static str, u16, String)>) -> (String, Asked) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let docs = docs(&origin);
    let asked = Asked::default();
    let log = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap() > 2 {
                header.clear();
            }
            let (status, body) = docs
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, "{\"error\":\"not_found\"}".into()));
            log.lock().unwrap().push(path);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (origin, asked)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

fn asked(log: &Asked) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[test]
fn resource_metadata_path_suffixed_first_then_root() {
    let (origin, log) = serve(|o| {
        vec![(
            "/.well-known/oauth-protected-resource",
            200,
            format!("{{\"resource\": \"{o}/mcp\", \"authorization_servers\": [\"{o}\"]}}"),
        )]
    });
    let doc = protected_resource(&agent(), &format!("{origin}/mcp")).unwrap();
    assert_eq!(doc["authorization_servers"][0], origin.as_str());
    assert_eq!(
        asked(&log),
        [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource"
        ]
    );

    let (origin, _) = serve(|_| vec![]);
    let err = protected_resource(&agent(), &format!("{origin}/mcp")).unwrap_err();
    assert!(
        err.starts_with("no resource metadata:") && err.contains("status 404"),
        "{err}"
    );
}

#[test]
fn resource_metadata_for_another_resource_is_refused() {
    // The upstream names its public identifier, not the address portcullis
    // reaches it at: refused, with the way out.
    let (origin, _) = serve(|_| {
        vec![(
            "/.well-known/oauth-protected-resource/mcp",
            200,
            "{\"resource\": \"https://mcp.example.com/mcp\", \"authorization_servers\": [\"https://as.example\"]}".into(),
        )]
    });
    let err = protected_resource(&agent(), &format!("{origin}/mcp")).unwrap_err();
    assert!(
        err.contains("\"https://mcp.example.com/mcp\"") && err.contains("oauth2.resource"),
        "{err}"
    );
}

#[test]
fn server_metadata_must_name_the_same_issuer() {
    // RFC 8414 missing, OpenID discovery answers, for another issuer.
    let (origin, log) = serve(|o| {
        vec![(
            "/.well-known/openid-configuration",
            200,
            format!("{{\"issuer\": \"{o}/\", \"code_challenge_methods_supported\": [\"S256\"]}}"),
        )]
    });
    let err = server_metadata(&agent(), &origin).unwrap_err();
    assert_eq!(
        asked(&log),
        [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration"
        ]
    );
    assert!(
        err.contains(&format!("names the issuer \"{origin}/\"")) && err.contains("discarded"),
        "{err}"
    );

    // An issuer with a path: the RFC 8414 insertion, then both OpenID forms.
    let (origin, log) = serve(|_| vec![]);
    let err = server_metadata(&agent(), &format!("{origin}/tenant")).unwrap_err();
    assert_eq!(
        asked(&log),
        [
            "/.well-known/oauth-authorization-server/tenant",
            "/.well-known/openid-configuration/tenant",
            "/tenant/.well-known/openid-configuration"
        ]
    );
    assert!(err.starts_with("no authorization server metadata"), "{err}");
}

#[test]
fn server_metadata_without_s256_is_refused() {
    for (methods, ok) in [
        ("[\"plain\"]", false),
        ("null", false),
        ("[\"S256\"]", true),
    ] {
        let (origin, _) = serve(|o| {
            vec![(
                "/.well-known/oauth-authorization-server",
                200,
                format!("{{\"issuer\": \"{o}\", \"code_challenge_methods_supported\": {methods}}}"),
            )]
        });
        match server_metadata(&agent(), &origin) {
            Ok(doc) => assert!(ok && doc["issuer"] == origin.as_str(), "{methods}"),
            Err(e) => assert!(!ok && e.contains("PKCE S256"), "{methods}: {e}"),
        }
    }
}

#[test]
fn endpoints_must_be_https_or_loopback() {
    assert!(checked_url("x", "https://as.example/t").is_ok());
    assert!(checked_url("x", "http://127.0.0.1:9/t").is_ok());
    assert!(checked_url("x", "http://localhost/t").is_ok());
    let err = checked_url("token_endpoint", "http://as.example/t").unwrap_err();
    assert!(
        err.contains("token_endpoint") && err.contains("https"),
        "{err}"
    );
    assert!(checked_url("x", "ftp://as.example/").is_err());
    assert!(checked_url("x", "not a url").is_err());
    assert_eq!(
        split("https://as.example:8443/a/b").unwrap(),
        ("https://as.example:8443".to_string(), "/a/b".to_string())
    );
}
