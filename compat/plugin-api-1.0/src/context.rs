//! What a backend receives when it is constructed.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::BackendError;

/// The backend's options: the `[backends.<name>]` table of the host's
/// configuration, as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    value: serde_json::Value,
}

impl Options {
    /// Options from a JSON value (`null` means no options).
    pub fn new(value: serde_json::Value) -> Self {
        Options { value }
    }

    /// Options from JSON text.
    pub fn from_json(text: &str) -> Result<Self, BackendError> {
        let value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(text)
                .map_err(|e| BackendError::config(format!("options are not valid JSON: {e}")))?
        };
        Ok(Options { value })
    }

    /// The raw JSON.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.value
    }

    /// Deserializes the options into the backend's own options struct.
    ///
    /// Mark the struct `#[serde(deny_unknown_fields)]` so an unknown key is
    /// rejected by name; the error names the offending key and the backend
    /// section. Missing options deserialize from an empty table, so
    /// `#[serde(default)]` fields work when the section is absent.
    pub fn parse<T: DeserializeOwned>(&self, backend: &str) -> Result<T, BackendError> {
        let value = match &self.value {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            other => other.clone(),
        };
        serde_json::from_value(value)
            .map_err(|e| BackendError::config(format!("[backends.{backend}]: {e}")))
    }
}

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
