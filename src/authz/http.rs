//! What crosses from a data-plane core to the authorization server and back:
//! a request the core has read whole ([`Call`]) and the answer it writes
//! ([`Answer`]); the form and query parser (`application/x-www-form-urlencoded`,
//! repeated parameters refused as RFC 6749 §3.1 asks); cookies.

use std::net::IpAddr;

/// The largest body an authorization-server request may have.
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// The request headers the authorization server reads; the others are not
/// handed over.
pub(crate) const HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "cookie",
    "origin",
    "user-agent",
    "host",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// One request for the authorization server, owned.
#[derive(Debug, Clone)]
pub struct Call {
    pub verb: Verb,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// Lower-case name, value: only [`HEADERS`].
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub peer: IpAddr,
    pub tls: bool,
}

impl Call {
    /// A header's value (the first, when repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times a header was sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| *n == name).count()
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| *n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// One answer, written by the core that read the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Answer {
        Answer::new(status)
            .with("content-type", "application/json")
            .body(body.to_string().into_bytes())
    }

    pub fn html(status: u16, body: String) -> Answer {
        Answer::new(status)
            .with("content-type", "text/html; charset=utf-8")
            .with(
                "content-security-policy",
                // No `form-action`: browsers apply it to the redirect that
                // follows the consent POST too, which goes to the client.
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
            )
            .with("x-frame-options", "DENY")
            .with("referrer-policy", "same-origin")
            .with("cache-control", "no-store")
            .body(body.into_bytes())
    }

    /// 302 to `location` (never used for an answer to a POST of the OAuth
    /// endpoints: only browser steps redirect).
    pub fn redirect(location: String) -> Answer {
        Answer::new(302)
            .with("location", location)
            .with("cache-control", "no-store")
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Answer {
        self.body = body;
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed form or query: name, value pairs, each name once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

/// Why a form or query was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    Repeated(String),
    BadEncoding,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormError::Repeated(name) => write!(f, "parameter `{name}` is repeated"),
            FormError::BadEncoding => {
                f.write_str("the parameters are not valid percent-encoded UTF-8")
            }
        }
    }
}

impl Form {
    /// Parse `a=1&b=2` (`+` is a space). Empty parameters are skipped; a
    /// name given twice is an error.
    pub fn parse(s: &[u8]) -> Result<Form, FormError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for part in s.split(|&b| b == b'&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            let k = decode(k)?;
            let v = decode(v)?;
            if out.iter().any(|(n, _)| *n == k) {
                return Err(FormError::Repeated(k));
            }
            out.push((k, v));
        }
        Ok(Form(out))
    }

    /// A parameter's value; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &[u8]) -> Result<String, FormError> {
    let plus: Vec<u8> = s
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
    // A `%` not followed by two hex digits is passed through by the decoder:
    // refuse it rather than guess.
    if plus.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(plus
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
    }) {
        return Err(FormError::BadEncoding);
    }
    String::from_utf8(bytes).map_err(|_| FormError::BadEncoding)
}

/// Percent-encode a query parameter value.
pub(crate) fn encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// `base?k=v&…` (appended with `&` when `base` has a query already).
pub(crate) fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_refuse_repeats() {
        let f = Form::parse(b"a=1&b=x+y%2Fz&&c=&d").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), Some("x y/z"));
        assert_eq!(f.get("c"), None);
        assert_eq!(f.get("d"), None);
        assert_eq!(
            Form::parse(b"code=1&code=2"),
            Err(FormError::Repeated("code".into()))
        );
        assert_eq!(Form::parse(b"a=%zz"), Err(FormError::BadEncoding));
        assert_eq!(Form::parse(b"a=%2"), Err(FormError::BadEncoding));
        assert_eq!(Form::parse(b"a=%ff"), Err(FormError::BadEncoding));
    }

    #[test]
    fn queries_are_built_encoded() {
        assert_eq!(
            with_query(
                "http://127.0.0.1:9/cb",
                &[("code", "a b"), ("state", "x&y")]
            ),
            "http://127.0.0.1:9/cb?code=a%20b&state=x%26y"
        );
        assert_eq!(
            with_query("https://a/cb?x=1", &[("k", "v")]),
            "https://a/cb?x=1&k=v"
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        let call = Call {
            verb: Verb::Get,
            path: "/".into(),
            query: String::new(),
            headers: vec![("cookie", "a=1; __Host-s=xyz ;b=2".into())],
            body: Vec::new(),
            peer: [127, 0, 0, 1].into(),
            tls: false,
        };
        assert_eq!(call.cookie("__Host-s"), Some("xyz"));
        assert_eq!(call.cookie("b"), Some("2"));
        assert_eq!(call.cookie("c"), None);
    }
}
