//! The backend alone, for a runtime whose own database owns the rows.
//!
//! Apache Airflow 3.3 keeps task and asset state rows in its own database
//! and hands a worker-side backend only the value (to store, getting a
//! reference back) and the reference (to read back); it wraps and unwraps
//! the envelope itself, and deletes and clears by scope and key. A
//! [`Bridge`] serves those hooks from the configured statehost plugin,
//! under the same deadline and in-flight cap as every other backend call,
//! and with the same rules for keys and values. It never touches a
//! statehost metadata store.
//!
//! What it cannot keep, because Airflow calls the hooks in its own order:
//! Airflow writes the row after the object and deletes objects by key after
//! the rows, so a crash in between leaves an object no row references
//! (collected by `statehost gc --airflow-db`), and an overwrite leaves the
//! replaced object behind (collected the same way). See the README.

use std::sync::Arc;

use statehost_plugin_api::{
    AssetScope, BackendError, ErrorKind, Scope, ScopeRef, Serialized, StateKey, TaskScope, WriteId,
    validate_key,
};

use crate::backend::{Calls, Listed, Text};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ownership::{self, Owner};
use crate::plugin;

/// The configured plugin, serving a runtime that keeps the rows itself.
/// Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    calls: Arc<Calls>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("backend", &self.calls.name())
            .finish_non_exhaustive()
    }
}

/// A value as the backend answered a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A new object; the reference reads it back.
    Reference(String),
    /// The backend keeps this value inline: the row must hold the value.
    Inline,
}

impl Bridge {
    /// Loads and constructs the configured backend (the process's one
    /// instance) and claims its storage for a store outside statehost
    /// (`owner`): a backend whose storage a statehost metadata store
    /// already owns is refused, so neither side's gc takes the other's
    /// objects for orphans. No backend configured is [`Error::NoBackend`].
    pub fn open(config: &Config, owner: Owner) -> Result<Bridge> {
        let backend = plugin::shared_backend(config)?.ok_or(Error::NoBackend)?;
        let name = backend.metadata().name.clone();
        let calls = Arc::new(Calls::new(name, backend, config.limits));
        let bridge = Bridge { calls };
        ownership::claim(&bridge.calls, owner)?;
        Ok(bridge)
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        self.calls.name()
    }

    /// The calls (for gc of the runtime's storage).
    pub fn calls(&self) -> &Arc<Calls> {
        &self.calls
    }

    /// Stores `value` for `key` of a task.
    pub fn serialize_task(
        &self,
        scope: &TaskScope,
        key: &str,
        value: JsonText<'_>,
    ) -> Result<Stored> {
        self.serialize(ScopeRef::Task(scope.as_ref()), key, value)
    }

    /// Stores `value` for `key` of an asset (in the namespace of its name
    /// when it has one, else of its uri).
    pub fn serialize_asset(
        &self,
        scope: &AssetScope,
        key: &str,
        value: JsonText<'_>,
    ) -> Result<Stored> {
        self.serialize(ScopeRef::Asset(scope.identity()), key, value)
    }

    fn serialize(&self, scope: ScopeRef<'_>, key: &str, value: JsonText<'_>) -> Result<Stored> {
        check_key(key)?;
        crate::ownership::check_not_reserved(scope)?;
        let value = value.0;
        let write_id = WriteId::from_parts(now_ms(), rand::random::<u128>());
        let result = if self.calls.on_callers_thread() {
            // Nothing outlives the call: borrow.
            self.calls.run_here("serialize", |b| {
                b.serialize(StateKey { scope, key }, write_id, value)
            })
        } else {
            let owner = Arc::new((scope.to_owned(), key.to_string()));
            let late_owner = owner.clone();
            let text = value.to_string();
            self.calls.run(
                "serialize",
                move |b| b.serialize(at(&owner), write_id, &text),
                move |b, result| {
                    // The caller stopped waiting: nothing will ever point at
                    // what this write made.
                    if let Ok(Serialized::Reference(reference)) = result
                        && b.unique_references()
                        && let Err(e) = b.delete_object(&reference, Some(at(&late_owner)))
                    {
                        log::warn!(
                            "cannot delete {reference:?}, written after its caller stopped waiting ({e}); `statehost gc --airflow-db` will collect it"
                        );
                    }
                },
            )
        };
        match result {
            Ok(Serialized::Inline) => Ok(Stored::Inline),
            Ok(Serialized::Reference(r)) if r.is_empty() => Err(self.error(
                "write",
                key,
                BackendError::invalid_input("it returned an empty reference"),
            )),
            Ok(Serialized::Reference(r)) if is_json_text(&r) => Err(self.error(
                "write",
                key,
                BackendError::invalid_input(format!(
                    "it returned the reference {r:?}, which reads as JSON text, the form a value kept inline takes in a reference"
                )),
            )),
            Ok(Serialized::Reference(r)) => Ok(Stored::Reference(r)),
            Err(e) => Err(self.error("write", key, e)),
        }
    }

