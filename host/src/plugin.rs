//! Finding, loading and constructing backend plugins.
//!
//! Each library is loaded by path (never through abi_stable's per-type
//! singleton loaders, which would hand back the first library for every
//! later path), checked, and kept for the life of the process: libraries are
//! never unloaded. Loading runs the library's initialisers, so loading a
//! plugin means trusting it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use abi_stable::std_types::RStr;
use statehost_plugin_api::__private::{
    self as abi, AbiLogger, LibraryError, PluginModuleRef, WireHostContext,
};
use statehost_plugin_api::{
    AssetScope, BackendError, Metadata, PLUGIN_API_VERSION, Scope, Serialized, StateBackend,
    StoredObject, TaskScope,
};

use crate::config::Config;
use crate::error::{Error, Result};

/// File names of plugins: `libstatehost_<name>.so`.
pub const LIBRARY_PREFIX: &str = "libstatehost_";
/// See [`LIBRARY_PREFIX`].
pub const LIBRARY_SUFFIX: &str = ".so";

/// Where a configured backend comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLocation {
    /// The plugin's name (for a path, taken from the file name).
    pub name: String,
    /// The library file.
    pub path: PathBuf,
    /// Whether the name was looked up in the plugin directory.
    pub from_plugins_dir: bool,
}

/// Whether `name` is a valid bare plugin name: `[a-z0-9_]+`.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Resolves `[workers] state_backend`: a bare name to
/// `<plugins_dir>/libstatehost_<name>.so`, anything with a `/` to that path
/// (relative to `base_dir`), anything else to an error.
pub fn resolve(value: &str, plugins_dir: &Path, base_dir: &Path) -> Result<PluginLocation> {
    if value.contains('/') {
        let path = base_dir.join(value);
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        let name = file
            .strip_prefix(LIBRARY_PREFIX)
            .unwrap_or(file)
            .strip_suffix(LIBRARY_SUFFIX)
            .unwrap_or(file)
            .to_string();
        return Ok(PluginLocation {
            name,
            path,
            from_plugins_dir: false,
        });
    }
    if !is_plugin_name(value) {
        return Err(Error::InvalidBackendName {
            value: value.to_string(),
        });
    }
    Ok(PluginLocation {
        name: value.to_string(),
        path: plugins_dir.join(format!("{LIBRARY_PREFIX}{value}{LIBRARY_SUFFIX}")),
        from_plugins_dir: true,
    })
}

