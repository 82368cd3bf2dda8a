//! In-process fencing for plugin-api 1.x backends.
//!
//! A 1.x backend keeps one object per key and overwrites it in place, so a
//! late write lands on the key's only object, and it has no exact delete.
//! The host serves it anyway: within this process, one call per key at a
//! time (key locks, also taken by reads), a lock per task or asset shared
//! with clears and gc, a key whose timed-out call is still running refuses
//! new writes until that call ends, and a row write that fails for sure
//! puts the old value back into the object. Across processes none of this
//! holds, so with such a backend guarantees 1-3 hold within one process
//! only; `statehost check` says so.

use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::Value;
use statehost_plugin_api::{
    AssetIdentity, AssetScope, BackendError, ErrorKind, Scope, ScopeRef, Serialized, StateKey,
    TaskScope,
};

use super::{Inner, Place, Written, backend_error, envelope, reference_in, row_scope};
use crate::backend::{Busy, Calls, Listed, Reference, Text};
use crate::error::{Error, Result};
use crate::store::Put;

const KEY_STRIPES: usize = 256;
const SCOPE_STRIPES: usize = 64;

/// The locks of one process.
pub(crate) struct Fencing {
    scopes: Vec<RwLock<()>>,
    keys: Vec<Mutex<()>>,
    /// Keys with a write still running after its caller stopped waiting.
    busy: Busy,
}

fn stripe(value: impl Hash, stripes: usize) -> usize {
    (rustc_hash::FxBuildHasher.hash_one(value) >> 32) as usize % stripes
}

/// What identifies a task across its map indices, or an asset.
fn scope_stripe(scope: ScopeRef<'_>) -> usize {
    match scope {
        ScopeRef::Task(t) => stripe((t.dag_id(), t.run_id(), t.task_id()), SCOPE_STRIPES),
        ScopeRef::Asset(a) => stripe(a, SCOPE_STRIPES),
    }
}

type KeyGuard<'a> = (std::sync::RwLockReadGuard<'a, ()>, MutexGuard<'a, ()>);

impl Fencing {
    pub(crate) fn new() -> Self {
        Fencing {
            scopes: (0..SCOPE_STRIPES).map(|_| RwLock::new(())).collect(),
            keys: (0..KEY_STRIPES).map(|_| Mutex::new(())).collect(),
            busy: Busy::default(),
        }
    }

