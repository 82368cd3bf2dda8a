//! `fs`: a state backend that keeps each value in a file under a root
//! directory.
//!
//! ```toml
//! [workers]
//! state_backend = "fs"
//!
//! [backends.fs]
//! root = "state"               # relative to the config file
//! inline_threshold_bytes = 0   # values whose JSON is shorter stay inline
//! fsync = true                 # flush each value and its directory to disk
//! ```
//!
//! The backend is a [`PathStore`]: files by relative path; plugin-api's
//! shared layout does the rest. Each write of a value is a file of its own,
//! `<root>/<layout path>` (see [`statehost_plugin_api::layout`]): every
//! component percent-encoded (long
//! ones hashed), so no key or scope reaches outside the root, and named by
//! the write id, so a write never replaces another. The relative path is
//! also the reference. Writes go to a temporary file in the same directory
//! (named `.tmp-*`, which no value's name can be), are flushed, and are
//! renamed into place, so a reader or a crash sees the value or nothing,
//! never a part.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use statehost_plugin_api::{
    BackendError, BackendPlugin, Capabilities, ErrorKind, HostContext, Options, PathStore,
    export_backend,
};

/// Options of `[backends.fs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FsOptions {
    root: PathBuf,
    #[serde(default)]
    inline_threshold_bytes: usize,
    #[serde(default = "yes")]
    fsync: bool,
}

fn yes() -> bool {
    true
}

/// Prefix of temporary files; the layout never produces a name starting
/// with `.`.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Values as files under a root directory.
#[derive(Debug)]
pub struct FsBackend {
    root: PathBuf,
    inline_threshold_bytes: usize,
    fsync: bool,
}

/// How often a write or clear is retried when a concurrent clear or delete
/// removes a directory under it.
const RACE_RETRIES: usize = 5;

impl FsBackend {
    /// A backend rooted at `root` (created if missing) that stores every
    /// value and flushes each write.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BackendError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| {
            BackendError::new(
                ErrorKind::Config,
                format!(
                    "[backends.fs] root {}: cannot create it ({e}); point root at a writable directory",
                    root.display()
                ),
            )
        })?;
        Ok(FsBackend {
            root,
            inline_threshold_bytes: 0,
            fsync: true,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_once(&self, dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let create = || {
            tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(dir)
        };
        // The directory usually exists: create it only when it does not,
        // rather than paying for a mkdir and a stat on every write.
        let mut temp = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create_dirs(dir)?;
                create()?
            }
            other => other?,
        };
        temp.write_all(bytes)?;
        if self.fsync {
            temp.as_file().sync_all()?;
        }
        // The name is the write id's: nothing is ever there to replace.
        temp.persist(path).map_err(|e| e.error)?;
        if self.fsync {
            // Make the rename itself durable.
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Creates `dir` and the directories above it that are missing; with
    /// `fsync`, each new directory's entry is flushed into its parent, so a
    /// file acknowledged in it survives a power loss.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.exists() && at != self.root {
            missing.push(at);
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {
                    if self.fsync
                        && let Some(parent) = dir.parent()
                    {
                        fs::File::open(parent)?.sync_all()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes empty directories from `dir` up to (not including) the
    /// layout's top-level directories (`v2/task`, `v2/asset/name`, ...).
    /// Best effort: a directory that is not empty, or that another thread
    /// removed, ends the walk.
    fn prune(&self, mut dir: &Path) {
        while let Ok(relative) = dir.strip_prefix(&self.root) {
            if relative.components().count() <= 2 || fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
    }

    fn remove_tree(&self, relative: &str) -> Result<(), BackendError> {
        let dir = self.root.join(relative);
        let mut attempt = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // A concurrent write added a file while the tree was being
                // removed: go again.
                Err(e)
                    if e.kind() == io::ErrorKind::DirectoryNotEmpty && attempt < RACE_RETRIES =>
                {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BackendError::from_io(
                        format_args!("removing {}", dir.display()),
                        e,
                    ));
                }
            }
        }
        if let Some(parent) = dir.parent() {
            self.prune(parent);
        }
        Ok(())
    }

    /// Removes temporary files (of writes a crash interrupted) last modified
    /// before `older_than`, under `dir`.
    fn sweep_dir(&self, dir: &Path, older_than: SystemTime, removed: &mut usize) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                self.sweep_dir(&entry.path(), older_than, removed)?;
            } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified < older_than)
            {
                match fs::remove_file(entry.path()) {
                    Ok(()) => *removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Every regular file under `dir`, by its path relative to the root.
    fn walk(&self, dir: &Path, out: &mut Vec<(String, Option<SystemTime>)>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_type = entry.file_type()?;
            let path = entry.path();
            if file_type.is_dir() {
                self.walk(&path, out)?;
            } else if file_type.is_file()
                && let Some(relative) = path.strip_prefix(&self.root).ok().and_then(|p| p.to_str())
            {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                out.push((relative.to_string(), modified));
            }
        }
        Ok(())
    }
}

