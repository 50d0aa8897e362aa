//! `portcullis grants list|revoke`: the authorization server's grants, read
//! from and revoked in its store directly (the running proxy, polling the
//! store's change sequence, refuses the revoked grants' tokens on every core
//! within a second). Revoking also forgets the matching consents, so the
//! user is asked again.

use crate::store::Grant;
use std::fmt::Write;
use std::path::Path;

/// What `portcullis grants` does.
pub enum GrantsCommand<'a> {
    List,
    /// Revoke the grants (and consents) of a user, a client, or both.
    Revoke,
    /// Revoke one grant by id.
    RevokeOne(&'a str),
}

/// Run it against the store named by the configuration file; the text to print.
pub fn grants(
    config: &Path,
    command: GrantsCommand<'_>,
    user: Option<&str>,
    client: Option<&str>,
) -> Result<String, String> {
    let (cfg, _) = crate::config::load(config).map_err(|e| e.to_string())?;
    let mut store = super::store::open_configured(config, &cfg)?;
    let now = crate::authz::unix_now();
    match command {
        GrantsCommand::List => {
            let list = store.grants(user, client).map_err(|e| e.to_string())?;
            Ok(render(&list, now))
        }
        GrantsCommand::RevokeOne(id) => match store.revoke_grant(id).map_err(|e| e.to_string())? {
            true => Ok(format!("revoked grant {id}\n")),
            false => Err(format!("no live grant {id}")),
        },
        GrantsCommand::Revoke => {
            let grants = store
                .revoke_grants(user, client)
                .map_err(|e| e.to_string())?;
            let consents = store
                .revoke_consents(user, client)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "revoked {grants} grant(s) and forgot {consents} consent(s)\n"
            ))
        }
    }
}

fn render(list: &[Grant], now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<20} {:<28} {:<36} RESOURCE",
        "GRANT", "STATE", "CREATED", "USER", "CLIENT"
    );
    for g in list {
        let state = if g.revoked {
            "revoked"
        } else if g.expires <= now {
            "expired"
        } else {
            "live"
        };
        let created = jiff::Timestamp::from_second(g.created).map_or_else(
            |_| g.created.to_string(),
            |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<20} {:<28} {:<36} {}",
            g.id, state, created, g.user, g.client_id, g.resource
        );
    }
    let _ = writeln!(out, "{} grant(s)", list.len());
    out
}
