//! [`StateHost`]: the backend and the metadata store together, and the
//! task-state and asset-state accessors on top.
//!
//! This folder owns the paths of state: `task` and `asset` (the
//! accessors), `envelope` (what a row holds for an external value), `gc`
//! (expiry and orphans) and `legacy` (the fencing that serves plugin-api
//! 1.x backends). It drives the store and the backend only through their
//! interfaces ([`MetadataStore`], [`Calls`]).
//!
//! The order of every path, which keeps the five consistency guarantees
//! (see ARCHITECTURE.md):
//!
//! * `set`: validate, mint a write id, the backend writes a new object,
//!   then one fenced upsert swaps the row and hands back what it replaced;
//!   the replaced object is deleted a call deadline later. If the row write
//!   fails for sure, the new object is deleted at once; if its outcome is
//!   unknown, nothing is undone.
//! * `get`: the row, then its object; an object gone missing makes the row
//!   be read again (it moved on), and only a row that still points at a
//!   missing object is an error.
//! * `delete`, `clear`, gc expiry: the rows go first, handing back what
//!   they held, then exactly those objects. A failure after the rows
//!   changed leaves an orphan for gc, never a dangling row.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use statehost_plugin_api::{BackendError, ErrorKind, Scope, StateKey, WriteId, validate_key};

use crate::backend::{Backend, Calls, InProcess, Limits, Reaper, Reference, Text};
use crate::config::{Config, StateStoreSettings};
use crate::error::{Error, Result};
use crate::plugin;
use crate::store::{Fence, MetadataStore, Row, RowOwner};

mod asset;
pub mod envelope;
mod escape;
mod gc;
mod legacy;
mod task;
mod value;

pub use asset::{AssetState, AssetStates};
pub use escape::needs_no_escape;
pub use gc::GcReport;
pub use task::{MAX_RETENTION, MAX_RETENTION_DAYS, Retention, TaskState};
pub use value::{MAX_JSON_DEPTH, parse_value};

use envelope::Stored;

/// The clock write ids are minted by. Everything else (expiry, fencing,
/// gc's age of objects) uses the database's clock.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default()
    }
}

/// The system's clock, off by a fixed amount: a worker whose clock is
/// wrong (for tests of clock skew).
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// Milliseconds added to the system's clock (negative: behind).
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.skew_ms
    }
}

/// How many objects may wait for their delayed deletion before a write
/// deletes the object it replaced at once (a bound on the storage a burst
/// of overwrites holds on to).
const REAPER_CAPACITY: usize = 1024;

/// How often a read re-reads a row whose object went missing because the
/// row moved on (each time, another writer replaced it meanwhile, so only
/// a key rewritten faster than it can be read ever runs out).
const READ_ATTEMPTS: usize = 100;

pub(crate) struct Inner {
    backend: Option<Arc<Calls>>,
    reaper: Option<Reaper>,
    legacy: Option<Arc<legacy::Fencing>>,
    store: Arc<dyn MetadataStore>,
    settings: StateStoreSettings,
    clock: Arc<dyn Clock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Replaced objects still waiting go now, rather than to gc.
        if let Some(reaper) = &self.reaper {
            reaper.flush();
        }
    }
}

/// The backend (or none) and the metadata store of a process. Cheap to
/// clone; every clone and thread shares the same backend and store.
///
/// A forked child should open a host of its own: the parent's backend
/// instance may rely on threads the child does not have. Dropping the
/// parent's host in the child leaves the parent's threads and database
/// connections alone. With a SQLite store, fork only while no other thread
/// is inside a call: SQLite's own locks are copied as that thread held
/// them.
#[derive(Clone)]
pub struct StateHost {
    inner: Arc<crate::process::ProcessOwned<Inner>>,
}

impl std::fmt::Debug for StateHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHost")
            .field("backend", &self.backend_name())
            .field("store", &self.inner.store.describe())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Opens the store named by `[database] url`, only if it exists: a SQLite
/// file that is not there is an [`Error::NoDatabase`], not a new database.
/// For commands that only read (or only delete), which have nothing to do
/// in a database nobody wrote.
pub fn open_existing_store(config: &Config) -> Result<Arc<dyn MetadataStore>> {
    if let Ok(crate::store::SqliteLocation::File(path)) =
        crate::store::SqliteLocation::parse(&config.database_url, &config.base_dir)
        && !path.exists()
    {
        return Err(Error::NoDatabase {
            path,
            config: config.file.clone(),
        });
    }
    open_store(config)
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgresql://") || url.starts_with("postgres://")
}

