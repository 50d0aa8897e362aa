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
mod tests;
