//! The boundary: the `abi_stable` types that cross it, and the plugin's
//! half of it (the glue that exports a [`BackendPlugin`] as those types).
//! The host's half lives in the host.
//!
//! Nothing here is part of the public API; it is reachable only through
//! `__private`, for the export macro and the host.
//!
//! # Layout rules (2.x)
//!
//! The layout of [`PluginModule`] and [`AbiBackend`] is frozen for every
//! 2.x release. Later operations travel through [`AbiBackend::extension`]
//! (a name and a JSON request, a JSON answer) and are advertised as
//! capability names in the metadata; option and context structs travel as
//! JSON. A 2.x host therefore loads every 2.y plugin.
//!
//! Not even a method appended after `extension` is allowed: `abi_stable`
//! lets a host load a library whose prefix tables are longer than the
//! host's, never shorter, so such a host would refuse every plugin built
//! before the method. The integration tests build a plugin against the
//! frozen 2.2 boundary (`compat/plugin-api-2.2`) and load a current plugin
//! through it, so a change of layout fails them.

// `#[sabi_trait]` and the prefix-type derive generate impls inside consts and
// types without `Debug`; neither is ours to change.
#![allow(non_local_definitions, missing_debug_implementations)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Once, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::{
    StableAbi,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString},
};
use serde::{Deserialize, Serialize};

use crate::scope::TaskRef;
use crate::{
    AssetIdentity, BackendError, BackendPlugin, ErrorKind, HostContext, Options, ScopeRef,
    Serialized, StateBackend, StateKey, WriteId,
};

/// An error crossing the boundary: a stable numeric kind and the message.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct AbiError {
    kind: u32,
    message: RString,
}

impl From<BackendError> for AbiError {
    fn from(e: BackendError) -> Self {
        AbiError {
            kind: e.kind().code(),
            message: e.message().into(),
        }
    }
}

impl AbiError {
    /// The error's kind (unknown codes read as [`ErrorKind::Other`]).
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_code(self.kind)
    }

    /// The error as the host sees it. The message is checked for UTF-8: a
    /// broken plugin can hand over any bytes.
    pub fn into_error(self) -> BackendError {
        let kind = self.kind();
        BackendError::new(
            kind,
            String::from_utf8_lossy(self.message.into_bytes().as_slice()).into_owned(),
        )
    }
}

const TASK: u8 = 0;
const ASSET_NAME: u8 = 1;
const ASSET_URI: u8 = 2;

/// A scope, borrowed: a task's four fields, or an asset's identity in
/// `first` (then `run_id` and `task_id` are empty).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiScope<'a> {
    kind: u8,
    first: RStr<'a>,
    run_id: RStr<'a>,
    task_id: RStr<'a>,
    map_index: i64,
}

impl<'a> From<ScopeRef<'a>> for AbiScope<'a> {
    #[inline]
    fn from(scope: ScopeRef<'a>) -> Self {
        match scope {
            ScopeRef::Task(t) => AbiScope {
                kind: TASK,
                first: t.dag_id().into(),
                run_id: t.run_id().into(),
                task_id: t.task_id().into(),
                map_index: t.map_index(),
            },
            ScopeRef::Asset(identity) => {
                let (kind, id) = match identity {
                    AssetIdentity::Name(name) => (ASSET_NAME, name),
                    AssetIdentity::Uri(uri) => (ASSET_URI, uri),
                };
                AbiScope {
                    kind,
                    first: id.into(),
                    run_id: RStr::empty(),
                    task_id: RStr::empty(),
                    map_index: -1,
                }
            }
        }
    }
}

/// A scope kind this plugin knows: what [`AbiScope::kind`] answers, and
/// what [`AbiScope::to_scope_of`] needs, so a scope is never built from a
/// kind that was not checked.
#[derive(Clone, Copy)]
enum Kind {
    Task,
    AssetName,
    AssetUri,
}

impl<'a> AbiScope<'a> {
    /// The kind, if this plugin knows it.
    ///
    /// Checked apart from building the scope, so that the scope is written
    /// once where it goes: built inside a `Result` and moved out, it was
    /// copied through the stack with loads wider than the stores that had
    /// just filled it (a stall that cost more than the rest of the
    /// conversion).
    #[inline]
    fn kind(&self) -> Result<Kind, BackendError> {
        match self.kind {
            TASK => Ok(Kind::Task),
            ASSET_NAME => Ok(Kind::AssetName),
            ASSET_URI => Ok(Kind::AssetUri),
            other => Err(unknown_scope_kind(other)),
        }
    }

