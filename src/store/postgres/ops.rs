//! The [`Store`] operations in PostgreSQL's SQL: the SQLite store's
//! statements with `$n` parameters, `ON CONFLICT … DO UPDATE` for SQLite's
//! `INSERT OR REPLACE`, and what must be atomic across connections written
//! as one conditional statement (see the module above).

use super::{
    all, client_row, col, grant_locked, grant_row, kind_name, list, revoke_in, status_columns,
    to_json, upstream_client_row, upstream_row, Fail, PostgresStore,
};
use crate::store::{
    Client, CodeGrant, CodeTake, Consent, Grant, Pin, Rotation, SigningKey, Store, StoreError,
    Swept, UpstreamClient, UpstreamToken, CODE_MEMORY_SECS,
};

impl Store for PostgresStore {
    fn put_client(&mut self, c: &Client) -> Result<(), StoreError> {
        let redirect_uris = to_json(&c.redirect_uris);
        let grant_types = to_json(&c.grant_types);
        let secret_hash = c.secret_hash.as_ref().map(|h| &h[..]);
        self.write(|db| {
            db.exec(
                concat!(
                    "INSERT INTO clients (",
                    client_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                     redirect_uris = excluded.redirect_uris, kind = excluded.kind, \
                     secret_hash = excluded.secret_hash, grant_types = excluded.grant_types, \
                     created = excluded.created, expires = excluded.expires"
                ),
                &[
                    &c.id,
                    &c.name,
                    &redirect_uris,
                    &kind_name(c.kind),
                    &secret_hash,
                    &grant_types,
                    &c.created,
                    &c.expires,
                ],
            )?;
            Ok(((), true))
        })
    }

    fn client(&self, id: &str, now: i64) -> Result<Option<Client>, StoreError> {
        self.read(|db| {
            db.row(
                concat!(
                    "SELECT ",
                    client_columns!(),
                    " FROM clients WHERE id = $1 AND (expires IS NULL OR expires > $2)"
                ),
                &[&id, &now],
            )?
            .as_ref()
            .map(client_row)
            .transpose()
        })
    }

    fn sweep_expired(&mut self, now: i64) -> Result<Swept, StoreError> {
        self.write(|db| {
            let swept = Swept {
                clients: db.exec("DELETE FROM clients WHERE expires <= $1", &[&now])?,
                consents: db.exec("DELETE FROM consents WHERE expires <= $1", &[&now])?,
                // `expires <= now - memory`: `expires + memory` could overflow.
                codes: db.exec(
                    "DELETE FROM codes WHERE (state = 0 AND expires <= $1) OR expires <= $1 - $2",
                    &[&now, &CODE_MEMORY_SECS],
                )?,
                grants: db.exec("DELETE FROM grants WHERE expires <= $1", &[&now])?,
            };
            Ok((swept, swept.total() > 0))
        })
    }

    fn put_consent(&mut self, c: &Consent) -> Result<(), StoreError> {
        let scopes = to_json(&c.scopes);
        self.write(|db| {
            db.exec(
                "INSERT INTO consents (subject, client_id, redirect_uri, scopes, expires) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject, client_id, redirect_uri) \
                 DO UPDATE SET scopes = excluded.scopes, expires = excluded.expires",
                &[&c.user, &c.client_id, &c.redirect_uri, &scopes, &c.expires],
            )?;
            Ok(((), true))
        })
    }

    fn consented(
        &self,
        user: &str,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        now: i64,
    ) -> Result<bool, StoreError> {
        let granted = self.read(|db| {
            db.row(
                "SELECT scopes FROM consents WHERE subject = $1 AND client_id = $2 \
                 AND redirect_uri = $3 AND expires > $4",
                &[&user, &client_id, &redirect_uri, &now],
            )?
            .map(|r| list(&r, 0))
            .transpose()
        })?;
        Ok(granted.is_some_and(|granted| scopes.iter().all(|s| granted.contains(s))))
    }