    /// Holds a key: shared on its scope, exclusive on the key.
    fn key(&self, at: StateKey<'_>) -> KeyGuard<'_> {
        let scope = self.scopes[scope_stripe(at.scope)]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let key = self.keys[stripe((at.scope, at.key), KEY_STRIPES)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (scope, key)
    }

    /// Holds a whole task (every map index) or asset.
    fn scope(&self, scope: ScopeRef<'_>) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.scopes[scope_stripe(scope)]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn calls(inner: &Inner) -> &Arc<Calls> {
    inner.calls().expect("fencing exists only with a backend")
}

fn owned(at: StateKey<'_>) -> (Scope, String) {
    (at.scope.to_owned(), at.key.to_string())
}

/// A serialize of `text` for the key `at`, whose object held `before`.
/// If the caller stops waiting, the key stays busy until the call ends, and
/// then the object is put back as the key's row wants it (`before`, or
/// nothing when no row points at it), so a write reported as failed never
/// shows.
fn serialize(
    inner: &Inner,
    fencing: &Arc<Fencing>,
    at: StateKey<'_>,
    text: String,
    before: Option<String>,
) -> std::result::Result<Serialized, BackendError> {
    let calls = calls(inner);
    let write_id = inner.mint();
    let key = owned(at);
    if fencing.busy.contains(&key) {
        return Err(BackendError::unavailable(format!(
            "an earlier write of {at} timed out and is still running; a plugin-api 1.x backend would let it overwrite this one, so wait until it ends"
        )));
    }
    let job_key = key.clone();
    let (late_key, late_fencing, store) = (key.clone(), fencing.clone(), inner.store.clone());
    calls.run_marking(
        "serialize",
        Some((fencing.busy.clone(), key)),
        move |b| b.serialize(borrowed(&job_key), write_id, &text),
        move |b, result| {
            let Ok(Serialized::Reference(written)) = result else {
                return;
            };
            let at = borrowed(&late_key);
            let _held = late_fencing.key(at);
            let row = match &late_key.0 {
                Scope::Task(t) => store.get_task(t, at.key),
                Scope::Asset(a) => store.get_asset(a, at.key),
            };
            let points_here = matches!(
                row.as_ref().map(|r| r.as_deref().and_then(reference_in)),
                Ok(Some(r)) if r == written
            );
            let undone = match (points_here, before) {
                (true, Some(before)) => b.serialize(at, write_id, &before).map(drop),
                (true, None) => Ok(()),
                (false, _) => b.delete(at),
            };
            if let Err(e) = undone {
                log::warn!(
                    "cannot undo the late write of {at} ({e}); it may read the failed value"
                );
            }
        },
    )
}

fn borrowed(key: &(Scope, String)) -> StateKey<'_> {
    StateKey {
        scope: key.0.as_ref(),
        key: &key.1,
    }
}

/// A plain call under the limits, with owned arguments.
fn call<T: Send + 'static>(
    inner: &Inner,
    op: &'static str,
    at: StateKey<'_>,
    job: impl FnOnce(&dyn crate::backend::Backend, StateKey<'_>) -> std::result::Result<T, BackendError>
    + Send
    + 'static,
) -> std::result::Result<T, BackendError> {
    let key = owned(at);
    calls(inner).run_plain(op, move |b| {
        job(
            b,
            StateKey {
                scope: key.0.as_ref(),
                key: &key.1,
            },
        )
    })
}

fn read_object(
    inner: &Inner,
    at: StateKey<'_>,
    reference: &str,
) -> std::result::Result<Text, BackendError> {
    let reference = reference.to_string();
    call(inner, "deserialize", at, move |b, at| {
        b.deserialize(&reference, Some(at))
    })
}

pub(super) fn set(
    inner: &Inner,
    fencing: &Arc<Fencing>,
    place: Place<'_>,
    key: &str,
    text: String,
    retention_ms: Option<i64>,
) -> Result<()> {
    let at = place.at(key);
    let name = calls(inner).name().to_string();
    let error = |operation, e| backend_error(&name, operation, &at.scope, key, e);
    let _held = fencing.key(at);
    // The object is about to be overwritten in place: keep its value, to
    // put it back if the row cannot be written.
    let before = match place
        .get(inner.store.as_ref(), key)?
        .as_deref()
        .and_then(reference_in)
    {
        Some(reference) => match read_object(inner, at, &reference).map(Text::into_string) {
            Ok(Ok(text)) => Some(text),
            // Put back changed, it would read back as a value it never
            // was; overwritten, it could not be put back at all.
            Ok(Err(e)) => {
                return Err(error(
                    "read",
                    BackendError::invalid_input(format!(
                        "the value stored now is not UTF-8 ({e}), so it could not be put back if this write failed; delete the key, then set it"
                    )),
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(error("read", e)),
        },
        None => None,
    };
    let written = match serialize(inner, fencing, at, text.clone(), before.clone())
        .map_err(|e| error("write", e))?
    {
        Serialized::Reference(r) if r.is_empty() => {
            return Err(error(
                "write",
                BackendError::invalid_input("it returned an empty reference"),
            ));
        }
        Serialized::Reference(r) => Written {
            stored: envelope::wrap(&r),
            object: Some((Reference::Host(r), inner.mint())),
        },
        Serialized::Inline => {
            inner.check_inline_size(&text, at)?;
            Written {
                stored: text,
                object: None,
            }
        }
    };
    let put = Put {
        value: &written.stored,
        fence: None,
        retention_ms,
    };
    match place.put(inner.store.as_ref(), key, &put) {
        Ok(old) => {
            // Now inline: the key's object holds a value no row points at.
            if written.object.is_none() && old.as_deref().and_then(reference_in).is_some() {
                inner.store.sync()?;
                call(inner, "delete", at, |b, at| b.delete(at)).map_err(|e| error("delete", e))?;
            }
            Ok(())
        }
        Err(e) if e.outcome_unknown() => Err(e),
        Err(e) => {
            if written.object.is_some() {
                let undone = match before {
                    Some(old) => serialize(inner, fencing, at, old.clone(), Some(old)).map(drop),
                    None => call(inner, "delete", at, |b, at| b.delete(at)),
                };
                if let Err(undo) = undone {
                    log::warn!(
                        "the row of {at} could not be written and its object could not be put back ({undo}); it may read the value of the failed write"
                    );
                }
            }
            Err(e)
        }
    }
}

pub(super) fn get(
    inner: &Inner,
    fencing: &Fencing,
    place: Place<'_>,
    key: &str,
) -> Result<Option<Value>> {
    let at = place.at(key);
    let _held = fencing.key(at);
    if fencing.busy.contains(&owned(at)) {
        return Err(backend_error(
            calls(inner).name(),
            "read",
            &at.scope,
            key,
            BackendError::unavailable(
                "a write of this key timed out and is still running; its object holds no acknowledged value until it ends, try again then",
            ),
        ));
    }
    let Some(text) = place.get(inner.store.as_ref(), key)? else {
        return Ok(None);
    };
    inner.read_value(at, text, || place.get(inner.store.as_ref(), key))
}

pub(super) fn delete(inner: &Inner, fencing: &Fencing, place: Place<'_>, key: &str) -> Result<()> {
    let at = place.at(key);
    let _held = fencing.key(at);
    let Some(old) = place.delete(inner.store.as_ref(), key)? else {
        return Ok(());
    };
    if reference_in(&old).is_some() {
        inner.store.sync()?;
        call(inner, "delete", at, |b, at| b.delete(at))
            .map_err(|e| backend_error(calls(inner).name(), "delete", &at.scope, key, e))?;
    }
    Ok(())
}

fn cleared(
    inner: &Inner,
    scope: ScopeRef<'_>,
    all_map_indices: bool,
    rows: &[crate::store::Row],
) -> Result<()> {
    if !rows.iter().any(|r| reference_in(&r.value).is_some()) {
        return Ok(());
    }
    inner.store.sync()?;
    let owned = scope.to_owned();
    calls(inner)
        .run_plain("clear", move |b| b.clear(owned.as_ref(), all_map_indices))
        .map_err(|e| backend_error(calls(inner).name(), "clear", &scope, "", e))
}

pub(super) fn clear_task(
    inner: &Inner,
    fencing: &Fencing,
    scope: &TaskScope,
    all_map_indices: bool,
) -> Result<()> {
    let scope_ref = ScopeRef::Task(scope.as_ref());
    let _held = fencing.scope(scope_ref);
    let rows = inner.store.clear_task(scope, all_map_indices)?;
    cleared(inner, scope_ref, all_map_indices, &rows)
}

pub(super) fn clear_asset(inner: &Inner, fencing: &Fencing, canonical: &AssetScope) -> Result<()> {
    let scope_ref = ScopeRef::Asset(canonical.identity());
    let _held = fencing.scope(scope_ref);
    let rows = inner.store.clear_asset(canonical)?;
    cleared(inner, scope_ref, false, &rows)
}

/// gc expiry: each expired row under its key's lock, so a set of the key
/// in this process cannot land between the row's removal and the object's.
pub(super) fn expire(
    inner: &Inner,
    fencing: &Fencing,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(usize, usize, usize)> {
    let expired = inner.store.expired_task_rows(usize::MAX)?;
    for bad in &expired.unreadable {
        log::warn!("gc: cannot read the {bad}; left as it is");
    }
    let unreadable = expired.unreadable.len();
    let total = expired.rows.len();
    let (mut rows, mut objects) = (0, 0);
    for row in expired.rows {
        let scope = row_scope(&row);
        let Scope::Task(task) = &scope else { continue };
        let at = StateKey {
            scope: scope.as_ref(),
            key: &row.key,
        };
        let _held = fencing.key(at);
        let Some(old) = inner.store.delete_task_if_expired(task, &row.key)? else {
            continue;
        };
        rows += 1;
        if reference_in(&old).is_some() {
            inner.store.sync()?;
            call(inner, "delete", at, |b, at| b.delete(at))
                .map_err(|e| backend_error(calls(inner).name(), "delete", &scope, &row.key, e))?;
            objects += 1;
        }
        progress(rows, total);
    }
    Ok((rows, objects, unreadable))
}

/// gc of an object no row referenced when gc looked: under its key's lock,
/// and only if the key's row still does not point at it.
pub(super) fn delete_orphan(inner: &Inner, fencing: &Fencing, object: &Listed) -> Result<bool> {
    let Some((scope, key)) = &object.owner else {
        return Ok(false);
    };
    let at = StateKey {
        scope: scope.as_ref(),
        key,
    };
    let _held = fencing.key(at);
    let row = match scope {
        Scope::Task(t) => inner.store.get_task(t, key)?,
        Scope::Asset(a) => {
            let canonical = match a.identity() {
                AssetIdentity::Name(n) => AssetScope::by_name(n),
                AssetIdentity::Uri(u) => AssetScope::by_uri(u),
            }
            .map_err(|e| Error::InvalidInput {
                message: e.message().to_string(),
            })?;
            inner.store.get_asset(&canonical, key)?
        }
    };
    if row.as_deref().and_then(reference_in).as_deref() == Some(object.reference.as_str()) {
        return Ok(false);
    }
    inner.store.sync()?;
    call(inner, "delete", at, |b, at| b.delete(at))
        .map_err(|e| backend_error(calls(inner).name(), "delete", scope, key, e))?;
    Ok(true)
}
