//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document):
//! a `client_id` that is an `https` URL naming a JSON document that describes
//! the client. claude.ai, Claude Code, ChatGPT and VS Code use them instead of
//! dynamic registration.
//!
//! Three steps, each its own function, [`resolve`] chaining them:
//!
//! - [`check_url`]: the draft's URL rules (https, a path, no dot segments, no
//!   fragment, no userinfo; a query is refused as the draft says it SHOULD NOT
//!   be there; a port is allowed).
//! - [`fetch`]: the trust allowlist ([`CimdPolicy::allowed`]), then the host
//!   is resolved once and refused if ANY address is special-use (RFC 6890:
//!   [`special_use`]); the request connects only to those vetted addresses (a
//!   resolver that returns them, no second lookup), over TCP then TLS and
//!   nothing else (no proxy from the environment), trusting the webpki roots
//!   plus [`CimdPolicy::extra_roots`]. No redirect is followed, only a 200
//!   succeeds, the body is capped, every step has a deadline. The cache
//!   lifetime comes from `Cache-Control`, within the policy's bounds.
//! - [`validate`]: pure (the fuzz target's). The document is a JSON object of
//!   at most 5 KiB whose `client_id` is the URL exactly, with a `client_name`,
//!   redirect URIs that a public client may register, no secret, and an
//!   authentication method this server speaks: `none`. A document that also
//!   offers `private_key_jwt` (ChatGPT's) is accepted as a public client;
//!   one offering only `private_key_jwt` or a `client_secret_*` method is
//!   refused. Grant types other than `authorization_code` and `refresh_token`
//!   (VS Code's `device_code`) are dropped, never a reason to refuse.
//!
//! The result is a [`Client`] of kind [`ClientKind::MetadataDocument`] whose
//! `expires` is the cache lifetime: the caller stores it so that every core
//! and replica sees the same record (OAUTH.md §2.2 pitfall 12), and fetches
//! again once it lapses. Errors are never cached: every refusal is returned,
//! and the caller keeps nothing. A [`Refused`] reason names fields, never
//! what the document or the network said.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, TcpConnector, Transport,
    TransportAdapter,
};

use super::{redirect, Uri};
use crate::store::{Client, ClientKind};

/// The document size limit the draft recommends (5 KiB).
pub const MAX_DOC_BYTES: usize = 5 * 1024;

/// The shortest cache lifetime a `Cache-Control: max-age` can ask for, so
/// that a client cannot make every authorization refetch its document.
pub const MIN_MAX_AGE: i64 = 60;

/// Why a metadata document URL or document is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    // The URL (`check_url`).
    NotUrl,
    NotHttps,
    Userinfo,
    BadHost,
    NoPath,
    DotSegment,
    Query,
    Fragment,
    // Trust and network (`fetch`).
    /// The host is not in the allowlist.
    NotAllowed,
    Unresolvable,
    /// The host resolves to a special-use address (RFC 6890).
    SpecialUse,
    Timeout,
    /// Connection, TLS or HTTP failure.
    Network,
    /// A 3xx: redirects are never followed.
    Redirect,
    /// Any status but 200.
    Status,
    TooLarge,
    // The document (`validate`).
    NotJson,
    NotObject,
    /// A member of the wrong type, or a known member twice: the message.
    Malformed(&'static str),
    ClientIdMismatch,
    NoName,
    NoRedirectUris,
    RedirectUri(redirect::Refused),
    /// A `client_secret` or `client_secret_expires_at` member.
    Secret,
    /// Only `client_secret_*` authentication methods.
    SecretMethod,
    /// No `none` among the authentication methods (only `private_key_jwt`…).
    NotPublic,
    NoAuthorizationCode,
}

