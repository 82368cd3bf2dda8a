//! The host's error type.

use std::path::PathBuf;

use statehost_plugin_api::BackendError;

/// Everything that can go wrong in the host. Each message is one line that
/// names what failed and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong.
    #[error("{source_name}: {message}")]
    Config {
        /// The file (with line) or environment variable at fault.
        source_name: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// `state_backend` is neither a plugin name nor a path.
    #[error(
        "[workers] state_backend = {value:?} is not a plugin name: use lowercase letters, digits and _ (like \"fs\"), or a path containing /"
    )]
    InvalidBackendName {
        /// The configured value.
        value: String,
    },

    /// A named plugin has no library in the plugin directory.
    #[error("no plugin `{name}`: {} does not exist; {}", path.display(), available_hint(available))]
    PluginNotFound {
        /// The plugin name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// Names of the plugins that are there.
        available: Vec<String>,
    },

    /// A plugin path that does not exist or cannot be read.
    #[error("plugin {}: {message}", path.display())]
    PluginUnreadable {
        /// The library path.
        path: PathBuf,
        /// Why.
        message: String,
    },

    /// A loading guard refused the library before it was loaded.
    #[error("plugin {}: refused: {reason}", path.display())]
    PluginRefused {
        /// The library path.
        path: PathBuf,
        /// Which guard, and how to satisfy it.
        reason: String,
    },

    /// The file is not a shared library.
    #[error("plugin {}: not a shared library ({reason}); point state_backend at a libstatehost_<name>.so built as a cdylib", path.display())]
    NotSharedLibrary {
        /// The library path.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },

    /// A shared library without a statehost root module.
    #[error("plugin {}: a shared library but not a statehost plugin (it exports no statehost root module); build it with statehost_plugin_api::export_backend!", path.display())]
    NotAPlugin {
        /// The library path.
        path: PathBuf,
    },

    /// A library without the metadata section `export_backend!` writes.
    #[error("plugin {}: not a statehost plugin, or built with a plugin-api older than 2.1 (it has no metadata section); `statehost plugins --load` loads it to ask", path.display())]
    NoMetadata {
        /// The library path.
        path: PathBuf,
    },

    /// A plugin built against an incompatible plugin-api.
    #[error("plugin {}: built against statehost-plugin-api {built_with}, {problem}; this host expects statehost-plugin-api {expected}: rebuild the plugin against it", path.display())]
    IncompatiblePlugin {
        /// The library path.
        path: PathBuf,
        /// The plugin-api version the plugin reports.
        built_with: String,
        /// The version this host was built with.
        expected: String,
        /// Version or layout.
        problem: String,
    },

    /// The plugin failed while initialising its module or metadata.
    #[error("plugin {}: {message}", path.display())]
    PluginBroken {
        /// The library path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The backend's constructor failed or panicked.
    #[error("backend `{plugin}` could not start: {error}{}", construct_hint(error))]
    Construct {
        /// The plugin name.
        plugin: String,
        /// What the plugin said.
        error: BackendError,
    },

    /// Another backend is already loaded in this process.
    #[error(
        "backend {loaded} is already loaded in this process and libraries are never unloaded; restart the process to use {requested}"
    )]
    OtherBackendLoaded {
        /// What is loaded.
        loaded: String,
        /// What was asked for.
        requested: String,
    },

    /// No backend is configured where one is needed.
    #[error(
        "no state backend is configured: set [workers] state_backend in the config (or STATEHOST__WORKERS__STATE_BACKEND)"
    )]
    NoBackend,

    /// A key, value or scope the caller passed is not acceptable.
    #[error("{message}")]
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A caller that only reads found no metadata database where the
    /// configuration points.
    #[error("no metadata database at {}: nothing was ever stored with {}; point the configuration at the database the workers use ([database] url)", path.display(), config_hint(config))]
    NoDatabase {
        /// Where it was looked for.
        path: PathBuf,
        /// The config file that named it (`None`: the default location).
        config: Option<PathBuf>,
    },

    /// The metadata store failed; nothing was changed.
    #[error("metadata store: {message}")]
    Store {
        /// What failed.
        message: String,
    },

    /// A write to the metadata store whose outcome is unknown (the
    /// connection dropped after the commit was sent, a disk error during
    /// the commit): it may or may not have been applied. Nothing is undone
    /// or retried; the next read tells.
    #[error(
        "metadata store: {message}; the write may or may not have been applied: read the key to find out"
    )]
    OutcomeUnknown {
        /// What failed.
        message: String,
    },

    /// The backend failed an operation.
    #[error("backend `{plugin}` failed to {operation} {scope} key {key:?}: {error}")]
    Backend {
        /// The backend's name.
        plugin: String,
        /// What was being done.
        operation: &'static str,
        /// The scope.
        scope: String,
        /// The key (empty for scope-wide operations).
        key: String,
        /// What the backend said.
        error: BackendError,
    },

    /// What was asked happened (rows deleted, a gc pass done), but objects
    /// no row needs any more could not all be deleted; gc removes them once
    /// they are older than the orphan grace.
    #[error("{message}")]
    Cleanup {
        /// What was done, and what is left.
        message: String,
    },

    /// A stored row cannot be read back as a value.
    #[error("corrupt state for {scope} key {key:?}: {message}")]
    Corrupt {
        /// The scope.
        scope: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// A file-system operation of the host failed.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Text for a message, cut to a readable length: ids and keys may be a
/// kilobyte each, and a message names several.
pub(crate) fn short(text: &str) -> String {
    const SHOW: usize = 80;
    if text.len() <= SHOW {
        return text.to_string();
    }
    let mut end = SHOW;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        "the plugin directory holds no plugins; build them with `cargo build --release --workspace` or set [core] plugins_dir".to_string()
    } else {
        format!("available: {}", available.join(", "))
    }
}

fn config_hint(config: &Option<PathBuf>) -> String {
    match config {
        Some(file) => format!("the config file {}", file.display()),
        None => "the default configuration (no config file was given or found: pass --config, set STATEHOST_CONFIG or create ./statehost.toml)".to_string(),
    }
}

fn construct_hint(error: &BackendError) -> &'static str {
    match error.kind() {
        statehost_plugin_api::ErrorKind::Config => " (fix the backend's section in the config)",
        _ => "",
    }
}

impl Error {
    /// Whether the operation may have been applied despite the error (see
    /// [`Error::OutcomeUnknown`]).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Whether the error is the caller's to fix: the configuration, a name,
    /// a key or value, a plugin path that names no plugin (missing,
    /// unreadable, not a shared library, or a library that is not a
    /// statehost plugin), or a backend error of kind `Config` or
    /// `InvalidInput` (see the error contract in the plugin-api docs). The
    /// command line exits with 2 for these and 3 for the rest (a plugin a
    /// guard refused or that is incompatible or broken is 3: the path is
    /// right, the file is not).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::InvalidBackendName { .. }
            | Error::PluginNotFound { .. }
            | Error::PluginUnreadable { .. }
            | Error::NotSharedLibrary { .. }
            | Error::NotAPlugin { .. }
            | Error::NoBackend
            | Error::NoDatabase { .. }
            | Error::InvalidInput { .. } => true,
            Error::Construct { error, .. } | Error::Backend { error, .. } => matches!(
                error.kind(),
                statehost_plugin_api::ErrorKind::Config
                    | statehost_plugin_api::ErrorKind::InvalidInput
            ),
            _ => false,
        }
    }
}

/// The host's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
