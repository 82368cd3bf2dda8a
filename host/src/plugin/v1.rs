//! The host's half of the plugin-api 1.x boundary, for plugins built
//! before references became unique per write.
//!
//! A 1.x backend keeps one object per key and overwrites it in place, has
//! no exact delete, and cannot check a reference against its row. The host
//! still serves it, through the frozen 1.0 boundary types, with in-process
//! fencing (see `state::legacy`); this module only translates calls.

use abi_stable::std_types::{ROption, RString};
use serde::Deserialize;
use statehost_plugin_api::{
    AssetIdentity, AssetScope, BackendError, ErrorKind, Metadata, Scope, ScopeRef, Serialized,
    StateKey, TaskScope,
};
use statehost_plugin_api_v1 as v1;
use v1::__private::{AbiLogger_TO, BackendObject, PluginModuleRef, WireHostContext};

use super::logging::PluginLogger;
use crate::backend::{Listed, Text};

/// The root module type of 1.x plugins.
pub(crate) type Module = PluginModuleRef;

/// A backend living in a loaded 1.x plugin.
pub(crate) struct LegacyBackend {
    object: BackendObject,
}

impl std::fmt::Debug for LegacyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyBackend").finish_non_exhaustive()
    }
}

fn error(e: v1::__private::AbiError) -> BackendError {
    let e = v1::BackendError::from(e);
    let kind = match e.kind().as_str() {
        "config" => ErrorKind::Config,
        "not found" => ErrorKind::NotFound,
        "unavailable" => ErrorKind::Unavailable,
        "invalid input" => ErrorKind::InvalidInput,
        "unsupported" => ErrorKind::Unsupported,
        "panicked" => ErrorKind::Panicked,
        _ => ErrorKind::Other,
    };
    BackendError::new(kind, e.message())
}

fn text(s: RString, what: &str) -> Result<String, BackendError> {
    let bytes = s.into_bytes();
    crate::backend::utf8(bytes.as_slice())
        .map(str::to_owned)
        .map_err(|e| {
            BackendError::invalid_input(format!(
                "the plugin returned {what} that is not UTF-8 ({e})"
            ))
        })
}

fn invalid(e: v1::BackendError) -> BackendError {
    BackendError::invalid_input(e.message())
}

/// A scope in the 1.0 types.
enum Old {
    Task(v1::TaskScope),
    Asset(v1::AssetScope),
}

fn old(scope: ScopeRef<'_>) -> Result<Old, BackendError> {
    Ok(match scope {
        ScopeRef::Task(t) => Old::Task(
            v1::TaskScope::new(t.dag_id(), t.run_id(), t.task_id(), t.map_index())
                .map_err(invalid)?,
        ),
        ScopeRef::Asset(AssetIdentity::Name(name)) => {
            Old::Asset(v1::AssetScope::by_name(name).map_err(invalid)?)
        }
        ScopeRef::Asset(AssetIdentity::Uri(uri)) => {
            Old::Asset(v1::AssetScope::by_uri(uri).map_err(invalid)?)
        }
    })
}

/// Reads a 1.x plugin's metadata.
pub(crate) fn read_metadata(module: Module) -> Result<Metadata, BackendError> {
    let json = (module.metadata())();
    serde_json::from_slice(json.into_bytes().as_slice()).map_err(|e| {
        BackendError::invalid_input(format!("the plugin's metadata is not valid: {e}"))
    })
}

