//! What the host tells a backend about its surroundings.

use std::path::{Path, PathBuf};

/// What the host tells a backend about its surroundings.
///
/// Logging needs nothing from here: use the `log` macros as usual and the
/// records come out of the host's logger, under the plugin's name, filtered
/// by the host's level.
#[derive(Debug, Clone, Default)]
pub struct HostContext {
    pub(crate) config_dir: Option<PathBuf>,
}

impl HostContext {
    /// A context for a backend constructed in-process (tests, embedding).
    pub fn new() -> Self {
        HostContext::default()
    }

    /// Sets the directory that relative paths in options are relative to.
    pub fn with_config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(dir.into());
        self
    }

    /// The directory holding the host's configuration file, if there is one.
    pub fn config_dir(&self) -> Option<&Path> {
        self.config_dir.as_deref()
    }

    /// Resolves a path from the options: absolute paths stay as they are,
    /// relative ones are taken relative to the configuration file's directory
    /// (or the working directory when there is no file).
    pub fn resolve_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        match &self.config_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}