impl Refused {
    /// For `invalid_client` descriptions and the error page: field names,
    /// never the document's contents.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NotUrl => "client_id is not an absolute URL",
            Refused::NotHttps => "a client_id URL must use https",
            Refused::Userinfo => "a client_id URL must not have userinfo",
            Refused::BadHost => "the client_id URL's host is not a DNS name or IP address",
            Refused::NoPath => "a client_id URL must have a path",
            Refused::DotSegment => "a client_id URL must not have . or .. path segments",
            Refused::Query => "a client_id URL must not have a query",
            Refused::Fragment => "a client_id URL must not have a fragment",
            Refused::NotAllowed => "this server does not trust client metadata from that host",
            Refused::Unresolvable => "the client_id URL's host does not resolve",
            Refused::SpecialUse => "the client_id URL's host resolves to a special-use address",
            Refused::Timeout => "fetching the client metadata document timed out",
            Refused::Network => "fetching the client metadata document failed",
            Refused::Redirect => "the client_id URL redirects; redirects are not followed",
            Refused::Status => "the client_id URL did not answer 200",
            Refused::TooLarge => "the client metadata document is over the size limit",
            Refused::NotJson => "the client metadata document is not valid JSON",
            Refused::NotObject => "the client metadata document is not a JSON object",
            Refused::Malformed(why) => why,
            Refused::ClientIdMismatch => "the document's client_id is not its URL",
            Refused::NoName => "client_name is required",
            Refused::NoRedirectUris => "redirect_uris must be a non-empty array",
            Refused::RedirectUri(r) => r.reason(),
            Refused::Secret => "a client metadata document must not contain a client_secret",
            Refused::SecretMethod => {
                "client_secret authentication methods are not allowed for metadata documents"
            }
            Refused::NotPublic => {
                "this server supports public clients (token_endpoint_auth_method none) only"
            }
            Refused::NoAuthorizationCode => "grant_types must include authorization_code",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

// ---------------------------------------------------------------------------
// The URL.

/// Is `url` a valid metadata document URL (the draft's §3 rules)?
pub fn check_url(url: &str) -> Result<(), Refused> {
    // ASCII URI characters only, and well-formed percent escapes: what is
    // checked here is what the HTTP client will request.
    let b = url.as_bytes();
    let uri_char = |c: u8| c.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&c);
    if !b.iter().all(|&c| uri_char(c))
        || b.iter().enumerate().any(|(i, &c)| {
            c == b'%'
                && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        })
    {
        return Err(Refused::NotUrl);
    }
    let u = Uri::parse(url).ok_or(Refused::NotUrl)?;
    if !u.scheme.eq_ignore_ascii_case("https") {
        return Err(Refused::NotHttps);
    }
    let a = u.authority.as_ref().ok_or(Refused::NotUrl)?;
    if a.userinfo.is_some() {
        return Err(Refused::Userinfo);
    }
    if !valid_host(a.host) {
        return Err(Refused::BadHost);
    }
    if u.fragment.is_some() {
        return Err(Refused::Fragment);
    }
    if u.query.is_some() {
        return Err(Refused::Query);
    }
    if u.path.is_empty() || u.path == "/" {
        return Err(Refused::NoPath);
    }
    let dot = |s: &str| {
        let s = s.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    };
    if u.path.split('/').any(dot) {
        return Err(Refused::DotSegment);
    }
    Ok(())
}

/// A DNS name (letters, digits, `-`, non-empty labels: an IPv4 literal is
/// one too) or a bracketed IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    })
}

// ---------------------------------------------------------------------------
// The policy.

/// Whose documents are fetched, and how.
#[derive(Debug, Clone)]
pub struct CimdPolicy {
    /// Hosts trusted with their subdomains (`claude.ai` allows `x.claude.ai`).
    pub allowed_domains: Vec<String>,
    /// Any host (the allowlist is ignored); the address rules still hold.
    pub open: bool,
    /// Accept loopback addresses (127/8, ::1): test mode, when this server
    /// itself runs on loopback (the draft's one exception).
    pub allow_loopback: bool,
    /// Trust anchors beyond the webpki roots (tests).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// One deadline for the whole fetch: lookup, connecting, TLS, answer.
    pub timeout: Duration,
    /// The body limit (`validate` refuses more than [`MAX_DOC_BYTES`]
    /// whatever this says).
    pub max_bytes: usize,
    /// Seconds to cache a document that has no `Cache-Control: max-age`.
    pub default_max_age: i64,
    /// The longest cache lifetime a document can ask for.
    pub max_max_age: i64,
}

impl Default for CimdPolicy {
    fn default() -> CimdPolicy {
        CimdPolicy {
            allowed_domains: ["claude.ai", "claude.com", "chatgpt.com", "vscode.dev"]
                .map(String::from)
                .to_vec(),
            open: false,
            allow_loopback: false,
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(5),
            max_bytes: MAX_DOC_BYTES,
            default_max_age: 3600,
            max_max_age: 24 * 3600,
        }
    }
}