/// How long a PostgreSQL statement may stall (a lock held too long) before
/// it fails rather than committing a fenced write late.
#[cfg(feature = "postgres")]
fn statement_timeout(config: &Config) -> Duration {
    (config.state_store.orphan_grace / 4).min(Duration::from_secs(30))
}

/// Opens the store named by `[database] url` for reading: a SQLite file is
/// opened read-only (nothing is created or changed, and a database this
/// process may not write still reads); a missing one is an
/// [`Error::NoDatabase`]. For `get`, `rows`, `gc --dry-run` and `check`.
pub fn open_read_only_store(config: &Config) -> Result<Arc<dyn MetadataStore>> {
    #[cfg(feature = "postgres")]
    if is_postgres_url(&config.database_url) {
        return Ok(Arc::new(crate::store::PostgresStore::open_read_only(
            &config.database_url,
            statement_timeout(config),
        )?));
    }
    match crate::store::SqliteLocation::parse(&config.database_url, &config.base_dir) {
        Ok(crate::store::SqliteLocation::File(path)) => {
            if !path.exists() {
                return Err(Error::NoDatabase {
                    path,
                    config: config.file.clone(),
                });
            }
            Ok(Arc::new(crate::store::SqliteStore::open_read_only(path)?))
        }
        _ => open_store(config),
    }
}

/// Opens the store named by `[database] url`, creating a SQLite database
/// (and its schema) when there is none.
pub fn open_store(config: &Config) -> Result<Arc<dyn MetadataStore>> {
    if config.database_url == "memory://" {
        return Ok(Arc::new(crate::store::MemoryStore::new()));
    }
    if is_postgres_url(&config.database_url) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(crate::store::PostgresStore::open(
            &config.database_url,
            statement_timeout(config),
        )?));
        #[cfg(not(feature = "postgres"))]
        return Err(Error::Config {
            source_name: "[database] url".to_string(),
            message: "this build has no PostgreSQL support; rebuild statehost with the `postgres` feature".to_string(),
        });
    }
    let location = crate::store::SqliteLocation::parse(&config.database_url, &config.base_dir)?;
    Ok(Arc::new(crate::store::SqliteStore::open_with(
        location,
        config.synchronous,
    )?))
}

/// Builds a [`StateHost`] from parts: any store, any backend (in-process
/// or loaded), any settings.
#[derive(Debug)]
pub struct Builder {
    store: Arc<dyn MetadataStore>,
    backend: Option<(String, Arc<dyn Backend>)>,
    settings: StateStoreSettings,
    limits: Limits,
    clock: Arc<dyn Clock>,
    reaper_capacity: usize,
}

impl Builder {
    /// Serves `backend` (a loaded plugin, or an [`InProcess`] one) under
    /// `name`.
    pub fn backend(mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some((name.into(), backend));
        self
    }

