//! Which metadata store owns a backend's storage.
//!
//! gc removes the objects that no row of *its* store references. Pointed at
//! storage whose references live in another database (Airflow's, through
//! the [`Bridge`](crate::bridge::Bridge)), it would take every object there
//! for an orphan. So storage that Airflow writes to records it: a marker
//! object, the key [`OWNER_KEY`] of the asset [`OWNER_ASSET`], written
//! through the backend like any value by the bridge before its first write
//! (in its constructor). `statehost gc` refuses storage that holds it, and
//! `statehost gc --airflow-db` collects only storage that holds it.
//!
//! A statehost store claims nothing (its gc would otherwise have to write,
//! and its storage would hold an object none of its rows names); the
//! reverse case, a statehost store on storage Airflow also writes to, is
//! refused by the same marker as soon as statehost's gc runs.
//!
//! Markers are read from the backend's listing, so this only guards
//! backends that can list; the others have no orphan pass to guard.

use std::sync::Arc;

use serde_json::json;
use statehost_plugin_api::{
    AssetIdentity, AssetScope, BackendError, Scope, ScopeRef, StateKey, WriteId,
};

use crate::backend::{Calls, Listed};
use crate::error::{Error, Result};

/// The asset whose state holds the marker.
pub const OWNER_ASSET: &str = "__statehost_owner__";

/// The marker's key.
pub const OWNER_KEY: &str = "owner";

/// The largest marker written to get past a backend's inline threshold.
const MAX_MARKER_BYTES: usize = 1 << 20;

/// Who keeps the rows that reference a storage's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A statehost metadata store (`[database] url`): `statehost gc`
    /// collects its orphans.
    Statehost,
    /// Apache Airflow's database, through the bridge: `statehost gc
    /// --airflow-db` collects its orphans.
    Airflow,
}

impl Owner {
    /// The name written in the marker.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Statehost => "statehost",
            Owner::Airflow => "airflow",
        }
    }

    fn parse(text: &str) -> Option<Owner> {
        match text {
            "statehost" => Some(Owner::Statehost),
            "airflow" => Some(Owner::Airflow),
            _ => None,
        }
    }

    fn gc_command(self) -> &'static str {
        match self {
            Owner::Statehost => "`statehost gc` with the config of that store",
            Owner::Airflow => "`statehost gc --airflow-db URL` with Airflow's database",
        }
    }
}

