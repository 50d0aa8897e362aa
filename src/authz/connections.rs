//! The page `/.portcullis/connections`: a user's accounts at the upstream
//! services of the routes that need one (connected, disconnected and why,
//! not connected), with Connect and Disconnect. The form is bound to the
//! user by a sealed `__Host-` cookie holding a CSRF token; a foreign
//! `Origin` is refused.

use super::connect::{start, upstream_of, FROM_CONNECTIONS, PENDING_TTL};
use super::http::{Answer, Call, Form};
use super::login::{cookie, session};
use super::pages;
use super::seal::{same, Purpose};
use super::server::{unavailable, Server};
use super::settings::Settings;
use crate::store::UpstreamStatus;

/// `GET /.portcullis/connections`: the user's upstream accounts.
pub(crate) fn page(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    let Some(user) = session(server, call, now) else {
        return super::login::start(server, s, FROM_CONNECTIONS, now);
    };
    let records = server.store().upstream_of(&user.sub);
    let records = match records {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let csrf = server.sealer.token();
    let sealed = server.sealer.seal(
        Purpose::Consent,
        format!("{}\n{csrf}\n{}", user.sub, now + PENDING_TTL).as_bytes(),
    );
    let rows: Vec<pages::ConnectionRow<'_>> = s
        .resources
        .iter()
        .filter(|r| r.upstream.is_some())
        .map(|r| {
            let t = records.iter().find(|t| t.route == r.route);
            pages::ConnectionRow {
                route: &r.route,
                server: &r.audience,
                state: match t.map(|t| &t.status) {
                    Some(UpstreamStatus::Connected) => "connected".to_string(),
                    Some(UpstreamStatus::Disconnected { reason }) => {
                        format!("disconnected: {reason}")
                    }
                    None => "not connected".to_string(),
                },
                connected: t.is_some_and(|t| t.status == UpstreamStatus::Connected),
            }
        })
        .collect();
    pages::connections(&user.sub, &rows, &csrf).with(
        "set-cookie",
        cookie("__Host-portcullis-connections", &sealed, PENDING_TTL),
    )
}

/// `POST /.portcullis/connections`: connect or disconnect one route.
pub(crate) fn act(server: &Server, s: &Settings, call: &Call) -> Answer {
    let now = crate::authz::unix_now();
    if let Some(refused) = pages::foreign_origin(call, &s.issuer) {
        return refused;
    }
    let Some(user) = session(server, call, now) else {
        return pages::error(
            403,
            "You are not logged in",
            "open the connections page again",
        );
    };
    let form = match Form::parse(&call.body) {
        Ok(f) => f,
        Err(e) => return pages::error(400, "This form is malformed", &e.to_string()),
    };
    let bound = call
        .cookie("__Host-portcullis-connections")
        .and_then(|c| server.sealer.open(Purpose::Consent, c))
        .and_then(|raw| String::from_utf8(raw).ok());
    let ok = bound.as_deref().and_then(|b| {
        let mut parts = b.split('\n');
        let (sub, csrf, exp) = (
            parts.next()?,
            parts.next()?,
            parts.next()?.parse::<i64>().ok()?,
        );
        Some(
            sub == user.sub
                && exp > now
                && form
                    .get("csrf")
                    .is_some_and(|c| same(c.as_bytes(), csrf.as_bytes())),
        )
    });
    if ok != Some(true) {
        return pages::error(
            403,
            "This form was not sent from this browser's connections page",
            "CSRF check failed: reload the page",
        );
    }
    let Some(route) = form.get("route").filter(|r| upstream_of(s, r).is_some()) else {
        return pages::error(400, "No such connection", "unknown route");
    };
    match form.get("action") {
        Some("connect") => start(server, s, route, &user.sub, FROM_CONNECTIONS, now),
        Some("disconnect") => match server.disconnect(s, &user.sub, route) {
            Ok(_) => Answer::redirect(s.url("/.portcullis/connections")),
            Err(e) => unavailable(&e),
        },
        _ => pages::error(400, "No action", "connect or disconnect"),
    }
}