impl PathStore for FsBackend {
    fn inline_below(&self) -> usize {
        self.inline_threshold_bytes
    }

    fn put(&self, relative: &str, value: &str) -> Result<(), BackendError> {
        let path = self.root.join(relative);
        let dir = path.parent().expect("layout paths have a parent");
        let mut attempt = 0;
        loop {
            match self.write_once(dir, &path, value.as_bytes()) {
                Ok(()) => return Ok(()),
                // A concurrent clear or delete removed the directory between
                // creating it and renaming into it: do it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < RACE_RETRIES => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BackendError::from_io(
                        format_args!("writing {}", path.display()),
                        e,
                    ));
                }
            }
        }
    }

    fn get(&self, relative: &str) -> Result<String, BackendError> {
        let path = self.root.join(relative);
        fs::read_to_string(&path)
            .map_err(|e| BackendError::from_io(format_args!("reading {}", path.display()), e))
    }

    fn remove(&self, relative: &str) -> Result<bool, BackendError> {
        let path = self.root.join(relative);
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    // A delete that survives a power loss: no deleted value
                    // comes back.
                    if self.fsync {
                        fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| {
                                BackendError::from_io(format_args!("flushing {}", dir.display()), e)
                            })?;
                    }
                    self.prune(dir);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BackendError::from_io(
                format_args!("deleting {}", path.display()),
                e,
            )),
        }
    }

    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        self.remove_tree(prefix)
    }

    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let dir = self.root.join(prefix);
        let mut out = Vec::new();
        self.walk(&dir, &mut out)
            .map_err(|e| BackendError::from_io(format_args!("listing {}", dir.display()), e))?;
        Ok(out)
    }

    fn sweep_leftovers(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        let mut removed = 0;
        self.sweep_dir(&self.root, older_than, &mut removed)
            .map_err(|e| {
                BackendError::from_io(format_args!("sweeping {}", self.root.display()), e)
            })?;
        Ok(removed)
    }
}

impl BackendPlugin for FsBackend {
    const NAME: &'static str = "fs";
    const DESCRIPTION: &'static str =
        "each value a file under a root directory, written atomically (temp file, fsync, rename)";
    const CAPABILITIES: Capabilities = Capabilities::LIST.with_sweep();

    fn new(options: &Options, host: &HostContext) -> Result<Self, BackendError> {
        let options: FsOptions = options.parse(Self::NAME)?;
        let mut backend = FsBackend::open(host.resolve_path(&options.root))?;
        backend.inline_threshold_bytes = options.inline_threshold_bytes;
        backend.fsync = options.fsync;
        Ok(backend)
    }
}

