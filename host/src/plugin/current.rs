//! The host's half of the plugin-api 2.x boundary: a backend object made by
//! a loaded plugin, driven through the `abi_stable` types the plugin side
//! exports.

use abi_stable::std_types::{ROption, RResult};
use statehost_plugin_api::__private::{
    AbiLogger_TO, AbiOwner, BackendObject, ListRequest, PluginModuleRef, WireHostContext,
    WireObject, from_unix_ms, unix_ms,
};
use statehost_plugin_api::{BackendError, Metadata, ScopeRef, Serialized, StateKey, WriteId};

use super::logging::PluginLogger;
use crate::backend::{Listed, Reference, Text};

/// A backend living in a loaded 2.x plugin.
pub(crate) struct CurrentBackend {
    object: BackendObject,
}

impl std::fmt::Debug for CurrentBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentBackend").finish_non_exhaustive()
    }
}

/// Reads and decodes a plugin's metadata.
pub(crate) fn read_metadata(module: PluginModuleRef) -> Result<Metadata, BackendError> {
    let json = (module.metadata())();
    serde_json::from_slice(json.into_bytes().as_slice()).map_err(|e| {
        BackendError::invalid_input(format!("the plugin's metadata is not valid: {e}"))
    })
}

/// Constructs a backend through a plugin's root module.
pub(crate) fn construct(
    module: PluginModuleRef,
    options: &str,
    host: &WireHostContext,
    logger: PluginLogger,
) -> Result<CurrentBackend, BackendError> {
    let host = serde_json::to_string(host).unwrap_or_default();
    let logger = AbiLogger_TO::from_value(logger, abi_stable::sabi_trait::TD_Opaque);
    let object = (module.new_backend())(options.into(), host.as_str().into(), logger)
        .into_result()
        .map_err(|e| e.into_error())?;
    Ok(CurrentBackend { object })
}

#[cold]
fn reference_not_utf8(e: std::str::Utf8Error) -> BackendError {
    BackendError::invalid_input(format!(
        "the plugin returned a reference that is not UTF-8 ({e})"
    ))
}

#[cold]
pub(super) fn value_not_utf8(e: std::str::Utf8Error) -> BackendError {
    BackendError::invalid_input(format!(
        "the plugin returned a value that is not UTF-8 ({e})"
    ))
}

#[inline]
fn owner(at: Option<StateKey<'_>>) -> ROption<AbiOwner<'_>> {
    match at {
        Some(at) => ROption::RSome(at.into()),
        None => ROption::RNone,
    }
}

impl CurrentBackend {
    pub(crate) fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        match self.serialize_lent(at, write_id, value)? {
            // Checked as it crossed; copied into the host's memory here.
            Some(Reference::Plugin(r)) => Ok(Serialized::Reference(r.as_str().to_owned())),
            Some(Reference::Host(r)) => Ok(Serialized::Reference(r)),
            None => Ok(Serialized::Inline),
        }
    }

    /// The reference stays in the plugin's buffer: no copy, one UTF-8
    /// check.
    pub(crate) fn serialize_lent(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Option<Reference>, BackendError> {
        // Matched where the call left it: moving the answer through
        // `into_result` and `?` copies it twice, and those copies cost more
        // than the call (a wide load of fields just stored narrow stalls).
        match self.object.serialize(
            at.scope.into(),
            at.key.into(),
            write_id.into(),
            value.into(),
        ) {
            // Its bytes, not `as_str` (which assumes what is checked here).
            RResult::ROk(ROption::RSome(r)) => {
                match crate::backend::utf8(r.as_rstr().as_rslice().as_slice()) {
                    Ok(_) => Ok(Some(Reference::Plugin(r))),
                    Err(e) => Err(reference_not_utf8(e)),
                }
            }
            RResult::ROk(ROption::RNone) => Ok(None),
            RResult::RErr(e) => Err(e.into_error()),
        }
    }

    /// The value, in the plugin's own buffer: no copy.
    pub(crate) fn deserialize(
        &self,
        reference: &str,
        at: Option<StateKey<'_>>,
    ) -> Result<Text, BackendError> {
        match self.object.deserialize(reference.into(), owner(at)) {
            RResult::ROk(s) => Ok(Text::Plugin(s.into_bytes())),
            RResult::RErr(e) => Err(e.into_error()),
        }
    }

    /// The value, copied into the host's memory and checked for UTF-8.
    pub(crate) fn deserialize_owned(
        &self,
        reference: &str,
        at: Option<StateKey<'_>>,
    ) -> Result<String, BackendError> {
        self.deserialize(reference, at)?
            .into_string()
            .map_err(value_not_utf8)
    }

    pub(crate) fn delete_object(
        &self,
        reference: &str,
        at: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        match self.object.delete_object(reference.into(), owner(at)) {
            RResult::ROk(there) => Ok(there),
            RResult::RErr(e) => Err(e.into_error()),
        }
    }

    pub(crate) fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.object
            .delete(at.scope.into(), at.key.into())
            .into_result()
            .map_err(|e| e.into_error())
    }

    pub(crate) fn clear(
        &self,
        scope: ScopeRef<'_>,
        all_map_indices: bool,
    ) -> Result<(), BackendError> {
        self.object
            .clear(scope.into(), all_map_indices)
            .into_result()
            .map_err(|e| e.into_error())
    }

    pub(crate) fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<Listed>, BackendError> {
        let request = ListRequest {
            scope: scope.map(Into::into),
        };
        let request = serde_json::to_string(&request).unwrap_or_default();
        let json = self
            .object
            .list(request.as_str().into())
            .into_result()
            .map_err(|e| e.into_error())?;
        let wire: Vec<WireObject> =
            serde_json::from_slice(json.into_bytes().as_slice()).map_err(|e| {
                BackendError::invalid_input(format!("the plugin's listing is not valid JSON: {e}"))
            })?;
        wire.into_iter()
            .map(|o| {
                let write_id = match o.write_id {
                    None => None,
                    Some(text) => Some(text.parse::<WriteId>().map_err(|_| {
                        BackendError::invalid_input(format!(
                            "the plugin's listing holds {text:?} as the write id of {:?}",
                            o.reference
                        ))
                    })?),
                };
                Ok(Listed {
                    reference: o.reference,
                    write_id,
                    modified: o.modified_unix_ms.and_then(from_unix_ms),
                    owner: None,
                })
            })
            .collect()
    }

    pub(crate) fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        self.object
            .sweep(unix_ms(older_than).unwrap_or(0))
            .into_result()
            .map(|n| n as usize)
            .map_err(|e| e.into_error())
    }
}
