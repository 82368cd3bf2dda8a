//! The ABI layer: `abi_stable` types that cross the plugin boundary and the
//! glue that turns a [`BackendPlugin`] into them (plugin side). The host's
//! half lives in the host.
//!
//! Nothing here is part of the public API; it is reachable only through
//! `__private` for the export macro and the host.
//!
//! # Layout rules (v1)
//!
//! The layout of [`PluginModule`] and [`AbiBackend`] is frozen for every
//! 1.x release. Later operations travel through [`AbiBackend::extension`]
//! (a name and a JSON request, a JSON answer) and are advertised as
//! capability names in the metadata JSON; option and context structs travel
//! as JSON. A 1.x host therefore loads every 1.y plugin, whichever is newer.

// `#[sabi_trait]` and the prefix-type derive generate impls inside consts and
// types without `Debug`; neither is ours to change.
#![allow(non_local_definitions, missing_debug_implementations)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Once, RwLock};

use abi_stable::{
    StableAbi,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString},
};
use serde::{Deserialize, Serialize};

use crate::{
    AssetScope, BackendError, BackendPlugin, ErrorKind, HostContext, Metadata, Options, Scope,
    Serialized, StateBackend, TaskScope,
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

impl From<AbiError> for BackendError {
    fn from(e: AbiError) -> Self {
        BackendError::new(
            ErrorKind::from_code(e.kind),
            String::from_utf8_lossy(e.message.into_bytes().as_slice()).into_owned(),
        )
    }
}

/// A task scope, borrowed.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiTaskScope<'a> {
    dag_id: RStr<'a>,
    run_id: RStr<'a>,
    task_id: RStr<'a>,
    map_index: i64,
}

impl<'a> From<&'a TaskScope> for AbiTaskScope<'a> {
    fn from(s: &'a TaskScope) -> Self {
        AbiTaskScope {
            dag_id: s.dag_id().into(),
            run_id: s.run_id().into(),
            task_id: s.task_id().into(),
            map_index: s.map_index(),
        }
    }
}

impl AbiTaskScope<'_> {
    fn to_scope(self) -> Result<TaskScope, BackendError> {
        TaskScope::new(
            self.dag_id.as_str(),
            self.run_id.as_str(),
            self.task_id.as_str(),
            self.map_index,
        )
    }
}

/// An asset scope, borrowed.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiAssetScope<'a> {
    name: ROption<RStr<'a>>,
    uri: ROption<RStr<'a>>,
}

impl<'a> From<&'a AssetScope> for AbiAssetScope<'a> {
    fn from(s: &'a AssetScope) -> Self {
        AbiAssetScope {
            name: s.name().map(RStr::from).into(),
            uri: s.uri().map(RStr::from).into(),
        }
    }
}

impl AbiAssetScope<'_> {
    fn to_scope(self) -> Result<AssetScope, BackendError> {
        AssetScope::new(
            self.name.into_option().map(|s| s.as_str().to_owned()),
            self.uri.into_option().map(|s| s.as_str().to_owned()),
        )
    }
}