    /// The scope the host sent. The host validated it, so it is rebuilt
    /// without copying or checking again.
    #[inline]
    fn to_scope(self) -> Result<ScopeRef<'a>, BackendError> {
        let kind = self.kind()?;
        Ok(self.to_scope_of(kind))
    }

    /// The scope, of the kind [`kind`](Self::kind) answered.
    #[inline]
    fn to_scope_of(self, kind: Kind) -> ScopeRef<'a> {
        match kind {
            Kind::Task => ScopeRef::Task(TaskRef::trusted(
                self.first.as_str(),
                self.run_id.as_str(),
                self.task_id.as_str(),
                self.map_index,
            )),
            Kind::AssetName => ScopeRef::Asset(AssetIdentity::Name(self.first.as_str())),
            Kind::AssetUri => ScopeRef::Asset(AssetIdentity::Uri(self.first.as_str())),
        }
    }
}

#[cold]
fn unknown_scope_kind(kind: u8) -> BackendError {
    BackendError::invalid_input(format!(
        "unknown scope kind {kind} (a host newer than this plugin?)"
    ))
}

/// A write id, as two halves.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiWriteId {
    high: u64,
    low: u64,
}

impl From<WriteId> for AbiWriteId {
    #[inline]
    fn from(id: WriteId) -> Self {
        let bits = id.as_u128();
        AbiWriteId {
            high: (bits >> 64) as u64,
            low: bits as u64,
        }
    }
}

impl AbiWriteId {
    #[inline]
    fn to_write_id(self) -> Result<WriteId, BackendError> {
        match WriteId::from_u128((u128::from(self.high) << 64) | u128::from(self.low)) {
            Some(id) => Ok(id),
            None => Err(not_a_write_id()),
        }
    }
}

#[cold]
fn not_a_write_id() -> BackendError {
    BackendError::invalid_input("the host sent a write id that is not a UUIDv7")
}

/// The scope and key a reference must belong to, when the host knows them.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiOwner<'a> {
    scope: AbiScope<'a>,
    key: RStr<'a>,
}

impl<'a> From<StateKey<'a>> for AbiOwner<'a> {
    #[inline]
    fn from(at: StateKey<'a>) -> Self {
        AbiOwner {
            scope: at.scope.into(),
            key: at.key.into(),
        }
    }
}

/// The kind of the owner's scope, if there is an owner (see
/// [`AbiScope::kind`]).
#[inline]
fn owner_kind(owner: &ROption<AbiOwner<'_>>) -> Result<Option<Kind>, BackendError> {
    match owner {
        ROption::RSome(o) => o.scope.kind().map(Some),
        ROption::RNone => Ok(None),
    }
}

