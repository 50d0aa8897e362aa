//! The pages a user sees: the development login, consent, and errors. Plain
//! HTML written here with every value escaped; no script, no external
//! resource; the headers (`Answer::html`) forbid framing and caching.

use super::http::Answer;
use super::login::Session;
use crate::config::authz::DevUser;
use crate::store::{Client, ClientKind};
use std::fmt::Write;

/// HTML-escape text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}.box{border:1px solid #ccc;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}\
.warn{background:#fff4e5;border-color:#f0a030}code{background:#f3f3f3;padding:0 .25rem;word-break:break-all}\
button{font-size:1rem;padding:.5rem 1.25rem;margin-right:.5rem;border-radius:6px;border:1px solid #888;cursor:pointer}\
#allow{background:#1a7f37;color:#fff;border-color:#1a7f37}dt{font-weight:600;margin-top:.5rem}dd{margin-left:0}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{} · portcullis</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

/// A form POSTed from another site (its `Origin` not the issuer's): the
/// refusal; `None` when the origin is ours or absent.
pub(crate) fn foreign_origin(call: &super::http::Call, issuer: &str) -> Option<Answer> {
    call.header("origin").is_some_and(|o| o != issuer).then(|| {
        error(
            403,
            "This form was sent from another site",
            "the Origin is not this server's",
        )
    })
}

pub(crate) fn error(status: u16, title: &str, detail: &str) -> Answer {
    let body = format!("<h1>{}</h1><p>{}</p>", esc(title), esc(detail));
    Answer::html(status, page(title, &body))
}

pub(crate) fn dev_login(users: &[DevUser], tx: &str, csrf: &str) -> Answer {
    let mut body = String::from(
        "<h1>Development login</h1><div class=\"box warn\">This login has no passwords: it is for trying \
portcullis on this machine only.</div><form method=\"post\" action=\"/.portcullis/login\">",
    );
    let _ = write!(
        body,
        "<input type=\"hidden\" name=\"tx\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(tx),
        esc(csrf)
    );
    for u in users {
        let _ = write!(
            body,
            "<p><button type=\"submit\" name=\"user\" value=\"{0}\">Log in as {0}</button> {1}</p>",
            esc(&u.sub),
            esc(&u.groups.join(", "))
        );
    }
    body.push_str("</form>");
    Answer::html(200, page("Log in", &body))
}

/// What the consent page shows.
pub(crate) struct ConsentView<'a> {
    pub client: &'a Client,
    pub redirect_uri: &'a str,
    /// The MCP server's URL, and its route's name.
    pub resource: &'a str,
    pub route: &'a str,
    pub scopes: &'a [String],
    pub user: &'a Session,
    pub tx: &'a str,
    pub csrf: &'a str,
}

pub(crate) fn consent(v: &ConsentView<'_>) -> Answer {
    let uri = super::Uri::parse(v.redirect_uri);
    let host = uri
        .as_ref()
        .and_then(|u| u.authority.as_ref())
        .map_or(uri.as_ref().map_or("?", |u| u.scheme), |a| a.host);
    let loopback = v.client.redirect_uris.iter().all(|r| {
        super::Uri::parse(r)
            .and_then(|u| u.authority)
            .is_some_and(|a| a.is_loopback())
    });
    let who = match v.client.kind {
        ClientKind::MetadataDocument => format!(
            "verified by its metadata document at <b>{}</b>",
            esc(super::Uri::parse(&v.client.id)
                .and_then(|u| u.authority)
                .map_or("?", |a| a.host))
        ),
        ClientKind::Dynamic => "registered itself: <b>unverified</b>".to_string(),
        ClientKind::Registered => "registered by your administrators".to_string(),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Allow <span id=\"client-name\">{}</span> to use {} as you?</h1>\
<p>Logged in as <b>{}</b>{}.</p><div class=\"box\"><dl>\
<dt>Application</dt><dd>{} ({who}) <br><code>{}</code></dd>\
<dt>It will receive the authorization at</dt><dd><b id=\"redirect-host\">{}</b><br><code id=\"redirect-uri\">{}</code></dd>\
<dt>MCP server</dt><dd><b>{}</b> <code>{}</code></dd>\
<dt>Scopes</dt><dd>{}</dd></dl></div>",
        esc(&v.client.name),
        esc(v.route),
        esc(&v.user.sub),
        v.user.email.as_deref().map(|e| format!(" ({})", esc(e))).unwrap_or_default(),
        esc(&v.client.name),
        esc(&v.client.id),
        esc(host),
        esc(v.redirect_uri),
        esc(v.route),
        esc(v.resource),
        if v.scopes.is_empty() { "none".to_string() } else { v.scopes.iter().map(|s| format!("<code>{}</code>", esc(s))).collect::<Vec<_>>().join(" ") },
    );
    if loopback {
        body.push_str(
            "<div class=\"box warn\" id=\"loopback-warning\">This application only receives authorizations on \
this computer (a local address). Any program on this computer can claim to be it: allow it only if you \
just started it yourself.</div>",
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/.portcullis/consent\"><input type=\"hidden\" name=\"tx\" value=\"{}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"allow\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" id=\"deny\" name=\"decision\" value=\"deny\">Deny</button></form>",
        esc(v.tx),
        esc(v.csrf)
    );
    Answer::html(200, page("Allow access", &body))
}

/// One row of the connections page.
pub(crate) struct ConnectionRow<'a> {
    pub route: &'a str,
    pub server: &'a str,
    pub state: String,
    pub connected: bool,
}

pub(crate) fn connections(user: &str, rows: &[ConnectionRow<'_>], csrf: &str) -> Answer {
    let mut body = format!(
        "<h1>Your connected accounts</h1><p>Logged in as <b>{}</b>. MCP servers behind portcullis that act \
with your own account at another service use these connections; agents never see their tokens.</p>",
        esc(user)
    );
    if rows.is_empty() {
        body.push_str("<p>No MCP server here needs a connected account.</p>");
    }
    for r in rows {
        let (action, label) = if r.connected {
            ("disconnect", "Disconnect")
        } else {
            ("connect", "Connect")
        };
        let _ = write!(
            body,
            "<div class=\"box\" data-route=\"{route}\"><b>{route}</b> <code>{server}</code><br>\
<span class=\"state\">{state}</span><form method=\"post\" action=\"/.portcullis/connections\">\
<input type=\"hidden\" name=\"route\" value=\"{route}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"action\" value=\"{action}\" id=\"{action}-{route}\">{label}</button></form></div>",
            route = esc(r.route),
            server = esc(r.server),
            state = esc(&r.state),
            csrf = esc(csrf),
        );
    }
    Answer::html(200, page("Connected accounts", &body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_escaped() {
        assert_eq!(
            super::esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