    /// Reads back the JSON text a reference stands for: a reference that is
    /// JSON text itself is a value kept inline (Airflow stores every value
    /// as a reference, so that is how an inline value travels); any other
    /// is the backend's object, returned as the backend wrote it (UTF-8 and
    /// JSON are not checked: parse it with a parser that checks, and treat
    /// a failure as the backend's). A reference to nothing is an error of
    /// kind [`ErrorKind::NotFound`].
    pub fn deserialize(&self, reference: &str) -> Result<Text> {
        if reference.is_empty() {
            return Err(Error::InvalidInput {
                message: "the reference is empty: the row is corrupt".to_string(),
            });
        }
        if is_json_text(reference) {
            return Ok(Text::Host(reference.to_string()));
        }
        let result = if self.calls.on_callers_thread() {
            self.calls
                .run_here("deserialize", |b| b.deserialize(reference, None))
        } else {
            let owned = reference.to_string();
            self.calls
                .run_plain("deserialize", move |b| b.deserialize(&owned, None))
        };
        result.map_err(|e| self.read_error(reference, e))
    }

    /// Removes every object of `key` in `scope` (missing is fine).
    pub fn delete(&self, scope: Scope, key: &str) -> Result<()> {
        check_key(key)?;
        crate::ownership::check_not_reserved(scope.as_ref())?;
        let owner = Arc::new((scope, key.to_string()));
        self.calls
            .run_plain("delete", move |b| b.delete(at(&owner)))
            .map_err(|e| self.error("delete", key, e))
    }

    /// Removes every object of `scope`; for a task, of every map index with
    /// `all_map_indices`.
    pub fn clear(&self, scope: Scope, all_map_indices: bool) -> Result<()> {
        crate::ownership::check_not_reserved(scope.as_ref())?;
        let shown = scope.to_string();
        self.calls
            .run_plain("clear", move |b| b.clear(scope.as_ref(), all_map_indices))
            .map_err(|error| Error::Backend {
                plugin: self.calls.name().to_string(),
                operation: "clear",
                scope: shown,
                key: String::new(),
                error,
            })
    }

    /// Every object the backend holds (an error unless it can list).
    pub fn list(&self) -> Result<Vec<Listed>> {
        if !self.calls.backend().capabilities().list {
            return Err(self.error(
                "list",
                "",
                BackendError::unsupported("this backend cannot list what it stores"),
            ));
        }
        self.calls
            .run_long("list", |b| b.list(None))
            .map_err(|e| self.error("list", "", e))
    }

    /// Deletes exactly the object at `reference`; answers whether it was
    /// there.
    pub fn delete_object(&self, reference: &str) -> Result<bool> {
        let owned = reference.to_string();
        self.calls
            .run_plain("delete_object", move |b| b.delete_object(&owned, None))
            .map_err(|e| self.read_error(reference, e))
    }

    fn error(&self, operation: &'static str, key: &str, error: BackendError) -> Error {
        Error::Backend {
            plugin: self.calls.name().to_string(),
            operation,
            scope: "the state of".to_string(),
            key: key.to_string(),
            error,
        }
    }

    fn read_error(&self, reference: &str, error: BackendError) -> Error {
        Error::Backend {
            plugin: self.calls.name().to_string(),
            operation: "read",
            scope: "the object of".to_string(),
            key: reference.to_string(),
            error,
        }
    }
}

fn at(owner: &(Scope, String)) -> StateKey<'_> {
    StateKey {
        scope: owner.0.as_ref(),
        key: &owner.1,
    }
}

fn check_key(key: &str) -> Result<()> {
    validate_key(key).map_err(|e| Error::InvalidInput {
        message: e.message().to_string(),
    })
}

/// A value's JSON text, for [`Bridge::serialize_task`] and
/// [`Bridge::serialize_asset`]: one JSON document, not `null`.
#[derive(Debug, Clone, Copy)]
pub struct JsonText<'a>(&'a str);

impl<'a> JsonText<'a> {
    /// Checks that `text` is one JSON document and not `null`.
    pub fn parse(text: &'a str) -> Result<Self> {
        not_null(text)?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| Error::InvalidInput {
            message: format!("the value is not JSON ({e})"),
        })?;
        Ok(JsonText(text))
    }

    /// Text a JSON encoder has just written (only `null` is checked): for
    /// callers that encode values themselves, which would otherwise pay for
    /// a second pass over every value.
    pub fn encoded(text: &'a str) -> Result<Self> {
        not_null(text)?;
        Ok(JsonText(text))
    }

    /// The text.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

fn not_null(value: &str) -> Result<()> {
    if value.trim() == "null" || value.trim().is_empty() {
        return Err(Error::InvalidInput {
            message: "a value cannot be null; delete the key instead".to_string(),
        });
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Whether `text` is a JSON document (the form of an inline value).
pub fn is_json_text(text: &str) -> bool {
    // A JSON document starts (after blanks) with one of these; a backend's
    // reference usually does not, which settles it without a parse.
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    matches!(
        first,
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    ) && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Whether an error means the object is not there.
pub fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Backend { error, .. } if error.kind() == ErrorKind::NotFound)
}