impl CimdPolicy {
    /// Is `host` (without brackets or port) trusted? Case-insensitive; a
    /// subdomain of an allowed domain is allowed.
    pub fn allowed(&self, host: &str) -> bool {
        let host = host.as_bytes();
        self.open
            || self.allowed_domains.iter().any(|d| {
                let d = d.trim_start_matches('.').as_bytes();
                !d.is_empty()
                    && (host.eq_ignore_ascii_case(d)
                        || host.len() > d.len()
                            && host[host.len() - d.len() - 1] == b'.'
                            && host[host.len() - d.len()..].eq_ignore_ascii_case(d))
            })
    }

    /// The cache lifetime `Cache-Control` values ask for, within bounds:
    /// `no-store` (or `no-cache`: this cache never revalidates) gives 0, the
    /// smallest `max-age` is kept in [[`MIN_MAX_AGE`], `max_max_age`] (a
    /// malformed one counts as 0), none gives `default_max_age`.
    pub fn max_age<'a>(&self, cache_control: impl IntoIterator<Item = &'a str>) -> i64 {
        let cap = self.max_max_age.max(MIN_MAX_AGE);
        let mut age: Option<u64> = None;
        for value in cache_control {
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                    return 0;
                }
                if name.eq_ignore_ascii_case("max-age") {
                    let n = match arg {
                        Some(a) if !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) => {
                            a.parse().unwrap_or(u64::MAX)
                        }
                        _ => 0,
                    };
                    age = Some(age.map_or(n, |a| a.min(n)));
                }
            }
        }
        match age {
            Some(n) => i64::try_from(n).unwrap_or(i64::MAX).clamp(MIN_MAX_AGE, cap),
            None => self.default_max_age.clamp(0, cap),
        }
    }
}

// ---------------------------------------------------------------------------
// Addresses.

/// Is `ip` special-use (RFC 6890 and the IANA special-purpose registries),
/// never a metadata document's host? IPv6 is allowed only in global unicast
/// (2000::/3) outside its special blocks; IPv4-mapped and NAT64 (64:ff9b::/96)
/// addresses are judged by the IPv4 address they carry.
pub fn special_use(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // IETF assignments, TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 31 && c == 196) // AS112
        || (a == 192 && b == 52 && c == 193) // AMT
        || (a == 192 && b == 175 && c == 48) // AS112 direct delegation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast, reserved 240/4, broadcast
}

fn special_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return special_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    // Outside 2000::/3: ::, ::1, ::/96, 64:ff9b:1::/48, 100::/64,
    // 5f00::/16, fc00::/7, fe80::/10, fec0::/10, ff00::/8.
    s[0] & 0xe000 != 0x2000
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF assignments 2001::/23 (Teredo, benchmarking…)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] == 0x2002 // 6to4
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
}

/// Refuse if any address is special-use, loopback excepted when allowed.
fn vet(addrs: &[SocketAddr], allow_loopback: bool) -> Result<(), Refused> {
    let ok = |ip: IpAddr| !special_use(ip) || (allow_loopback && ip.is_loopback());
    if addrs.iter().all(|a| ok(a.ip())) {
        Ok(())
    } else {
        Err(Refused::SpecialUse)
    }
}

/// One lookup of `host` (an IP literal is not looked up), within `timeout`.
fn lookup(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Refused> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let name = format!("{host}:{port}");
    // std's lookup has no deadline: a thread that may outlive the wait.
    std::thread::Builder::new()
        .name("cimd-lookup".into())
        .spawn(move || {
            let found = name.to_socket_addrs().map(Iterator::collect::<Vec<_>>);
            let _ = tx.send(found);
        })
        .map_err(|_| Refused::Network)?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(Refused::Unresolvable),
        Err(_) => Err(Refused::Timeout),
    }
}

// ---------------------------------------------------------------------------
// Fetching.

