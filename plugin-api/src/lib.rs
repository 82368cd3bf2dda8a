//! Build state backends for [statehost](https://github.com/statehost/statehost).
//!
//! A state backend stores the values of task state and asset state outside
//! the metadata database (in files, object storage, ...) and hands back a
//! short *reference*; the host keeps only that reference, wrapped in
//! `{"__airflow_state_ref__": "<reference>"}`. Backends are shared libraries
//! (`libstatehost_<name>.so`) that the host loads at run time. This crate is
//! all a backend author needs.
//!
//! # Writing a backend
//!
//! Implement [`StateBackend`] (the operations) and [`BackendPlugin`] (name,
//! description, capabilities and the constructor), then export the type with
//! [`export_backend!`]. This is a complete backend that keeps values in
//! memory:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//!
//! use serde::Deserialize;
//! use statehost_plugin_api::{
//!     AssetScope, BackendError, BackendPlugin, HostContext, Options, Scope, Serialized,
//!     StateBackend, TaskScope, export_backend, layout,
//! };
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default)]
//!     inline_below: usize,
//! }
//!
//! pub struct TinyBackend {
//!     inline_below: usize,
//!     values: Mutex<HashMap<String, String>>,
//! }
//!
//! impl TinyBackend {
//!     fn put(&self, path: String, value: &str) -> Result<Serialized, BackendError> {
//!         if value.len() < self.inline_below {
//!             return Ok(Serialized::Inline);
//!         }
//!         self.values.lock().unwrap().insert(path.clone(), value.to_string());
//!         Ok(Serialized::Reference(path))
//!     }
//!
//!     fn get(&self, reference: &str) -> Result<String, BackendError> {
//!         self.values.lock().unwrap().get(reference).cloned()
//!             .ok_or_else(|| BackendError::not_found(format!("no value at {reference}")))
//!     }
//! }
//!
//! impl StateBackend for TinyBackend {
//!     fn serialize_task_state(&self, scope: &TaskScope, key: &str, value: &str)
//!         -> Result<Serialized, BackendError> {
//!         self.put(layout::task_object_path(scope, key), value)
//!     }
//!     fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError> {
//!         self.get(reference)
//!     }
//!     fn serialize_asset_state(&self, scope: &AssetScope, key: &str, value: &str)
//!         -> Result<Serialized, BackendError> {
//!         self.put(layout::asset_object_path(scope, key), value)
//!     }
//!     fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError> {
//!         self.get(reference)
//!     }
//!     fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError> {
//!         self.values.lock().unwrap().remove(&layout::object_path(scope, key));
//!         Ok(())
//!     }
//!     fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError> {
//!         let prefix = format!("{}/", layout::clear_prefix(scope, all_map_indices));
//!         self.values.lock().unwrap().retain(|path, _| !path.starts_with(&prefix));
//!         Ok(())
//!     }
//! }
//!
//! impl BackendPlugin for TinyBackend {
//!     const NAME: &'static str = "tiny";
//!     const DESCRIPTION: &'static str = "values in a map in the worker's memory";
//!
//!     fn new(options: &Options, _host: &HostContext) -> Result<Self, BackendError> {
//!         let config: Config = options.parse(Self::NAME)?;
//!         Ok(TinyBackend { inline_below: config.inline_below, values: Mutex::default() })
//!     }
//! }
//!
//! export_backend!(TinyBackend);
//! # fn main() {}
//! ```
//!
//! Rules every backend follows (the [conformance suite](#testing-a-backend)
//! checks them):
//!
//! * **References are deterministic per (scope, key)**: writing a key again
//!   overwrites the same object, and `delete`/`clear` find it again from the
//!   scope alone. [`layout`] gives a safe, deterministic path per (scope,
//!   key); use it unless the storage needs something else.
//! * **No key escapes the storage root**: keys may contain `/`, `..`,
//!   spaces and any Unicode. Encode them ([`layout`] does).
//! * **Writes are whole**: a reader sees the old value or the new one, never
//!   a part.
//! * **Delete and clear are idempotent**: deleting a missing key succeeds.
//! * **Calls come from many threads at once**: the trait requires
//!   `Send + Sync`.
//! * **Reject unknown options by name**: deserialize the options into a
//!   struct marked `#[serde(deny_unknown_fields)]` with [`Options::parse`].
//! * **Log with the `log` macros**: records come out of the host's logger
//!   under the plugin's name, filtered by the host's level.
//! * **Panics are contained but are still bugs**: each entry point catches a
//!   panic and reports it as [`ErrorKind::Panicked`]. Keep the plugin built
//!   with `panic = "unwind"` (the default); with `panic = "abort"` a panic
//!   ends the host process.
//!
//! # Building and installing
//!
//! ```toml
//! # Cargo.toml of the plugin
//! [package]
//! name = "statehost-tiny"
//!
//! [lib]
//! name = "statehost_tiny"            # the file becomes libstatehost_tiny.so
//! crate-type = ["cdylib", "rlib"]    # cdylib for the host, rlib for your tests
//!
//! [dependencies]
//! statehost-plugin-api = "1"
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! statehost-plugin-api = { version = "1", features = ["conformance"] }
//! ```
//!
//! `cargo build --release` makes `target/release/libstatehost_tiny.so`.
//! Copy it into the host's plugin directory (by default the directory that
//! holds the `statehost` executable; `[core] plugins_dir` changes it) and
//! select it:
//!
//! ```toml
//! [workers]
//! state_backend = "tiny"
//!
//! [backends.tiny]
//! inline_below = 64
//! ```
//!
//! `statehost plugins` lists what the host finds; `statehost check` loads
//! the configured backend and says what went wrong if it cannot.
//!
//! # Testing a backend
//!
//! With the `conformance` feature, `conformance::run` checks a backend
//! against the whole contract (every JSON kind, large values, hostile keys,
//! isolation between scopes, delete, clear, deterministic references, use
//! from many threads):
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     let backend = TinyBackend::new(&Options::default(), &HostContext::new()).unwrap();
//!     statehost_plugin_api::conformance::run(&backend);
//! }
//! ```
//!
//! The host's integration tests run the same suite again through the
//! loaded `.so`.
//!
//! # Versions and the ABI
//!
//! The version of this crate is the version of the plugin ABI. A host built
//! against `statehost-plugin-api` 1.y loads every plugin built against any
//! 1.x, older or newer: the binary layout of the 1.x interface never
//! changes. Operations added in later 1.x releases are provided trait
//! methods with defaults (so old plugin sources still compile), travel
//! through a generic extension entry point with JSON requests, and are
//! advertised as [`Capabilities`] names, so a newer host asks an older
//! plugin and gets "unsupported" instead of a layout error. A change that
//! cannot be made this way is a new major version, and the host then says
//! plainly which plugin-api a rejected plugin was built against and which
//! one it expects.

mod abi;
mod context;
mod error;
mod export;
pub mod layout;
mod metadata;
mod scope;

#[cfg(feature = "conformance")]
pub mod conformance;

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
