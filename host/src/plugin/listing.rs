//! A plugin's metadata read from its library file, without loading it:
//! loading runs a library's code (its initialisers), and listing the plugin
//! directory must not run every library that lies there.

use std::path::Path;

use object::{Object, ObjectSection};
use statehost_plugin_api::__private::{SECTION, decode};
use statehost_plugin_api::Metadata;

use super::LoadPolicy;
use super::guard::guard;
use crate::error::{Error, Result};

/// Reads the metadata that `export_backend!` wrote into the library's
/// `.statehost_meta` section, after the same checks as a load (name,
/// confinement, a regular file, owner and permissions, an ELF header).
/// Nothing of the library runs.
pub fn read_metadata(path: &Path, policy: &LoadPolicy) -> Result<Metadata> {
    let file = guard(path, policy)?;
    // Only the parts the parser asks for are read.
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| Error::NotSharedLibrary {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let section = elf
        .section_by_name(SECTION)
        .ok_or_else(|| Error::NoMetadata {
            path: path.to_path_buf(),
        })?;
    let bytes = section.data().map_err(|e| Error::PluginBroken {
        path: path.to_path_buf(),
        message: format!("its metadata section cannot be read ({e})"),
    })?;
    decode(bytes).map_err(|message| Error::PluginBroken {
        path: path.to_path_buf(),
        message,
    })
}
