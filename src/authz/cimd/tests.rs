//! Tests of `authz::cimd`.

use super::*;
use std::net::TcpListener;
use std::sync::OnceLock;
use std::thread;

// -- The URL ------------------------------------------------------------

#[test]
fn urls_follow_the_drafts_rules() {
    for ok in [
        "https://claude.ai/oauth/mcp-oauth-client-metadata",
        "https://claude.ai/oauth/claude-code-client-metadata",
        "https://chatgpt.com/oauth/abc123/client.json",
        "https://vscode.dev/oauth/client-metadata.json",
        "https://Claude.AI/x",
        "https://example.com:8443/client",
        "https://127.0.0.1:9/c.json",
        "https://[::1]:9/c.json",
        "https://a.example/x%20y/z.json",
        "https://a.example/a/",
        "https://a.example/...",
        "https://a.example/.well-known/x",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    for (bad, why) in [
        ("http://claude.ai/oauth/x", Refused::NotHttps),
        ("HTTP://claude.ai/oauth/x", Refused::NotHttps),
        ("ftp://claude.ai/x", Refused::NotHttps),
        ("https:/claude.ai/x", Refused::NotUrl),
        ("claude.ai/x", Refused::NotUrl),
        ("", Refused::NotUrl),
        ("https://claude.ai/a b", Refused::NotUrl),
        ("https://claude.ai/a\\..\\b", Refused::NotUrl),
        ("https://claude.ai/é", Refused::NotUrl),
        ("https://claude.ai/%zz", Refused::NotUrl),
        ("https://claude.ai/%2", Refused::NotUrl),
        ("https://claude.ai", Refused::NoPath),
        ("https://claude.ai/", Refused::NoPath),
        ("https://claude.ai:443/", Refused::NoPath),
        ("https://claude.ai/oauth/./x", Refused::DotSegment),
        ("https://claude.ai/oauth/../x", Refused::DotSegment),
        ("https://claude.ai/oauth/..", Refused::DotSegment),
        ("https://claude.ai/.", Refused::DotSegment),
        ("https://claude.ai/oauth/%2e%2E/x", Refused::DotSegment),
        ("https://claude.ai/oauth/.%2e/x", Refused::DotSegment),
        ("https://claude.ai/x#f", Refused::Fragment),
        ("https://claude.ai/x#", Refused::Fragment),
        ("https://claude.ai/x?v=1", Refused::Query),
        ("https://claude.ai/x?", Refused::Query),
        ("https://user@claude.ai/x", Refused::Userinfo),
        ("https://claude.ai@evil.example/x", Refused::Userinfo),
        ("https://claude.ai:pw@evil.example/x", Refused::Userinfo),
        ("https://claude..ai/x", Refused::BadHost),
        ("https://claude.ai./x", Refused::BadHost),
        ("https://cla_ude.ai/x", Refused::BadHost),
        ("https://claude%2eai/x", Refused::BadHost),
        ("https://[::1/x", Refused::NotUrl),
        ("https://[claude.ai]/x", Refused::BadHost),
        ("https://claude.ai:99999/x", Refused::NotUrl),
    ] {
        assert_eq!(check_url(bad), Err(why), "{bad}");
    }
}

#[test]
fn the_allowlist_takes_domains_and_their_subdomains() {
    let p = CimdPolicy::default();
    for ok in [
        "claude.ai",
        "CLAUDE.AI",
        "x.claude.ai",
        "a.b.claude.com",
        "chatgpt.com",
        "vscode.dev",
        "insiders.vscode.dev",
    ] {
        assert!(p.allowed(ok), "{ok}");
    }
    for not in [
        "evilclaude.ai",
        "claude.ai.evil.example",
        "claude.aix",
        "ai",
        "",
        ".claude.ai.x",
        "openai.com",
        "127.0.0.1",
    ] {
        assert!(!p.allowed(not), "{not}");
    }
    let dotted = CimdPolicy {
        allowed_domains: vec![".example.org".into(), String::new()],
        ..CimdPolicy::default()
    };
    assert!(dotted.allowed("example.org") && dotted.allowed("a.example.org"));
    assert!(!dotted.allowed("x.") && !dotted.allowed("anything"));
    let open = CimdPolicy {
        open: true,
        ..CimdPolicy::default()
    };
    assert!(open.allowed("anything.example"));
}

// -- Addresses ----------------------------------------------------------

#[test]
fn special_use_addresses() {
    let special = [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.0.1",
        "169.254.169.254",
        "169.254.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.31.196.1",
        "192.52.193.1",
        "192.88.99.1",
        "192.168.1.1",
        "192.175.48.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "100::1",
        "2001::1",
        "2001:2::1",
        "2001:1ff:ffff::1",
        "2001:db8::1",
        "2002:a00:1::1",
        "3fff::1",
        "3fff:fff::1",
        "5f00::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
    ];
    for ip in special {
        assert!(special_use(ip.parse().unwrap()), "{ip} is special-use");
    }
    let public = [
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.1",
        "126.255.255.255",
        "128.0.0.1",
        "169.253.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.0.1.1",
        "192.167.1.1",
        "198.17.0.1",
        "198.20.0.1",
        "223.255.255.255",
        "160.79.104.10",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
        "2001:200::1",
        "2001:4860:4860::8888",
        "3ffe::1",
        "3fff:1000::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ];
    for ip in public {
        assert!(!special_use(ip.parse().unwrap()), "{ip} is public");
    }
}

#[test]
fn hosts_are_vetted_on_all_their_addresses() {
    let at = |s: &str| vec![SocketAddr::new(s.parse().unwrap(), 443)];
    assert_eq!(vet(&at("127.0.0.1"), true), Ok(()));
    assert_eq!(vet(&at("::1"), true), Ok(()));
    assert_eq!(vet(&at("127.0.0.1"), false), Err(Refused::SpecialUse));
    // Only true loopback is excepted, not its mapped forms or the rest.
    for s in ["::ffff:127.0.0.1", "10.0.0.1", "169.254.169.254", "0.0.0.0"] {
        assert_eq!(vet(&at(s), true), Err(Refused::SpecialUse), "{s}");
    }
    // One bad address among good ones refuses the host.
    let mixed = [at("8.8.8.8"), at("10.0.0.1")].concat();
    assert_eq!(vet(&mixed, false), Err(Refused::SpecialUse));
    assert_eq!(vet(&at("8.8.8.8"), false), Ok(()));
}

// -- Cache lifetime -----------------------------------------------------

#[test]
fn cache_control_is_honoured_within_bounds() {
    let p = CimdPolicy::default();
    for (headers, want) in [
        (&[][..], 3600),
        (&["max-age=600"][..], 600),
        (&["public, max-age=7200"][..], 7200),
        (&["MAX-AGE=\"120\""][..], 120),
        (&["max-age=10"][..], MIN_MAX_AGE),
        (&["max-age=0"][..], MIN_MAX_AGE),
        (&["max-age=9999999"][..], 86400),
        (&["max-age=99999999999999999999999"][..], 86400),
        (&["max-age=abc"][..], MIN_MAX_AGE),
        (&["max-age=-5"][..], MIN_MAX_AGE),
        (&["max-age=600", "max-age=300"][..], 300),
        (&["no-store"][..], 0),
        (&["max-age=600, no-store"][..], 0),
        (&["public", "No-Cache"][..], 0),
        (&["private, must-revalidate"][..], 3600),
    ] {
        assert_eq!(p.max_age(headers.iter().copied()), want, "{headers:?}");
    }
    let odd = CimdPolicy {
        default_max_age: 999_999,
        max_max_age: 10,
        ..CimdPolicy::default()
    };
    assert_eq!(odd.max_age([]), MIN_MAX_AGE);
    assert_eq!(odd.max_age(["max-age=3600"]), MIN_MAX_AGE);
}

// -- The document -------------------------------------------------------

const CLAUDE: &str = "https://claude.ai/oauth/mcp-oauth-client-metadata";
const CLAUDE_CODE: &str = "https://claude.ai/oauth/claude-code-client-metadata";
const CHATGPT: &str = "https://chatgpt.com/oauth/abc123/client.json";
const VSCODE: &str = "https://vscode.dev/oauth/client-metadata.json";

/// The documents of OAUTH.md §2.1, in their published shapes.
fn real_documents() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        (
            CLAUDE,
            json!({
                "client_id": CLAUDE,
                "client_name": "Claude",
                "client_uri": "https://claude.ai",
                "redirect_uris": ["https://claude.ai/api/mcp/auth_callback",
                                  "https://claude.com/api/mcp/auth_callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            }),
        ),
        (
            CLAUDE_CODE,
            json!({
                "client_id": CLAUDE_CODE,
                "client_name": "Claude Code",
                "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            }),
        ),
        (
            CHATGPT,
            json!({
                "client_id": CHATGPT,
                "client_name": "ChatGPT",
                "redirect_uris": ["https://chatgpt.com/connector/oauth/abc123",
                                  "https://chatgpt.com/connector_platform_oauth_redirect"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
                "token_endpoint_auth_signing_alg": "RS256",
                "jwks_uri": "https://chatgpt.com/oauth/jwks.json"
            }),
        ),
        (
            VSCODE,
            json!({
                "client_id": VSCODE,
                "client_name": "Visual Studio Code",
                "redirect_uris": ["https://vscode.dev/redirect",
                                  "https://insiders.vscode.dev/redirect",
                                  "http://127.0.0.1/", "http://127.0.0.1:33418/"],
                "grant_types": ["authorization_code", "refresh_token",
                                "urn:ietf:params:oauth:grant-type:device_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "native"
            }),
        ),
    ]
}

fn check_doc(url: &str, doc: &serde_json::Value) -> Result<Client, Refused> {
    validate(url, doc.to_string().as_bytes(), 1_000, 3600)
}

#[test]
fn the_real_clients_documents_are_accepted() {
    for (url, doc) in real_documents() {
        let c = check_doc(url, &doc).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.id, url);
        assert_eq!(c.name, doc["client_name"].as_str().unwrap());
        let uris: Vec<&str> = doc["redirect_uris"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert_eq!(c.redirect_uris, uris, "{url}");
        assert_eq!(c.kind, ClientKind::MetadataDocument);
        assert_eq!(c.secret_hash, None);
        // VS Code's device_code is dropped, not refused.
        assert_eq!(
            c.grant_types,
            ["authorization_code", "refresh_token"],
            "{url}"
        );
        assert_eq!((c.created, c.expires), (1_000, Some(4_600)));
    }
}

/// The Claude Code document with `edit` applied.
fn edited(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut doc = real_documents().swap_remove(1).1;
    edit(doc.as_object_mut().unwrap());
    doc.to_string()
}

/// The Claude Code document with `key` set to `value`.
fn with(key: &str, value: serde_json::Value) -> String {
    edited(|d| {
        d.insert(key.into(), value);
    })
}

fn without(key: &str) -> String {
    edited(|d| {
        d.remove(key);
    })
}

fn check_body(body: &str) -> Result<Client, Refused> {
    validate(CLAUDE_CODE, body.as_bytes(), 0, 60)
}

#[test]
fn auth_methods_are_negotiated() {
    use serde_json::json;
    // Neither method member: a public client.
    let none_given = edited(|d| {
        d.remove("token_endpoint_auth_method");
        d.remove("token_endpoint_auth_methods_supported");
    });
    assert!(check_body(&none_given).is_ok());
    const ONE: &str = "token_endpoint_auth_method must be a string";
    const LIST: &str = "token_endpoint_auth_methods_supported must be an array of strings";
    for (one, many, want) in [
        // `none` in either member suffices, next to any other method.
        (json!("none"), Some(json!(["private_key_jwt"])), Ok(())),
        (
            json!("private_key_jwt"),
            Some(json!(["private_key_jwt", "none"])),
            Ok(()),
        ),
        (json!("client_secret_basic"), Some(json!(["none"])), Ok(())),
        (json!("none"), Some(json!([])), Ok(())),
        (json!("private_key_jwt"), None, Err(Refused::NotPublic)),
        (
            json!("private_key_jwt"),
            Some(json!(["private_key_jwt"])),
            Err(Refused::NotPublic),
        ),
        (json!("tls_client_auth"), None, Err(Refused::NotPublic)),
        (
            json!("client_secret_basic"),
            None,
            Err(Refused::SecretMethod),
        ),
        (
            json!("client_secret_post"),
            Some(json!(["client_secret_basic", "private_key_jwt"])),
            Err(Refused::SecretMethod),
        ),
        (json!(["none"]), None, Err(Refused::Malformed(ONE))),
        (json!(null), None, Err(Refused::Malformed(ONE))),
        (
            json!("none"),
            Some(json!("none")),
            Err(Refused::Malformed(LIST)),
        ),
        (
            json!("none"),
            Some(json!(["none", 1])),
            Err(Refused::Malformed(LIST)),
        ),
    ] {
        let body = edited(|d| {
            d.insert("token_endpoint_auth_method".into(), one.clone());
            if let Some(m) = many.clone() {
                d.insert("token_endpoint_auth_methods_supported".into(), m);
            }
        });
        assert_eq!(check_body(&body).map(|_| ()), want, "{one} {many:?}");
    }
    assert_eq!(
        Refused::NotPublic.reason(),
        "this server supports public clients (token_endpoint_auth_method none) only"
    );
}

#[test]
fn grant_types_are_filtered() {
    use serde_json::json;
    let c = check_body(&without("grant_types")).unwrap();
    assert_eq!(c.grant_types, ["authorization_code"], "the default");
    const LIST: &str = "grant_types must be an array of strings";
    let code = "authorization_code";
    let both = Ok(vec![code, "refresh_token"]);
    for (grants, want) in [
        (json!(["refresh_token", code]), both.clone()),
        (json!([code, "refresh_token", "refresh_token"]), both),
        (json!([code, code]), Ok(vec![code])),
        (json!([code, "implicit", "password"]), Ok(vec![code])),
        (
            json!([code, "urn:ietf:params:oauth:grant-type:device_code"]),
            Ok(vec![code]),
        ),
        (json!(["refresh_token"]), Err(Refused::NoAuthorizationCode)),
        (json!([]), Err(Refused::NoAuthorizationCode)),
        (
            json!(["urn:ietf:params:oauth:grant-type:device_code"]),
            Err(Refused::NoAuthorizationCode),
        ),
        (json!(code), Err(Refused::Malformed(LIST))),
        (json!([code, null]), Err(Refused::Malformed(LIST))),
    ] {
        let got = check_body(&with("grant_types", grants.clone())).map(|c| c.grant_types);
        assert_eq!(
            got,
            want.map(|v| v.into_iter().map(String::from).collect()),
            "{grants}"
        );
    }
}

#[test]
fn bad_json_is_refused() {
    let url = CLAUDE_CODE;
    let twice = Refused::Malformed("a member appears twice");
    for (body, why) in [
        ("".into(), Refused::NotObject),
        ("   ".into(), Refused::NotObject),
        ("[]".into(), Refused::NotObject),
        // Serde would read a struct from an array, by position.
        (
            format!("[\"{url}\", \"x\", [\"http://localhost/cb\"]]"),
            Refused::NotObject,
        ),
        ("\"x\"".into(), Refused::NotObject),
        ("null".into(), Refused::NotObject),
        ("{".into(), Refused::NotJson),
        ("{}x".into(), Refused::NotJson),
        (" {} {}".into(), Refused::NotJson),
        ("{\"a\":1,}".into(), Refused::NotJson),
        ("{\"client_name\":\"\\ud800\"}".into(), Refused::NotJson),
        // Even in members that are not read: another parser would.
        ("{\"logo\":\"\\ud800\"}".into(), Refused::NotJson),
        ("{\"logo\":\"\\udc00\\ud800\"}".into(), Refused::NotJson),
        ("{}".into(), Refused::ClientIdMismatch),
        // Two parsers could disagree on which one counts.
        (
            format!("{{\"client_id\":\"{url}\",\"client_id\":\"https://evil.example/x\"}}"),
            twice,
        ),
        (
            format!("{{\"client_id\":\"{url}\",\"client\\u005fid\":\"{url}\"}}"),
            twice,
        ),
    ] {
        assert_eq!(
            validate(url, body.as_bytes(), 0, 60).err(),
            Some(why),
            "{body}"
        );
    }
    let mut bad_utf8 = with("logo_uri", "https://claude.ai/x.png".into()).into_bytes();
    let at = bad_utf8.windows(5).position(|w| w == b"x.png").unwrap();
    bad_utf8[at] = 0x81;
    assert_eq!(
        validate(url, &bad_utf8, 0, 60).err(),
        Some(Refused::NotJson)
    );
    let mut big = edited(|_| {});
    while big.len() <= MAX_DOC_BYTES {
        big.insert(1, ' ');
    }
    assert_eq!(check_body(&big).err(), Some(Refused::TooLarge));
    big.remove(1);
    assert_eq!(big.len(), MAX_DOC_BYTES);
    assert!(check_body(&big).is_ok(), "right at the limit");
    // The URL itself must be a valid document URL.
    let bad = "https://claude.ai/x?y=1";
    let doc = with("client_id", bad.into());
    assert_eq!(
        validate(bad, doc.as_bytes(), 0, 60).err(),
        Some(Refused::Query)
    );
    // no-store: expired from the start, usable for this request only.
    let c = validate(url, edited(|_| {}).as_bytes(), 50, 0).unwrap();
    assert_eq!(c.expires, Some(50));
}

#[test]
fn bad_members_are_refused() {
    use serde_json::json;
    let url = CLAUDE_CODE;
    let uris = "redirect_uris must be an array of strings";
    for (body, why) in [
        (with("client_secret", json!("s3cret")), Refused::Secret),
        (with("client_secret", json!(null)), Refused::Secret),
        (with("client_secret_expires_at", json!(0)), Refused::Secret),
        (without("client_id"), Refused::ClientIdMismatch),
        (
            with("client_id", json!(format!("{url}/"))),
            Refused::ClientIdMismatch,
        ),
        (
            with("client_id", json!(url.replace("claude.ai", "CLAUDE.ai"))),
            Refused::ClientIdMismatch,
        ),
        (
            with("client_id", json!([url])),
            Refused::Malformed("client_id must be a string"),
        ),
        (without("client_name"), Refused::NoName),
        (with("client_name", json!("  ")), Refused::NoName),
        (
            with("client_name", json!(7)),
            Refused::Malformed("client_name must be a string"),
        ),
        (without("redirect_uris"), Refused::NoRedirectUris),
        (with("redirect_uris", json!([])), Refused::NoRedirectUris),
        (
            with("redirect_uris", json!("http://localhost/cb")),
            Refused::Malformed(uris),
        ),
        (
            with("redirect_uris", json!(["http://localhost/cb", 1])),
            Refused::Malformed(uris),
        ),
        (
            with("redirect_uris", json!(["http://evil.example/cb"])),
            Refused::RedirectUri(redirect::Refused::PlainHttp),
        ),
        (
            with(
                "redirect_uris",
                json!(["http://localhost/cb", "javascript:alert(1)"]),
            ),
            Refused::RedirectUri(redirect::Refused::Dangerous),
        ),
        (
            with("redirect_uris", json!(["https://claude.ai/cb#x"])),
            Refused::RedirectUri(redirect::Refused::Fragment),
        ),
    ] {
        assert_eq!(check_body(&body).err(), Some(why), "{body}");
        // A reason names fields, never what the document said.
        assert!(!why.reason().contains("s3cret") && !why.reason().contains("evil"));
    }
    // A private-use scheme is fine: these are public clients.
    assert!(check_body(&with("redirect_uris", json!(["cursor://x/cb"]))).is_ok());
}

// -- Fetching, from a real HTTPS server on 127.0.0.1 --------------------

struct Pki {
    ca: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

/// A test CA and a leaf for `localhost` and 127.0.0.1 that it signed.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis CIMD test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        Pki {
            ca: ca.der().clone(),
            server: Arc::new(server),
        }
    })
}

enum Reply {
    Bytes(Vec<u8>),
    /// Read the request, answer nothing for a while.
    Stall,
    /// Send these bytes, then nothing for a while.
    Partial(Vec<u8>),
}

/// A 200 (or `status`) with `headers`, the body with a Content-Length or
/// in one chunk.
fn answer(status: &str, headers: &[&str], body: &[u8], chunked: bool) -> Reply {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for h in headers {
        head += &format!("{h}\r\n");
    }
    let mut out = if chunked {
        head += "transfer-encoding: chunked\r\n\r\n";
        let mut out = head.into_bytes();
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        out
    } else {
        head += &format!("content-length: {}\r\n\r\n", body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    };
    out.shrink_to_fit();
    Reply::Bytes(out)
}

/// An HTTPS server on 127.0.0.1 for one request, answering `reply(port)`;
/// the thread returns the request head it read.
fn serve(reply: impl FnOnce(u16) -> Reply) -> (u16, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reply = reply(port);
    let cfg = pki().server.clone();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ServerConnection::new(cfg).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        match reply {
            Reply::Bytes(b) => {
                let _ = tls.write_all(&b);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            Reply::Stall => thread::sleep(Duration::from_secs(2)),
            Reply::Partial(b) => {
                let _ = tls.write_all(&b);
                let _ = tls.flush();
                thread::sleep(Duration::from_secs(2));
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, server)
}

fn test_policy() -> CimdPolicy {
    CimdPolicy {
        allowed_domains: vec!["127.0.0.1".into(), "localhost".into()],
        allow_loopback: true,
        extra_roots: vec![pki().ca.clone()],
        ..CimdPolicy::default()
    }
}

fn doc_for(url: &str) -> Vec<u8> {
    serde_json::json!({
        "client_id": url,
        "client_name": "Test Client",
        "redirect_uris": ["http://localhost/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none"
    })
    .to_string()
    .into_bytes()
}

fn doc_url(host: &str, port: u16) -> String {
    format!("https://{host}:{port}/cimd/client.json")
}

/// Serves the test document for its own URL, with `headers`.
fn serve_doc(headers: &'static [&'static str]) -> (u16, thread::JoinHandle<String>) {
    serve(|port| {
        answer(
            "200 OK",
            headers,
            &doc_for(&doc_url("127.0.0.1", port)),
            false,
        )
    })
}

#[test]
fn a_document_is_fetched_and_resolved() {
    let (port, server) = serve_doc(&[]);
    let url = doc_url("127.0.0.1", port);
    let client = resolve(&test_policy(), &url, 1_000).unwrap();
    assert_eq!(
        client,
        Client {
            id: url,
            name: "Test Client".into(),
            redirect_uris: vec!["http://localhost/callback".into()],
            kind: ClientKind::MetadataDocument,
            secret_hash: None,
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            created: 1_000,
            expires: Some(1_000 + 3600),
        }
    );
    let head = server.join().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /cimd/client.json http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\naccept: application/json\r\n"), "{head}");
    // By name: one lookup of localhost, then only its vetted addresses.
    let (port, server) =
        serve(|port| answer("200 OK", &[], &doc_for(&doc_url("localhost", port)), false));
    let policy = test_policy();
    assert!(resolve(&policy, &doc_url("localhost", port), 0).is_ok());
    server.join().unwrap();
}

#[test]
fn cache_control_sets_the_lifetime() {
    for (header, age) in [
        ("cache-control: max-age=120", 120),
        ("cache-control: public, max-age=5", MIN_MAX_AGE),
        ("cache-control: max-age=604800", 86400),
        ("cache-control: no-store", 0),
    ] {
        let (port, server) = serve(|port| {
            answer(
                "200 OK",
                &[header],
                &doc_for(&doc_url("127.0.0.1", port)),
                false,
            )
        });
        let (body, got) = fetch(&test_policy(), &doc_url("127.0.0.1", port)).unwrap();
        assert_eq!(body, doc_for(&doc_url("127.0.0.1", port)));
        assert_eq!(got, age, "{header}");
        server.join().unwrap();
    }
    let (port, server) = serve_doc(&["cache-control: no-store"]);
    let client = resolve(&test_policy(), &doc_url("127.0.0.1", port), 77).unwrap();
    assert_eq!(client.expires, Some(77), "no-store: expired from the start");
    server.join().unwrap();
}

/// A listener that must see no connection at all.
fn untouched() -> (u16, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    (listener.local_addr().unwrap().port(), listener)
}

fn assert_untouched(listener: &TcpListener) {
    let err = listener.accept().expect_err("a connection was made");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn loopback_and_untrusted_hosts_are_refused_before_connecting() {
    let (port, listener) = untouched();
    let no_loopback = CimdPolicy {
        allow_loopback: false,
        ..test_policy()
    };
    for host in ["127.0.0.1", "localhost"] {
        assert_eq!(
            fetch(&no_loopback, &doc_url(host, port)),
            Err(Refused::SpecialUse),
            "{host}"
        );
    }
    let open = CimdPolicy {
        open: true,
        ..no_loopback.clone()
    };
    assert_eq!(
        fetch(&open, &doc_url("127.0.0.1", port)),
        Err(Refused::SpecialUse)
    );
    // The default allowlist: 127.0.0.1 is not on it.
    let default = CimdPolicy {
        allow_loopback: true,
        ..CimdPolicy::default()
    };
    assert_eq!(
        fetch(&default, &doc_url("127.0.0.1", port)),
        Err(Refused::NotAllowed)
    );
    // A bad URL never gets as far as the network.
    for (bad, why) in [
        (format!("http://127.0.0.1:{port}/c.json"), Refused::NotHttps),
        (format!("https://127.0.0.1:{port}/"), Refused::NoPath),
        (format!("https://127.0.0.1:{port}/c.json?x"), Refused::Query),
    ] {
        assert_eq!(fetch(&test_policy(), &bad), Err(why), "{bad}");
    }
    assert_untouched(&listener);
}

#[test]
fn only_a_200_answer_counts() {
    let redirect = |status: &'static str| {
        move |port| {
            let to = format!("location: {}", doc_url("127.0.0.1", port));
            answer(status, &[to.as_str()], b"", false)
        }
    };
    for status in [
        "302 Found",
        "301 Moved Permanently",
        "307 Temporary Redirect",
    ] {
        let (port, server) = serve(redirect(status));
        let got = fetch(&test_policy(), &doc_url("127.0.0.1", port));
        assert_eq!(got, Err(Refused::Redirect), "{status}");
        server.join().unwrap();
    }
    for status in [
        "404 Not Found",
        "500 Internal Server Error",
        "201 Created",
        "204 No Content",
    ] {
        let (port, server) =
            serve(|port| answer(status, &[], &doc_for(&doc_url("127.0.0.1", port)), false));
        let got = fetch(&test_policy(), &doc_url("127.0.0.1", port));
        assert_eq!(got, Err(Refused::Status), "{status}");
        server.join().unwrap();
    }
}

#[test]
fn bodies_are_capped() {
    let big = vec![b' '; 6 * 1024];
    for chunked in [false, true] {
        let (port, server) = serve(|_| answer("200 OK", &[], &big, chunked));
        let got = fetch(&test_policy(), &doc_url("127.0.0.1", port));
        assert_eq!(got, Err(Refused::TooLarge), "chunked: {chunked}");
        drop(server);
    }
    // Exactly the limit passes; one byte less in the policy does not.
    let limit = vec![b' '; MAX_DOC_BYTES];
    for chunked in [false, true] {
        let (port, server) = serve(|_| answer("200 OK", &[], &limit, chunked));
        let (body, _) = fetch(&test_policy(), &doc_url("127.0.0.1", port)).unwrap();
        assert_eq!(body.len(), MAX_DOC_BYTES);
        server.join().unwrap();
        let (port, server) = serve(|_| answer("200 OK", &[], &limit, chunked));
        let tight = CimdPolicy {
            max_bytes: MAX_DOC_BYTES - 1,
            ..test_policy()
        };
        let got = fetch(&tight, &doc_url("127.0.0.1", port));
        assert_eq!(got, Err(Refused::TooLarge), "chunked: {chunked}");
        drop(server);
    }
}

#[test]
fn a_slow_server_times_out() {
    let (port, _server) = serve(|_| Reply::Stall);
    let quick = CimdPolicy {
        timeout: Duration::from_millis(300),
        ..test_policy()
    };
    let started = Instant::now();
    assert_eq!(
        fetch(&quick, &doc_url("127.0.0.1", port)),
        Err(Refused::Timeout)
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The deadline covers the body too: a head, then a trickle.
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"client_id\"".to_vec();
    let (port, _server) = serve(|_| Reply::Partial(head));
    let started = Instant::now();
    assert_eq!(
        fetch(&quick, &doc_url("127.0.0.1", port)),
        Err(Refused::Timeout)
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn the_certificate_must_be_trusted() {
    // Without the test CA only the webpki roots are trusted.
    let (port, server) = serve_doc(&[]);
    let webpki_only = CimdPolicy {
        extra_roots: Vec::new(),
        ..test_policy()
    };
    assert_eq!(
        fetch(&webpki_only, &doc_url("127.0.0.1", port)),
        Err(Refused::Network)
    );
    let _ = server.join();
}
