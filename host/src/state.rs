//! [`StateHost`]: the backend and the metadata store together, and the
//! task-state and asset-state accessors on top.
//!
//! Order of calls, so that a failure never leaves a row pointing at
//! nothing: `set` writes the backend first, then the row (and undoes the
//! backend write if the row cannot be written); `get` reads the row, then
//! the backend; `delete` and `clear` remove rows first, then objects (a
//! failure then leaves an orphan object, which `gc` collects).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use statehost_plugin_api::{
    AssetScope, BackendError, Scope, Serialized, StateBackend, TaskScope, validate_key,
};

use crate::config::{Config, StateStoreSettings};
use crate::envelope::{self, Stored};
use crate::error::{Error, Result};
use crate::plugin;
use crate::store::{MetadataStore, Row, RowOwner, SqliteLocation, SqliteStore};

/// How long a task-state value is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// `[state_store] default_retention_days`.
    #[default]
    Default,
    /// This long after the write.
    For(Duration),
    /// Forever.
    Never,
}

/// A backend with its name, as held by the host.
type NamedBackend<'a> = (&'a str, &'a Arc<dyn StateBackend>);

struct Inner {
    backend: Option<(String, Arc<dyn StateBackend>)>,
    store: Box<dyn MetadataStore>,
    settings: StateStoreSettings,
}

/// The backend (or none) and the metadata store of a process. Cheap to
/// clone; every clone and thread shares the same backend and store.
#[derive(Clone)]
pub struct StateHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHost")
            .field("backend", &self.backend_name())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Opens the store named by `[database] url`.
pub fn open_store(config: &Config) -> Result<Box<dyn MetadataStore>> {
    if config.database_url == "memory://" {
        return Ok(Box::new(crate::memstore::MemoryStore::new()));
    }
    if config.database_url.starts_with("postgresql://")
        || config.database_url.starts_with("postgres://")
    {
        #[cfg(feature = "postgres")]
        return Ok(Box::new(crate::pgstore::PostgresStore::open(
            &config.database_url,
        )?));
        #[cfg(not(feature = "postgres"))]
        return Err(Error::Config {
            source_name: "[database] url".to_string(),
            message: "this build has no PostgreSQL support; rebuild statehost with the `postgres` feature".to_string(),
        });
    }
    let location = SqliteLocation::parse(&config.database_url, &config.base_dir)?;
    Ok(Box::new(SqliteStore::open(location)?))
}

impl StateHost {
    /// Opens the configured backend (the process's one cached instance, or
    /// none when `state_backend` is empty) and store.
    pub fn open(config: &Config) -> Result<StateHost> {
        let backend = plugin::shared_backend(config)?.map(|b| {
            let name = b.metadata().name.clone();
            let backend: Arc<dyn StateBackend> = match config.state_backend_timeout {
                Some(timeout) => Arc::new(crate::timeout::TimeoutBackend::new(b, timeout)),
                None => b,
            };
            (name, backend)
        });
        Ok(StateHost::from_parts(
            backend,
            open_store(config)?,
            config.state_store.clone(),
        ))
    }

    /// A host from parts: any backend (in-process or loaded), any store.
    pub fn from_parts(
        backend: Option<(String, Arc<dyn StateBackend>)>,
        store: Box<dyn MetadataStore>,
        settings: StateStoreSettings,
    ) -> StateHost {
        StateHost {
            inner: Arc::new(Inner {
                backend,
                store,
                settings,
            }),
        }
    }

    /// The backend's name, if one is configured.
    pub fn backend_name(&self) -> Option<&str> {
        self.inner.backend.as_ref().map(|(n, _)| n.as_str())
    }

    /// The store settings in force.
    pub fn settings(&self) -> &StateStoreSettings {
        &self.inner.settings
    }

    /// The state of one task instance.
    pub fn task_state(&self, scope: TaskScope) -> TaskState {
        TaskState {
            host: self.clone(),
            scope,
        }
    }

    /// The state of one asset, by name and/or uri. Access by name and by
    /// uri of the same asset share rows and backend namespace.
    pub fn asset_state(&self, asset: &AssetScope) -> Result<AssetState> {
        let canonical = self.inner.store.resolve_asset(asset)?;
        Ok(AssetState {
            host: self.clone(),
            scope: canonical,
        })
    }