    /// Serves an in-process [`StateBackend`](statehost_plugin_api::StateBackend)
    /// that supports `capabilities`.
    pub fn in_process<B: statehost_plugin_api::StateBackend + 'static>(
        self,
        name: impl Into<String>,
        backend: B,
        capabilities: statehost_plugin_api::Capabilities,
    ) -> Self {
        self.backend(name, Arc::new(InProcess::new(backend, capabilities)))
    }

    /// `[state_store]` settings (the defaults otherwise).
    pub fn settings(mut self, settings: StateStoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The deadline and in-flight cap of backend calls.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The clock write ids are minted by (the system's otherwise).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many replaced objects may wait a call deadline before they are
    /// deleted (1024 otherwise); past it, the write that replaced one
    /// deletes it at once. Tests set a few, so that their histories delete
    /// replaced objects at once while reads of them are on the way.
    pub fn reaper_capacity(mut self, capacity: usize) -> Self {
        self.reaper_capacity = capacity;
        self
    }

    /// The host.
    pub fn build(self) -> StateHost {
        let (calls, legacy) = match self.backend {
            Some((name, backend)) => {
                let (calls, fencing) = per_backend(name, backend, self.limits);
                (Some(calls), fencing)
            }
            None => (None, None),
        };
        let reaper = calls.as_ref().filter(|_| legacy.is_none()).map(|calls| {
            let store = self.store.clone();
            Reaper::new(
                calls.clone(),
                Box::new(move || store.sync().map_err(|e| e.to_string())),
                self.limits.deadline.unwrap_or(Duration::from_secs(30)),
                self.reaper_capacity,
            )
        });
        StateHost {
            inner: Arc::new(crate::process::ProcessOwned::with_leave(
                Inner {
                    backend: calls,
                    reaper,
                    legacy,
                    store: self.store,
                    settings: self.settings,
                    clock: self.clock,
                },
                // Left in a forked child that used it: what the child's
                // own writes replaced goes now (a no-op unless the child
                // started the reaper's thread).
                |inner| {
                    if let Some(reaper) = &inner.reaper {
                        reaper.flush();
                    }
                },
            )),
        }
    }
}

/// What every host on one backend instance shares: the calls (one
/// in-flight cap and one thread pool per backend, not per host) and, for a
/// plugin-api 1.x backend, the fencing (one set of key locks per process).
struct PerBackend {
    backend: std::sync::Weak<dyn Backend>,
    calls: std::sync::Weak<Calls>,
    fencing: Option<Arc<legacy::Fencing>>,
}

/// The calls and fencing of `backend`: shared with every other host built
/// on the same instance while any of them lives (the first one's limits
/// apply).
fn per_backend(
    name: String,
    backend: Arc<dyn Backend>,
    limits: Limits,
) -> (Arc<Calls>, Option<Arc<legacy::Fencing>>) {
    static SHARED: std::sync::Mutex<Vec<PerBackend>> = std::sync::Mutex::new(Vec::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    shared.retain(|entry| entry.calls.strong_count() > 0);
    for entry in shared.iter() {
        if let (Some(known), Some(calls)) = (entry.backend.upgrade(), entry.calls.upgrade())
            && Arc::ptr_eq(&known, &backend)
        {
            if calls.limits() != limits {
                log::warn!(
                    "backend `{name}` already serves another host in this process with {:?}; those limits apply",
                    calls.limits()
                );
            }
            return (calls, entry.fencing.clone());
        }
    }
    let fencing = (!backend.unique_references()).then(|| Arc::new(legacy::Fencing::new()));
    let calls = Arc::new(Calls::new(name, backend.clone(), limits));
    shared.push(PerBackend {
        backend: Arc::downgrade(&backend),
        calls: Arc::downgrade(&calls),
        fencing: fencing.clone(),
    });
    (calls, fencing)
}

/// What a value became for its row: its own JSON, or an envelope around
/// the object just written.
pub(crate) struct Written {
    pub(crate) stored: String,
    pub(crate) object: Option<(Reference, WriteId)>,
}

impl Written {
    pub(crate) fn fence(&self, max_age_ms: i64) -> Option<Fence> {
        self.object.as_ref().map(|(_, id)| Fence {
            minted_at: id.unix_ms() as i64,
            max_age_ms,
        })
    }

    fn reference(&self) -> Option<&str> {
        self.object.as_ref().map(|(r, _)| r.as_str())
    }
}

/// The reference in a row's stored text, if it holds an envelope.
pub(crate) fn reference_in(text: &str) -> Option<String> {
    match envelope::unwrap(text) {
        Ok(Stored::Reference(r)) => Some(r.into_owned()),
        _ => None,
    }
}

/// The backend error of `operation` on `scope` `key` (both shortened: an
/// error line names them, it does not repeat kilobytes of ids).
pub(crate) fn backend_error(
    plugin: &str,
    operation: &'static str,
    scope: &dyn std::fmt::Display,
    key: &str,
    error: BackendError,
) -> Error {
    Error::Backend {
        plugin: plugin.to_string(),
        operation,
        scope: crate::error::short(&scope.to_string()),
        key: crate::error::short(key),
        error,
    }
}

impl StateHost {
    /// Opens the configured backend (the process's one cached instance, or
    /// none when `state_backend` is empty) and store.
    pub fn open(config: &Config) -> Result<StateHost> {
        StateHost::open_on(config, open_store(config)?)
    }

    /// Like [`open`](StateHost::open), but refuses to create the metadata
    /// database ([`Error::NoDatabase`]): for callers that only read.
    pub fn open_existing(config: &Config) -> Result<StateHost> {
        StateHost::open_on(config, open_existing_store(config)?)
    }

    /// Like [`open`](StateHost::open), on a store opened with
    /// [`open_read_only_store`]: for callers that never write. A write
    /// through it fails with the database's read-only error.
    pub fn open_read_only(config: &Config) -> Result<StateHost> {
        StateHost::open_on(config, open_read_only_store(config)?)
    }

    fn open_on(config: &Config, store: Arc<dyn MetadataStore>) -> Result<StateHost> {
        let backend = plugin::shared_backend(config)?;
        let mut builder = StateHost::builder(store)
            .settings(config.state_store.clone())
            .limits(config.limits);
        if let Some(backend) = backend {
            let name = backend.metadata().name.clone();
            builder = builder.backend(name, backend);
        }
        Ok(builder.build())
    }

    /// A host on `store`, to add a backend and settings to.
    pub fn builder(store: Arc<dyn MetadataStore>) -> Builder {
        Builder {
            store,
            backend: None,
            settings: StateStoreSettings::default(),
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            reaper_capacity: REAPER_CAPACITY,
        }
    }

    /// The backend's name, if one is configured.
    pub fn backend_name(&self) -> Option<&str> {
        self.inner.backend.as_deref().map(Calls::name)
    }

    /// The store settings in force.
    pub fn settings(&self) -> &StateStoreSettings {
        &self.inner.settings
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.inner.store
    }

    /// Backend calls running now (abandoned ones included).
    pub fn calls_in_flight(&self) -> usize {
        self.inner.backend.as_ref().map_or(0, |c| c.in_flight())
    }

    /// Deletes the objects replaced by recent writes now, instead of a call
    /// deadline after their replacement.
    pub fn flush(&self) {
        if let Some(reaper) = &self.inner.reaper {
            reaper.flush();
        }
    }

    /// The state of one task instance.
    pub fn task_state(&self, scope: statehost_plugin_api::TaskScope) -> TaskState {
        TaskState::new(self.clone(), scope)
    }

    /// The state of one asset, by name and/or uri. Access by name and by
    /// uri of the same asset share rows and backend namespace. Nothing is
    /// registered until a value is set.
    pub fn asset_state(&self, asset: &statehost_plugin_api::AssetScope) -> Result<AssetState> {
        crate::ownership::check_not_reserved(statehost_plugin_api::ScopeRef::Asset(
            asset.identity(),
        ))?;
        AssetState::new(self.clone(), asset.clone())
    }

    /// The states of a task's assets, keyed by asset.
    pub fn assets(&self, assets: Vec<statehost_plugin_api::AssetScope>) -> Result<AssetStates> {
        for asset in &assets {
            crate::ownership::check_not_reserved(statehost_plugin_api::ScopeRef::Asset(
                asset.identity(),
            ))?;
        }
        AssetStates::new(self, assets)
    }

    /// Called when a task succeeds: with `clear_on_success`, clears the
    /// task's state (this map index only). A backend failure is logged and
    /// left to gc; it never turns the success into a failure.
    pub fn on_task_success(&self, scope: &statehost_plugin_api::TaskScope) -> Result<()> {
        if !self.inner.settings.clear_on_success {
            return Ok(());
        }
        match self.task_state(scope.clone()).clear(false) {
            Ok(()) => Ok(()),
            Err(e @ (Error::Backend { .. } | Error::Cleanup { .. })) => {
                log::warn!("clear_on_success for {scope}: {e}; gc will collect the objects");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every row as the database holds it (envelopes visible).
    pub fn rows(&self) -> Result<crate::store::Rows> {
        self.inner.store.rows()
    }

    /// Garbage collection; see [`GcReport`]. Refused when an Airflow
    /// worker has claimed the backend's storage (see
    /// [`crate::ownership`]): Airflow's database holds its references, so
    /// every object there would look orphaned.
    pub fn gc(&self, dry_run: bool, progress: impl FnMut(usize, usize)) -> Result<GcReport> {
        if let Some(calls) = self.inner.calls() {
            crate::ownership::check(calls, crate::ownership::Owner::Statehost)?;
        }
        gc::run(self, dry_run, progress)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    pub(crate) fn calls(&self) -> Option<&Arc<Calls>> {
        self.backend.as_ref()
    }

    /// A fresh write id, by this worker's clock.
    fn mint(&self) -> WriteId {
        let now = self.clock.now_ms().max(0) as u64;
        WriteId::from_parts(now, rand::random::<u128>())
    }

    /// How long after its write id a write's row may still land.
    pub(crate) fn fence_max_age_ms(&self) -> i64 {
        i64::try_from((self.settings.orphan_grace / 2).as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn check_key(key: &str) -> Result<()> {
        validate_key(key).map_err(|e| Error::InvalidInput {
            message: e.message().to_string(),
        })
    }

    /// Validates a value and renders its JSON text.
    pub(crate) fn render(value: &Value) -> Result<String> {
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
        let text = value::render(value);
        value::check_round_trip(value, &text)?;
        Ok(text)
    }

    fn check_inline_size(&self, text: &str, at: StateKey<'_>) -> Result<()> {
        let max = self.settings.max_value_bytes;
        if max > 0 && text.len() as u64 > max {
            return Err(Error::InvalidInput {
                message: format!(
                    "the value of {at} is {} bytes, over [state_store] max_value_bytes = {max} for values kept in the metadata store; configure a state backend ([workers] state_backend) to store large values, or raise the limit",
                    text.len()
                ),
            });
        }
        Ok(())
    }

    /// Hands a rendered value to the backend (if any) as a new object, and
    /// says what the row should hold.
    pub(crate) fn write_value(&self, at: StateKey<'_>, text: String) -> Result<Written> {
        let Some(calls) = &self.backend else {
            self.check_inline_size(&text, at)?;
            return Ok(Written {
                stored: text,
                object: None,
            });
        };
        let write_id = self.mint();
        let serialized = serialize(calls, at, write_id, text.as_str())
            .map_err(|e| backend_error(calls.name(), "write", &at.scope, at.key, e))?;
        match serialized {
            None => {
                self.check_inline_size(&text, at)?;
                Ok(Written {
                    stored: text,
                    object: None,
                })
            }
            Some(r) if r.is_empty() => Err(backend_error(
                calls.name(),
                "write",
                &at.scope,
                at.key,
                BackendError::invalid_input("it returned an empty reference"),
            )),
            Some(r) => Ok(Written {
                stored: envelope::wrap(&r),
                object: Some((r, write_id)),
            }),
        }
    }

    /// After a row write: the object it replaced (if any, and not the one
    /// just written) goes after a call deadline.
    pub(crate) fn replaced(&self, at: StateKey<'_>, old: Option<String>, written: &Written) {
        let (Some(calls), Some(old)) = (&self.backend, old) else {
            return;
        };
        let Ok(Stored::Reference(reference)) = envelope::unwrap(&old) else {
            return;
        };
        if written.reference() == Some(&*reference) {
            // Never the object this write made (a repeated statement).
            return;
        }
        let scheduled = self
            .reaper
            .as_ref()
            .is_some_and(|reaper| reaper.schedule(&reference, Some(at)));
        if !scheduled {
            if let Err(e) = self.store.sync() {
                log::warn!("{e}; the replaced object {reference:?} is left to gc");
                return;
            }
            crate::backend::reaper::delete_now(calls, &reference, Some(at));
        }
    }

    /// After a failed row write: an object no row will point at is deleted
    /// now, unless the write may have landed after all.
    pub(crate) fn unwritten(&self, at: StateKey<'_>, written: &Written, error: &Error) {
        let (Some(calls), Some((reference, _))) = (&self.backend, &written.object) else {
            return;
        };
        let reference = reference.as_str();
        if error.outcome_unknown() {
            log::warn!(
                "the row of {at} may or may not point at {reference:?} now; the object is kept (gc removes it if no row does)"
            );
            return;
        }
        crate::backend::reaper::delete_now(calls, reference, Some(at));
    }

    /// Reads the value a row holds; if its object is gone because the row
    /// moved on, reads the row again (`reread`).
    pub(crate) fn read_value(
        &self,
        at: StateKey<'_>,
        mut text: String,
        reread: impl Fn() -> Result<Option<String>>,
    ) -> Result<Option<Value>> {
        let corrupt = |message: String| Error::Corrupt {
            scope: crate::error::short(&at.scope.to_string()),
            key: crate::error::short(at.key),
            message,
        };
        for _ in 0..READ_ATTEMPTS {
            // The reference is borrowed from the row's text; only a miss,
            // which reads the row again, needs it past that.
            let (reference, missing) = {
                let reference = match envelope::unwrap(&text).map_err(corrupt)? {
                    Stored::Inline(value) => return Ok(Some(value)),
                    Stored::Reference(reference) => reference,
                };
                let Some(calls) = &self.backend else {
                    return Err(corrupt(format!(
                        "it is stored in a state backend (reference {reference:?}) but no backend is configured; set [workers] state_backend to the backend that wrote it"
                    )));
                };
                match deserialize(calls, &reference, at) {
                    Ok(bytes) => {
                        return value::parse_backend_json(bytes.as_bytes())
                            .map(Some)
                            .map_err(|message| {
                                backend_error(
                                    calls.name(),
                                    "read",
                                    &at.scope,
                                    at.key,
                                    BackendError::invalid_input(message),
                                )
                            });
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => (reference.into_owned(), e),
                    Err(e) => {
                        return Err(backend_error(calls.name(), "read", &at.scope, at.key, e));
                    }
                }
            };
            match reread()? {
                None => return Ok(None),
                Some(now) if now != text => text = now,
                Some(_) => {
                    let name = self.backend.as_ref().map_or("", |calls| calls.name());
                    return Err(corrupt(format!(
                        "its row points at {reference:?}, which backend `{name}` no longer holds ({missing}); it was deleted behind statehost's back: delete the key"
                    )));
                }
            }
        }
        Err(Error::Store {
            message: format!(
                "{at} was replaced {READ_ATTEMPTS} times while it was being read; try again"
            ),
        })
    }

    /// Deletes the objects of rows that are gone (a delete, clear or gc
    /// expiry removed them): after making the removal durable, exactly those
    /// objects. Returns how many objects were there; the first failure is
    /// an error (what it leaves is gc's).
    pub(crate) fn delete_objects(&self, rows: &[(Scope, String, String)]) -> Result<usize> {
        let Some(calls) = &self.backend else {
            return Ok(0);
        };
        let doomed: Vec<(&Scope, &str, String)> = rows
            .iter()
            .filter_map(|(scope, key, text)| reference_in(text).map(|r| (scope, key.as_str(), r)))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        self.store.sync().map_err(|e| Error::Cleanup {
            message: format!(
                "the rows are removed, but their objects are kept because the removal could not be made durable ({e}); gc removes them once they are older than [state_store] orphan_grace"
            ),
        })?;
        let mut removed = 0;
        let mut first_error = None;
        for (scope, key, reference) in doomed {
            let at = StateKey {
                scope: scope.as_ref(),
                key,
            };
            match calls.delete_object(&reference, Some(at)) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(backend_error(calls.name(), "delete", scope, key, e));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(Error::Cleanup {
                message: format!(
                    "the rows are removed, but not every object behind them could be deleted ({e}); gc removes what is left once it is older than [state_store] orphan_grace"
                ),
            }),
            None => Ok(removed),
        }
    }
}

/// Where a key's row lives: a task's, or an asset's (as the caller named
/// it, and by its canonical scope, which names its storage namespace).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    Task(&'a statehost_plugin_api::TaskScope),
    Asset {
        named: &'a statehost_plugin_api::AssetScope,
        canonical: &'a statehost_plugin_api::AssetScope,
    },
}

impl<'a> Place<'a> {
    pub(crate) fn at(&self, key: &'a str) -> StateKey<'a> {
        match *self {
            Place::Task(t) => StateKey::task(t, key),
            Place::Asset { canonical, .. } => StateKey::asset(canonical, key),
        }
    }

    pub(crate) fn get(&self, store: &dyn MetadataStore, key: &str) -> Result<Option<String>> {
        match self {
            Place::Task(t) => store.get_task(t, key),
            Place::Asset { canonical, .. } => store.get_asset(canonical, key),
        }
    }

    pub(crate) fn put(
        &self,
        store: &dyn MetadataStore,
        key: &str,
        put: &crate::store::Put<'_>,
    ) -> Result<Option<String>> {
        match self {
            Place::Task(t) => store.put_task(t, key, put),
            Place::Asset { named, canonical } => store.put_asset(named, canonical, key, put),
        }
    }

    pub(crate) fn delete(&self, store: &dyn MetadataStore, key: &str) -> Result<Option<String>> {
        match self {
            Place::Task(t) => store.delete_task(t, key),
            Place::Asset { canonical, .. } => store.delete_asset(canonical, key),
        }
    }
}

impl Inner {
    /// `set`, for either kind of state.
    pub(crate) fn set(
        &self,
        place: Place<'_>,
        key: &str,
        value: &Value,
        retention_ms: Option<i64>,
    ) -> Result<()> {
        Inner::check_key(key)?;
        let text = Inner::render(value)?;
        if let Some(fencing) = &self.legacy {
            return legacy::set(self, fencing, place, key, text, retention_ms);
        }
        let at = place.at(key);
        let written = self.write_value(at, text)?;
        let put = crate::store::Put {
            value: &written.stored,
            fence: written.fence(self.fence_max_age_ms()),
            retention_ms,
        };
        match place.put(self.store.as_ref(), key, &put) {
            Ok(old) => {
                self.replaced(at, old, &written);
                Ok(())
            }
            Err(e) => {
                self.unwritten(at, &written, &e);
                Err(e)
            }
        }
    }

    /// `get`, for either kind of state.
    pub(crate) fn get(&self, place: Place<'_>, key: &str) -> Result<Option<Value>> {
        Inner::check_key(key)?;
        if let Some(fencing) = &self.legacy {
            return legacy::get(self, fencing, place, key);
        }
        let Some(text) = place.get(self.store.as_ref(), key)? else {
            return Ok(None);
        };
        self.read_value(place.at(key), text, || place.get(self.store.as_ref(), key))
    }

    /// `delete`, for either kind of state: the row, then its object.
    pub(crate) fn delete(&self, place: Place<'_>, key: &str) -> Result<()> {
        Inner::check_key(key)?;
        if let Some(fencing) = &self.legacy {
            return legacy::delete(self, fencing, place, key);
        }
        let Some(old) = place.delete(self.store.as_ref(), key)? else {
            return Ok(());
        };
        let at = place.at(key);
        self.delete_objects(&[(at.scope.to_owned(), key.to_string(), old)])
            .map(drop)
    }

    /// Deletes the objects of rows a clear removed.
    pub(crate) fn cleared(&self, rows: Vec<Row>) -> Result<()> {
        let rows: Vec<(Scope, String, String)> = rows
            .into_iter()
            .map(|row| (row_scope(&row), row.key, row.value))
            .collect();
        self.delete_objects(&rows).map(drop)
    }
}

/// Owned arguments for a call that may outlive its caller.
fn owned(at: StateKey<'_>) -> Arc<(Scope, String)> {
    Arc::new((at.scope.to_owned(), at.key.to_string()))
}

fn borrowed(owner: &(Scope, String)) -> StateKey<'_> {
    StateKey {
        scope: owner.0.as_ref(),
        key: &owner.1,
    }
}

/// `serialize` under the limits, the reference lent as the backend made
/// it (`None`: keep the value inline). An abandoned write that ends with an
/// object deletes it at once (unless references are one per key, as in
/// plugin-api 1.x: then the object may be another write's).
fn serialize(
    calls: &Arc<Calls>,
    at: StateKey<'_>,
    write_id: WriteId,
    value: &str,
) -> std::result::Result<Option<Reference>, BackendError> {
    if calls.on_callers_thread() {
        return calls.run_here("serialize", |b| b.serialize_lent(at, write_id, value));
    }
    let owner = owned(at);
    let late_owner = owner.clone();
    let value = value.to_string();
    calls.run(
        "serialize",
        move |b| b.serialize_lent(borrowed(&owner), write_id, &value),
        move |b, result| {
            if let Ok(Some(reference)) = result
                && b.unique_references()
            {
                match b.delete_object(&reference, Some(borrowed(&late_owner))) {
                    Ok(_) => log::info!(
                        "deleted {:?}, written after its caller stopped waiting",
                        &*reference
                    ),
                    Err(e) => log::warn!(
                        "cannot delete {:?}, written after its caller stopped waiting ({e}); gc will collect it",
                        &*reference
                    ),
                }
            }
        },
    )
}

/// `deserialize` under the limits.
fn deserialize(
    calls: &Arc<Calls>,
    reference: &str,
    at: StateKey<'_>,
) -> std::result::Result<Text, BackendError> {
    if calls.on_callers_thread() {
        return calls.run_here("deserialize", |b| b.deserialize(reference, Some(at)));
    }
    let owner = owned(at);
    let reference = reference.to_string();
    calls.run_plain("deserialize", move |b| {
        b.deserialize(&reference, Some(borrowed(&owner)))
    })
}

/// The scope of a row, as backends see it.
pub(crate) fn row_scope(row: &Row) -> Scope {
    match &row.owner {
        RowOwner::Task(t) => Scope::Task(t.clone()),
        RowOwner::Asset(a) => Scope::Asset(a.clone()),
    }
}

#[cfg(test)]
mod tests;
