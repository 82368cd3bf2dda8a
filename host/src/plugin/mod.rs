//! Finding, checking, loading and constructing backend plugins: the host's
//! half of the plugin boundary.
//!
//! This folder owns everything between a name in the config and a backend
//! the host can call: resolving the name (this file), the guards that run
//! before any of a library's code does (`guard`), loading it through the
//! file that was checked and picking the interface it was built against
//! (`load`), the two interfaces' host halves (`current` for plugin-api 2.x,
//! `v1` for 1.x) and the log bridge (`logging`). It knows nothing of rows,
//! envelopes or deadlines.
//!
//! Each library is loaded by path (never through abi_stable's per-type
//! singleton loaders, which would hand back the first library for every
//! later path), checked, and kept for the life of the process: libraries are
//! never unloaded. Loading runs the library's initialisers, so loading a
//! plugin means trusting it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use statehost_plugin_api::__private::{PluginModuleRef, WireHostContext};
use statehost_plugin_api::{
    BackendError, Capabilities, Metadata, ScopeRef, Serialized, StateBackend, StateKey,
    StoredObject, WriteId,
};

use crate::backend::{Backend, Listed, Reference, Text, unsupported};
use crate::config::{BackendOptions, Config};
use crate::error::{Error, Result};

mod current;
mod exact;
mod guard;
mod listing;
mod load;
mod logging;
mod v1;

pub use listing::read_metadata;
use logging::PluginLogger;

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

/// The root module of a loaded library, by the interface it was built
/// against.
#[derive(Clone, Copy)]
enum Module {
    Current(PluginModuleRef),
    V1(v1::Module),
}

/// A loaded, checked plugin library.
pub struct PluginLibrary {
    path: PathBuf,
    module: Module,
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