/// Constructs a backend through a 1.x plugin's root module.
pub(crate) fn construct(
    module: Module,
    options: &str,
    config_dir: Option<String>,
    max_level: Option<String>,
    logger: PluginLogger,
) -> Result<LegacyBackend, BackendError> {
    let host = serde_json::to_string(&WireHostContext {
        config_dir,
        max_level,
    })
    .unwrap_or_default();
    let logger = AbiLogger_TO::from_value(logger, abi_stable::sabi_trait::TD_Opaque);
    let object = (module.new_backend())(options.into(), host.as_str().into(), logger)
        .into_result()
        .map_err(error)?;
    Ok(LegacyBackend { object })
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireScope {
    Task {
        dag_id: String,
        run_id: String,
        task_id: String,
        map_index: i64,
    },
    Asset {
        name: Option<String>,
        uri: Option<String>,
    },
}

#[derive(Deserialize)]
struct WireObject {
    scope: WireScope,
    key: String,
    reference: String,
    #[serde(default)]
    modified_unix_ms: Option<i64>,
}

impl LegacyBackend {
    pub(crate) fn serialize(
        &self,
        at: StateKey<'_>,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        let answer = match old(at.scope)? {
            Old::Task(t) => {
                self.object
                    .serialize_task_state((&t).into(), at.key.into(), value.into())
            }
            Old::Asset(a) => {
                self.object
                    .serialize_asset_state((&a).into(), at.key.into(), value.into())
            }
        };
        match answer.into_result().map_err(error)? {
            ROption::RSome(r) => text(r, "a reference").map(Serialized::Reference),
            ROption::RNone => Ok(Serialized::Inline),
        }
    }

    pub(crate) fn deserialize(
        &self,
        reference: &str,
        at: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError> {
        // 1.x reads task and asset state through two entry points; the row
        // says which, or else the reference's 1.x layout does.
        let asset = match at {
            Some(at) => matches!(at.scope, ScopeRef::Asset(_)),
            None => reference.starts_with("asset/"),
        };
        let answer = if asset {
            self.object.deserialize_asset_state(reference.into())
        } else {
            self.object.deserialize_task_state(reference.into())
        };
        answer
            .into_result()
            .map(|s| Text::Plugin(s.into_bytes()))
            .map_err(error)
    }

    pub(crate) fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        match old(at.scope)? {
            Old::Task(t) => self.object.delete_task_state((&t).into(), at.key.into()),
            Old::Asset(a) => self.object.delete_asset_state((&a).into(), at.key.into()),
        }
        .into_result()
        .map_err(error)
    }

    pub(crate) fn clear(
        &self,
        scope: ScopeRef<'_>,
        all_map_indices: bool,
    ) -> Result<(), BackendError> {
        match old(scope)? {
            Old::Task(t) => self.object.clear_task_state((&t).into(), all_map_indices),
            Old::Asset(a) => self.object.clear_asset_state((&a).into()),
        }
        .into_result()
        .map_err(error)
    }

    pub(crate) fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError> {
        let request = match scope {
            None => serde_json::json!({ "scope": null }),
            Some(ScopeRef::Task(t)) => serde_json::json!({"scope": {
                "kind": "task", "dag_id": t.dag_id(), "run_id": t.run_id(),
                "task_id": t.task_id(), "map_index": t.map_index(),
            }}),
            Some(ScopeRef::Asset(identity)) => {
                let (name, uri) = match identity {
                    AssetIdentity::Name(n) => (Some(n), None),
                    AssetIdentity::Uri(u) => (None, Some(u)),
                };
                serde_json::json!({"scope": {"kind": "asset", "name": name, "uri": uri}})
            }
        }
        .to_string();
        let json = self
            .object
            .list(request.as_str().into())
            .into_result()
            .map_err(error)?;
        let wire: Vec<WireObject> =
            serde_json::from_slice(json.into_bytes().as_slice()).map_err(|e| {
                BackendError::invalid_input(format!("the plugin's listing is not valid JSON: {e}"))
            })?;
        wire.into_iter()
            .map(|o| {
                let scope = match o.scope {
                    WireScope::Task {
                        dag_id,
                        run_id,
                        task_id,
                        map_index,
                    } => Scope::Task(TaskScope::new(dag_id, run_id, task_id, map_index)?),
                    WireScope::Asset { name, uri } => Scope::Asset(AssetScope::new(name, uri)?),
                };
                Ok(Listed {
                    reference: o.reference,
                    write_id: None,
                    modified: o
                        .modified_unix_ms
                        .and_then(statehost_plugin_api::__private::from_unix_ms),
                    owner: Some((scope, o.key)),
                })
            })
            .collect()
    }

    pub(crate) fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        let request = serde_json::json!({
            "older_than_unix_ms": statehost_plugin_api::__private::unix_ms(older_than).unwrap_or(0)
        })
        .to_string();
        let answer = match self
            .object
            .extension("sweep".into(), request.as_str().into())
            .into_result()
        {
            Ok(answer) => answer,
            Err(e) => {
                let e = error(e);
                return if e.kind() == ErrorKind::Unsupported {
                    Ok(0)
                } else {
                    Err(e)
                };
            }
        };
        let answer: serde_json::Value = serde_json::from_slice(answer.into_bytes().as_slice())
            .map_err(|e| {
                BackendError::invalid_input(format!("the plugin's sweep answer is not JSON: {e}"))
            })?;
        answer["removed"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| BackendError::invalid_input("the plugin's sweep answer has no count"))
    }
}
