//! The OAuth 2.1 authorization server for MCP clients: control-plane work,
//! answered on its own threads (`runtime::control`) for the requests the
//! cores hand over (`proxy::handoff`). `server` dispatches to one module per
//! endpoint; the rules they share are `redirect` (which redirect URIs a
//! client may register, and when a requested one matches), `resource`
//! (RFC 8707 canonical form), `cimd` (Client ID Metadata Documents resolved
//! with SSRF care) and `seal` (keys, sealing, hashes).

pub(crate) mod authorize;
pub(crate) mod cimd;
pub(crate) mod clients;
pub(crate) mod connect;
pub(crate) mod connections;
pub(crate) mod consent;
pub(crate) mod discover;
pub(crate) mod http;
pub(crate) mod login;
pub(crate) mod metadata;
pub(crate) mod oidc;
pub(crate) mod pages;
pub(crate) mod redirect;
pub(crate) mod register;
pub(crate) mod resource;
pub(crate) mod seal;
pub(crate) mod server;
pub(crate) mod settings;
pub(crate) mod token;
pub(crate) mod upstream;

/// The behaviour suite of the whole server (`tests.rs`; `tests` below is
/// this file's own).
#[cfg(test)]
#[path = "tests.rs"]
mod behaviour;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The parts of an absolute URI the rules look at (RFC 3986 §3), borrowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Uri<'a> {
    pub scheme: &'a str,
    /// `None` when the URI has no `//` authority (`com.example.app:/cb`).
    pub authority: Option<Authority<'a>>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fragment: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authority<'a> {
    pub userinfo: Option<&'a str>,
    /// As written (an IPv6 literal keeps its brackets).
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> Uri<'a> {
    /// Split an absolute URI; `None` when it is not one (no scheme, a bad
    /// port, spaces or control characters anywhere).
    pub(crate) fn parse(s: &'a str) -> Option<Uri<'a>> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        let (scheme, rest) = s.split_once(':')?;
        let mut chars = scheme.chars();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.strip_prefix("//") {
            Some(after) => {
                let end = after.find('/').unwrap_or(after.len());
                (Some(Authority::parse(&after[..end])?), &after[end..])
            }
            None => (None, rest),
        };
        Some(Uri {
            scheme,
            authority,
            path,
            query,
            fragment,
        })
    }
}

impl<'a> Authority<'a> {
    fn parse(s: &'a str) -> Option<Authority<'a>> {
        let (userinfo, hostport) = match s.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, s),
        };
        let (host, port) = if hostport.starts_with('[') {
            let close = hostport.find(']')?;
            match &hostport[close + 1..] {
                "" => (&hostport[..=close], None),
                p => (&hostport[..=close], Some(p.strip_prefix(':')?)),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().ok()?)
            }
            Some(_) => return None,
        };
        if host.is_empty() {
            return None;
        }
        Some(Authority {
            userinfo,
            host,
            port,
        })
    }

    /// `localhost`, `127.0.0.1` (any 127/8 address) or `[::1]`.
    pub(crate) fn is_loopback(&self) -> bool {
        let h = self.host;
        h.eq_ignore_ascii_case("localhost")
            || h == "[::1]"
            || h.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_their_parts() {
        let u = Uri::parse("https://User@Claude.ai:8443/api/cb?x=1#f").unwrap();
        assert_eq!(u.scheme, "https");
        let a = u.authority.as_ref().unwrap();
        assert_eq!(
            (a.userinfo, a.host, a.port),
            (Some("User"), "Claude.ai", Some(8443))
        );
        assert_eq!(
            (u.path, u.query, u.fragment),
            ("/api/cb", Some("x=1"), Some("f"))
        );
        let u = Uri::parse("http://[::1]:6274/oauth/callback").unwrap();
        assert_eq!(u.authority.as_ref().unwrap().host, "[::1]");
        assert!(u.authority.unwrap().is_loopback());
        let u = Uri::parse("com.example.app:/cb").unwrap();
        assert_eq!(
            (u.scheme, u.authority, u.path),
            ("com.example.app", None, "/cb")
        );
        for bad in [
            "",
            "/cb",
            "://x",
            "1http://x",
            "http://x:99999/",
            "http://x:8a/",
            "http://:80/",
            "http://a b/",
            "http://x/\n",
            "http://[::1/",
        ] {
            assert_eq!(Uri::parse(bad), None, "{bad:?}");
        }
        for lo in ["localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "[::1]"] {
            let uri = format!("http://{lo}:1/");
            assert!(
                Uri::parse(&uri).unwrap().authority.unwrap().is_loopback(),
                "{lo}"
            );
        }
        for not in ["localhost.evil.com", "128.0.0.1", "[::2]", "0.0.0.0"] {
            let uri = format!("http://{not}/");
            assert!(
                !Uri::parse(&uri).unwrap().authority.unwrap().is_loopback(),
                "{not}"
            );
        }
    }
}