export_backend!(FsBackend);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use statehost_plugin_api::{
        ScopeRef, Serialized, StateBackend, StateKey, TaskScope, conformance,
    };

    fn backend(dir: &Path, options: serde_json::Value) -> Result<FsBackend, BackendError> {
        <FsBackend as BackendPlugin>::new(
            &Options::new(options),
            &HostContext::new().with_config_dir(dir),
        )
    }

    fn write(fs: &FsBackend, scope: &TaskScope, key: &str, value: &str) -> Serialized {
        fs.serialize(StateKey::task(scope, key), conformance::write_id(), value)
            .unwrap()
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    out.extend(files_under(&path));
                } else {
                    out.push(path);
                }
            }
        }
        out
    }

    #[test]
    fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(dir.path(), json!({"root": "state"})).unwrap();
        conformance::run(&fs);
        // Everything landed under the root, resolved against the config
        // dir, and the suite cleaned up after itself.
        assert!(dir.path().join("state/v2/task").is_dir());
        assert_eq!(
            files_under(&dir.path().join("state")),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn no_key_reaches_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(dir.path(), json!({"root": "state", "fsync": false})).unwrap();
        let scope = TaskScope::new("..", "../..", "/etc", -1).unwrap();
        for key in ["../../../../escape", "/abs", "..", "."] {
            write(&fs, &scope, key, "1");
        }
        let outside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("state")]);
    }

    #[test]
    fn tampered_references_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret"), "\"s\"").unwrap();
        let fs = backend(dir.path(), json!({"root": "state"})).unwrap();
        for reference in ["../secret", "/etc/passwd", "v2/../../secret", ""] {
            let err = fs.deserialize(reference, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{reference}: {err}");
            let err = fs.delete_object(reference, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{reference}: {err}");
        }
        assert!(dir.path().join("secret").exists());
    }

    #[test]
    fn values_below_the_threshold_stay_inline() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(
            dir.path(),
            json!({"root": dir.path(), "inline_threshold_bytes": 10}),
        )
        .unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        assert_eq!(write(&fs, &scope, "k", "\"short\""), Serialized::Inline);
        assert!(!dir.path().join("v2").exists());
        assert!(matches!(
            write(&fs, &scope, "k", "\"long enough\""),
            Serialized::Reference(_)
        ));
    }

    #[test]
    fn bad_options_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = backend(dir.path(), json!({"root": "x", "rooot": "y"})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("rooot"), "{err}");
        let err = backend(dir.path(), json!({})).unwrap_err();
        assert!(err.message().contains("root"), "{err}");
        let err = backend(dir.path(), json!({"root": "x", "fsync": "yes"})).unwrap_err();
        assert!(err.message().contains("invalid type"), "{err}");
    }

    #[test]
    fn sweep_removes_old_temporary_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(dir.path(), json!({"root": "s", "fsync": false})).unwrap();
        let scope = TaskScope::new("d", "r", "t", 0).unwrap();
        let Serialized::Reference(kept) = write(&fs, &scope, "kept", "1") else {
            panic!("stored inline")
        };
        let leftover = dir.path().join("s/v2/task/d/r/t/0/kept/.tmp-crashed");
        fs::write(&leftover, "half a val").unwrap();
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(fs.sweep(past).unwrap(), 0, "too young to sweep");
        assert_eq!(
            fs.sweep(SystemTime::now() + std::time::Duration::from_secs(1))
                .unwrap(),
            1
        );
        assert!(!leftover.exists());
        assert!(dir.path().join("s").join(kept).exists());
    }

    #[test]
    fn deletes_and_clear_leave_no_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(dir.path(), json!({"root": "s", "fsync": false})).unwrap();
        let scope = TaskScope::new("d", "r", "t", 0).unwrap();
        let top = dir.path().join("s/v2/task");
        let Serialized::Reference(r) = write(&fs, &scope, "a", "1") else {
            panic!("stored inline")
        };
        fs.delete_object(&r, Some(StateKey::task(&scope, "a")))
            .unwrap();
        assert_eq!(fs::read_dir(&top).unwrap().count(), 0);
        write(&fs, &scope, "a", "1");
        fs.delete(StateKey::task(&scope, "a")).unwrap();
        assert_eq!(fs::read_dir(&top).unwrap().count(), 0);
        write(&fs, &scope, "a", "1");
        fs.clear(ScopeRef::Task(scope.as_ref()), true).unwrap();
        assert_eq!(fs::read_dir(&top).unwrap().count(), 0);
    }

    #[test]
    fn objects_written_before_the_upgrade_still_read_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let fs = backend(dir.path(), json!({"root": "s", "fsync": false})).unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let old = dir.path().join("s/task/d/r/t/-1/k");
        fs::create_dir_all(old.parent().unwrap()).unwrap();
        fs::write(&old, "\"from 1.x\"").unwrap();
        let owner = Some(StateKey::task(&scope, "k"));
        assert_eq!(
            fs.deserialize("task/d/r/t/-1/k", owner).unwrap(),
            "\"from 1.x\""
        );
        let listed = fs.list(None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].write_id, None);
        assert!(fs.delete_object("task/d/r/t/-1/k", owner).unwrap());
        assert!(!old.exists());
    }
}
