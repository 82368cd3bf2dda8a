//! Loading a checked library: dlopen through the very file the guards
//! checked, then the root module of the plugin-api major version the
//! library was built against (2.x, or 1.x served with fencing).

use std::path::Path;

use abi_stable::library::{LibHeader, LibraryError, lib_header_from_path};
use statehost_plugin_api::{Metadata, PLUGIN_API_VERSION};

use super::exact::{self, PinError, Places};
use super::guard::{guard, refused};
use super::{LoadPolicy, Module, PluginLibrary, current, v1};
use crate::error::{Error, Result};

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Guards, loads and checks the library at `path`.
pub(super) fn open(path: &Path, policy: &LoadPolicy) -> Result<PluginLibrary> {
    let file = guard(path, policy)?;
    let places = Places::default();
    // Load the file that was checked, through its open descriptor or a
    // private copy, so that swapping the path after the checks changes
    // nothing; a pinned library is never loaded any other way.
    let (exact, sha256) = match &policy.sha256 {
        None => (exact::unpinned(file, path, &places), None),
        Some(pin) => match exact::pinned(file, pin, &places) {
            Ok(exact) => (exact, Some(pin.clone())),
            Err(PinError::Mismatch(actual)) => {
                return Err(refused(
                    path,
                    format!(
                        "its sha256 is {actual} but [workers] state_backend_sha256 pins {pin}; install the pinned build or update the pin"
                    ),
                ));
            }
            Err(PinError::Unavailable(why)) => {
                return Err(refused(
                    path,
                    format!("[workers] state_backend_sha256 pins it, but {why}"),
                ));
            }
        },
    };
    let loaded = lib_header_from_path(exact.path());
    exact.loaded(!matches!(loaded, Err(LibraryError::OpenError { .. })));
    let header = loaded.map_err(|e| match e {
        LibraryError::OpenError { err, .. } => Error::NotSharedLibrary {
            path: path.to_path_buf(),
            reason: first_line(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => Error::NotAPlugin {
            path: path.to_path_buf(),
        },
        other => Error::PluginBroken {
            path: path.to_path_buf(),
            message: format!(
                "it was built with an incompatible abi_stable ({}); rebuild it against statehost-plugin-api {PLUGIN_API_VERSION}",
                first_line(&other.to_string())
            ),
        },
    })?;
    let (module, metadata) = root_module(path, header)?;
    Ok(PluginLibrary {
        path: path.to_path_buf(),
        module,
        metadata,
        sha256,
    })
}

/// The root module of the interface the library was built against.
fn root_module(path: &Path, header: &'static LibHeader) -> Result<(Module, Metadata)> {
    let built_with = header.version_strings().version.to_string();
    let incompatible = |problem: &str| Error::IncompatiblePlugin {
        path: path.to_path_buf(),
        built_with: built_with.clone(),
        expected: PLUGIN_API_VERSION.to_string(),
        problem: problem.to_string(),
    };
    let checked = |e: LibraryError| match e {
        LibraryError::IncompatibleVersionNumber { .. } => incompatible("an incompatible version"),
        // abi_stable's own report is many kilobytes of type layouts: the
        // versions say what the operator needs to know.
        LibraryError::AbiInstability(_) => {
            incompatible("whose interface layout differs from this host's")
        }
        other => Error::PluginBroken {
            path: path.to_path_buf(),
            message: format!(
                "its root module failed to initialise: {}",
                first_line(&other.to_string())
            ),
        },
    };
    let broken = |e: statehost_plugin_api::BackendError| Error::PluginBroken {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    match built_with.split('.').next() {
        Some("1") => {
            let module = header.init_root_module::<v1::Module>().map_err(checked)?;
            let metadata = v1::read_metadata(module).map_err(broken)?;
            Ok((Module::V1(module), metadata))
        }
        _ => {
            let module = header
                .init_root_module::<statehost_plugin_api::__private::PluginModuleRef>()
                .map_err(checked)?;
            let metadata = current::read_metadata(module).map_err(broken)?;
            Ok((Module::Current(module), metadata))
        }
    }
}
