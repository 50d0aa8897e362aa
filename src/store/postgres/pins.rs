//! The `pins` table on PostgreSQL (tool pinning). Two writers pinning the
//! same item: the primary key makes the second insert an update of the
//! first's row (`ON CONFLICT`); an approval locks the pending rows it moves.

use super::{all, col, Db, Fail};
use crate::store::Pin;
use ::postgres::{GenericClient, Row, Transaction};

macro_rules! pin_columns {
    () => {
        "route, kind, name, state, hash, definition, flagged, first_seen, approved_at"
    };
}

fn row(r: &Row) -> Result<Pin, Fail> {
    let state: &str = col(r, 3)?;
    let flagged: &str = col(r, 6)?;
    Ok(Pin {
        route: col(r, 0)?,
        kind: col(r, 1)?,
        name: col(r, 2)?,
        approved: state == "approved",
        hash: col(r, 4)?,
        definition: col(r, 5)?,
        flagged: flagged
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        first_seen: col(r, 7)?,
        approved_at: col(r, 8)?,
    })
}

fn state(approved: bool) -> &'static str {
    if approved {
        "approved"
    } else {
        "pending"
    }
}

pub(super) fn list<C: GenericClient>(
    db: &mut Db<'_, C>,
    route: Option<&str>,
) -> Result<Vec<Pin>, Fail> {
    let rows = db.rows(
        concat!(
            "SELECT ",
            pin_columns!(),
            " FROM pins WHERE $1::TEXT IS NULL OR route = $1 ORDER BY route, kind, name, state"
        ),
        &[&route],
    )?;
    all(rows, row)
}

pub(super) fn put(db: &mut Db<'_, Transaction<'_>>, p: &Pin) -> Result<((), bool), Fail> {
    let flagged = p.flagged.join(",");
    let n = db.exec(
        concat!(
            "INSERT INTO pins (",
            pin_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (route, kind, name, state) DO UPDATE SET hash = excluded.hash, \
             definition = excluded.definition, flagged = excluded.flagged, \
             first_seen = excluded.first_seen, approved_at = excluded.approved_at"
        ),
        &[
            &p.route,
            &p.kind,
            &p.name,
            &state(p.approved),
            &p.hash,
            &p.definition,
            &flagged,
            &p.first_seen,
            &p.approved_at,
        ],
    )?;
    Ok(((), n > 0))
}

pub(super) fn delete(
    db: &mut Db<'_, Transaction<'_>>,
    route: &str,
    kind: &str,
    name: &str,
    pending_only: bool,
) -> Result<(usize, bool), Fail> {
    let n = db.exec(
        "DELETE FROM pins WHERE route = $1 AND kind = $2 AND name = $3 \
         AND (state = 'pending' OR NOT $4)",
        &[&route, &kind, &name, &pending_only],
    )?;
    Ok((n, n > 0))
}

pub(super) fn approve(
    db: &mut Db<'_, Transaction<'_>>,
    route: &str,
    kind: Option<&str>,
    name: Option<&str>,
    now: i64,
) -> Result<(Vec<Pin>, bool), Fail> {
    let rows = db.rows(
        concat!(
            "SELECT ",
            pin_columns!(),
            " FROM pins WHERE route = $1 AND state = 'pending' AND ($2::TEXT IS NULL OR kind = $2) \
             AND ($3::TEXT IS NULL OR name = $3) ORDER BY route, kind, name FOR UPDATE"
        ),
        &[&route, &kind, &name],
    )?;
    let pending = all(rows, row)?;
    let mut approved = Vec::with_capacity(pending.len());
    for p in pending {
        db.exec(
            "DELETE FROM pins WHERE route = $1 AND kind = $2 AND name = $3 AND state = 'approved'",
            &[&p.route, &p.kind, &p.name],
        )?;
        db.exec(
            "UPDATE pins SET state = 'approved', approved_at = $4 \
             WHERE route = $1 AND kind = $2 AND name = $3 AND state = 'pending'",
            &[&p.route, &p.kind, &p.name, &now],
        )?;
        approved.push(Pin {
            approved: true,
            approved_at: Some(now),
            ..p
        });
    }
    let changed = !approved.is_empty();
    Ok((approved, changed))
}