    /// Whether it was built against plugin-api 1.x (one object per key,
    /// overwritten in place; served with in-process fencing).
    pub fn is_legacy(&self) -> bool {
        matches!(self.module, Module::V1(_))
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
    let result = load::open(path, policy).map(Arc::new);
    if let Err(e) = &result {
        log::debug!("loading {} failed: {e}", path.display());
    }
    cache.insert(key, result.clone());
    result
}

/// A backend made by a loaded library.
enum Loaded {
    Current(current::CurrentBackend),
    Legacy(v1::LegacyBackend),
}

/// A backend constructed from a loaded plugin. It implements the host's
/// [`Backend`] (reads lend the plugin's buffer) and, for callers outside
/// the host, [`StateBackend`], so neither the host nor the tests care
/// whether a backend is in-process or behind a `.so`.
pub struct LoadedBackend {
    library: Arc<PluginLibrary>,
    backend: Loaded,
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
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
            &BackendOptions::new(options.clone()),
            config_dir,
            None,
        )
    }

    /// Constructs a backend from an already loaded library. With a
    /// `deadline`, a constructor that has not returned by then is abandoned
    /// (it goes on in the background; what it makes is dropped).
    pub fn construct(
        library: Arc<PluginLibrary>,
        options: &BackendOptions,
        config_dir: Option<&Path>,
        deadline: Option<Duration>,
    ) -> Result<LoadedBackend> {
        let name = library.metadata.name.clone();
        // From here on, the backend's secrets are never printed.
        crate::secrets::register_options(&options.table, &library.metadata.secret_options);
        let env_keys = options.env_keys.clone();
        let options = if options.table.is_null() {
            String::new()
        } else {
            options.table.to_string()
        };
        let config_dir = config_dir.map(|d| d.display().to_string());
        let max_level = Some(log::max_level().to_string().to_lowercase());
        let logger = PluginLogger::new(&name);
        let module = library.module;
        let make = move || match module {
            Module::Current(module) => current::construct(
                module,
                &options,
                &WireHostContext {
                    config_dir,
                    max_level,
                    env_keys,
                },
                logger,
            )
            .map(Loaded::Current),
            Module::V1(module) => {
                v1::construct(module, &options, config_dir, max_level, logger).map(Loaded::Legacy)
            }
        };
        let backend = match deadline {
            None => make(),
            Some(deadline) => within(deadline, make).unwrap_or_else(|| {
                Err(BackendError::unavailable(format!(
                    "it did not start within {} ms ([workers] state_backend_timeout_ms); is its storage reachable?",
                    deadline.as_millis()
                )))
            }),
        }
        .map_err(|error| Error::Construct {
            plugin: name.clone(),
            error,
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

    /// Whether it was built against plugin-api 1.x.
    pub fn is_legacy(&self) -> bool {
        self.library.is_legacy()
    }
}

/// Runs `f` on a thread of its own and waits for it until `deadline`;
/// `None` if it has not finished by then (it goes on, its result dropped).
fn within<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("statehost-construct".into())
        .spawn(move || {
            let _ = sender.send(f());
        })
        .ok()?;
    receiver.recv_timeout(deadline).ok()
}

const LEGACY_WRITE: &str = "this plugin was built against plugin-api 1.x: it overwrites one object per key and cannot keep a write of its own; the host serves it with in-process fencing";

impl Backend for LoadedBackend {
    fn unique_references(&self) -> bool {
        !self.is_legacy()
    }

    fn capabilities(&self) -> Capabilities {
        self.library.metadata.capability_flags()
    }

    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> std::result::Result<Serialized, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.serialize(at, write_id, value),
            Loaded::Legacy(b) => b.serialize(at, value),
        }
    }

    fn serialize_lent(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> std::result::Result<Option<Reference>, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.serialize_lent(at, write_id, value),
            Loaded::Legacy(b) => Ok(match b.serialize(at, value)? {
                Serialized::Reference(r) => Some(Reference::Host(r)),
                Serialized::Inline => None,
            }),
        }
    }

    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<Text, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.deserialize(reference, owner),
            Loaded::Legacy(b) => b.deserialize(reference, owner),
        }
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<bool, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.delete_object(reference, owner),
            Loaded::Legacy(_) => Err(unsupported(
                "plugin-api 1.x backends cannot delete one exact object; delete the key instead",
            )),
        }
    }

    fn delete(&self, at: StateKey<'_>) -> std::result::Result<(), BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.delete(at),
            Loaded::Legacy(b) => b.delete(at),
        }
    }

    fn clear(
        &self,
        scope: ScopeRef<'_>,
        all_map_indices: bool,
    ) -> std::result::Result<(), BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.clear(scope, all_map_indices),
            Loaded::Legacy(b) => b.clear(scope, all_map_indices),
        }
    }

    fn list(&self, scope: Option<ScopeRef<'_>>) -> std::result::Result<Vec<Listed>, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.list(scope),
            Loaded::Legacy(b) => b.list(scope),
        }
    }

    fn sweep(&self, older_than: SystemTime) -> std::result::Result<usize, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.sweep(older_than),
            Loaded::Legacy(b) => b.sweep(older_than),
        }
    }
}

impl StateBackend for LoadedBackend {
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> std::result::Result<Serialized, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.serialize(at, write_id, value),
            Loaded::Legacy(_) => Err(unsupported(LEGACY_WRITE)),
        }
    }

    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<String, BackendError> {
        match &self.backend {
            Loaded::Current(b) => b.deserialize_owned(reference, owner),
            Loaded::Legacy(b) => b
                .deserialize(reference, owner)?
                .into_string()
                .map_err(current::value_not_utf8),
        }
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<bool, BackendError> {
        Backend::delete_object(self, reference, owner)
    }

    fn delete(&self, at: StateKey<'_>) -> std::result::Result<(), BackendError> {
        Backend::delete(self, at)
    }

    fn clear(
        &self,
        scope: ScopeRef<'_>,
        all_map_indices: bool,
    ) -> std::result::Result<(), BackendError> {
        Backend::clear(self, scope, all_map_indices)
    }

    fn list(
        &self,
        scope: Option<ScopeRef<'_>>,
    ) -> std::result::Result<Vec<StoredObject>, BackendError> {
        Ok(Backend::list(self, scope)?
            .into_iter()
            .map(|o| StoredObject {
                reference: o.reference,
                write_id: o.write_id,
                modified: o.modified,
            })
            .collect())
    }

    fn sweep(&self, older_than: SystemTime) -> std::result::Result<usize, BackendError> {
        Backend::sweep(self, older_than)
    }
}

