//! The `abi_stable` boundary of statehost-plugin-api 2.2, frozen: the types
//! a 2.2 plugin exports, with the layout (names, fields, order) they had.
//! Only the boundary is kept, not the `StateBackend` trait and its glue: a
//! test fixture implements [`AbiBackend`] on its own and exports
//! [`PluginModule`] with `#[export_root_module]`. The host must keep
//! loading and serving such a plugin for every 2.x release.
//!
//! Nothing here changes: a change would no longer test what a plugin built
//! against 2.2 looks like.

// `#[sabi_trait]` and the prefix-type derive generate impls inside consts and
// types without `Debug`.
#![allow(non_local_definitions, missing_debug_implementations, missing_docs)]

use abi_stable::{
    StableAbi,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString},
};

/// An error crossing the boundary: a stable numeric kind and the message.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct AbiError {
    pub kind: u32,
    pub message: RString,
}

/// A scope, borrowed: a task's four fields (`kind` 0), or an asset's name
/// (1) or uri (2) in `first`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiScope<'a> {
    pub kind: u8,
    pub first: RStr<'a>,
    pub run_id: RStr<'a>,
    pub task_id: RStr<'a>,
    pub map_index: i64,
}

/// A write id, as two halves.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiWriteId {
    pub high: u64,
    pub low: u64,
}

/// The scope and key a reference must belong to.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct AbiOwner<'a> {
    pub scope: AbiScope<'a>,
    pub key: RStr<'a>,
}

/// A backend instance, as seen across the boundary.
#[sabi_trait]
pub trait AbiBackend: Send + Sync {
    fn serialize(
        &self,
        scope: AbiScope<'_>,
        key: RStr<'_>,
        write_id: AbiWriteId,
        value: RStr<'_>,
    ) -> RResult<ROption<RString>, AbiError>;

    fn deserialize(
        &self,
        reference: RStr<'_>,
        owner: ROption<AbiOwner<'_>>,
    ) -> RResult<RString, AbiError>;

    fn delete_object(
        &self,
        reference: RStr<'_>,
        owner: ROption<AbiOwner<'_>>,
    ) -> RResult<bool, AbiError>;

    fn delete(&self, scope: AbiScope<'_>, key: RStr<'_>) -> RResult<(), AbiError>;

    fn clear(&self, scope: AbiScope<'_>, all_map_indices: bool) -> RResult<(), AbiError>;

    fn list(&self, request: RStr<'_>) -> RResult<RString, AbiError>;

    fn sweep(&self, older_than_unix_ms: i64) -> RResult<u64, AbiError>;

    #[sabi(last_prefix_field)]
    fn extension(&self, name: RStr<'_>, request: RStr<'_>) -> RResult<RString, AbiError>;
}

/// Receives the plugin's log records on the host side.
#[sabi_trait]
pub trait AbiLogger: Send + Sync {
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

pub type BackendObject = AbiBackend_TO<'static, RBox<()>>;
pub type LoggerObject = AbiLogger_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    pub metadata: extern "C" fn() -> RString,
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