/// Refuses a caller's operation on the marker's asset: only the host
/// writes, reads or removes it (a task that cleared it, or wrote another
/// value there, would unclaim the storage or stop every worker).
pub fn check_not_reserved(scope: ScopeRef<'_>) -> Result<()> {
    match scope {
        // An asset with a name is known by it.
        ScopeRef::Asset(AssetIdentity::Name(name)) if name == OWNER_ASSET => {
            Err(Error::InvalidInput {
                message: format!(
                    "the asset name {OWNER_ASSET:?} is reserved for statehost's record of who owns the storage; use another name"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The marker's scope.
pub fn owner_scope() -> AssetScope {
    AssetScope::by_name(OWNER_ASSET).expect("a valid asset name")
}

/// Whether a listed object is an ownership marker.
pub fn is_marker(listed: &Listed) -> bool {
    let owner = listed.owner.clone().or_else(|| {
        statehost_plugin_api::layout::parse_reference(&listed.reference)
            .and_then(|parsed| parsed.owner)
    });
    owner.is_some_and(|(scope, _)| scope == Scope::Asset(owner_scope()))
}

/// The marker's value.
pub fn marker_value(owner: Owner) -> serde_json::Value {
    json!({
        "owner": owner.as_str(),
        "about": format!(
            "The references to the objects of this storage are kept by {}; garbage collection by any other store would delete them. Collect orphans with {}.",
            match owner {
                Owner::Statehost => "a statehost metadata store",
                Owner::Airflow => "Apache Airflow's database",
            },
            owner.gc_command()
        ),
    })
}

/// The owners the storage's markers name (none when the backend cannot
/// list, or nobody claimed it yet).
pub fn owners(calls: &Arc<Calls>) -> Result<Vec<Owner>> {
    if !calls.backend().capabilities().list {
        return Ok(Vec::new());
    }
    let listed = calls
        .run_long("list", |b| {
            b.list(Some(ScopeRef::Asset(AssetIdentity::Name(OWNER_ASSET))))
        })
        .map_err(|e| marker_error(calls, "list", e))?;
    let mut found = Vec::new();
    for object in listed.into_iter().filter(is_marker) {
        let reference = object.reference.clone();
        let text = match calls.run_plain("deserialize", move |b| b.deserialize(&reference, None)) {
            Ok(text) => text,
            // Removed since the listing (a marker is never removed by
            // statehost, but an operator may): not a claim.
            Err(e) if e.kind() == statehost_plugin_api::ErrorKind::NotFound => continue,
            Err(e) => return Err(marker_error(calls, "read", e)),
        };
        let owner = serde_json::from_slice::<serde_json::Value>(text.as_bytes())
            .ok()
            .and_then(|v| {
                v.get("owner")
                    .and_then(|o| o.as_str())
                    .and_then(Owner::parse)
            });
        match owner {
            Some(owner) => found.push(owner),
            None => {
                return Err(Error::Corrupt {
                    scope: owner_scope().to_string(),
                    key: OWNER_KEY.to_string(),
                    message: format!(
                        "the ownership marker {:?} does not name an owner (\"statehost\" or \"airflow\"); delete it if nothing else uses this storage",
                        object.reference
                    ),
                });
            }
        }
    }
    Ok(found)
}

/// Refuses if another kind of store owns the storage; answers whether
/// `owner` has claimed it already.
pub fn check(calls: &Arc<Calls>, owner: Owner) -> Result<bool> {
    let owners = owners(calls)?;
    if let Some(other) = owners.iter().find(|o| **o != owner) {
        return Err(Error::Config {
            source_name: format!("backend `{}`", calls.name()),
            message: format!(
                "its storage is owned by {} (it holds the marker {OWNER_ASSET}/{OWNER_KEY}), and {} must not share it: their garbage collection would delete each other's objects; give this one a storage root of its own, and collect orphans there with {}",
                other.as_str(),
                owner.as_str(),
                other.gc_command()
            ),
        });
    }
    Ok(!owners.is_empty())
}

/// Claims the storage for `owner` (Airflow's database, through the bridge)
/// by writing the marker straight through the backend, unless it is
/// claimed already. Refuses storage another kind of store claimed.
pub fn claim(calls: &Arc<Calls>, owner: Owner) -> Result<()> {
    if !calls.backend().capabilities().list || check(calls, owner)? {
        return Ok(());
    }
    let scope = owner_scope();
    let mut value = marker_value(owner);
    // A backend keeps values below its inline threshold in the row, where
    // no listing finds them: pad the marker until it is stored as an
    // object (or give up at 1 MiB).
    loop {
        let text = value.to_string();
        let write_id = WriteId::from_parts(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            rand::random::<u128>(),
        );
        let (at_scope, written) = (scope.clone(), text.clone());
        // Under the deadline like any call; a marker written late is a
        // duplicate claim of the same owner, which is harmless.
        let serialized = calls
            .run_plain("serialize", move |b| {
                b.serialize(StateKey::asset(&at_scope, OWNER_KEY), write_id, &written)
            })
            .map_err(|e| marker_error(calls, "write", e))?;
        match serialized {
            statehost_plugin_api::Serialized::Reference(_) => break,
            statehost_plugin_api::Serialized::Inline if text.len() < MAX_MARKER_BYTES => {
                value["padding"] = serde_json::Value::String(" ".repeat(text.len() * 4));
            }
            statehost_plugin_api::Serialized::Inline => {
                return Err(marker_error(
                    calls,
                    "write",
                    BackendError::invalid_input(format!(
                        "it keeps even a {}-byte ownership marker inline, so the storage's owner cannot be recorded; lower its inline threshold",
                        text.len()
                    )),
                ));
            }
        }
    }
    // Two first users at once: both wrote; the loser of a mixed pair
    // refuses now.
    check(calls, owner)?;
    Ok(())
}

fn marker_error(calls: &Calls, operation: &'static str, error: BackendError) -> Error {
    Error::Backend {
        plugin: calls.name().to_string(),
        operation,
        scope: owner_scope().to_string(),
        key: OWNER_KEY.to_string(),
        error,
    }
}