    fn revoke_consents(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError> {
        if user.is_none() && client_id.is_none() {
            return Err(StoreError::NoFilter);
        }
        self.write(|db| {
            let n = db.exec(
                "DELETE FROM consents WHERE ($1::TEXT IS NULL OR subject = $1) \
                 AND ($2::TEXT IS NULL OR client_id = $2)",
                &[&user, &client_id],
            )?;
            Ok((n, n > 0))
        })
    }

    fn put_code(&mut self, c: &CodeGrant) -> Result<(), StoreError> {
        let scopes = to_json(&c.scopes);
        self.write(|db| {
            db.exec(
                "INSERT INTO codes (code_hash, client_id, redirect_uri, challenge, resource, \
                 scopes, subject, claims, expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &&c.code_hash[..],
                    &c.client_id,
                    &c.redirect_uri,
                    &c.challenge,
                    &c.resource,
                    &scopes,
                    &c.user,
                    &c.claims,
                    &c.expires,
                ],
            )
            .map_err(Fail::exists("code"))?;
            Ok(((), true))
        })
    }

    fn take_code(&mut self, code_hash: &[u8; 32], now: i64) -> Result<CodeTake, StoreError> {
        let hash = &code_hash[..];
        self.write(|db| {
            // The one way to `Granted`: a conditional update; a concurrent
            // one waits for this row and then finds it taken.
            let taken = db.row(
                "UPDATE codes SET state = 1 WHERE code_hash = $1 AND state = 0 AND expires > $2 \
                 RETURNING client_id, redirect_uri, challenge, resource, scopes, subject, \
                 claims, expires",
                &[&hash, &now],
            )?;
            if let Some(r) = taken {
                let code = CodeGrant {
                    code_hash: *code_hash,
                    client_id: col(&r, 0)?,
                    redirect_uri: col(&r, 1)?,
                    challenge: col(&r, 2)?,
                    resource: col(&r, 3)?,
                    scopes: list(&r, 4)?,
                    user: col(&r, 5)?,
                    claims: col(&r, 6)?,
                    expires: col(&r, 7)?,
                };
                return Ok((CodeTake::Granted(Box::new(code)), true));
            }
            // Taken before: marked replayed in the same statement that reads
            // the grant issued from it, so a `code_issued` racing this one
            // is either seen here or sees the mark.
            let replayed = db.row(
                "UPDATE codes SET state = 2 WHERE code_hash = $1 AND state != 0 \
                 RETURNING grant_id",
                &[&hash],
            )?;
            if let Some(r) = replayed {
                let grant_id = col(&r, 0)?;
                return Ok((CodeTake::Replayed { grant_id }, true));
            }
            let known = db.row("SELECT 1 FROM codes WHERE code_hash = $1", &[&hash])?;
            Ok((
                match known {
                    Some(_) => CodeTake::Expired,
                    None => CodeTake::Unknown,
                },
                false,
            ))
        })
    }

    fn code_issued(&mut self, code_hash: &[u8; 32], grant_id: &str) -> Result<bool, StoreError> {
        let hash = &code_hash[..];
        self.write(|db| {
            let state: Option<i64> = db
                .row(
                    "UPDATE codes SET grant_id = $2 WHERE code_hash = $1 AND state != 0 \
                     RETURNING state",
                    &[&hash, &grant_id],
                )?
                .map(|r| col(&r, 0))
                .transpose()?;
            match state {
                None => Err(StoreError::NotFound("taken code").into()),
                Some(1) => Ok((true, true)),
                Some(_) => {
                    revoke_in(db, grant_id)?;
                    Ok((false, true))
                }
            }
        })
    }

