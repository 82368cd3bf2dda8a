//! `statehost-plugin-api` 1.0, frozen.
//!
//! This is the plugin interface as version 1.0.0 shipped it, kept so that
//! the host can still load plugins built against it (it declares the 1.0
//! boundary types, which the host's layout check compares with a plugin's)
//! and so that the tests can build such a plugin. It is not developed any
//! further: new backends are written against the current
//! `statehost-plugin-api` (2.x), whose references are unique per write.
//! Compared with the published 1.0.0 source, only the conformance suite,
//! the unit tests and the host's half of the boundary (now in the host)
//! are left out; every type that crosses the boundary is unchanged.

mod abi;
mod context;
mod error;
mod export;
pub mod layout;
mod metadata;
mod scope;

pub use context::{HostContext, Options};
pub use error::{BackendError, ErrorKind};
pub use metadata::{Capabilities, Metadata};
pub use scope::{
    AssetIdentity, AssetScope, MAX_ASSET_BYTES, MAX_ID_BYTES, MAX_KEY_BYTES, Scope, TaskScope,
    validate_key,
};

/// The version of this crate, which is the plugin ABI version.
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a backend answers to a serialize call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serialized {
    /// The value was stored; this reference reads it back. The host stores
    /// it wrapped in the envelope.
    Reference(String),
    /// The backend declines to store this value (for example because it is
    /// small); the host keeps the plain JSON in its database.
    Inline,
}

/// One object a backend holds, as reported by [`StateBackend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The scope the object belongs to.
    pub scope: Scope,
    /// The key within the scope.
    pub key: String,
    /// The reference that reads it back.
    pub reference: String,
    /// When it was last written, if the storage knows.
    pub modified: Option<std::time::SystemTime>,
}

/// The operations of a state backend.
///
/// Values cross this trait as JSON text: `value` is always valid JSON and
/// never `null`, and what deserialize returns must be valid JSON (the host
/// checks). The host validates scopes and keys before calling (see
/// [`validate_key`]), and never hands a backend the envelope itself.
///
/// Every method may be called from several threads at once.
pub trait StateBackend: Send + Sync {
    /// Stores the value of `key` in a task's scope, replacing any previous
    /// value, and returns its reference; or declines with
    /// [`Serialized::Inline`]. Either the whole value is stored or the call
    /// fails: a reader never sees part of a value.
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError>;

    /// Reads back a value stored by [`serialize_task_state`]. A reference to
    /// nothing is an [`ErrorKind::NotFound`] error. The reference comes from
    /// the metadata database and may have been tampered with: it must never
    /// lead outside the backend's storage.
    ///
    /// [`serialize_task_state`]: StateBackend::serialize_task_state
    fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError>;

    /// As [`serialize_task_state`](StateBackend::serialize_task_state), for an
    /// asset's scope.
    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError>;

    /// As [`deserialize_task_state`](StateBackend::deserialize_task_state), for
    /// asset state.
    fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError>;

    /// Removes the value of `key` in `scope`. Removing a missing key succeeds.
    fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError>;

    /// Removes every value in `scope`. For a task scope with
    /// `all_map_indices`, removes the values of every map index of that task
    /// (same dag, run and task); otherwise only the scope's own map index.
    /// `all_map_indices` means nothing for asset scopes. Idempotent.
    fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError>;

    /// Reads a task-state value and lends its JSON text, as bytes, to
    /// `visit`, for callers that only parse it. The bytes are not
    /// guaranteed to be UTF-8 when they come from a plugin: parse them with
    /// `serde_json::from_slice`, which checks. The default calls
    /// [`deserialize_task_state`](StateBackend::deserialize_task_state); a
    /// backend loaded from a plugin overrides it so that a value made in the
    /// plugin is read where it lies instead of being copied into the host's
    /// allocator first (for large values the copy, not the read, dominates).
    /// Backends rarely need to implement it.
    fn visit_task_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        visit(self.deserialize_task_state(reference)?.as_bytes());
        Ok(())
    }

    /// As [`visit_task_state`](StateBackend::visit_task_state), for asset
    /// state.
    fn visit_asset_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        visit(self.deserialize_asset_state(reference)?.as_bytes());
        Ok(())
    }

    /// Removes what interrupted writes left behind (temporary files, partial
    /// uploads) that was last touched before `older_than`, and says how many
    /// it removed. Optional (declare it with
    /// [`Capabilities::with_sweep`]); the host's garbage collector calls it
    /// with a grace period, so writes in progress are left alone.
    ///
    /// Added in plugin-api 1.0 through the extension entry point, as every
    /// later operation will be: a host that asks a plugin without it gets
    /// nothing removed, not an error.
    fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        let _ = older_than;
        Ok(0)
    }

    /// The objects the backend holds in `scope` (every scope when `None`).
    /// Optional: backends that implement it declare
    /// [`Capabilities::LIST`]; the host's garbage collector uses it to find
    /// objects no row references.
    fn list(&self, scope: Option<&Scope>) -> Result<Vec<StoredObject>, BackendError> {
        let _ = scope;
        Err(BackendError::unsupported(
            "this backend cannot list what it stores",
        ))
    }
}

impl<B: StateBackend + ?Sized> StateBackend for std::sync::Arc<B> {
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        (**self).serialize_task_state(scope, key, value)
    }
    fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError> {
        (**self).deserialize_task_state(reference)
    }
    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        (**self).serialize_asset_state(scope, key, value)
    }
    fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError> {
        (**self).deserialize_asset_state(reference)
    }
    fn visit_task_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        (**self).visit_task_state(reference, visit)
    }
    fn visit_asset_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        (**self).visit_asset_state(reference, visit)
    }
    fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError> {
        (**self).delete(scope, key)
    }
    fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError> {
        (**self).clear(scope, all_map_indices)
    }
    fn list(&self, scope: Option<&Scope>) -> Result<Vec<StoredObject>, BackendError> {
        (**self).list(scope)
    }
    fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        (**self).sweep(older_than)
    }
}

/// A backend that can be exported from a plugin: its name, description,
/// capabilities and constructor.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a statehost backend plugin",
    note = "implement `statehost_plugin_api::BackendPlugin` (and `StateBackend`) for `{Self}`, then call `export_backend!({Self});`"
)]
pub trait BackendPlugin: StateBackend + Sized + 'static {
    /// The name operators select it by: `[a-z0-9_]+`, and the library must
    /// be called `libstatehost_<NAME>.so`.
    const NAME: &'static str;
    /// One line on what it stores and where.
    const DESCRIPTION: &'static str;
    /// Optional operations it implements.
    const CAPABILITIES: Capabilities = Capabilities::NONE;

    /// Builds the backend from its options (the `[backends.<NAME>]` table).
    /// Reject unknown keys and bad values with [`BackendError::config`]
    /// naming the key.
    fn new(options: &Options, host: &HostContext) -> Result<Self, BackendError>;
}

/// Internals for the export macro and the host. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::*;
    pub use abi_stable::library::{
        __call_root_module_loader as call_root_module_loader, CheckTypeLayout, LibHeader,
        LibraryError, RootModule, RootModuleResult, lib_header_from_path,
    };
    pub use abi_stable::std_types::{RStr, RString};
}
