//! The `pins` table on SQLite (tool pinning).

use crate::store::{Pin, StoreError};
use rusqlite::{params, Connection, Row, Transaction};

macro_rules! pin_columns {
    () => {
        "route, kind, name, state, hash, definition, flagged, first_seen, approved_at"
    };
}

fn row(r: &Row<'_>) -> rusqlite::Result<Pin> {
    let state: String = r.get(3)?;
    let flagged: String = r.get(6)?;
    Ok(Pin {
        route: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        approved: state == "approved",
        hash: r.get(4)?,
        definition: r.get(5)?,
        flagged: split(&flagged),
        first_seen: r.get(7)?,
        approved_at: r.get(8)?,
    })
}

/// Detector names are plain words: a comma list is their column.
pub(crate) fn split(flagged: &str) -> Vec<String> {
    flagged
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn state(approved: bool) -> &'static str {
    if approved {
        "approved"
    } else {
        "pending"
    }
}

pub(super) fn list(conn: &Connection, route: Option<&str>) -> Result<Vec<Pin>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        pin_columns!(),
        " FROM pins WHERE ?1 IS NULL OR route = ?1 ORDER BY route, kind, name, state"
    ))?;
    let rows = stmt.query_map(params![route], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn put(tx: &Transaction<'_>, p: &Pin) -> Result<((), bool), StoreError> {
    let n = tx
        .prepare_cached(concat!(
            "INSERT OR REPLACE INTO pins (",
            pin_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))?
        .execute(params![
            p.route,
            p.kind,
            p.name,
            state(p.approved),
            p.hash,
            p.definition,
            p.flagged.join(","),
            p.first_seen,
            p.approved_at
        ])?;
    Ok(((), n > 0))
}

pub(super) fn delete(
    tx: &Transaction<'_>,
    route: &str,
    kind: &str,
    name: &str,
    pending_only: bool,
) -> Result<(usize, bool), StoreError> {
    let n = tx
        .prepare_cached(
            "DELETE FROM pins WHERE route = ?1 AND kind = ?2 AND name = ?3 \
             AND (state = 'pending' OR NOT ?4)",
        )?
        .execute(params![route, kind, name, pending_only])?;
    Ok((n, n > 0))
}

pub(super) fn approve(
    tx: &Transaction<'_>,
    route: &str,
    kind: Option<&str>,
    name: Option<&str>,
    now: i64,
) -> Result<(Vec<Pin>, bool), StoreError> {
    let pending: Vec<Pin> = tx
        .prepare_cached(concat!(
            "SELECT ",
            pin_columns!(),
            " FROM pins WHERE route = ?1 AND state = 'pending' AND (?2 IS NULL OR kind = ?2) \
             AND (?3 IS NULL OR name = ?3) ORDER BY route, kind, name"
        ))?
        .query_map(params![route, kind, name], row)?
        .collect::<Result<_, _>>()?;
    let mut approved = Vec::with_capacity(pending.len());
    for p in pending {
        tx.prepare_cached(
            "DELETE FROM pins WHERE route = ?1 AND kind = ?2 AND name = ?3 AND state = 'approved'",
        )?
        .execute(params![p.route, p.kind, p.name])?;
        tx.prepare_cached(
            "UPDATE pins SET state = 'approved', approved_at = ?4 \
             WHERE route = ?1 AND kind = ?2 AND name = ?3 AND state = 'pending'",
        )?
        .execute(params![p.route, p.kind, p.name, now])?;
        approved.push(Pin {
            approved: true,
            approved_at: Some(now),
            ..p
        });
    }
    let changed = !approved.is_empty();
    Ok((approved, changed))
}
