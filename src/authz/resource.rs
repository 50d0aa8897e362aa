//! The RFC 8707 `resource` parameter in canonical form, so that the forms
//! clients actually send compare equal: scheme and host in lower case, the
//! default port dropped, and no trailing slash (`https://host/` as claude.ai
//! sends it is `https://host`, the form the protected resource metadata
//! gives; `https://host/github/` is `https://host/github`). A fragment is
//! refused (RFC 8707 §2); a query is kept as it is.

use super::Uri;

/// Why a `resource` is refused (`invalid_target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotAbsolute,
    Fragment,
    Userinfo,
    /// Only `http` and `https` resources exist here.
    Scheme,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::NotAbsolute => "resource is not an absolute URI",
            Refused::Fragment => "resource has a fragment",
            Refused::Userinfo => "resource has userinfo",
            Refused::Scheme => "resource is not an http or https URL",
        }
    }
}

/// The canonical form of `resource`.
pub fn canonical(resource: &str) -> Result<String, Refused> {
    let u = Uri::parse(resource).ok_or(Refused::NotAbsolute)?;
    if u.fragment.is_some() {
        return Err(Refused::Fragment);
    }
    let scheme = u.scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(Refused::Scheme),
    };
    let a = u.authority.ok_or(Refused::NotAbsolute)?;
    if a.userinfo.is_some() {
        return Err(Refused::Userinfo);
    }
    let mut out = format!("{scheme}://{}", a.host.to_ascii_lowercase());
    if let Some(port) = a.port.filter(|&p| p != default_port) {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(u.path.trim_end_matches('/'));
    if let Some(q) = u.query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_clients_send_compare_equal() {
        for (sent, want) in [
            ("https://mcp.example.com", "https://mcp.example.com"),
            ("https://mcp.example.com/", "https://mcp.example.com"),
            ("HTTPS://MCP.Example.COM:443/", "https://mcp.example.com"),
            (
                "https://mcp.example.com/github/",
                "https://mcp.example.com/github",
            ),
            (
                "https://mcp.example.com:8443/github",
                "https://mcp.example.com:8443/github",
            ),
            ("http://127.0.0.1:80/mcp", "http://127.0.0.1/mcp"),
            ("http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp"),
            ("https://[::1]/mcp", "https://[::1]/mcp"),
            (
                "https://mcp.example.com/GitHub",
                "https://mcp.example.com/GitHub",
            ),
            (
                "https://mcp.example.com/mcp?tenant=a",
                "https://mcp.example.com/mcp?tenant=a",
            ),
        ] {
            assert_eq!(canonical(sent).as_deref(), Ok(want), "{sent}");
        }
        for (bad, why) in [
            ("https://mcp.example.com/#x", Refused::Fragment),
            ("https://u@mcp.example.com/", Refused::Userinfo),
            ("ftp://mcp.example.com/", Refused::Scheme),
            ("urn:mcp:github", Refused::Scheme),
            ("https:mcp", Refused::NotAbsolute),
            ("mcp.example.com", Refused::NotAbsolute),
        ] {
            assert_eq!(canonical(bad), Err(why), "{bad}");
        }
    }
}
