//! Routes: which upstream serves a request, by scheme, Host (exact,
//! port-aware) and longest path prefix, and how its path is rewritten.
//! A request that matches no route gets 404: there is no default route.

use crate::config::{split_host_port, Url};
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub name: String,
    /// The public URL (what clients use; also the token audience later).
    pub public: Url,
    pub upstream: Url,
    /// The upstream request line's end and its Host line:
    /// ` HTTP/1.1\r\nHost: <upstream authority>\r\n`.
    pub version_and_host: Box<[u8]>,
    /// Resolved upstream addresses (resolved at config load).
    pub upstream_addrs: Vec<SocketAddr>,
    /// Key of this upstream in the per-core connection pool.
    pub pool_key: PoolKey,
    pub mcp: bool,
    /// `Origin` values allowed on this MCP route, besides its own.
    pub allowed_origins: Vec<String>,
    /// This route's own origin (`scheme://authority` of its public URL).
    pub public_origin: String,
    /// Token requirements, when the route is authenticated.
    pub auth: Option<RouteAuth>,
    /// The compiled rules (MCP routes with a non-empty `policy`).
    pub policy: Option<crate::policy::Policy>,
    /// The policy has `header` criteria: the request's head is kept for it.
    pub policy_reads_headers: bool,
    /// The policy has `argument` criteria: bodies are decoded with them.
    pub policy_reads_arguments: bool,
    /// How its audit records show arguments.
    pub audit_arguments: crate::config::audit::Arguments,
    /// Content screening of its messages, both ways (`screen`), and its
    /// findings' counters.
    pub screen: Option<std::sync::Arc<crate::screen::Screen>>,
    pub screen_counts: Option<std::sync::Arc<crate::metrics::ScreenCounts>>,
    /// Tool pinning (`pin`): the mode per kind and its counters.
    pub(crate) pin: Option<std::sync::Arc<crate::pin::RoutePin>>,
    /// This route's counters (carried over by name across reloads).
    pub metrics: std::sync::Arc<crate::metrics::RouteMetrics>,
}

/// What an authenticated route demands and what its upstream gets instead
/// of the client's token.
#[derive(Debug)]
pub struct RouteAuth {
    /// Indexes of the accepted issuers in the snapshot's identity.
    pub issuers: Vec<usize>,
    /// Tokens of the built-in authorization server are accepted too.
    pub builtin: bool,
    /// Their `iss` URLs (the metadata's `authorization_servers`).
    pub issuer_urls: Vec<String>,
    pub scopes: Vec<String>,
    /// The token audience: the public URL.
    pub audience: String,
    /// The RFC 9728 metadata URL of this route.
    pub metadata_url: String,
    pub upstream: UpstreamCredential,
    /// The user's own token at the upstream service, injected beside (or
    /// instead of) `upstream`.
    pub oauth2: Option<std::sync::Arc<UpstreamOAuth2>>,
}

/// A route's upstream OAuth client, compiled.
#[derive(Debug)]
pub struct UpstreamOAuth2 {
    pub config: crate::config::authz::UpstreamOAuth2,
    /// `Authorization: Bearer ` (or `Header: `), written before the token.
    pub prefix: Vec<u8>,
}

#[derive(Debug)]
pub enum UpstreamCredential {
    /// Header name, and the assertion's audience; `bearer` prefixes `Bearer `.
    Assertion {
        header: String,
        audience: String,
        bearer: bool,
    },
    /// A complete header line (`Name: value\r\n`).
    Static(Vec<u8>),
    None,
}

impl RouteAuth {
    /// The metadata URL for `public` (RFC 9728 §3.1: the well-known path
    /// goes between the authority and the resource's path).
    pub fn metadata_url_for(public: &Url) -> String {
        let path = if public.path == "/" { "" } else { &public.path };
        format!(
            "{}://{}/.well-known/oauth-protected-resource{path}",
            public.scheme(),
            public.authority()
        )
    }
}

impl Route {
    pub fn new(
        index: usize,
        name: &str,
        public: Url,
        upstream: Url,
        upstream_addrs: Vec<SocketAddr>,
        mcp: bool,
    ) -> Route {
        Route {
            public_origin: format!("{}://{}", public.scheme(), public.authority()),
            index,
            name: name.to_string(),
            version_and_host: format!(" HTTP/1.1\r\nHost: {}\r\n", upstream.authority())
                .into_bytes()
                .into_boxed_slice(),
            pool_key: PoolKey::of(&format!("{}://{}", upstream.scheme(), upstream.authority())),
            public,
            upstream,
            upstream_addrs,
            mcp,
            allowed_origins: Vec::new(),
            auth: None,
            policy: None,
            policy_reads_headers: false,
            policy_reads_arguments: false,
            metrics: Default::default(),
            audit_arguments: Default::default(),
            screen: None,
            screen_counts: None,
            pin: None,
        }
    }