/// The owner, with the kind [`owner_kind`] answered for it.
#[inline]
fn owner_of(owner: ROption<AbiOwner<'_>>, kind: Option<Kind>) -> Option<StateKey<'_>> {
    match (owner, kind) {
        (ROption::RSome(o), Some(kind)) => Some(StateKey {
            scope: o.scope.to_scope_of(kind),
            key: o.key.as_str(),
        }),
        _ => None,
    }
}

/// A backend instance, as seen across the boundary.
#[sabi_trait]
pub trait AbiBackend: Send + Sync {
    /// `RNone` means "keep inline".
    fn serialize(
        &self,
        scope: AbiScope<'_>,
        key: RStr<'_>,
        write_id: AbiWriteId,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError>;

    /// The value at `reference`, in the plugin's buffer.
    fn deserialize(
        &self,
        reference: RStr<'_>,
        owner: ROption<AbiOwner<'_>>,
    ) -> RResult<RString, AbiError>;

    /// Deletes the object at `reference`; whether it was there.
    fn delete_object(
        &self,
        reference: RStr<'_>,
        owner: ROption<AbiOwner<'_>>,
    ) -> RResult<bool, AbiError>;

    /// Deletes every object of one key.
    fn delete(&self, scope: AbiScope<'_>, key: RStr<'_>) -> RResult<(), AbiError>;

    /// Deletes every object of a scope.
    fn clear(&self, scope: AbiScope<'_>, all_map_indices: bool) -> RResult<(), AbiError>;

    /// JSON [`ListRequest`] in, JSON `Vec<WireObject>` out.
    fn list(&self, request: RStr<'_>) -> RResult<RString, AbiError>;

    /// Leftovers older than this many ms since the epoch go; answers how
    /// many went.
    fn sweep(&self, older_than_unix_ms: i64) -> RResult<u64, AbiError>;

    /// Operations added after 2.0: a name and a JSON request. A plugin
    /// answers an [`ErrorKind::Unsupported`] error for names it does not know.
    #[sabi(last_prefix_field)]
    fn extension(&self, name: RStr<'_>, request: RStr<'_>) -> RResult<RString, AbiError>;
}

/// Receives the plugin's log records on the host side.
#[sabi_trait]
pub trait AbiLogger: Send + Sync {
    /// `level` is `log::Level as u8` (1 = error ... 5 = trace).
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

/// The boxed backend trait object.
pub type BackendObject = AbiBackend_TO<'static, RBox<()>>;
/// The boxed logger trait object.
pub type LoggerObject = AbiLogger_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin's [`Metadata`](crate::Metadata) as JSON.
    pub metadata: extern "C" fn() -> RString,
    /// Constructs a backend from options JSON and host-context JSON.
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn(
        options: RStr<'_>,
        host: RStr<'_>,
        logger: LoggerObject,
    ) -> RResult<BackendObject, AbiError>,
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "statehost_plugin";
    const NAME: &'static str = "statehost_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The name of the symbol a plugin exports; must equal
/// `abi_stable::library::ROOT_MODULE_LOADER_NAME` (checked at compile time in
/// every plugin, see `export_backend!`).
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

const _: () = assert!(
    const_str_eq(
        abi_stable::library::ROOT_MODULE_LOADER_NAME,
        ROOT_MODULE_SYMBOL
    ),
    "abi_stable changed the name of its root module symbol; update ROOT_MODULE_SYMBOL and export_backend!"
);

/// `a == b` in a const context.
pub const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The host context, as it travels.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct WireHostContext {
    /// Directory of the configuration file.
    #[serde(default)]
    pub config_dir: Option<String>,
    /// Most verbose level the host will print (`"off"` ... `"trace"`).
    #[serde(default)]
    pub max_level: Option<String>,
    /// Options whose (text) value an environment variable set: option key
    /// to variable name. Since 2.1; older plugins ignore it and get the
    /// text as a string.
    #[serde(default)]
    pub env_keys: std::collections::BTreeMap<String, String>,
}

/// What `list` is asked for.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ListRequest {
    /// `None` lists everything.
    pub scope: Option<WireScope>,
}

/// A scope, as it travels in JSON.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireScope {
    /// Task state.
    Task {
        /// dag id
        dag_id: String,
        /// run id
        run_id: String,
        /// task id
        task_id: String,
        /// map index
        map_index: i64,
    },
    /// Asset state, by name.
    AssetName {
        /// the asset's name
        name: String,
    },
    /// Asset state, by uri.
    AssetUri {
        /// the asset's uri
        uri: String,
    },
}

impl From<ScopeRef<'_>> for WireScope {
    fn from(s: ScopeRef<'_>) -> Self {
        match s {
            ScopeRef::Task(t) => WireScope::Task {
                dag_id: t.dag_id().into(),
                run_id: t.run_id().into(),
                task_id: t.task_id().into(),
                map_index: t.map_index(),
            },
            ScopeRef::Asset(AssetIdentity::Name(name)) => {
                WireScope::AssetName { name: name.into() }
            }
            ScopeRef::Asset(AssetIdentity::Uri(uri)) => WireScope::AssetUri { uri: uri.into() },
        }
    }
}

impl WireScope {
    fn as_scope(&self) -> ScopeRef<'_> {
        match self {
            WireScope::Task {
                dag_id,
                run_id,
                task_id,
                map_index,
            } => ScopeRef::Task(TaskRef::trusted(dag_id, run_id, task_id, *map_index)),
            WireScope::AssetName { name } => ScopeRef::Asset(AssetIdentity::Name(name)),
            WireScope::AssetUri { uri } => ScopeRef::Asset(AssetIdentity::Uri(uri)),
        }
    }
}

/// A listed object, as it travels in JSON.
#[derive(Serialize, Deserialize, Debug)]
pub struct WireObject {
    /// The reference that reads it.
    pub reference: String,
    /// Its write id, in text form.
    #[serde(default)]
    pub write_id: Option<String>,
    /// Last modified, ms since the epoch.
    #[serde(default)]
    pub modified_unix_ms: Option<i64>,
}

/// Milliseconds since the epoch, for the wire.
pub fn unix_ms(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// The time `ms` milliseconds after the epoch.
pub fn from_unix_ms(ms: i64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))
}