    fn create_grant(
        &mut self,
        g: &Grant,
        first_refresh_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError> {
        let scopes = to_json(&g.scopes);
        self.write(|db| {
            db.exec(
                concat!(
                    "INSERT INTO grants (",
                    grant_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &g.id,
                    &g.user,
                    &g.claims,
                    &g.client_id,
                    &g.redirect_uri,
                    &g.resource,
                    &scopes,
                    &g.created,
                    &g.expires,
                    &g.revoked,
                ],
            )
            .map_err(Fail::exists("grant"))?;
            if let Some(hash) = first_refresh_hash {
                db.exec(
                    "INSERT INTO refresh_tokens (hash, grant_id, generation) VALUES ($1, $2, 0)",
                    &[&&hash[..], &g.id],
                )
                .map_err(Fail::exists("refresh token"))?;
            }
            Ok(((), true))
        })
    }

    fn rotate_refresh(
        &mut self,
        old_hash: &[u8; 32],
        new_hash: &[u8; 32],
        now: i64,
        grace_secs: i64,
    ) -> Result<Rotation, StoreError> {
        let (old, new) = (&old_hash[..], &new_hash[..]);
        self.write(|db| {
            let Some(token) = db.row(
                "SELECT grant_id, generation FROM refresh_tokens WHERE hash = $1",
                &[&old],
            )?
            else {
                return Ok((Rotation::Unknown, false));
            };
            let (grant_id, generation): (String, i64) = (col(&token, 0)?, col(&token, 1)?);
            // Locked: rotations, revocations and sweeps of this grant run
            // one after the other from here on.
            let Some(grant) = grant_locked(db, &grant_id)? else {
                return Ok((Rotation::Unknown, false));
            };
            if grant.revoked {
                return Ok((Rotation::Revoked, false));
            }
            if grant.expires <= now {
                return Ok((Rotation::Expired, false));
            }
            // The one way to `Rotated`: replace the token only if it is
            // still the current one.
            let rotated = db.exec(
                "UPDATE refresh_tokens SET replaced = $2 WHERE hash = $1 AND replaced IS NULL",
                &[&old, &now],
            )?;
            if rotated == 1 {
                db.exec(
                    "INSERT INTO refresh_tokens (hash, grant_id, generation) VALUES ($1, $2, $3)",
                    &[&new, &grant_id, &(generation + 1)],
                )
                .map_err(Fail::exists("refresh token"))?;
                return Ok((Rotation::Rotated(Box::new(grant)), true));
            }
            // Replaced already: the one just replaced (its successor is the
            // current token) within the grace window is still good.
            let Some(replaced) = db.row(
                "SELECT replaced FROM refresh_tokens WHERE hash = $1",
                &[&old],
            )?
            else {
                return Ok((Rotation::Unknown, false));
            };
            let replaced: i64 = col::<Option<i64>>(&replaced, 0)?.unwrap_or(now);
            let successor_current = db
                .row(
                    "SELECT 1 FROM refresh_tokens WHERE grant_id = $1 AND generation = $2 \
                     AND replaced IS NULL",
                    &[&grant_id, &(generation + 1)],
                )?
                .is_some();
            if successor_current && now < replaced.saturating_add(grace_secs) {
                return Ok((Rotation::Grace(Box::new(grant)), false));
            }
            revoke_in(db, &grant_id)?;
            Ok((Rotation::Reused { grant_id }, true))
        })
    }

    fn refresh_grant(&self, hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let hash = &hash[..];
        self.read(|db| {
            db.row(
                "SELECT grant_id FROM refresh_tokens WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| col(&r, 0))
            .transpose()
        })
    }

    fn revoked_grants(&self, after: i64) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT id FROM grants WHERE revoked AND expires > $1 ORDER BY id",
                &[&after],
            )?;
            all(rows, |r| col(r, 0))
        })
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.read(|db| {
            db.row(
                concat!("SELECT ", grant_columns!(), " FROM grants WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(grant_row)
            .transpose()
        })
    }

    fn grants(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Vec<Grant>, StoreError> {
        self.read(|db| {
            let rows = db.rows(
                concat!(
                    "SELECT ",
                    grant_columns!(),
                    " FROM grants WHERE ($1::TEXT IS NULL OR subject = $1) \
                     AND ($2::TEXT IS NULL OR client_id = $2) ORDER BY created, id"
                ),
                &[&user, &client_id],
            )?;
            all(rows, grant_row)
        })
    }

    fn set_grant_claims(&mut self, id: &str, claims: &str) -> Result<bool, StoreError> {
        self.write(|db| {
            let n = db.exec(
                "UPDATE grants SET claims = $2 WHERE id = $1 AND NOT revoked",
                &[&id, &claims],
            )?;
            Ok((n == 1, n == 1))
        })
    }

    fn revoke_grant(&mut self, id: &str) -> Result<bool, StoreError> {
        self.write(|db| {
            let revoked = revoke_in(db, id)?;
            Ok((revoked, revoked))
        })
    }

    fn revoke_grants(
        &mut self,
        user: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<usize, StoreError> {
        if user.is_none() && client_id.is_none() {
            return Err(StoreError::NoFilter);
        }
        self.write(|db| {
            let n = db.exec(
                "UPDATE grants SET revoked = TRUE WHERE NOT revoked \
                 AND ($1::TEXT IS NULL OR subject = $1) AND ($2::TEXT IS NULL OR client_id = $2)",
                &[&user, &client_id],
            )?;
            Ok((n, n > 0))
        })
    }

    fn put_key(&mut self, kid: &str, created: i64, sealed: &[u8]) -> Result<(), StoreError> {
        self.write(|db| {
            db.exec(
                "INSERT INTO signing_keys (kid, created, sealed) VALUES ($1, $2, $3)",
                &[&kid, &created, &sealed],
            )
            .map_err(Fail::exists("signing key"))?;
            Ok(((), true))
        })
    }

    fn keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT kid, created, sealed FROM signing_keys ORDER BY created, kid",
                &[],
            )?;
            all(rows, |r| {
                Ok(SigningKey {
                    kid: col(r, 0)?,
                    created: col(r, 1)?,
                    sealed: col(r, 2)?,
                })
            })
        })
    }

    fn put_upstream(&mut self, t: &UpstreamToken) -> Result<i64, StoreError> {
        let (status, reason) = status_columns(&t.status);
        self.write(|db| {
            let r = db.row(
                concat!(
                    "INSERT INTO upstream_tokens (",
                    upstream_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) \
                     ON CONFLICT (subject, route) DO UPDATE SET client_id = excluded.client_id, \
                     kid = excluded.kid, sealed = excluded.sealed, expires = excluded.expires, \
                     refresh_due = excluded.refresh_due, status = excluded.status, \
                     reason = excluded.reason, updated = excluded.updated, \
                     generation = upstream_tokens.generation + 1 \
                     RETURNING generation"
                ),
                &[
                    &t.user,
                    &t.route,
                    &t.client_id,
                    &t.kid,
                    &t.sealed,
                    &t.expires,
                    &t.refresh_due,
                    &status,
                    &reason,
                    &t.updated,
                ],
            )?;
            let generation = r
                .as_ref()
                .map(|r| col(r, 0))
                .transpose()?
                .ok_or(StoreError::Corrupt("an upsert returned no row"))?;
            Ok((generation, true))
        })
    }

    fn upstream(&self, user: &str, route: &str) -> Result<Option<UpstreamToken>, StoreError> {
        self.read(|db| {
            db.row(
                concat!(
                    "SELECT ",
                    upstream_columns!(),
                    " FROM upstream_tokens WHERE subject = $1 AND route = $2"
                ),
                &[&user, &route],
            )?
            .as_ref()
            .map(upstream_row)
            .transpose()
        })
    }

    fn upstream_of(&self, user: &str) -> Result<Vec<UpstreamToken>, StoreError> {
        self.read(|db| {
            let rows = db.rows(
                concat!(
                    "SELECT ",
                    upstream_columns!(),
                    " FROM upstream_tokens WHERE subject = $1 ORDER BY route"
                ),
                &[&user],
            )?;
            all(rows, upstream_row)
        })
    }

    fn replace_upstream_if(
        &mut self,
        t: &UpstreamToken,
        expected_generation: i64,
    ) -> Result<bool, StoreError> {
        let (status, reason) = status_columns(&t.status);
        self.write(|db| {
            // A concurrent replace waits for this row, then finds the
            // generation moved on.
            let n = db.exec(
                "UPDATE upstream_tokens SET client_id = $3, kid = $4, sealed = $5, \
                 expires = $6, refresh_due = $7, status = $8, reason = $9, updated = $10, \
                 generation = generation + 1 \
                 WHERE subject = $1 AND route = $2 AND generation = $11",
                &[
                    &t.user,
                    &t.route,
                    &t.client_id,
                    &t.kid,
                    &t.sealed,
                    &t.expires,
                    &t.refresh_due,
                    &status,
                    &reason,
                    &t.updated,
                    &expected_generation,
                ],
            )?;
            Ok((n == 1, n == 1))
        })
    }

    fn delete_upstream(&mut self, user: &str, route: &str) -> Result<bool, StoreError> {
        self.write(|db| {
            let n = db.exec(
                "DELETE FROM upstream_tokens WHERE subject = $1 AND route = $2",
                &[&user, &route],
            )?;
            Ok((n == 1, n == 1))
        })
    }

    fn upstream_due(&self, now: i64, limit: usize) -> Result<Vec<UpstreamToken>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|db| {
            let rows = db.rows(
                concat!(
                    "SELECT ",
                    upstream_columns!(),
                    " FROM upstream_tokens WHERE status = 'connected' AND refresh_due <= $1 \
                     ORDER BY refresh_due, subject, route LIMIT $2"
                ),
                &[&now, &limit],
            )?;
            all(rows, upstream_row)
        })
    }

    fn claim_upstream_due(
        &mut self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<UpstreamToken>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(|db| {
            // Rows another claimer holds are skipped, not waited for: the
            // two get disjoint sets.
            let rows = db.rows(
                concat!(
                    "UPDATE upstream_tokens SET refresh_due = $3, generation = generation + 1 \
                     WHERE (subject, route) IN (SELECT subject, route FROM upstream_tokens \
                     WHERE status = 'connected' AND refresh_due <= $1 \
                     ORDER BY refresh_due, subject, route LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING ",
                    upstream_columns!()
                ),
                &[&now, &limit, &until],
            )?;
            let mut claimed = all(rows, upstream_row)?;
            claimed.sort_by(|a, b| (&a.user, &a.route).cmp(&(&b.user, &b.route)));
            let changed = !claimed.is_empty();
            Ok((claimed, changed))
        })
    }

    fn all_upstream(&self) -> Result<Vec<UpstreamToken>, StoreError> {
        self.read(|db| {
            let rows = db.rows(
                concat!(
                    "SELECT ",
                    upstream_columns!(),
                    " FROM upstream_tokens ORDER BY subject, route"
                ),
                &[],
            )?;
            all(rows, upstream_row)
        })
    }

    fn upstream_client(
        &self,
        route: &str,
        issuer: &str,
    ) -> Result<Option<UpstreamClient>, StoreError> {
        self.read(|db| {
            db.row(
                "SELECT route, issuer, client_id, kid, sealed, created FROM upstream_clients \
                 WHERE route = $1 AND issuer = $2",
                &[&route, &issuer],
            )?
            .as_ref()
            .map(upstream_client_row)
            .transpose()
        })
    }

    fn put_upstream_client(&mut self, c: &UpstreamClient) -> Result<UpstreamClient, StoreError> {
        let (kid, sealed) = match &c.secret {
            Some((k, s)) => (Some(k.as_str()), Some(s.as_slice())),
            None => (None, None),
        };
        self.write(|db| {
            // A concurrent insert of the same key: this one waits for it to
            // commit, then does nothing and reads the winner's.
            let n = db.exec(
                "INSERT INTO upstream_clients (route, issuer, client_id, kid, sealed, created) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (route, issuer) DO NOTHING",
                &[&c.route, &c.issuer, &c.client_id, &kid, &sealed, &c.created],
            )?;
            let stored = db
                .row(
                    "SELECT route, issuer, client_id, kid, sealed, created FROM upstream_clients \
                     WHERE route = $1 AND issuer = $2",
                    &[&c.route, &c.issuer],
                )?
                .as_ref()
                .map(upstream_client_row)
                .transpose()?
                .ok_or(StoreError::NotFound("upstream client"))?;
            Ok((stored, n == 1))
        })
    }

    fn delete_upstream_client(
        &mut self,
        route: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        self.write(|db| {
            let n = db.exec(
                "DELETE FROM upstream_clients WHERE route = $1 AND issuer = $2 \
                 AND client_id = $3",
                &[&route, &issuer, &client_id],
            )?;
            Ok((n == 1, n == 1))
        })
    }

    fn pins(&self, route: Option<&str>) -> Result<Vec<Pin>, StoreError> {
        self.read(|db| super::pins::list(db, route))
    }

    fn put_pin(&mut self, pin: &Pin) -> Result<(), StoreError> {
        self.write(|db| super::pins::put(db, pin))
    }

    fn delete_pin(
        &mut self,
        route: &str,
        kind: &str,
        name: &str,
        pending_only: bool,
    ) -> Result<usize, StoreError> {
        self.write(|db| super::pins::delete(db, route, kind, name, pending_only))
    }

    fn approve_pins(
        &mut self,
        route: &str,
        kind: Option<&str>,
        name: Option<&str>,
        now: i64,
    ) -> Result<Vec<Pin>, StoreError> {
        self.write(|db| super::pins::approve(db, route, kind, name, now))
    }

    fn seq(&self) -> Result<i64, StoreError> {
        self.read(|db| {
            let r = db.row("SELECT seq FROM changes WHERE id = 1", &[])?;
            r.as_ref()
                .map(|r| col(r, 0))
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt("the change sequence is missing").into())
        })
    }
}