/// The plugin libraries in `dir`, sorted: `(name, path)`.
pub fn discover(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        message: format!("cannot read the plugin directory ({e}); set [core] plugins_dir"),
    })?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file = entry.file_name().into_string().ok()?;
            let name = file
                .strip_prefix(LIBRARY_PREFIX)?
                .strip_suffix(LIBRARY_SUFFIX)?
                .to_string();
            Some((name, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// A loaded, checked plugin library.
pub struct PluginLibrary {
    path: PathBuf,
    module: PluginModuleRef,
    metadata: Metadata,
    /// The hash of the loaded bytes, when a pin asked for it.
    sha256: Option<String>,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl PluginLibrary {
    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the plugin says about itself.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

type LibraryCache = Mutex<HashMap<PathBuf, Result<Arc<PluginLibrary>>>>;

/// The checks made before a library is loaded (loading runs its code).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadPolicy {
    /// Load files and directories that group or others can write, or that
    /// another user owns, with a warning instead of refusing them.
    pub allow_insecure_permissions: bool,
    /// The SHA-256 (lowercase hex) the library's bytes must have.
    pub sha256: Option<String>,
    /// The library must resolve, after following symlinks, to a file inside
    /// this directory (set for plugins named by a bare name).
    pub confine_to: Option<PathBuf>,
}

impl LoadPolicy {
    /// The policy for the configured backend: the config's permissions
    /// switch and pin, confined to the plugin directory for a bare name.
    pub fn for_config(config: &Config, location: &PluginLocation) -> LoadPolicy {
        LoadPolicy {
            allow_insecure_permissions: config.allow_insecure_plugin_permissions,
            sha256: config.state_backend_sha256.clone(),
            confine_to: location
                .from_plugins_dir
                .then(|| config.plugins_dir.clone()),
        }
    }
}

/// Loads the library at `path` once per process, after the guards of
/// `policy`; later calls (and later failures) come from the cache.
pub fn load_library(path: &Path, policy: &LoadPolicy) -> Result<Arc<PluginLibrary>> {
    static CACHE: OnceLock<LibraryCache> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(done) = cache.get(&key) {
        let done = done.clone()?;
        // Already loaded: the pin must match the bytes that were loaded.
        if let Some(pin) = &policy.sha256
            && done.sha256.as_deref() != Some(pin.as_str())
        {
            return Err(Error::PluginRefused {
                path: path.to_path_buf(),
                reason: format!(
                    "it is already loaded in this process {}, not with the pinned sha256 {pin}; restart the process",
                    match &done.sha256 {
                        Some(h) => format!("with sha256 {h}"),
                        None => "without a pin".to_string(),
                    }
                ),
            });
        }
        return Ok(done);
    }
    let result = open(path, policy).map(Arc::new);
    if let Err(e) = &result {
        log::debug!("loading {} failed: {e}", path.display());
    }
    cache.insert(key, result.clone());
    result
}

fn refused(path: &Path, reason: String) -> Error {
    Error::PluginRefused {
        path: path.to_path_buf(),
        reason,
    }
}

/// Ownership and write permissions of the library or its directory.
fn check_permissions(
    path: &Path,
    what: &str,
    meta: &std::fs::Metadata,
    policy: &LoadPolicy,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let problem = if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "the {what} {} is owned by uid {}, neither you (uid {me}) nor root; `chown` it",
            path.display(),
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "the {what} {} is writable by group or others (mode {:o}); run `chmod go-w {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) if policy.allow_insecure_permissions => {
            log::warn!(
                "loading anyway because [core] allow_insecure_plugin_permissions = true: {problem}"
            );
            Ok(())
        }
        Some(problem) => Err(refused(
            path,
            format!(
                "{problem}, or set [core] allow_insecure_plugin_permissions = true to load it anyway"
            ),
        )),
    }
}

/// Everything that must hold before the library's code may run. Returns the
/// opened file: the bytes that were checked are the bytes that get loaded.
fn guard(path: &Path, policy: &LoadPolicy) -> Result<std::fs::File> {
    use std::io::Read;
    let canonical = std::fs::canonicalize(path).map_err(|e| Error::PluginUnreadable {
        path: path.to_path_buf(),
        message: format!("cannot open it ({e})"),
    })?;
    if let Some(dir) = &policy.confine_to {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if !canonical.starts_with(&dir) {
            return Err(refused(
                path,
                format!(
                    "it leads to {}, outside the plugin directory {}; install the library itself there, or name it by path",
                    canonical.display(),
                    dir.display()
                ),
            ));
        }
    }
    let mut file = std::fs::File::open(&canonical).map_err(|e| Error::PluginUnreadable {
        path: path.to_path_buf(),
        message: format!("cannot open it ({e})"),
    })?;
    let meta = file.metadata().map_err(|e| Error::PluginUnreadable {
        path: path.to_path_buf(),
        message: format!("cannot read its metadata ({e})"),
    })?;
    if !meta.is_file() {
        return Err(refused(path, "it is not a regular file".to_string()));
    }
    check_permissions(&canonical, "library", &meta, policy)?;
    if let Some(dir) = canonical.parent()
        && let Ok(dir_meta) = std::fs::metadata(dir)
    {
        check_permissions(dir, "directory", &dir_meta, policy)?;
    }
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == *b"\x7fELF" => {}
        Ok(()) => {
            return Err(Error::NotSharedLibrary {
                path: path.to_path_buf(),
                reason: "the file has no ELF header".to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Error::NotSharedLibrary {
                path: path.to_path_buf(),
                reason: "the file is too short to be one".to_string(),
            });
        }
        Err(e) => {
            return Err(Error::PluginUnreadable {
                path: path.to_path_buf(),
                message: format!("cannot read it ({e})"),
            });
        }
    }
    Ok(file)
}

fn sha256_of(file: &mut std::fs::File) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn open(path: &Path, policy: &LoadPolicy) -> Result<PluginLibrary> {
    use std::os::fd::AsRawFd;
    let mut file = guard(path, policy)?;
    let sha256 = match &policy.sha256 {
        None => None,
        Some(pin) => {
            let actual = sha256_of(&mut file).map_err(|e| Error::PluginUnreadable {
                path: path.to_path_buf(),
                message: format!("cannot read it to hash it ({e})"),
            })?;
            if &actual != pin {
                return Err(refused(
                    path,
                    format!(
                        "its sha256 is {actual} but [workers] state_backend_sha256 pins {pin}; install the pinned build or update the pin"
                    ),
                ));
            }
            Some(actual)
        }
    };
    // Load the file that was checked, through its open descriptor, so that
    // swapping the path after the checks changes nothing.
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let load_path = if fd_path.exists() {
        fd_path
    } else {
        path.to_path_buf()
    };
    let loaded = abi::lib_header_from_path(&load_path);
    if !matches!(loaded, Err(LibraryError::OpenError { .. })) {
        // The dynamic linker now knows the library by the name
        // /proc/self/fd/N and would hand it back for any later library that
        // got the same descriptor number: keep the descriptor open for the
        // life of the process (libraries are never unloaded anyway).
        std::mem::forget(file);
    }
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
    let built_with = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber { .. } => Error::IncompatiblePlugin {
                path: path.to_path_buf(),
                built_with: built_with.clone(),
                expected: PLUGIN_API_VERSION.to_string(),
                problem: "an incompatible version".to_string(),
            },
            // abi_stable's own report is many kilobytes of type layouts:
            // the versions say what the operator needs to know.
            LibraryError::AbiInstability(_) => Error::IncompatiblePlugin {
                path: path.to_path_buf(),
                built_with: built_with.clone(),
                expected: PLUGIN_API_VERSION.to_string(),
                problem: "whose interface layout differs from this host's".to_string(),
            },
            other => Error::PluginBroken {
                path: path.to_path_buf(),
                message: format!(
                    "its root module failed to initialise: {}",
                    first_line(&other.to_string())
                ),
            },
        })?;
    let metadata = abi::read_metadata(module).map_err(|e| Error::PluginBroken {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(PluginLibrary {
        path: path.to_path_buf(),
        module,
        metadata,
        sha256,
    })
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Sends a plugin's log records to the host's logger, under the plugin's
/// name (`statehost::plugin::<name>`).
struct PluginLogger {
    target: String,
}

impl AbiLogger for PluginLogger {
    fn log(&self, level: u8, _target: RStr<'_>, message: RStr<'_>) {
        let level = match level {
            1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        };
        if level > log::max_level() {
            return;
        }
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(&self.target)
                .args(format_args!("{}", message.as_str()))
                .build(),
        );
    }
}

/// A backend constructed from a loaded plugin. It implements
/// [`StateBackend`], so the rest of the host does not care whether a backend
/// is in-process or behind a `.so`.
#[derive(Debug)]
pub struct LoadedBackend {
    library: Arc<PluginLibrary>,
    backend: abi::ForeignBackend,
}

impl LoadedBackend {
    /// Loads the library at `path` (once per process) and constructs a
    /// backend from `options`; relative paths in the options are relative to
    /// `config_dir`.
    pub fn load(
        path: &Path,
        options: &serde_json::Value,
        config_dir: Option<&Path>,
    ) -> Result<LoadedBackend> {
        LoadedBackend::construct(
            load_library(path, &LoadPolicy::default())?,
            options,
            config_dir,
        )
    }

    /// Constructs a backend from an already loaded library.
    pub fn construct(
        library: Arc<PluginLibrary>,
        options: &serde_json::Value,
        config_dir: Option<&Path>,
    ) -> Result<LoadedBackend> {
        let name = library.metadata.name.clone();
        let context = WireHostContext {
            config_dir: config_dir.map(|d| d.display().to_string()),
            max_level: Some(log::max_level().to_string().to_lowercase()),
        };
        let options = if options.is_null() {
            String::new()
        } else {
            options.to_string()
        };
        let logger = PluginLogger {
            target: format!("statehost::plugin::{name}"),
        };
        let backend =
            abi::construct(library.module, &options, &context, logger).map_err(|error| {
                Error::Construct {
                    plugin: name.clone(),
                    error,
                }
            })?;
        log::debug!(
            "constructed backend `{name}` {} from {}",
            library.metadata.version,
            library.path.display()
        );
        Ok(LoadedBackend { library, backend })
    }

    /// What the plugin says about itself.
    pub fn metadata(&self) -> &Metadata {
        &self.library.metadata
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.library.path
    }
}

impl StateBackend for LoadedBackend {
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.backend.serialize_task_state(scope, key, value)
    }
    fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError> {
        self.backend.deserialize_task_state(reference)
    }
    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.backend.serialize_asset_state(scope, key, value)
    }
    fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError> {
        self.backend.deserialize_asset_state(reference)
    }
    fn visit_task_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        self.backend.visit_task_state(reference, visit)
    }
    fn visit_asset_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        self.backend.visit_asset_state(reference, visit)
    }
    fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError> {
        self.backend.delete(scope, key)
    }
    fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError> {
        self.backend.clear(scope, all_map_indices)
    }
    fn list(&self, scope: Option<&Scope>) -> Result<Vec<StoredObject>, BackendError> {
        self.backend.list(scope)
    }
    fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        self.backend.sweep(older_than)
    }
}