// ---------------------------------------------------------------------------
// Plugin side
// ---------------------------------------------------------------------------

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Runs `f`, turning a panic into a [`ErrorKind::Panicked`] error: unwinding
/// across the boundary would abort the host. The answer is written once,
/// in place, inside the guarded call: passed back through `catch_unwind`'s
/// result it would be copied twice more, and those copies (a wide load of
/// a tag just stored as a byte) cost more than the rest of the call.
#[inline]
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> RResult<T, AbiError> {
    let mut answer = std::mem::MaybeUninit::<RResult<T, AbiError>>::uninit();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        answer.write(match f() {
            Ok(v) => RResult::ROk(v),
            Err(e) => RResult::RErr(e.into()),
        });
    }));
    match caught {
        // SAFETY: the closure returned, so its last statement wrote `answer`.
        Ok(()) => unsafe { answer.assume_init() },
        Err(payload) => panicked(what, &*payload),
    }
}

#[cold]
fn panicked<T>(what: &str, payload: &(dyn std::any::Any + Send)) -> RResult<T, AbiError> {
    RResult::RErr(
        BackendError::new(
            ErrorKind::Panicked,
            format!("the plugin panicked in {what}: {}", panic_message(payload)),
        )
        .into(),
    )
}

/// Wraps a backend for export.
struct Exported<B>(B);

impl<B: StateBackend> AbiBackend for Exported<B> {
    fn serialize(
        &self,
        scope: AbiScope<'_>,
        key: RStr<'_>,
        write_id: AbiWriteId,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError> {
        guarded("serialize", || {
            let kind = scope.kind()?;
            let at = StateKey {
                scope: scope.to_scope_of(kind),
                key: key.as_str(),
            };
            Ok(
                match self
                    .0
                    .serialize(at, write_id.to_write_id()?, value.as_str())?
                {
                    // Hands the plugin's buffer over as it is: no copy.
                    Serialized::Reference(r) => ROption::RSome(r.into()),
                    Serialized::Inline => ROption::RNone,
                },
            )
        })
    }

    fn deserialize(
        &self,
        reference: RStr<'_>,
        owner_: ROption<AbiOwner<'_>>,
    ) -> RResult<RString, AbiError> {
        guarded("deserialize", || {
            let kind = owner_kind(&owner_)?;
            self.0
                .deserialize(reference.as_str(), owner_of(owner_, kind))
                .map(RString::from)
        })
    }

    fn delete_object(
        &self,
        reference: RStr<'_>,
        owner_: ROption<AbiOwner<'_>>,
    ) -> RResult<bool, AbiError> {
        guarded("delete_object", || {
            let kind = owner_kind(&owner_)?;
            self.0
                .delete_object(reference.as_str(), owner_of(owner_, kind))
        })
    }

    fn delete(&self, scope: AbiScope<'_>, key: RStr<'_>) -> RResult<(), AbiError> {
        guarded("delete", || {
            self.0.delete(StateKey {
                scope: scope.to_scope()?,
                key: key.as_str(),
            })
        })
    }

    fn clear(&self, scope: AbiScope<'_>, all_map_indices: bool) -> RResult<(), AbiError> {
        guarded("clear", || self.0.clear(scope.to_scope()?, all_map_indices))
    }

    fn list(&self, request: RStr<'_>) -> RResult<RString, AbiError> {
        guarded("list", || {
            let request: ListRequest = serde_json::from_str(request.as_str())
                .map_err(|e| BackendError::invalid_input(format!("bad list request: {e}")))?;
            let objects = self
                .0
                .list(request.scope.as_ref().map(WireScope::as_scope))?;
            let wire: Vec<WireObject> = objects
                .into_iter()
                .map(|o| WireObject {
                    reference: o.reference,
                    write_id: o.write_id.map(|w| w.to_string()),
                    modified_unix_ms: o.modified.and_then(unix_ms),
                })
                .collect();
            serde_json::to_string(&wire)
                .map(RString::from)
                .map_err(|e| BackendError::other(format!("cannot encode the listing: {e}")))
        })
    }

    fn sweep(&self, older_than_unix_ms: i64) -> RResult<u64, AbiError> {
        guarded("sweep", || {
            let older_than = from_unix_ms(older_than_unix_ms).unwrap_or(UNIX_EPOCH);
            self.0.sweep(older_than).map(|n| n as u64)
        })
    }

    fn extension(&self, name: RStr<'_>, _request: RStr<'_>) -> RResult<RString, AbiError> {
        RResult::RErr(
            BackendError::unsupported(format!(
                "this plugin (plugin-api {}) has no operation `{}`",
                env!("CARGO_PKG_VERSION"),
                name.as_str()
            ))
            .into(),
        )
    }
}

/// The plugin's half of logging: `log` records go to the host's logger.
struct ForwardLogger;

static HOST_LOGGER: RwLock<Option<LoggerObject>> = RwLock::new(None);

/// The plugin crate's own module path: its records are forwarded at every
/// level, its dependencies' only from warnings up (their debug output can
/// quote requests, with credentials in them).
static PLUGIN_CRATE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn forwarded(record: &log::Metadata<'_>) -> bool {
    if record.level() <= log::Level::Warn {
        return true;
    }
    let own = PLUGIN_CRATE.get().copied().unwrap_or_default();
    let target = record.target();
    !own.is_empty()
        && target.starts_with(own)
        && target[own.len()..].chars().next().is_none_or(|c| c == ':')
}

impl log::Log for ForwardLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && forwarded(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Ok(guard) = HOST_LOGGER.read()
            && let Some(logger) = guard.as_ref()
        {
            let message = record.args().to_string();
            logger.log(
                record.level() as u8,
                record.target().into(),
                message.as_str().into(),
            );
        }
    }