    /// Whether this route's public prefix covers `path` on a segment boundary.
    pub fn matches_path(&self, path: &str) -> bool {
        let prefix = self.public.path.as_str();
        prefix == "/"
            || (path.starts_with(prefix)
                && matches!(
                    path.as_bytes().get(prefix.len()),
                    None | Some(b'/') | Some(b'?')
                ))
    }

    /// Append the upstream path for public `path` to `out`.
    pub fn rewrite_path(&self, path: &str, out: &mut Vec<u8>) {
        let rest = if self.public.path == "/" {
            path
        } else {
            &path[self.public.path.len()..]
        };
        let to = self.upstream.path.as_str();
        if to == "/" {
            if !rest.starts_with('/') {
                out.push(b'/');
            }
        } else {
            out.extend_from_slice(to.as_bytes());
        }
        out.extend_from_slice(rest.as_bytes());
    }

    /// A path (or an absolute URL on the upstream) mapped to the public URL space.
    pub fn public_url(&self, url: &str) -> Option<String> {
        if url.starts_with('/') {
            return self.public_path(url);
        }
        let upstream_base = format!("{}://{}", self.upstream.scheme(), self.upstream.authority());
        let path = url.strip_prefix(&upstream_base)?;
        let public = self.public_path(path)?;
        Some(format!(
            "{}://{}{}",
            self.public.scheme(),
            self.public.authority(),
            public
        ))
    }

    /// The public path for an upstream `path`, if it lies under the upstream
    /// prefix (used to rewrite the legacy SSE `endpoint` event).
    pub fn public_path(&self, upstream_path: &str) -> Option<String> {
        let to = self.upstream.path.as_str();
        let rest = if to == "/" {
            if !upstream_path.starts_with('/') {
                return None;
            }
            if upstream_path == "/" {
                ""
            } else {
                upstream_path
            }
        } else {
            let r = upstream_path.strip_prefix(to)?;
            if !(r.is_empty() || r.starts_with('/') || r.starts_with('?')) {
                return None;
            }
            r
        };
        let from = self.public.path.as_str();
        Some(if from == "/" {
            if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            }
        } else {
            format!("{from}{rest}")
        })
    }
}

/// Routes indexed by lower-case host name; each list is sorted by prefix
/// length, longest first, and filtered by scheme and port at lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Seeded foldhash: looked up on every request (SipHash cost more).
    by_host: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut by_host: HashMap<String, Vec<usize>, _> = HashMap::default();
        for r in &routes {
            by_host
                .entry(r.public.host.clone())
                .or_default()
                .push(r.index);
        }
        for list in by_host.values_mut() {
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].public.path.len()));
        }
        RouteTable { routes, by_host }
    }

    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    pub fn all_mut(&mut self) -> &mut [Route] {
        &mut self.routes
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// The route for a request that arrived on a TLS (or plain) listener with
    /// this Host header and path.
    pub fn resolve(&self, tls: bool, host: &str, path: &str) -> Option<&Route> {
        let (name, port) = host_and_port(host)?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        // Route hosts are kept in lower case; most requests' already are.
        let routes = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut lower = [0u8; 256];
            let lower = lower.get_mut(..name.len())?;
            lower.copy_from_slice(name.as_bytes());
            lower.make_ascii_lowercase();
            self.by_host.get(std::str::from_utf8(lower).ok()?)
        } else {
            self.by_host.get(name)
        }?;
        routes
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| r.public.tls == tls && r.public.port == port && r.matches_path(path))
    }
}

/// A Host header's name and port, for a lookup among the routes' hosts: a
/// name is not checked here, as one that is no valid host matches none of
/// them (they were checked when the configuration was read). A bracketed
/// IPv6 address takes the thorough [`split_host_port`].
fn host_and_port(host: &str) -> Option<(&str, Option<u16>)> {
    if host.starts_with('[') {
        return split_host_port(host);
    }
    let Some(colon) = host.bytes().rposition(|b| b == b':') else {
        return Some((host, None));
    };
    let digits = &host.as_bytes()[colon + 1..];
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut port = 0u32;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(d - b'0');
    }
    Some((&host[..colon], Some(u16::try_from(port).ok()?)))
}

/// An upstream origin (`scheme://authority`) as a number, the same for the
/// same origin in every snapshot: the key of the per-core connection pool,
/// hashed in a few instructions where the origin's text took about a
/// hundred, twice a request. Numbers are never reused (origins are few).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey(u32);

