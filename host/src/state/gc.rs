//! Garbage collection: expired task rows and the objects behind them, and
//! (for backends that can list) objects no row references.
//!
//! Expiry deletes rows by the database's clock, each handing back what it
//! held, and then exactly those objects. The orphan pass takes the
//! database's time `T0` first, then lists the backend's objects, then reads
//! every row's reference, and deletes an object only if no row references
//! it and `T0` is more than `[state_store] orphan_grace` past its write id.
//! A write still on its way (object written, row not yet) is younger than
//! that: its row write is refused once it is half the grace old. So gc,
//! even on two machines at once, never removes an object a row references.

use std::collections::HashSet;
use std::time::SystemTime;

use statehost_plugin_api::{BackendError, StateKey};

use super::{StateHost, backend_error, reference_in, row_scope};
use crate::backend::Listed;
use crate::error::{Error, Result};

/// Rows expired per transaction.
const BATCH: usize = 1000;

/// What gc did (or would do, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Expired task rows deleted.
    pub expired_rows: usize,
    /// Objects deleted behind those rows (ones already gone not counted).
    pub objects: usize,
    /// Objects no row referenced, deleted; `None` when the backend cannot
    /// list.
    pub orphans: Option<usize>,
    /// Leftovers of interrupted writes removed (temporary files); `None` in
    /// a dry run or when the backend cannot sweep.
    pub swept: Option<usize>,
    /// Rows that could not be read (damaged, or written by something
    /// else), each named in a warning. An expired one is removed (with a
    /// 1.x backend, left), but no object is deleted on its account: what
    /// it pointed at is then like any object no row references, collected
    /// by the orphan pass after the grace. While any row's stored text
    /// cannot be read, no orphan is collected at all.
    pub unreadable_rows: usize,
    /// Why orphans were not collected although the backend can list.
    pub orphans_skipped: Option<String>,
}

