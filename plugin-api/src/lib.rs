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
//! Start from the template: copy `examples/backend-template/` out of the
//! statehost repository. It is a complete crate of its own (a backend, its
//! options, its tests, the conformance suite run on the built `.so`) with
//! nothing to delete but what you replace.
//!
//! A backend is a type that implements [`StateBackend`] (the operations)
//! and [`BackendPlugin`] (name, description, capabilities and the
//! constructor), exported with [`export_backend!`]. For storage addressed
//! by names (files, object stores, key-value servers), implement
//! [`PathStore`] instead of [`StateBackend`]: five methods on plain paths,
//! and the paths, the reference checks, `delete`, `clear` and `list` come
//! from the shared [`layout`]. This is a complete backend that keeps values
//! in memory:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Mutex;
//!
//! use serde::Deserialize;
//! use statehost_plugin_api::{
//!     BackendError, BackendPlugin, HostContext, Options, PathStore, export_backend,
//! };
//!
//! /// The options of `[backends.tiny]`.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default)]
//!     inline_below: usize,
//! }
//!
//! pub struct TinyBackend {
//!     inline_below: usize,
//!     objects: Mutex<BTreeMap<String, String>>,
//! }
//!
//! impl PathStore for TinyBackend {
//!     fn inline_below(&self) -> usize {
//!         self.inline_below
//!     }
//!
//!     fn put(&self, path: &str, value: &str) -> Result<(), BackendError> {
//!         self.objects.lock().unwrap().insert(path.to_string(), value.to_string());
//!         Ok(())
//!     }
//!
//!     fn get(&self, path: &str) -> Result<String, BackendError> {
//!         self.objects.lock().unwrap().get(path).cloned()
//!             .ok_or_else(|| BackendError::not_found(format!("no value at {path}")))
//!     }
//!
//!     fn remove(&self, path: &str) -> Result<bool, BackendError> {
//!         Ok(self.objects.lock().unwrap().remove(path).is_some())
//!     }
//!
//!     fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
//!         let prefix = format!("{prefix}/");
//!         self.objects.lock().unwrap().retain(|path, _| !path.starts_with(&prefix));
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
//!         Ok(TinyBackend { inline_below: config.inline_below, objects: Mutex::default() })
//!     }
//! }
//!
//! export_backend!(TinyBackend);
//! # fn main() {}
//! ```
//!
//! When the storage is not shaped like paths, implement [`StateBackend`]
//! yourself; [`layout`] still gives a safe name per write and validates
//! references:
//!
//! ```
//! use statehost_plugin_api::{
//!     BackendError, ScopeRef, Serialized, StateBackend, StateKey, WriteId, layout,
//! };
//!
//! struct Rows; // stands for a table in some database
//!
//! impl StateBackend for Rows {
//!     fn serialize(&self, at: StateKey<'_>, write_id: WriteId, value: &str)
//!         -> Result<Serialized, BackendError> {
//!         let name = layout::object_path(at, write_id); // one object per write
//!         let _ = value; // INSERT (name, value)
//!         Ok(Serialized::Reference(name))
//!     }
//!     fn deserialize(&self, reference: &str, owner: Option<StateKey<'_>>)
//!         -> Result<String, BackendError> {
//!         layout::check_reference(reference, owner)?; // before touching storage
//!         Err(BackendError::not_found(format!("no row {reference}")))
//!     }
//!     fn delete_object(&self, reference: &str, owner: Option<StateKey<'_>>)
//!         -> Result<bool, BackendError> {
//!         layout::check_reference(reference, owner)?;
//!         Ok(false) // DELETE WHERE name = reference
//!     }
//!     fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
//!         let _ = layout::key_prefix(at); // DELETE WHERE name LIKE prefix || '/%'
//!         Ok(())
//!     }
//!     fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
//!         let _ = layout::clear_prefix(scope, all_map_indices);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Rules every backend follows (the [conformance suite](#testing-a-backend)
//! checks them):
//!
//! * **Every write is an object of its own.** The host mints a [`WriteId`]
//!   for each `set`; store the value under a name that includes it and
//!   never overwrite another write's object. A late write (one the host
//!   stopped waiting for) then cannot clobber a later one, and the host
//!   deletes replaced values by their exact reference. [`layout`] gives a
//!   safe path per (scope, key, write id) and validates references.
//! * **No key escapes the storage root**: keys may contain `/`, `..`,
//!   spaces and any Unicode. Encode them ([`layout`] does).
//! * **References from the database are checked**: before reading or
//!   deleting, check that the reference is one the backend makes and, when
//!   the host names the row's scope and key, that it belongs to them
//!   ([`layout::check_reference`]).
//! * **Writes are whole**: a reader sees the value or nothing, never a part.
//! * **A missing object reads as [`ErrorKind::NotFound`]**, and deleting
//!   one succeeds: deletes are idempotent.
//! * **Calls come from many threads at once**: the trait requires
//!   `Send + Sync`.
//! * **Reject unknown options by name**: deserialize the options into a
//!   struct marked `#[serde(deny_unknown_fields)]` with [`Options::parse`];
//!   its errors name the key, the type it takes and, for a value set in the
//!   environment, the variable.
//! * **Errors say what to do**: pick the [`ErrorKind`] by what the operator
//!   should do (the [error contract](ErrorKind#the-error-contract) says
//!   what the host and the command line do with each), and write the
//!   message as one sentence naming what failed.
//! * **Log with the `log` macros**: records come out of the host's logger
//!   under the plugin's name, filtered by the host's level.
//! * **Panics are contained but are still bugs**: each entry point catches a
//!   panic and reports it as [`ErrorKind::Panicked`]. Keep the plugin built
//!   with `panic = "unwind"` (the default); with `panic = "abort"` a panic
//!   ends the host process.
//! * **Declare [`Capabilities::never_blocks`] only if it is true**: a backend
//!   whose every call ends without waiting on I/O, the network or another
//!   process (values in memory) is then called on the caller's thread,
//!   which saves a thread hand-off per call, and the host's call deadline
//!   no longer protects its callers from it. Anything that does I/O leaves
//!   it off.
//!
//! # Backends with an async client
//!
//! The host calls a backend from its own threads, never from inside an
//! async runtime, and each call returns when its work is done. A backend
//! whose client library is async (most cloud SDKs) therefore owns a
//! runtime:
//!
//! * **One runtime per backend instance**, built in [`BackendPlugin::new`]
//!   and kept in the backend: tokio's multi-thread runtime with a couple of
//!   worker threads, named after the plugin. Never look for the host's
//!   runtime (`Handle::current()`): there is none, and if there were it
//!   would not be yours to block.
//! * **Each method blocks on it**: `self.runtime.block_on(async { ... })`.
//!   That is safe from any number of host threads at once, because they are
//!   not runtime threads; a current-thread runtime would serialize them.
//! * **Bound every call**: wrap each operation in a timeout shorter than the
//!   host's deadline (`[workers] state_backend_timeout_ms`, 30 s by
//!   default). The host stops waiting at its deadline, but the call keeps
//!   one of the host's threads until it returns, and the host refuses new
//!   calls when too many are still running.
//! * **Stop without waiting**: the host keeps one instance per process and
//!   never unloads the library; when an instance is dropped, shut its
//!   runtime down with `shutdown_background()` so a stuck request cannot
//!   hang the host.
//!
//! ```
//! use std::time::Duration;
//!
//! use statehost_plugin_api::{BackendError, ErrorKind};
//!
//! struct Remote {
//!     runtime: Option<tokio::runtime::Runtime>,
//!     timeout: Duration,
//! }
//!
//! impl Remote {
//!     fn start(timeout: Duration) -> Result<Remote, BackendError> {
//!         let runtime = tokio::runtime::Builder::new_multi_thread()
//!             .worker_threads(2)
//!             .thread_name("statehost-remote")
//!             .enable_all()
//!             .build()
//!             .map_err(|e| BackendError::unavailable(format!("cannot start a runtime: {e}")))?;
//!         Ok(Remote { runtime: Some(runtime), timeout })
//!     }
//!
//!     /// Runs one request of the async client to completion, or gives up.
//!     fn call<T>(&self, what: &str, request: impl Future<Output = Result<T, BackendError>>)
//!         -> Result<T, BackendError> {
//!         let runtime = self.runtime.as_ref().expect("running until dropped");
//!         // Make the timer inside the runtime: it needs the runtime's clock.
//!         let bounded = async { tokio::time::timeout(self.timeout, request).await };
//!         runtime.block_on(bounded).unwrap_or_else(|_| Err(BackendError::unavailable(
//!             format!("{what} took longer than {:?}", self.timeout),
//!         )))
//!     }
//! }
//!
//! impl Drop for Remote {
//!     fn drop(&mut self) {
//!         if let Some(runtime) = self.runtime.take() {
//!             runtime.shutdown_background();
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), BackendError> {
//! let remote = Remote::start(Duration::from_millis(200))?;
//! // From a host thread (here: the test's), a request runs to completion...
//! assert_eq!(remote.call("ping", async { Ok(42) })?, 42);
//! // ... or is given up on, without waiting for it.
//! let hung = remote.call("a hung request", async {
//!     tokio::time::sleep(Duration::from_secs(3600)).await;
//!     Ok(())
//! });
//! assert_eq!(hung.unwrap_err().kind(), ErrorKind::Unavailable);
//! # Ok(())
//! # }
//! ```
//!
//! The shipped `object_store` backend is built this way.
//!
//! # Building and installing
//!
//! ```toml
//! # Cargo.toml of the plugin
//! [package]
//! name = "statehost-tiny"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! name = "statehost_tiny"            # the file becomes libstatehost_tiny.so
//! crate-type = ["cdylib", "rlib"]    # cdylib for the host, rlib for your tests
//!
//! [dependencies]
//! statehost-plugin-api = "2.2"
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! statehost-plugin-api = { version = "2.2", features = ["conformance"] }
//! statehost-plugin-test = "0.1"
//! serde_json = "1"
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
//! Any option can also be set in the environment,
//! `STATEHOST__BACKENDS__TINY__INLINE_BELOW=64`: the text is parsed into the
//! type the options struct declares (see [`Options`]).
//! `statehost plugins` lists what the host finds; `statehost check` loads
//! the configured backend and says what went wrong if it cannot.
//!
//! # Testing a backend
//!
//! With the `conformance` feature, `conformance::run` checks a backend
//! against the whole contract (every JSON kind, large values, hostile keys,
//! one object per write, exact deletes, isolation between scopes, clear,
//! references checked against their owner, use from many threads). It
//! clears every scope it wrote when it ends, so it can run against a real
//! store. Construct the backend with the options a test needs:
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     let options = Options::new(serde_json::json!({"inline_below": 0}));
//!     let backend = TinyBackend::new(&options, &HostContext::new()).unwrap();
//!     statehost_plugin_api::conformance::run(&backend);
//! }
//! ```
//!
//! The `statehost-plugin-test` crate runs the same suite on the built `.so`
//! through the host's own loader, which is what the host will do with it,
//! and gives temporary directories and a host context to construct a
//! backend in a unit test. Authors who do not write Rust tests run
//! `statehost conformance path/to/libstatehost_tiny.so --options tiny.toml`.
//!
//! # Versions and the ABI
//!
//! The version of this crate is the version of the plugin ABI. A host built
//! against `statehost-plugin-api` 2.y loads every plugin built against any
//! 2.x, older or newer: the binary layout of the 2.x interface never
//! changes. Operations added in later 2.x releases are provided trait
//! methods with defaults (so old plugin sources still compile), travel
//! through a generic extension entry point with JSON requests, and are
//! advertised as [`Capabilities`] names, so a newer host asks an older
//! plugin and gets "unsupported" instead of a layout error.
//!
//! Version 2.0 changed the trait (a write id on every serialize, deletes of
//! one exact object, references checked against their owner), so it is a
//! new major version. The host still loads plugins built against 1.x and
//! serves them with in-process fencing: their references are one per key,
//! overwritten in place, so the consistency guarantees then hold within one
//! process only (`statehost check` says so). Anything else built against
//! another major version is refused with one line naming the version it was
//! built against and the one the host expects.

#![deny(missing_docs)]

mod abi;
mod context;
mod error;
mod export;
pub mod layout;
mod metadata;
mod options;
pub mod path_store;
mod scope;
mod section;
mod write_id;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::time::SystemTime;

pub use context::HostContext;
pub use error::{BackendError, ErrorKind, MAX_MESSAGE_BYTES};
pub use metadata::{Capabilities, Metadata};
pub use options::{Options, secret_by_name};
pub use path_store::PathStore;
pub use scope::{
    AssetIdentity, AssetScope, MAX_ASSET_BYTES, MAX_ID_BYTES, MAX_KEY_BYTES, Scope, ScopeRef,
    StateKey, TaskRef, TaskScope, validate_key,
};
pub use write_id::WriteId;

/// The version of this crate, which is the plugin ABI version.
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a backend answers to a serialize call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serialized {
    /// The value was stored as a new object; this reference reads it back.
    /// The host stores it wrapped in the envelope.
    Reference(String),
    /// The backend declines to store this value (for example because it is
    /// small); the host keeps the plain JSON in its database.
    Inline,
}

/// One object a backend holds, as reported by [`StateBackend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The reference that reads it back (and deletes it).
    pub reference: String,
    /// The write that made it, when the reference carries one (objects of
    /// 1.x backends do not).
    pub write_id: Option<WriteId>,
    /// When it was last written, if the storage knows.
    pub modified: Option<SystemTime>,
}