/// Loads the configured backend: resolution, library, construction, with
/// the "no such plugin" error listing what the plugin directory holds.
pub fn load_configured(config: &Config) -> Result<Option<LoadedBackend>> {
    let Some(spec) = config.state_backend.as_deref() else {
        return Ok(None);
    };
    let location = resolve(spec, &config.plugins_dir, &config.base_dir)?;
    if !location.path.exists() {
        if location.from_plugins_dir {
            let available = discover(&config.plugins_dir)
                .map(|found| found.into_iter().map(|(name, _)| name).collect())
                .unwrap_or_default();
            return Err(Error::PluginNotFound {
                name: location.name,
                path: location.path,
                available,
            });
        }
        return Err(Error::PluginUnreadable {
            path: location.path,
            message: "no such file; check [workers] state_backend".to_string(),
        });
    }
    let library = load_library(&location.path, &LoadPolicy::for_config(config, &location))?;
    // Options come from the section named in the config; for a path, from
    // the plugin's own name.
    let section = if location.from_plugins_dir {
        location.name.clone()
    } else {
        library.metadata.name.clone()
    };
    if library.metadata.name != section {
        log::warn!(
            "{} calls itself `{}` but was configured as `{section}`; reading options from [backends.{section}]",
            location.path.display(),
            library.metadata.name
        );
    }
    LoadedBackend::construct(
        library,
        &config.backend_options(&section),
        Some(&config.base_dir),
    )
    .map(Some)
}