/// A backend instance, as seen across the boundary.
#[sabi_trait]
pub trait AbiBackend: Send + Sync {
    /// `RNone` means "keep inline".
    fn serialize_task_state(
        &self,
        scope: AbiTaskScope<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError>;

    fn deserialize_task_state(&self, reference: RStr<'_>) -> RResult<RString, AbiError>;

    fn serialize_asset_state(
        &self,
        scope: AbiAssetScope<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError>;

    fn deserialize_asset_state(&self, reference: RStr<'_>) -> RResult<RString, AbiError>;

    fn delete_task_state(&self, scope: AbiTaskScope<'_>, key: RStr<'_>) -> RResult<(), AbiError>;

    fn delete_asset_state(&self, scope: AbiAssetScope<'_>, key: RStr<'_>) -> RResult<(), AbiError>;

    fn clear_task_state(
        &self,
        scope: AbiTaskScope<'_>,
        all_map_indices: bool,
    ) -> RResult<(), AbiError>;

    fn clear_asset_state(&self, scope: AbiAssetScope<'_>) -> RResult<(), AbiError>;

    /// JSON [`ListRequest`] in, JSON `Vec<WireObject>` out.
    fn list(&self, request: RStr<'_>) -> RResult<RString, AbiError>;

    /// Operations added after 1.0: a name and a JSON request. A plugin
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
    /// The plugin's [`Metadata`] as JSON.
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
}

/// What `list` is asked for.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ListRequest {
    /// `None` lists everything.
    pub scope: Option<WireScope>,
}

/// A scope, as it travels in JSON.
#[derive(Serialize, Deserialize, Debug, Clone)]
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
    /// Asset state.
    Asset {
        /// name
        name: Option<String>,
        /// uri
        uri: Option<String>,
    },
}

impl From<&Scope> for WireScope {
    fn from(s: &Scope) -> Self {
        match s {
            Scope::Task(t) => WireScope::Task {
                dag_id: t.dag_id().into(),
                run_id: t.run_id().into(),
                task_id: t.task_id().into(),
                map_index: t.map_index(),
            },
            Scope::Asset(a) => WireScope::Asset {
                name: a.name().map(Into::into),
                uri: a.uri().map(Into::into),
            },
        }
    }
}

impl WireScope {
    fn into_scope(self) -> Result<Scope, BackendError> {
        Ok(match self {
            WireScope::Task {
                dag_id,
                run_id,
                task_id,
                map_index,
            } => Scope::Task(TaskScope::new(dag_id, run_id, task_id, map_index)?),
            WireScope::Asset { name, uri } => Scope::Asset(AssetScope::new(name, uri)?),
        })
    }
}

/// The extension operation that removes leftovers of interrupted writes.
pub const SWEEP: &str = "sweep";

/// The request of [`SWEEP`].
#[derive(Serialize, Deserialize, Debug)]
pub struct SweepRequest {
    /// Leftovers last touched before this time (ms since the epoch) go.
    pub older_than_unix_ms: i64,
}

/// A listed object, as it travels in JSON.
#[derive(Serialize, Deserialize, Debug)]
pub struct WireObject {
    scope: WireScope,
    key: String,
    reference: String,
    #[serde(default)]
    modified_unix_ms: Option<i64>,
}

fn ms_since_epoch(t: std::time::SystemTime) -> Option<i64> {
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

fn from_ms(ms: i64) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(u64::try_from(ms).ok()?))
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
/// across the boundary would abort the host.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> RResult<T, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => RResult::RErr(
            BackendError::new(
                ErrorKind::Panicked,
                format!(
                    "the plugin panicked in {what}: {}",
                    panic_message(&*payload)
                ),
            )
            .into(),
        ),
    }
}

fn serialized(s: Serialized) -> ROption<RString> {
    match s {
        Serialized::Reference(r) => ROption::RSome(r.into()),
        Serialized::Inline => ROption::RNone,
    }
}

/// Wraps a backend for export.
struct Exported<B>(B);

impl<B: StateBackend> AbiBackend for Exported<B> {
    fn serialize_task_state(
        &self,
        scope: AbiTaskScope<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError> {
        guarded("serialize_task_state", || {
            let scope = scope.to_scope()?;
            self.0
                .serialize_task_state(&scope, key.as_str(), value.as_str())
                .map(serialized)
        })
    }

    fn deserialize_task_state(&self, reference: RStr<'_>) -> RResult<RString, AbiError> {
        guarded("deserialize_task_state", || {
            self.0
                .deserialize_task_state(reference.as_str())
                .map(RString::from)
        })
    }

    fn serialize_asset_state(
        &self,
        scope: AbiAssetScope<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError> {
        guarded("serialize_asset_state", || {
            let scope = scope.to_scope()?;
            self.0
                .serialize_asset_state(&scope, key.as_str(), value.as_str())
                .map(serialized)
        })
    }

    fn deserialize_asset_state(&self, reference: RStr<'_>) -> RResult<RString, AbiError> {
        guarded("deserialize_asset_state", || {
            self.0
                .deserialize_asset_state(reference.as_str())
                .map(RString::from)
        })
    }

    fn delete_task_state(&self, scope: AbiTaskScope<'_>, key: RStr<'_>) -> RResult<(), AbiError> {
        guarded("delete", || {
            self.0.delete(&Scope::Task(scope.to_scope()?), key.as_str())
        })
    }

    fn delete_asset_state(&self, scope: AbiAssetScope<'_>, key: RStr<'_>) -> RResult<(), AbiError> {
        guarded("delete", || {
            self.0
                .delete(&Scope::Asset(scope.to_scope()?), key.as_str())
        })
    }

    fn clear_task_state(
        &self,
        scope: AbiTaskScope<'_>,
        all_map_indices: bool,
    ) -> RResult<(), AbiError> {
        guarded("clear", || {
            self.0
                .clear(&Scope::Task(scope.to_scope()?), all_map_indices)
        })
    }

    fn clear_asset_state(&self, scope: AbiAssetScope<'_>) -> RResult<(), AbiError> {
        guarded("clear", || {
            self.0.clear(&Scope::Asset(scope.to_scope()?), false)
        })
    }

    fn list(&self, request: RStr<'_>) -> RResult<RString, AbiError> {
        guarded("list", || {
            let request: ListRequest = serde_json::from_str(request.as_str())
                .map_err(|e| BackendError::invalid_input(format!("bad list request: {e}")))?;
            let scope = request.scope.map(WireScope::into_scope).transpose()?;
            let objects = self.0.list(scope.as_ref())?;
            let wire: Vec<WireObject> = objects
                .into_iter()
                .map(|o| WireObject {
                    scope: WireScope::from(&o.scope),
                    key: o.key,
                    reference: o.reference,
                    modified_unix_ms: o.modified.and_then(ms_since_epoch),
                })
                .collect();
            serde_json::to_string(&wire)
                .map(RString::from)
                .map_err(|e| BackendError::other(format!("cannot encode the listing: {e}")))
        })
    }

    fn extension(&self, name: RStr<'_>, request: RStr<'_>) -> RResult<RString, AbiError> {
        match name.as_str() {
            SWEEP => guarded("sweep", || {
                let request: SweepRequest = serde_json::from_str(request.as_str())
                    .map_err(|e| BackendError::invalid_input(format!("bad sweep request: {e}")))?;
                let older_than =
                    from_ms(request.older_than_unix_ms).unwrap_or(std::time::UNIX_EPOCH);
                let removed = self.0.sweep(older_than)?;
                Ok(serde_json::json!({ "removed": removed }).to_string().into())
            }),
            other => RResult::RErr(
                BackendError::unsupported(format!(
                    "this plugin (plugin-api {}) has no operation `{other}`",
                    env!("CARGO_PKG_VERSION")
                ))
                .into(),
            ),
        }
    }
}

/// The plugin's half of logging: `log` records go to the host's logger.
struct ForwardLogger;

static HOST_LOGGER: RwLock<Option<LoggerObject>> = RwLock::new(None);

impl log::Log for ForwardLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
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
/// macro in the plugin's crate so that it carries that crate's version.
pub fn plugin_module<B: BackendPlugin>(metadata: extern "C" fn() -> RString) -> PluginModuleRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    PluginModule {
        metadata,
        new_backend: new_backend::<B>,
    }
    .leak_into_prefix()
}

/// The metadata of plugin `B`, whose crate has version `version`.
pub fn metadata<B: BackendPlugin>(version: &str) -> Metadata {
    Metadata {
        name: B::NAME.to_string(),
        version: version.to_string(),
        plugin_api_version: env!("CARGO_PKG_VERSION").to_string(),
        description: B::DESCRIPTION.to_string(),
        capabilities: B::CAPABILITIES.names(),
    }
}

/// The metadata of plugin `B` as JSON, for the boundary.
pub fn metadata_json<B: BackendPlugin>(version: &str) -> RString {
    let json = catch_unwind(|| serde_json::to_string(&metadata::<B>(version)).unwrap_or_default());
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
        let options = Options::from_json(options.as_str())?;
        let backend = B::new(&options, &context)?;
        Ok(AbiBackend_TO::from_value(
            Exported(backend),
            abi_stable::sabi_trait::TD_Opaque,
        ))
    })
}