/// Fetch the document at `url`: its body and how many seconds it may be
/// cached (0: use it for this request only).
pub fn fetch(policy: &CimdPolicy, url: &str) -> Result<(Vec<u8>, i64), Refused> {
    check_url(url)?;
    let uri = Uri::parse(url).ok_or(Refused::NotUrl)?;
    let authority = uri.authority.as_ref().ok_or(Refused::NotUrl)?;
    let host = authority.host.trim_start_matches('[').trim_end_matches(']');
    if !policy.allowed(host) {
        return Err(Refused::NotAllowed);
    }
    let deadline = Instant::now() + policy.timeout;
    let addrs = lookup(host, authority.port.unwrap_or(443), policy.timeout)?;
    vet(&addrs, policy.allow_loopback)?;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Refused::Timeout);
    }
    let agent = agent(policy, left, host, addrs)?;
    let mut resp = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(network)?;
    match resp.status().as_u16() {
        200 => {}
        300..=399 => return Err(Refused::Redirect),
        _ => return Err(Refused::Status),
    }
    let max = policy.max_bytes;
    if resp.body().content_length().is_some_and(|n| n > max as u64) {
        return Err(Refused::TooLarge);
    }
    let mut body = Vec::with_capacity(max.min(MAX_DOC_BYTES) + 1);
    resp.body_mut()
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| network(ureq::Error::from(e)))?;
    if body.len() > max {
        return Err(Refused::TooLarge);
    }
    let cache_control = resp.headers().get_all("cache-control");
    let age = policy.max_age(cache_control.iter().filter_map(|v| v.to_str().ok()));
    Ok((body, age))
}

/// Fetch and validate: the client a metadata document URL names, as of
/// `now`, expiring when its cache lifetime ends.
pub fn resolve(policy: &CimdPolicy, url: &str, now: i64) -> Result<Client, Refused> {
    let (body, max_age) = fetch(policy, url)?;
    validate(url, &body, now, max_age)
}

fn network(e: ureq::Error) -> Refused {
    match e {
        ureq::Error::Timeout(_) => Refused::Timeout,
        ureq::Error::BodyExceedsLimit(_) | ureq::Error::LargeResponseHeader(..) => {
            Refused::TooLarge
        }
        _ => Refused::Network,
    }
}

/// An agent that reaches `host` only at `addrs`, over TCP then TLS (no proxy,
/// no SOCKS), follows no redirect and gives up after `timeout`.
fn agent(
    policy: &CimdPolicy,
    timeout: Duration,
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<ureq::Agent, Refused> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .https_only(true)
        .proxy(None)
        .user_agent("portcullis (client metadata)")
        .max_response_header_size(16 * 1024)
        .max_idle_connections(0)
        .build();
    let tls = PinnedTls(tls_config(&policy.extra_roots)?);
    let resolver = Pinned {
        host: host.to_ascii_lowercase(),
        addrs,
    };
    Ok(ureq::Agent::with_parts(
        config,
        TcpConnector::default().chain(tls),
        resolver,
    ))
}

fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Refused> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|_| Refused::Network)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|_| Refused::Network)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The resolver: the vetted addresses, for the vetted host only.
#[derive(Debug)]
struct Pinned {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Resolver for Pinned {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.eq_ignore_ascii_case(&self.host) {
            return Err(ureq::Error::HostNotFound);
        }
        let mut out = self.empty();
        for addr in &self.addrs {
            if out.try_push(*addr).is_err() {
                break;
            }
        }
        Ok(out)
    }
}

/// TLS over the chained TCP transport with this module's client config
/// (ureq's own connector offers either the webpki roots or specific roots,
/// not both).
#[derive(Debug)]
struct PinnedTls(Arc<rustls::ClientConfig>);

impl<In: Transport> Connector<In> for PinnedTls {
    type Out = TlsTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<TlsTransport>, ureq::Error> {
        let Some(tcp) = chained else {
            return Ok(None);
        };
        let host = details.uri.host().ok_or(ureq::Error::HostNotFound)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ureq::Error::Tls("invalid server name"))?;
        let mut conn = rustls::ClientConnection::new(self.0.clone(), name)?;
        let mut sock = TransportAdapter::new(tcp.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let config = details.config;
        Ok(Some(TlsTransport {
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            stream: rustls::StreamOwned { conn, sock },
        }))
    }
}

struct TlsTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let n = self.stream.read(input)?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------
// The document.