type SharedSlot = Mutex<Option<(String, Result<Option<Arc<LoadedBackend>>>)>>;

/// The process's one backend instance, shared by every caller and thread.
///
/// The first call loads and constructs it (or fails, once); later calls with
/// the same backend and options get the same instance (or the same error)
/// without touching the library again. A call for a different backend is an
/// error: libraries are never unloaded, so switching needs a restart.
pub fn shared_backend(config: &Config) -> Result<Option<Arc<LoadedBackend>>> {
    static SHARED: SharedSlot = Mutex::new(None);
    let identity = match config.state_backend.as_deref() {
        None => return Ok(None),
        Some(spec) => {
            let location = resolve(spec, &config.plugins_dir, &config.base_dir)?;
            let options = config.backend_options(&location.name);
            let pin = config.state_backend_sha256.as_deref().unwrap_or("none");
            format!(
                "{} with options {options} (sha256 pin: {pin})",
                location.path.display()
            )
        }
    };
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    match &*slot {
        Some((loaded, result)) if *loaded == identity => result.clone(),
        Some((loaded, _)) => Err(Error::OtherBackendLoaded {
            loaded: loaded.clone(),
            requested: identity,
        }),
        None => {
            let result = load_configured(config).map(|b| b.map(Arc::new));
            if let Err(e) = &result {
                log::debug!(
                    "the configured backend failed to load, and will not be tried again in this process: {e}"
                );
            }
            *slot = Some((identity, result.clone()));
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_into_the_plugin_directory() {
        let loc = resolve("fs", Path::new("/p"), Path::new("/c")).unwrap();
        assert_eq!(loc.path, PathBuf::from("/p/libstatehost_fs.so"));
        assert!(loc.from_plugins_dir);
        let loc = resolve("./x/libstatehost_s3.so", Path::new("/p"), Path::new("/c")).unwrap();
        assert_eq!(loc.path, PathBuf::from("/c/./x/libstatehost_s3.so"));
        assert_eq!(loc.name, "s3");
        for bad in ["..", "Fs", "f-s", "fs.so", "f s", "é"] {
            assert!(
                matches!(
                    resolve(bad, Path::new("/p"), Path::new("/c")),
                    Err(Error::InvalidBackendName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_elf_files_are_refused_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libstatehost_text.so");
        std::fs::write(&path, "not a library at all").unwrap();
        let err = load_library(&path, &LoadPolicy::default()).unwrap_err();
        assert!(matches!(err, Error::NotSharedLibrary { .. }), "{err}");
        assert!(err.to_string().contains("no ELF header"), "{err}");
    }
}