impl StoredObject {
    /// The object at `reference` (a path of the shared [`layout`]), with
    /// its write id read from the path; `None` when the layout did not make
    /// the path (skip such files: they are not the backend's objects).
    pub fn from_layout_path(reference: String, modified: Option<SystemTime>) -> Option<Self> {
        let parsed = layout::parse_reference(&reference)?;
        Some(StoredObject {
            reference,
            write_id: parsed.write_id,
            modified,
        })
    }
}

/// The operations of a state backend.
///
/// Values cross this trait as JSON text: `value` is always valid JSON and
/// never `null`, and what [`deserialize`](StateBackend::deserialize)
/// returns must be valid JSON (the host checks). The host validates scopes
/// and keys before calling (see [`validate_key`]), never hands a backend the
/// envelope itself, and deletes only the objects it no longer references.
///
/// Every method may be called from several threads at once.
pub trait StateBackend: Send + Sync {
    /// Stores `value` for the key `at` as a new object named by `write_id`
    /// and returns its reference; or declines with [`Serialized::Inline`].
    ///
    /// Never overwrite the object of another write, even of the same key:
    /// a call the host gave up on may still finish, and must then only add
    /// an object (which the host deletes), never replace a newer value.
    /// Either the whole value is stored or the call fails.
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError>;