    fn flush(&self) {}
}

fn install_logging(logger: LoggerObject, max_level: Option<&str>) {
    static INSTALL: Once = Once::new();
    if let Ok(mut slot) = HOST_LOGGER.write() {
        *slot = Some(logger);
    }
    INSTALL.call_once(|| {
        let _ = log::set_logger(&ForwardLogger);
        // Panics are reported as errors by `guarded`; keep the default hook
        // from printing them on the host's stderr, and leave the details to
        // the debug log.
        std::panic::set_hook(Box::new(|info| {
            log::debug!(target: "panic", "{info}");
        }));
    });
    let level = max_level
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(level);
}

/// The root module of plugin `B`; `metadata` is generated by the export
/// macro in the plugin's crate so that it carries that crate's metadata, and
/// `crate_path` is that crate's `module_path!()`.
pub fn plugin_module<B: BackendPlugin>(
    metadata: extern "C" fn() -> RString,
    crate_path: &'static str,
) -> PluginModuleRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    let _ = PLUGIN_CRATE.set(crate_path);
    PluginModule {
        metadata,
        new_backend: new_backend::<B>,
    }
    .leak_into_prefix()
}

/// The plugin's metadata as JSON, for the boundary, decoded from the bytes
/// of its metadata section: what a load reports is what a listing reads.
pub fn metadata_json(section: &[u8]) -> RString {
    let json = catch_unwind(|| {
        crate::section::decode(section)
            .ok()
            .and_then(|m| serde_json::to_string(&m).ok())
            .unwrap_or_default()
    });
    json.unwrap_or_default().into()
}