    /// The states of a task's assets, keyed by asset.
    pub fn assets(&self, assets: Vec<AssetScope>) -> Result<AssetStates> {
        let states = assets
            .into_iter()
            .map(|a| self.asset_state(&a).map(|state| (a, state)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AssetStates { states })
    }

    /// Called when a task succeeds: with `clear_on_success`, clears the
    /// task's state (every map index of this one only). A backend failure is
    /// logged and left to gc; it never turns the success into a failure.
    pub fn on_task_success(&self, scope: &TaskScope) -> Result<()> {
        if !self.inner.settings.clear_on_success {
            return Ok(());
        }
        let state = self.task_state(scope.clone());
        match state.clear(false) {
            Ok(()) => Ok(()),
            Err(e @ Error::Backend { .. }) => {
                log::warn!("clear_on_success for {scope}: {e}; gc will collect the objects");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every row as the database holds it (envelopes visible).
    pub fn rows(&self) -> Result<Vec<Row>> {
        self.inner.store.rows()
    }

    /// Garbage collection: deletes expired task rows and the objects behind
    /// them, and with the backend's list capability, objects no row
    /// references (older than `orphan_grace_seconds`). `progress` is called
    /// with (done, total) as rows are processed.
    pub fn gc(&self, dry_run: bool, mut progress: impl FnMut(usize, usize)) -> Result<GcReport> {
        let now = now_ms();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let expired = self.inner.store.expired_task_rows(now)?;
        let total = expired.len();
        for (i, row) in expired.iter().enumerate() {
            let RowOwner::Task(scope) = &row.owner else {
                continue;
            };
            let external = matches!(envelope::unwrap(&row.value), Ok(Stored::Reference(_)));
            if dry_run {
                report.expired_rows += 1;
                report.objects += usize::from(external && self.inner.backend.is_some());
            } else if self.inner.store.delete_expired_task_row(row, now)? {
                report.expired_rows += 1;
                if external && let Some((name, backend)) = &self.inner.backend {
                    backend
                        .delete(&Scope::Task(scope.clone()), &row.key)
                        .map_err(|error| {
                            backend_error(name, "delete", &scope.to_string(), &row.key, error)
                        })?;
                    report.objects += 1;
                }
            }
            if (i + 1) % 1000 == 0 || i + 1 == total {
                progress(i + 1, total);
            }
        }
        if let Some((name, backend)) = &self.inner.backend {
            report.orphans = self.collect_orphans(name, backend.as_ref(), dry_run)?;
            if !dry_run {
                let grace = Duration::from_secs(self.inner.settings.orphan_grace_seconds);
                let older_than = SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH);
                report.swept = Some(
                    backend
                        .sweep(older_than)
                        .map_err(|e| backend_error(name, "sweep", "all scopes", "", e))?,
                );
            }
        }
        Ok(report)
    }

    fn collect_orphans(
        &self,
        name: &str,
        backend: &dyn StateBackend,
        dry_run: bool,
    ) -> Result<Option<usize>> {
        let objects = match backend.list(None) {
            Ok(objects) => objects,
            Err(e) if e.kind() == statehost_plugin_api::ErrorKind::Unsupported => return Ok(None),
            Err(e) => return Err(backend_error(name, "list", "all scopes", "", e)),
        };
        // An object is referenced when a row of its (scope, key) holds an
        // envelope: references are deterministic per (scope, key), and
        // matching on them would trust whatever the listing says.
        let referenced: std::collections::HashSet<(Scope, String)> = self
            .inner
            .store
            .rows()?
            .into_iter()
            .filter(|row| matches!(envelope::unwrap(&row.value), Ok(Stored::Reference(_))))
            .map(|row| {
                let scope = match row.owner {
                    RowOwner::Task(t) => Scope::Task(t),
                    RowOwner::Asset(a) => Scope::Asset(a),
                };
                (scope, row.key)
            })
            .collect();
        let grace = Duration::from_secs(self.inner.settings.orphan_grace_seconds);
        let now = SystemTime::now();
        let mut count = 0;
        for object in objects {
            if object.reference.is_empty() {
                return Err(backend_error(
                    name,
                    "list",
                    &object.scope.to_string(),
                    &object.key,
                    BackendError::invalid_input(
                        "its listing holds an empty reference; nothing was collected",
                    ),
                ));
            }
            if referenced.contains(&(object.scope.clone(), object.key.clone())) {
                continue;
            }
            let young = object
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age < grace);
            if young {
                continue;
            }
            if !dry_run {
                backend.delete(&object.scope, &object.key).map_err(|e| {
                    backend_error(name, "delete", &object.scope.to_string(), &object.key, e)
                })?;
            }
            count += 1;
        }
        Ok(Some(count))
    }

    fn check_key(key: &str) -> Result<()> {
        validate_key(key).map_err(|e| Error::InvalidInput {
            message: e.message().to_string(),
        })
    }

    /// Validates a value and renders its JSON text.
    fn render(&self, value: &Value) -> Result<String> {
        if value.is_null() {
            return Err(Error::InvalidInput {
                message: "a value cannot be null; delete the key instead".to_string(),
            });
        }
        if envelope::carries_marker(value) {
            return Err(Error::InvalidInput {
                message: format!(
                    "the value is an object with the key {:?}, which is reserved for references to stored values; rename that key",
                    envelope::MARKER
                ),
            });
        }
        Ok(value.to_string())
    }

    fn check_inline_size(&self, text: &str, scope: &str, key: &str) -> Result<()> {
        let max = self.inner.settings.max_value_bytes;
        if max > 0 && text.len() as u64 > max {
            return Err(Error::InvalidInput {
                message: format!(
                    "the value of {scope} key {key:?} is {} bytes, over [state_store] max_value_bytes = {max} for values kept in the metadata store; configure a state backend ([workers] state_backend) to store large values, or raise the limit",
                    text.len()
                ),
            });
        }
        Ok(())
    }

    /// Hands a rendered value to the backend (if any) and returns the text
    /// for the row, plus the backend that now holds an object (for undo).
    fn serialize(
        &self,
        scope: &str,
        key: &str,
        text: String,
        write: impl FnOnce(&dyn StateBackend, &str) -> std::result::Result<Serialized, BackendError>,
    ) -> Result<(String, Option<NamedBackend<'_>>)> {
        let Some((name, backend)) = &self.inner.backend else {
            self.check_inline_size(&text, scope, key)?;
            return Ok((text, None));
        };
        match write(backend.as_ref(), &text)
            .map_err(|e| backend_error(name, "write", scope, key, e))?
        {
            Serialized::Inline => {
                self.check_inline_size(&text, scope, key)?;
                Ok((text, None))
            }
            Serialized::Reference(r) if r.is_empty() => Err(backend_error(
                name,
                "write",
                scope,
                key,
                BackendError::invalid_input("it returned an empty reference"),
            )),
            Serialized::Reference(r) => Ok((envelope::wrap(&r), Some((name.as_str(), backend)))),
        }
    }

    fn read_stored(
        &self,
        scope: &str,
        key: &str,
        text: String,
        visit: impl FnOnce(
            &dyn StateBackend,
            &str,
            &mut dyn FnMut(&[u8]),
        ) -> std::result::Result<(), BackendError>,
    ) -> Result<Value> {
        let corrupt = |message: String| Error::Corrupt {
            scope: scope.to_string(),
            key: key.to_string(),
            message,
        };
        match envelope::unwrap(&text).map_err(corrupt)? {
            Stored::Inline(value) => Ok(value),
            Stored::Reference(reference) => {
                let Some((name, backend)) = &self.inner.backend else {
                    return Err(corrupt(format!(
                        "it is stored in a state backend (reference {reference:?}) but no backend is configured; set [workers] state_backend to the backend that wrote it"
                    )));
                };
                // Parse where the backend's text lies: no copy of the value.
                let mut parsed = None;
                visit(backend.as_ref(), &reference, &mut |json| {
                    // from_slice checks UTF-8 too: a plugin can hand over any bytes.
                    parsed = Some(serde_json::from_slice::<Value>(json).map_err(|e| {
                        if std::str::from_utf8(json).is_err() {
                            "it returned bytes that are not UTF-8".to_string()
                        } else {
                            format!("it returned text that is not JSON ({e})")
                        }
                    }));
                })
                .map_err(|e| backend_error(name, "read", scope, key, e))?;
                let parsed = parsed.ok_or_else(|| {
                    backend_error(
                        name,
                        "read",
                        scope,
                        key,
                        BackendError::other("it returned nothing"),
                    )
                })?;
                parsed.map_err(|message| {
                    backend_error(
                        name,
                        "read",
                        scope,
                        key,
                        BackendError::invalid_input(message),
                    )
                })
            }
        }
    }
}

fn backend_error(
    plugin: &str,
    operation: &'static str,
    scope: &str,
    key: &str,
    error: BackendError,
) -> Error {
    Error::Backend {
        plugin: plugin.to_string(),
        operation,
        scope: scope.to_string(),
        key: key.to_string(),
        error,
    }
}

/// What gc did (or would do, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Expired task rows deleted.
    pub expired_rows: usize,
    /// External objects deleted behind those rows.
    pub objects: usize,
    /// Objects no row referenced, deleted; `None` when the backend cannot
    /// list.
    pub orphans: Option<usize>,
    /// Leftovers of interrupted writes removed (temporary files); `None` in
    /// a dry run or without a backend.
    pub swept: Option<usize>,
}

/// The state of one task instance.
#[derive(Debug, Clone)]
pub struct TaskState {
    host: StateHost,
    scope: TaskScope,
}

impl TaskState {
    /// The scope.
    pub fn scope(&self) -> &TaskScope {
        &self.scope
    }