    /// Reads back the value of an object made by
    /// [`serialize`](StateBackend::serialize). A reference to nothing is
    /// an [`ErrorKind::NotFound`] error.
    ///
    /// The reference comes from the metadata database and may have been
    /// tampered with: it must never lead outside the backend's storage, and
    /// when `owner` names the row's scope and key, a reference that belongs
    /// to another key is an [`ErrorKind::InvalidInput`] error
    /// ([`layout::check_reference`] does both). `owner` is `None` only when
    /// the caller cannot know it (Airflow hands its hook the reference
    /// alone).
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<String, BackendError>;

    /// Deletes exactly the object at `reference`, checked as for
    /// [`deserialize`](StateBackend::deserialize). Deleting a missing
    /// object succeeds. Answers whether an object was there (storage that
    /// cannot tell answers `true`).
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError>;

    /// Removes every object of the key `at`. Removing a missing key
    /// succeeds. (The host deletes exact objects on its own paths; this is
    /// for callers that only know the key, such as Airflow's `delete` hook.)
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError>;

    /// Removes every object in `scope`. For a task scope with
    /// `all_map_indices`, removes the objects of every map index of that
    /// task (same dag, run and task); otherwise only the scope's own map
    /// index. `all_map_indices` means nothing for asset scopes. Idempotent.
    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError>;