/// Loads the configured backend: resolution, library, construction (within
/// the call deadline), with the "no such plugin" error listing what the
/// plugin directory holds.
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
        return Err(Error::Config {
            source_name: "[workers] state_backend".to_string(),
            message: format!(
                "{} does not exist; point it at a libstatehost_<name>.so, or give a plugin name",
                location.path.display()
            ),
        });
    }
    let library = load_library(&location.path, &LoadPolicy::for_config(config, &location))?;
    // Options come from the section of the plugin's own name, the one its
    // errors name; a library renamed on disk says so once.
    let section = library.metadata.name.clone();
    if location.from_plugins_dir && location.name != section {
        log::warn!(
            "{} calls itself `{section}` but was configured as `{}`; its options are read from [backends.{section}]",
            location.path.display(),
            location.name
        );
    }
    for warning in stray_sections(config, &[&section, &location.name]) {
        log::warn!("{warning}");
    }
    LoadedBackend::construct(
        library,
        &config.backend_options(&section),
        Some(&config.base_dir),
        config.limits.deadline,
    )
    .map(Some)
}

/// A warning for each `[backends.<name>]` section that no backend reads:
/// neither one of `in_use` nor a library in the plugin directory (a typo
/// would otherwise leave a backend silently on its defaults), naming the
/// closest name that would be read.
pub fn stray_sections(config: &Config, in_use: &[&str]) -> Vec<String> {
    let mut known: Vec<String> = in_use.iter().map(|n| n.to_string()).collect();
    if let Ok(found) = discover(&config.plugins_dir) {
        known.extend(found.into_iter().map(|(name, _)| name));
    }
    config
        .backends
        .keys()
        .filter(|name| !known.contains(name))
        .map(|name| {
            let closest = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(name, k), k))
                .min();
            let hint = match closest {
                Some((distance, k)) if distance <= name.len().max(k.len()) / 2 => {
                    format!("; did you mean [backends.{k}]?")
                }
                _ => format!(
                    "; the backends here are {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            };
            format!("[backends.{name}] belongs to no configured or installed backend and is ignored{hint}")
        })
        .collect()
}

/// The loaded backend, with what it was loaded as and in which process.
type SharedSlot = Mutex<Option<(String, u32, Result<Option<Arc<LoadedBackend>>>)>>;

/// The process's one backend instance, shared by every caller and thread.
///
/// The first call loads and constructs it (or fails, once); later calls with
/// the same backend and options get the same instance (or the same error)
/// without touching the library again. A call for a different backend is an
/// error: libraries are never unloaded, so switching needs a restart.
///
/// A process forked after the load gets an instance of its own, made in
/// it: the parent's may depend on threads (an I/O runtime, say) that a
/// fork does not copy. The parent's instance is left alone (dropping it
/// could wait for those threads).
pub fn shared_backend(config: &Config) -> Result<Option<Arc<LoadedBackend>>> {
    static SHARED: SharedSlot = Mutex::new(None);
    let identity = match config.state_backend.as_deref() {
        None => return Ok(None),
        Some(spec) => {
            let location = resolve(spec, &config.plugins_dir, &config.base_dir)?;
            // Every backend section: which one the plugin reads is known
            // only once it is loaded (its own name).
            let options = (&config.backends, &config.backend_env);
            let pin = config.state_backend_sha256.as_deref().unwrap_or("none");
            // The options by digest: their values may be secrets, and this
            // text ends up in an error message.
            let digest = {
                use sha2::Digest;
                let text = format!("{:?}", options);
                let hash = sha2::Sha256::digest(text.as_bytes());
                hash[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            format!(
                "{} with options #{digest} (sha256 pin: {pin})",
                location.path.display()
            )
        }
    };
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if slot
        .as_ref()
        .is_some_and(|(_, loaded_in, _)| *loaded_in != pid)
    {
        std::mem::forget(slot.take());
    }
    match &*slot {
        Some((loaded, _, result)) if *loaded == identity => result.clone(),
        Some((loaded, _, _)) => Err(Error::OtherBackendLoaded {
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
            *slot = Some((identity, pid, result.clone()));
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