    /// The value of `key`, or `None`.
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        StateHost::check_key(key)?;
        let now = now_ms();
        let Some(text) = self.host.inner.store.get_task(&self.scope, key, now)? else {
            return Ok(None);
        };
        self.host
            .read_stored(&self.scope.to_string(), key, text, |b, r, v| {
                b.visit_task_state(r, v)
            })
            .map(Some)
    }

    /// Sets `key` with the default retention.
    pub fn set(&self, key: &str, value: &Value) -> Result<()> {
        self.set_with_retention(key, value, Retention::Default)
    }

    /// Sets `key`, kept as `retention` says.
    pub fn set_with_retention(&self, key: &str, value: &Value, retention: Retention) -> Result<()> {
        StateHost::check_key(key)?;
        let text = self.host.render(value)?;
        let host = &self.host.inner;
        let scope_name = self.scope.to_string();
        let now = now_ms();
        let expires_at = match retention {
            Retention::Never => None,
            Retention::For(d) => Some(now.saturating_add(d.as_millis() as i64)),
            Retention::Default => match host.settings.default_retention_days {
                0 => None,
                days => Some(now + i64::from(days) * 86_400_000),
            },
        };
        let (stored, written) = self.host.serialize(&scope_name, key, text, |b, text| {
            b.serialize_task_state(&self.scope, key, text)
        })?;
        if let Err(e) = host
            .store
            .put_task(&self.scope, key, &stored, now, expires_at)
        {
            if let Some((name, backend)) = written {
                undo_write(
                    name,
                    backend.as_ref(),
                    Scope::Task(self.scope.clone()),
                    key,
                    &stored,
                    || host.store.get_task(&self.scope, key, i64::MIN),
                );
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes `key`; removing a missing key succeeds.
    pub fn delete(&self, key: &str) -> Result<()> {
        StateHost::check_key(key)?;
        let old = self.host.inner.store.delete_task(&self.scope, key)?;
        if let (Some(old), Some((name, backend))) = (old, &self.host.inner.backend)
            && matches!(envelope::unwrap(&old), Ok(Stored::Reference(_)))
        {
            backend
                .delete(&Scope::Task(self.scope.clone()), key)
                .map_err(|e| backend_error(name, "delete", &self.scope.to_string(), key, e))?;
        }
        Ok(())
    }

    /// Removes every key of this map index, or with `all_map_indices` of
    /// every map index of the task.
    pub fn clear(&self, all_map_indices: bool) -> Result<()> {
        self.host
            .inner
            .store
            .clear_task(&self.scope, all_map_indices)?;
        if let Some((name, backend)) = &self.host.inner.backend {
            backend
                .clear(&Scope::Task(self.scope.clone()), all_map_indices)
                .map_err(|e| backend_error(name, "clear", &self.scope.to_string(), "", e))?;
        }
        Ok(())
    }
}

/// Best-effort undo of a backend write whose row could not be written. If
/// the row still holds an envelope with the same reference (an earlier
/// value at the same deterministic reference, now overwritten), deleting
/// would leave that row dangling, so the object is left in place.
fn undo_write(
    name: &str,
    backend: &dyn StateBackend,
    scope: Scope,
    key: &str,
    envelope_text: &str,
    current_row: impl FnOnce() -> Result<Option<String>>,
) {
    match current_row() {
        Ok(Some(row)) if row == envelope_text => {
            log::warn!(
                "the row for {scope} key {key:?} could not be updated; it keeps pointing at the object just written"
            );
        }
        Ok(_) => {
            if let Err(e) = backend.delete(&scope, key) {
                log::warn!(
                    "undoing the write of {scope} key {key:?} in backend `{name}` failed ({e}); gc will collect it"
                );
            }
        }
        Err(e) => log::warn!(
            "cannot tell whether to undo the write of {scope} key {key:?} ({e}); gc will collect it if orphaned"
        ),
    }
}

/// The state of one asset (by its canonical identity).
#[derive(Debug, Clone)]
pub struct AssetState {
    host: StateHost,
    scope: AssetScope,
}

impl AssetState {
    /// The asset's canonical scope.
    pub fn scope(&self) -> &AssetScope {
        &self.scope
    }

    /// The value of `key`, or `None`.
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        StateHost::check_key(key)?;
        let Some(text) = self.host.inner.store.get_asset(&self.scope, key)? else {
            return Ok(None);
        };
        self.host
            .read_stored(&self.scope.to_string(), key, text, |b, r, v| {
                b.visit_asset_state(r, v)
            })
            .map(Some)
    }

    /// Sets `key`. Asset state never expires.
    pub fn set(&self, key: &str, value: &Value) -> Result<()> {
        StateHost::check_key(key)?;
        let text = self.host.render(value)?;
        let host = &self.host.inner;
        let scope_name = self.scope.to_string();
        let (stored, written) = self.host.serialize(&scope_name, key, text, |b, text| {
            b.serialize_asset_state(&self.scope, key, text)
        })?;
        if let Err(e) = host.store.put_asset(&self.scope, key, &stored, now_ms()) {
            if let Some((name, backend)) = written {
                undo_write(
                    name,
                    backend.as_ref(),
                    Scope::Asset(self.scope.clone()),
                    key,
                    &stored,
                    || host.store.get_asset(&self.scope, key),
                );
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes `key`; removing a missing key succeeds.
    pub fn delete(&self, key: &str) -> Result<()> {
        StateHost::check_key(key)?;
        let old = self.host.inner.store.delete_asset(&self.scope, key)?;
        if let (Some(old), Some((name, backend))) = (old, &self.host.inner.backend)
            && matches!(envelope::unwrap(&old), Ok(Stored::Reference(_)))
        {
            backend
                .delete(&Scope::Asset(self.scope.clone()), key)
                .map_err(|e| backend_error(name, "delete", &self.scope.to_string(), key, e))?;
        }
        Ok(())
    }

    /// Removes every key of the asset.
    pub fn clear(&self) -> Result<()> {
        self.host.inner.store.clear_asset(&self.scope)?;
        if let Some((name, backend)) = &self.host.inner.backend {
            backend
                .clear(&Scope::Asset(self.scope.clone()), false)
                .map_err(|e| backend_error(name, "clear", &self.scope.to_string(), "", e))?;
        }
        Ok(())
    }
}

/// The states of a task's assets.
#[derive(Debug, Clone)]
pub struct AssetStates {
    /// Each asset as the task named it, with its state.
    states: Vec<(AssetScope, AssetState)>,
}

impl AssetStates {
    /// The state of the asset known by `asset` (name or uri of one of the
    /// task's assets).
    pub fn get(&self, asset: &AssetScope) -> Result<&AssetState> {
        self.states
            .iter()
            .find(|(named, state)| {
                let matches = |scope: &AssetScope| {
                    asset.name().is_some_and(|n| scope.name() == Some(n))
                        || asset.uri().is_some_and(|u| scope.uri() == Some(u))
                };
                matches(named) || matches(&state.scope)
            })
            .map(|(_, state)| state)
            .ok_or_else(|| Error::InvalidInput {
                message: format!("{asset} is not one of this task's assets"),
            })
    }

    /// The state of the task's only asset.
    pub fn single(&self) -> Result<&AssetState> {
        match self.states.as_slice() {
            [(_, only)] => Ok(only),
            states => Err(Error::InvalidInput {
                message: format!(
                    "this task has {} assets ({}), so the single-asset shorthand is ambiguous; pick one by name or uri",
                    states.len(),
                    states
                        .iter()
                        .map(|(asset, _)| asset.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Every asset's state.
    pub fn iter(&self) -> impl Iterator<Item = &AssetState> {
        self.states.iter().map(|(_, state)| state)
    }
}