impl PoolKey {
    /// The key of `origin` (made when a snapshot is built, never on the
    /// request path).
    pub fn of(origin: &str) -> PoolKey {
        static KEYS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, u32>>> =
            std::sync::LazyLock::new(Default::default);
        let mut keys = KEYS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        PoolKey(*keys.entry(origin.to_string()).or_insert(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_origin_has_one_pool_key_in_every_snapshot() {
        let a = PoolKey::of("http://127.0.0.1:1");
        let b = PoolKey::of("https://127.0.0.1:1");
        let c = PoolKey::of("http://127.0.0.1:2");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(PoolKey::of(&String::from("http://127.0.0.1:1")), a);
    }

    fn route(index: usize, from: &str, to: &str) -> Route {
        Route::new(
            index,
            &format!("r{index}"),
            Url::parse(from).unwrap(),
            Url::parse(to).unwrap(),
            vec![],
            true,
        )
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route(0, "http://127.0.0.1:8080/mcp", "http://127.0.0.1:9000/mcp"),
            route(
                1,
                "http://127.0.0.1:8080/mcp/admin",
                "http://127.0.0.1:9001/",
            ),
            route(
                2,
                "https://mcp.example.com/github",
                "http://127.0.0.1:9002/v1/mcp",
            ),
            route(3, "http://other.example:80/", "http://127.0.0.1:9003/"),
        ])
    }

    #[test]
    fn resolves_by_host_port_and_longest_prefix() {
        let t = table();
        let r = |tls, host, path| t.resolve(tls, host, path).map(|r| r.index);
        assert_eq!(r(false, "127.0.0.1:8080", "/mcp"), Some(0));
        assert_eq!(r(false, "127.0.0.1:8080", "/mcp?x=1"), Some(0));
        assert_eq!(r(false, "127.0.0.1:8080", "/mcp/admin/x"), Some(1));
        assert_eq!(r(false, "127.0.0.1:8080", "/mcpx"), None);
        assert_eq!(r(false, "127.0.0.1:8080", "/"), None);
        assert_eq!(r(false, "127.0.0.1", "/mcp"), None, "port-aware");
        assert_eq!(r(false, "127.0.0.1:8081", "/mcp"), None);
        assert_eq!(r(true, "MCP.Example.com", "/github/x"), Some(2));
        assert_eq!(r(true, "mcp.example.com:443", "/github"), Some(2));
        assert_eq!(r(false, "mcp.example.com", "/github"), None, "scheme-aware");
        assert_eq!(r(false, "other.example", "/anything"), Some(3));
        assert_eq!(r(false, "unknown.example", "/mcp"), None);
        assert_eq!(r(false, "bad host", "/mcp"), None);
    }

    #[test]
    fn host_and_port_agrees_with_the_strict_split_wherever_a_route_could_match() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "mcp.example.com:443",
            "MCP.Example.com",
            "a:b:80",
            ":80",
            "host:",
            "host:65535",
            "host:65536",
            "host:123456",
            "host:+80",
            "host:8a",
            "[::1]:8080",
            "[::1]",
            "[::1]x",
            "bad host:80",
            "",
        ] {
            let strict = split_host_port(host);
            match host_and_port(host) {
                // Where the strict split takes the host, both agree.
                fast if strict.is_some() => assert_eq!(fast, strict, "{host:?}"),
                // Where it refuses, the fast one refuses too or gives a
                // name no route can have.
                None => {}
                Some((name, _)) => assert!(
                    split_host_port(name).is_none() || name.contains(':'),
                    "{host:?} gave {name:?}"
                ),
            }
        }
    }

    #[test]
    fn rewrites_paths() {
        let t = table();
        let rw = |i: usize, p: &str| {
            let mut out = Vec::new();
            t.get(i).rewrite_path(p, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(rw(0, "/mcp"), "/mcp");
        assert_eq!(rw(0, "/mcp?a=b"), "/mcp?a=b");
        assert_eq!(rw(1, "/mcp/admin"), "/");
        assert_eq!(rw(1, "/mcp/admin/x?y"), "/x?y");
        assert_eq!(rw(1, "/mcp/admin?y"), "/?y");
        assert_eq!(rw(2, "/github/messages"), "/v1/mcp/messages");
        assert_eq!(rw(3, "/a/b"), "/a/b");
    }

    #[test]
    fn maps_upstream_paths_back() {
        let t = table();
        assert_eq!(
            t.get(2)
                .public_path("/v1/mcp/messages/?session_id=1")
                .as_deref(),
            Some("/github/messages/?session_id=1")
        );
        assert_eq!(t.get(2).public_path("/elsewhere"), None);
        let legacy = Route::new(
            0,
            "l",
            Url::parse("https://mcp.example.com/legacy").unwrap(),
            Url::parse("http://127.0.0.1:9000/").unwrap(),
            vec![],
            true,
        );
        assert_eq!(
            legacy
                .public_url("http://127.0.0.1:9000/messages?s=1")
                .as_deref(),
            Some("https://mcp.example.com/legacy/messages?s=1")
        );
        assert_eq!(legacy.public_url("http://elsewhere/messages"), None);
        assert_eq!(
            t.get(1).public_path("/messages/?s=1").as_deref(),
            Some("/mcp/admin/messages/?s=1")
        );
        assert_eq!(
            t.get(3).public_path("/messages").as_deref(),
            Some("/messages")
        );
    }
}