pub(super) fn run(
    host: &StateHost,
    dry_run: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<GcReport> {
    let inner = host.inner();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    if dry_run {
        let expired = inner.store.expired_task_rows(usize::MAX)?;
        report.unreadable_rows += expired.unreadable.len();
        report.expired_rows = expired.rows.len();
        // A 1.x backend's expiry goes key by key and leaves such rows.
        if inner.legacy.is_some() {
            warn_unreadable(&expired.unreadable, "would leave it (it is expired)");
        } else {
            warn_unreadable(&expired.unreadable, "would remove it (it is expired)");
            report.expired_rows += expired.unreadable.len();
        }
        if inner.calls().is_some() {
            report.objects = expired
                .rows
                .iter()
                .filter(|r| reference_in(&r.value).is_some())
                .count();
        }
    } else if let Some(fencing) = &inner.legacy {
        let (rows, objects, unreadable) = super::legacy::expire(inner, fencing, &mut progress)?;
        report.expired_rows = rows;
        report.objects = objects;
        report.unreadable_rows += unreadable;
    } else {
        loop {
            let batch = inner.store.delete_expired_task_rows(BATCH)?;
            if batch.rows.is_empty() && batch.unreadable.is_empty() {
                break;
            }
            warn_unreadable(
                &batch.unreadable,
                "removed it (it is expired); whatever it points at is left to the orphan pass",
            );
            report.unreadable_rows += batch.unreadable.len();
            report.expired_rows += batch.rows.len() + batch.unreadable.len();
            let rows: Vec<_> = batch
                .rows
                .into_iter()
                .map(|row| (row_scope(&row), row.key, row.value))
                .collect();
            report.objects += inner.delete_objects(&rows)?;
            progress(report.expired_rows, 0);
        }
    }
    let Some(calls) = inner.calls() else {
        return Ok(report);
    };
    let capabilities = calls.backend().capabilities();
    if capabilities.list {
        match orphans(host, dry_run)? {
            Ok(count) => report.orphans = Some(count),
            Err(why) => report.orphans_skipped = Some(why),
        }
    }
    if !dry_run && capabilities.sweep {
        let older_than = SystemTime::now()
            .checked_sub(inner.settings.orphan_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        report.swept = Some(
            calls
                .run_long("sweep", move |b| b.sweep(older_than))
                .map_err(|e| backend_error(calls.name(), "sweep", &"all scopes", "", e))?,
        );
    }
    Ok(report)
}

fn warn_unreadable(rows: &[crate::store::Unreadable], what_gc_did: &str) {
    for row in rows {
        log::warn!("gc: cannot read the {row}; {what_gc_did}");
    }
}

/// Deletes (or counts) objects that no row references and that are older
/// than the grace; or says why it cannot tell which those are.
fn orphans(host: &StateHost, dry_run: bool) -> Result<std::result::Result<usize, String>> {
    let inner = host.inner();
    let calls = inner.calls().expect("checked by the caller");
    // One clock: the database's time, taken before listing, once every
    // fenced write that could still land has landed.
    let t0 = inner.store.gc_epoch()?;
    let listed: Vec<Listed> = calls
        .run_long("list", |b| b.list(None))
        .map_err(|e| backend_error(calls.name(), "list", &"all scopes", "", e))?;
    if let Some(bad) = listed.iter().find(|o| o.reference.is_empty()) {
        return Err(backend_error(
            calls.name(),
            "list",
            &"all scopes",
            "",
            BackendError::invalid_input(format!(
                "its listing holds an empty reference (modified {:?}); nothing was collected",
                bad.modified
            )),
        ));
    }
    // Then every row's reference, expired rows included.
    let mut referenced = HashSet::new();
    let unreadable = inner.store.for_each_stored(&mut |text| {
        if let Some(r) = reference_in(text) {
            referenced.insert(r);
        }
    })?;
    if unreadable > 0 {
        // Those rows may reference any of the listed objects.
        let why = format!(
            "{unreadable} rows' stored text cannot be read, so what they reference is unknown; fix or delete those rows"
        );
        log::warn!("gc: orphaned objects not collected: {why}");
        return Ok(Err(why));
    }
    // An object no committed row references may still be referenced by a
    // commit that is not durable yet (SQLite, synchronous = normal): make
    // every commit durable before deleting anything.
    if !dry_run {
        inner.store.sync()?;
    }
    // Saturating: a grace too long to count collects nothing, never the
    // young objects a wrapped (negative) one would.
    let grace_ms = i64::try_from(inner.settings.orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let now = SystemTime::now();
    let (mut count, mut failed, mut first_error) = (0, 0, None);
    for object in listed {
        if referenced.contains(&object.reference) {
            continue;
        }
        let old_enough = match (object.write_id, object.modified) {
            // By the write id, on the database's clock.
            (Some(id), _) => t0.saturating_sub(id.unix_ms() as i64) > grace_ms,
            // Objects of 1.x backends carry no write id: by the storage's
            // modification time.
            (None, Some(modified)) => now
                .duration_since(modified)
                .is_ok_and(|age| age > inner.settings.orphan_grace),
            (None, None) => false,
        };
        if !old_enough {
            continue;
        }
        if dry_run {
            count += 1;
            continue;
        }
        let removed = match &inner.legacy {
            Some(fencing) => super::legacy::delete_orphan(inner, fencing, &object),
            None => {
                let owner = object.owner.clone();
                let reference = object.reference.clone();
                calls
                    .run_plain("delete_object", move |b| {
                        let at = owner.as_ref().map(|(scope, key)| StateKey {
                            scope: scope.as_ref(),
                            key,
                        });
                        b.delete_object(&reference, at)
                    })
                    .map_err(|e| {
                        backend_error(
                            calls.name(),
                            "delete",
                            &"an orphaned object",
                            &object.reference,
                            e,
                        )
                    })
            }
        };
        // One object that cannot go must not keep gc from the others.
        match removed {
            Ok(removed) => count += usize::from(removed),
            Err(e) => {
                failed += 1;
                log::warn!("gc: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(Ok(count)),
        Some(first) => Err(Error::Cleanup {
            message: format!(
                "gc removed {count} orphaned objects, but {failed} could not be deleted (the first: {first}); the next gc tries again"
            ),
        }),
    }
}
