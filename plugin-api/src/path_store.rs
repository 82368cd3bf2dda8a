//! A whole [`StateBackend`] for storage addressed by paths: implement
//! [`PathStore`] (put, get and remove an object by name, remove and list
//! under a prefix) and the rest comes from the [`layout`]: where each
//! write goes, which reference belongs to which key, what `delete` and
//! `clear` remove, how a listing maps back to write ids.
//!
//! Files under a directory, objects in a bucket, keys in a key-value
//! server: anything with names can be a `PathStore`. The shipped `fs` and
//! `object_store` backends are built this way, and so is the template in
//! `examples/backend-template`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Mutex;
//!
//! use statehost_plugin_api::{BackendError, PathStore};
//!
//! /// Objects in a map: a stand-in for a real store's client.
//! #[derive(Default)]
//! struct MapStore(Mutex<BTreeMap<String, String>>);
//!
//! impl PathStore for MapStore {
//!     fn put(&self, path: &str, value: &str) -> Result<(), BackendError> {
//!         self.0.lock().unwrap().insert(path.to_string(), value.to_string());
//!         Ok(())
//!     }
//!     fn get(&self, path: &str) -> Result<String, BackendError> {
//!         self.0.lock().unwrap().get(path).cloned()
//!             .ok_or_else(|| BackendError::not_found(format!("no object {path}")))
//!     }
//!     fn remove(&self, path: &str) -> Result<bool, BackendError> {
//!         Ok(self.0.lock().unwrap().remove(path).is_some())
//!     }
//!     fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
//!         let prefix = format!("{prefix}/");
//!         self.0.lock().unwrap().retain(|path, _| !path.starts_with(&prefix));
//!         Ok(())
//!     }
//! }
//!
//! // MapStore is now a StateBackend.
//! # #[cfg(feature = "conformance")]
//! statehost_plugin_api::conformance::run(&MapStore::default());
//! ```
//!
//! [`StateBackend`]: crate::StateBackend
//! [`layout`]: crate::layout

use std::time::SystemTime;

use crate::layout;
use crate::{BackendError, ScopeRef, Serialized, StateBackend, StateKey, StoredObject, WriteId};

/// Storage addressed by `/`-separated relative paths, as [`layout`] makes
/// them. Implementing it makes the type a [`StateBackend`].
///
/// Paths are safe to use as they are: every component is percent-encoded
/// (letters, digits, `-`, `_`, `%` and `~` only), never `.` or `..`, never
/// empty, and a whole path is at most [`layout::MAX_PATH_BYTES`] long.
/// References read back from the database are validated before any method
/// here sees them.
pub trait PathStore: Send + Sync {
    /// Values whose JSON text is shorter than this many bytes are not
    /// stored: the host keeps them inline in its database. The default, 0,
    /// stores every value.
    fn inline_below(&self) -> usize {
        0
    }

    /// Stores `value` as the object `path`. The path is new (it carries the
    /// write id): nothing is there to replace. Either the whole value is
    /// stored or the call fails; a reader never sees a part.
    fn put(&self, path: &str, value: &str) -> Result<(), BackendError>;

    /// The value of the object `path`; [`ErrorKind::NotFound`] when there is
    /// none.
    ///
    /// [`ErrorKind::NotFound`]: crate::ErrorKind::NotFound
    fn get(&self, path: &str) -> Result<String, BackendError>;

    /// Removes the object `path`; answers whether it was there (storage that
    /// cannot tell answers `true`). A missing object is not an error.
    fn remove(&self, path: &str) -> Result<bool, BackendError>;

    /// Removes every object whose path starts with `prefix` followed by `/`.
    /// Nothing there is not an error.
    fn remove_under(&self, prefix: &str) -> Result<(), BackendError>;

    /// Every object whose path starts with `prefix` followed by `/`, with
    /// its path and, if the storage knows it, when it was last written.
    /// Return everything there, including what is not yours: paths the
    /// layout did not make are left out before the host sees the listing.
    /// Optional: declare [`Capabilities::LIST`] when you implement it.
    ///
    /// [`Capabilities::LIST`]: crate::Capabilities::LIST
    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let _ = prefix;
        Err(BackendError::unsupported(
            "this backend cannot list what it stores",
        ))
    }

    /// Removes what interrupted writes left behind (temporary files,
    /// partial uploads) last touched before `older_than`; answers how many.
    /// This is [`StateBackend::sweep`]; declare [`Capabilities::with_sweep`]
    /// when you implement it.
    ///
    /// [`Capabilities::with_sweep`]: crate::Capabilities::with_sweep
    fn sweep_leftovers(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        let _ = older_than;
        Ok(0)
    }
}

/// The first segments under which objects live: this layout's, then those
/// of the 1.x layout, whose objects may still be there after an upgrade.
const LIST_ROOTS: [&str; 3] = [layout::LAYOUT_PREFIX, "task", "asset"];

impl<S: PathStore> StateBackend for S {
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        if value.len() < self.inline_below() {
            return Ok(Serialized::Inline);
        }
        let path = layout::object_path(at, write_id);
        self.put(&path, value)?;
        Ok(Serialized::Reference(path))
    }

    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<String, BackendError> {
        layout::check_reference(reference, owner)?;
        self.get(reference)
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        layout::check_reference(reference, owner)?;
        self.remove(reference)
    }

    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.remove_under(&layout::key_prefix(at))
    }

    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        self.remove_under(&layout::clear_prefix(scope, all_map_indices))
    }

    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        let mut found = Vec::new();
        match scope {
            Some(scope) => found = self.list_under(&layout::scope_prefix(scope))?,
            None => {
                for root in LIST_ROOTS {
                    found.extend(self.list_under(root)?);
                }
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|(path, modified)| StoredObject::from_layout_path(path, modified))
            .collect())
    }

    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        self.sweep_leftovers(older_than)
    }
}
