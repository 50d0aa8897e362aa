//! Redirect URIs (OAuth 2.1 §2.3.1, RFC 8252, MCP security best practices).
//!
//! Registering: `https` anywhere; `http` only on loopback (`localhost`,
//! 127/8, `[::1]`); a private-use scheme (RFC 8252 §7.1: `cursor://…`,
//! `com.example.app:/cb`) only for public clients, the native apps that use
//! them, matched exactly (refusing Cursor's `cursor://` would refuse its whole
//! registration). Never a fragment or userinfo, never a scheme that runs
//! or reads something where it lands (`javascript:`, `data:`, `file:`, …).
//!
//! Matching an authorization request: the exact registered string, except
//! that a loopback `http` URI matches on any port (RFC 8252 §7.3: clients
//! listen on an ephemeral port; Claude Code registers `http://localhost/callback`
//! and calls back on `http://localhost:53127/callback`). Scheme, host, path and
//! query still match exactly.

use super::{Authority, Uri};

/// Why a redirect URI cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotAbsolute,
    Fragment,
    Userinfo,
    /// A scheme that executes or reads where it lands.
    Dangerous,
    /// `http` to a host that is not loopback.
    PlainHttp,
    /// A private-use scheme for a confidential client.
    CustomScheme,
}

impl Refused {
    /// For `invalid_redirect_uri` / `invalid_client_metadata` descriptions.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::NotAbsolute => "redirect URI is not an absolute URI",
            Refused::Fragment => "redirect URI has a fragment",
            Refused::Userinfo => "redirect URI has userinfo",
            Refused::Dangerous => "redirect URI scheme is not allowed",
            Refused::PlainHttp => {
                "http redirect URIs must be loopback (localhost, 127.0.0.1, [::1])"
            }
            Refused::CustomScheme => "private-use redirect schemes are for public clients only",
        }
    }
}

const DANGEROUS: [&str; 7] = [
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "filesystem",
];

/// May a client register `uri`? (`public`: no client secret.)
pub fn check(uri: &str, public: bool) -> Result<(), Refused> {
    // The scheme first: `file:///x` (an empty authority) is refused as
    // what it is, not as malformed.
    let scheme = uri.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if scheme.as_deref().is_some_and(|s| DANGEROUS.contains(&s)) {
        return Err(Refused::Dangerous);
    }
    let u = Uri::parse(uri).ok_or(Refused::NotAbsolute)?;
    if u.fragment.is_some() {
        return Err(Refused::Fragment);
    }
    if u.authority.as_ref().is_some_and(|a| a.userinfo.is_some()) {
        return Err(Refused::Userinfo);
    }
    let scheme = u.scheme.to_ascii_lowercase();
    match (scheme.as_str(), &u.authority) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(a)) if a.is_loopback() => Ok(()),
        ("http", _) => Err(Refused::PlainHttp),
        ("https", None) => Err(Refused::NotAbsolute),
        _ if public => Ok(()),
        _ => Err(Refused::CustomScheme),
    }
}

/// Does `requested` (from an authorization request) match `registered`?
pub fn matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Some(reg), Some(req)) = (Uri::parse(registered), Uri::parse(requested)) else {
        return false;
    };
    let loopback = |u: &Uri<'_>| {
        u.scheme.eq_ignore_ascii_case("http")
            && u.authority.as_ref().is_some_and(Authority::is_loopback)
    };
    // Everything but the port, exactly.
    loopback(&reg)
        && loopback(&req)
        && reg.scheme == req.scheme
        && reg.authority.as_ref().map(|a| a.host) == req.authority.as_ref().map(|a| a.host)
        && req.authority.as_ref().is_some_and(|a| a.userinfo.is_none())
        && reg.path == req.path
        && reg.query == req.query
        && req.fragment.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_clients_may_register() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "https://chatgpt.com/connector/oauth/abc",
            "https://vscode.dev/redirect",
            "http://localhost/callback",
            "http://127.0.0.1:33418/",
            "http://[::1]:6274/oauth/callback",
            "http://localhost:8787/callback?x=1",
        ] {
            assert_eq!(check(ok, false), Ok(()), "{ok}");
        }
        // Cursor registers these three in one request: all must pass.
        for ok in [
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "https://www.cursor.com/agents/mcp/oauth/callback",
            "com.example.app:/cb",
            "myapp://cb",
        ] {
            assert_eq!(check(ok, true), Ok(()), "{ok}");
        }
        for (bad, public, why) in [
            (
                "cursor://anysphere.cursor-mcp/oauth/callback",
                false,
                Refused::CustomScheme,
            ),
            ("javascript:alert(1)", true, Refused::Dangerous),
            ("JavaScript://x/%0aalert(1)", true, Refused::Dangerous),
            ("data:text/html,<script>", true, Refused::Dangerous),
            ("file:///etc/passwd", true, Refused::Dangerous),
            ("vbscript:x", true, Refused::Dangerous),
            ("http://evil.example/cb", true, Refused::PlainHttp),
            ("http://localhost.evil.example/cb", true, Refused::PlainHttp),
            ("https://claude.ai/cb#x", true, Refused::Fragment),
            ("https://a@claude.ai/cb", true, Refused::Userinfo),
            ("https:/cb", true, Refused::NotAbsolute),
            ("/relative", true, Refused::NotAbsolute),
            ("", true, Refused::NotAbsolute),
        ] {
            assert_eq!(check(bad, public), Err(why), "{bad}");
        }
    }

    #[test]
    fn requests_match_exactly_but_loopback_ports() {
        let cases = [
            (
                "https://claude.ai/api/mcp/auth_callback",
                "https://claude.ai/api/mcp/auth_callback",
                true,
            ),
            (
                "http://localhost/callback",
                "http://localhost:53127/callback",
                true,
            ),
            (
                "http://127.0.0.1/callback",
                "http://127.0.0.1:8080/callback",
                true,
            ),
            ("http://127.0.0.1:33418/", "http://127.0.0.1:40001/", true),
            ("http://[::1]/cb", "http://[::1]:9/cb", true),
            // Anything else differs: no port freedom off loopback, no other
            // host, path, query, scheme; no trailing-slash or case folding.
            (
                "https://claude.ai/api/mcp/auth_callback",
                "https://claude.ai:444/api/mcp/auth_callback",
                false,
            ),
            ("https://claude.ai/cb", "https://claude.ai/cb/", false),
            ("https://claude.ai/cb", "https://Claude.ai/cb", false),
            (
                "https://claude.ai/cb",
                "https://claude.ai/cb?next=https://evil",
                false,
            ),
            (
                "https://claude.ai/cb",
                "https://claude.ai.evil.com/cb",
                false,
            ),
            (
                "http://localhost/callback",
                "http://127.0.0.1:5/callback",
                false,
            ),
            (
                "http://localhost/callback",
                "http://localhost:5/callback/../x",
                false,
            ),
            (
                "http://localhost/callback",
                "http://localhost:5/callback?x",
                false,
            ),
            (
                "http://localhost/callback",
                "http://localhost:5/callback#f",
                false,
            ),
            (
                "http://localhost/callback",
                "http://evil@localhost:5/callback",
                false,
            ),
            (
                "http://localhost/callback",
                "https://localhost:5/callback",
                false,
            ),
            (
                "cursor://anysphere.cursor-mcp/oauth/callback",
                "cursor://anysphere.cursor-mcp:1/oauth/callback",
                false,
            ),
        ];
        for (registered, requested, want) in cases {
            assert_eq!(
                matches(registered, requested),
                want,
                "{registered} vs {requested}"
            );
        }
    }
}