    /// The objects the backend holds in `scope` (every scope when `None`),
    /// each with its reference, its write id and when it was written.
    /// Optional: backends that implement it declare [`Capabilities::LIST`];
    /// the host's garbage collector uses it to find objects no row
    /// references. A backend that lists must report every object it holds,
    /// or gc cannot collect what it leaves out.
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        let _ = scope;
        Err(BackendError::unsupported(
            "this backend cannot list what it stores",
        ))
    }

    /// Removes what interrupted writes left behind (temporary files, partial
    /// uploads) that was last touched before `older_than`, and says how many
    /// it removed. Optional (declare it with [`Capabilities::with_sweep`]);
    /// the host's garbage collector calls it with a grace period, so writes
    /// in progress are left alone. Remove only what the backend itself
    /// names as its own leftovers.
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        let _ = older_than;
        Ok(0)
    }
}

impl<B: StateBackend + ?Sized> StateBackend for std::sync::Arc<B> {
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        (**self).serialize(at, write_id, value)
    }
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<String, BackendError> {
        (**self).deserialize(reference, owner)
    }
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        (**self).delete_object(reference, owner)
    }
    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        (**self).delete(at)
    }
    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        (**self).clear(scope, all_map_indices)
    }
    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        (**self).list(scope)
    }
    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
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
    /// Optional operations it implements, and whether its calls never
    /// block ([`Capabilities::with_never_blocks`]).
    const CAPABILITIES: Capabilities = Capabilities::NONE;
    /// Options whose values are secrets (passwords, keys, tokens; a table
    /// option marks every value in it). Their values never appear in the
    /// errors [`Options::parse`] makes, and the host removes them from
    /// everything it prints. The host also treats options whose names say
    /// so (`password`, `secret`, `token`, ...) as secret.
    const SECRET_OPTIONS: &'static [&'static str] = &[];

    /// Builds the backend from its options (the `[backends.<NAME>]` table).
    /// Reject unknown keys and bad values with [`BackendError::config`]
    /// naming the key.
    fn new(options: &Options, host: &HostContext) -> Result<Self, BackendError>;
}

/// Internals for the export macro and the host. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::*;
    pub use crate::section::{
        Fields, SECTION, as_str, capabilities_text, decode, encode, encoded_len, list_len,
        list_text,
    };
    pub use abi_stable::library::{
        __call_root_module_loader as call_root_module_loader, CheckTypeLayout, LibHeader,
        LibraryError, RootModule, RootModuleResult, lib_header_from_path,
    };
    pub use abi_stable::std_types::{ROption, RResult, RStr, RString};
}