extern "C" fn new_backend<B: BackendPlugin>(
    options: RStr<'_>,
    host: RStr<'_>,
    logger: LoggerObject,
) -> RResult<BackendObject, AbiError> {
    guarded("new", || {
        let wire: WireHostContext = serde_json::from_str(host.as_str()).unwrap_or_default();
        install_logging(logger, wire.max_level.as_deref());
        let context = HostContext {
            config_dir: wire.config_dir.map(Into::into),
        };
        let mut options = Options::from_json(options.as_str())?.with_secret(B::SECRET_OPTIONS);
        options.mark_env(wire.env_keys);
        let backend = B::new(&options, &context)?;
        Ok(AbiBackend_TO::from_value(
            Exported(backend),
            abi_stable::sabi_trait::TD_Opaque,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AssetScope, TaskScope};

    /// Answers with what it was given, spelled out; what the calls that
    /// answer nothing were given is kept in `last`.
    #[derive(Default)]
    struct Echo {
        last: std::sync::Mutex<String>,
    }

    impl Echo {
        fn keep(&self, what: String) {
            *self.last.lock().unwrap() = what;
        }
    }

    impl StateBackend for Echo {
        fn serialize(
            &self,
            at: StateKey<'_>,
            _write_id: WriteId,
            _value: &str,
        ) -> Result<Serialized, BackendError> {
            Ok(Serialized::Reference(format!("{at:?}")))
        }
        fn deserialize(
            &self,
            _reference: &str,
            owner: Option<StateKey<'_>>,
        ) -> Result<String, BackendError> {
            Ok(format!("{owner:?}"))
        }
        fn delete_object(
            &self,
            _reference: &str,
            owner: Option<StateKey<'_>>,
        ) -> Result<bool, BackendError> {
            self.keep(format!("{owner:?}"));
            Ok(owner.is_some())
        }
        fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
            self.keep(format!("{at:?}"));
            Ok(())
        }
        fn clear(&self, scope: ScopeRef<'_>, _all_map_indices: bool) -> Result<(), BackendError> {
            self.keep(format!("{scope:?}"));
            Ok(())
        }
    }

    fn ok<T>(answer: RResult<T, AbiError>) -> T {
        match answer {
            RResult::ROk(v) => v,
            RResult::RErr(e) => panic!("{}", e.into_error()),
        }
    }

    fn unknown_kind<T>(answer: RResult<T, AbiError>) {
        match answer {
            RResult::ROk(_) => panic!("a scope of kind 7 was taken for a known one"),
            RResult::RErr(e) => {
                let e = e.into_error();
                assert_eq!(e.kind(), ErrorKind::InvalidInput);
                assert!(e.message().contains("unknown scope kind 7"), "{e}");
            }
        }
    }

    /// Every kind of scope crosses as it was sent, in the owner of a read
    /// or a delete and in the scope of a write; a kind this plugin does not
    /// know is refused, never read as another.
    #[test]
    fn scopes_cross_the_glue_as_sent_and_unknown_kinds_are_refused() {
        let task = TaskScope::new("dag", "run", "task", 3).unwrap();
        let named = AssetScope::by_name("orders").unwrap();
        let located = AssetScope::by_uri("s3://bucket/orders").unwrap();
        let keys = [
            StateKey::task(&task, "k1"),
            StateKey::asset(&named, "k2"),
            StateKey::asset(&located, "k3"),
        ];
        let backend = Exported(Echo::default());
        let last = || backend.0.last.lock().unwrap().clone();
        let id = AbiWriteId::from(WriteId::from_parts(1, 1));
        for at in keys {
            let read = ok(backend.deserialize("r".into(), ROption::RSome(at.into())));
            assert_eq!(read.as_str(), format!("{:?}", Some(at)));
            assert!(ok(
                backend.delete_object("r".into(), ROption::RSome(at.into()))
            ));
            assert_eq!(last(), format!("{:?}", Some(at)));
            ok(backend.delete(at.scope.into(), at.key.into()));
            assert_eq!(last(), format!("{at:?}"));
            ok(backend.clear(at.scope.into(), false));
            assert_eq!(last(), format!("{:?}", at.scope));
            let written = ok(backend.serialize(at.scope.into(), at.key.into(), id, "1".into()));
            assert_eq!(written.unwrap().as_str(), format!("{at:?}"));

            let mut owner = AbiOwner::from(at);
            owner.scope.kind = 7;
            unknown_kind(backend.deserialize("r".into(), ROption::RSome(owner)));
            unknown_kind(backend.delete_object("r".into(), ROption::RSome(owner)));
            unknown_kind(backend.serialize(owner.scope, at.key.into(), id, "1".into()));
            unknown_kind(backend.delete(owner.scope, at.key.into()));
            unknown_kind(backend.clear(owner.scope, true));
        }
        let none = ok(backend.deserialize("r".into(), ROption::RNone));
        assert_eq!(none.as_str(), "None");
        assert!(!ok(backend.delete_object("r".into(), ROption::RNone)));
    }
}