/// The members looked at. Each is kept as whatever JSON value it holds (a
/// `null` too, so that it counts as present) and checked by hand, with
/// messages that name fields only; serde refuses a known member given twice.
#[derive(Deserialize)]
struct Doc {
    #[serde(default, deserialize_with = "present")]
    client_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    client_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    redirect_uris: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    grant_types: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    token_endpoint_auth_method: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    token_endpoint_auth_methods_supported: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    client_secret: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    client_secret_expires_at: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Check the document fetched from `url` and make it a client record that
/// expires `max_age` seconds after `now`. Pure.
pub fn validate(url: &str, body: &[u8], now: i64, max_age: i64) -> Result<Client, Refused> {
    check_url(url)?;
    if body.len() > MAX_DOC_BYTES {
        return Err(Refused::TooLarge);
    }
    // A struct also deserializes from an array: only an object is a document.
    if body.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Refused::NotObject);
    }
    // Read twice. As a `Value` first: the whole text must be valid JSON,
    // members skipped below included (serde skips them without checking
    // their UTF-8 or surrogate escapes, which another parser would read
    // differently). Then the members, refusing any given twice.
    let whole: Value = serde_json::from_slice(body).map_err(|_| Refused::NotJson)?;
    if !whole.is_object() {
        return Err(Refused::NotObject);
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refused::Malformed("a member appears twice"),
        _ => Refused::NotJson,
    })?;
    if doc.client_secret.is_some() || doc.client_secret_expires_at.is_some() {
        return Err(Refused::Secret);
    }
    match doc.client_id {
        Some(Value::String(id)) if id == url => {}
        Some(Value::String(_)) | None => return Err(Refused::ClientIdMismatch),
        Some(_) => return Err(Refused::Malformed("client_id must be a string")),
    }
    let name = match doc.client_name {
        Some(Value::String(n)) if !n.trim().is_empty() => n,
        Some(Value::String(_)) | None => return Err(Refused::NoName),
        Some(_) => return Err(Refused::Malformed("client_name must be a string")),
    };
    let redirect_uris = redirect_uris(doc.redirect_uris)?;
    public_client(
        doc.token_endpoint_auth_method,
        doc.token_endpoint_auth_methods_supported,
    )?;
    let grant_types = grant_types(doc.grant_types)?;
    Ok(Client {
        id: url.to_owned(),
        name,
        redirect_uris,
        kind: ClientKind::MetadataDocument,
        secret_hash: None,
        grant_types,
        created: now,
        expires: Some(now.saturating_add(max_age.max(0))),
    })
}

fn redirect_uris(v: Option<Value>) -> Result<Vec<String>, Refused> {
    let uris = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None => return Err(Refused::NoRedirectUris),
        Some(_) => {
            return Err(Refused::Malformed(
                "redirect_uris must be an array of strings",
            ))
        }
    };
    uris.into_iter()
        .map(|u| match u {
            Value::String(u) => redirect::check(&u, true)
                .map(|()| u)
                .map_err(Refused::RedirectUri),
            _ => Err(Refused::Malformed(
                "redirect_uris must be an array of strings",
            )),
        })
        .collect()
}

/// The document's methods are the singular `token_endpoint_auth_method` and
/// the `token_endpoint_auth_methods_supported` list together (ChatGPT's puts
/// `private_key_jwt` in one and `none` in the other). Neither given: public.
fn public_client(one: Option<Value>, many: Option<Value>) -> Result<(), Refused> {
    let mut methods: Vec<String> = Vec::new();
    match one {
        None => {}
        Some(Value::String(m)) => methods.push(m),
        Some(_) => {
            return Err(Refused::Malformed(
                "token_endpoint_auth_method must be a string",
            ))
        }
    }
    const LIST: &str = "token_endpoint_auth_methods_supported must be an array of strings";
    match many {
        None => {}
        Some(Value::Array(list)) => {
            for m in list {
                let Value::String(m) = m else {
                    return Err(Refused::Malformed(LIST));
                };
                methods.push(m);
            }
        }
        Some(_) => return Err(Refused::Malformed(LIST)),
    }
    if methods.is_empty() || methods.iter().any(|m| m == "none") {
        Ok(())
    } else if methods.iter().any(|m| m.starts_with("client_secret")) {
        Err(Refused::SecretMethod)
    } else {
        Err(Refused::NotPublic)
    }
}

/// `authorization_code` and `refresh_token`, in that order, of those listed
/// (others dropped); `[authorization_code]` when absent.
fn grant_types(v: Option<Value>) -> Result<Vec<String>, Refused> {
    const LIST: &str = "grant_types must be an array of strings";
    let listed = match v {
        None => return Ok(vec!["authorization_code".to_owned()]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Refused::Malformed(LIST)),
    };
    let mut names = Vec::with_capacity(listed.len());
    for g in &listed {
        names.push(g.as_str().ok_or(Refused::Malformed(LIST))?);
    }
    if !names.contains(&"authorization_code") {
        return Err(Refused::NoAuthorizationCode);
    }
    Ok(["authorization_code", "refresh_token"]
        .into_iter()
        .filter(|g| names.contains(g))
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
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
}
