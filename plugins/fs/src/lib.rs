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
//! (named `.tmp-` and 16 hex digits, which no value's name can be), are
//! flushed, and are renamed into place, so a reader or a crash sees the
//! value or nothing, never a part.
//!
//! The root is a boundary: below it every directory is opened relative to
//! its parent without following links (see `tree.rs`), so a link planted in
//! a shared root leads nowhere: reads, writes, deletes and gc never touch a
//! file outside it. The root may not be empty, `/`, or the directory that
//! holds the configuration (or one above it), and gc's sweep removes only
//! this backend's own temporary files, in the layout's directories.

mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use statehost_plugin_api::{
    BackendError, BackendPlugin, Capabilities, ErrorKind, HostContext, Options, PathStore,
    export_backend, layout,
};

pub use tree::TEMP_PREFIX;
use tree::Tree;

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

/// The first directories of the layout: this version's, and 1.x's (whose
/// objects may still be there). Pruning never removes them, and the
/// leftover sweep looks nowhere else.
const LAYOUT_TOPS: [&str; 3] = [layout::LAYOUT_PREFIX, "task", "asset"];

/// How many leading components of a layout path pruning keeps
/// (`v2/task`, `v2/asset/name`, `task`, ...): the layout's fixed top.
fn kept_components(relative: &str) -> usize {
    match relative.split('/').next() {
        Some(top) if top == layout::LAYOUT_PREFIX => {
            if relative.starts_with("v2/asset/") {
                3
            } else {
                2
            }
        }
        _ => 1,
    }
}

/// Values as files under a root directory.
#[derive(Debug)]
pub struct FsBackend {
    tree: Tree,
    inline_threshold_bytes: usize,
}

fn config(message: String) -> BackendError {
    BackendError::new(ErrorKind::Config, format!("[backends.fs] root {message}"))
}

impl FsBackend {
    /// A backend rooted at `root` (created if missing) that stores every
    /// value and flushes each write. An empty path and `/` are refused.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BackendError> {
        FsBackend::open_with(root.into(), true, None)
    }

    /// Opens the root after checking it is a directory the backend may own:
    /// not empty, not `/`, not the directory holding the configuration or
    /// one above it (gc would sweep and prune among the operator's files).
    fn open_with(
        root: PathBuf,
        fsync: bool,
        config_dir: Option<&Path>,
    ) -> Result<Self, BackendError> {
        if root.as_os_str().is_empty() {
            return Err(config(
                "is empty; give a directory of its own for the values, like \"state\"".to_string(),
            ));
        }
        let tree = Tree::open(&root, fsync).map_err(|e| {
            config(format!(
                "{}: cannot open it ({e}); point root at a writable directory",
                root.display()
            ))
        })?;
        // A missing root is made by the first write (reading creates
        // nothing); what would hold it must be a directory.
        if let Some(blocker) = root
            .ancestors()
            .find(|p| p.symlink_metadata().is_ok())
            .filter(|p| !p.is_dir())
        {
            return Err(config(format!(
                "{}: cannot be created, {} is not a directory; point root at a writable directory",
                root.display(),
                blocker.display()
            )));
        }
        let canonical = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
        if canonical.parent().is_none() {
            return Err(config(format!(
                "{} is the file system's root; give a directory of its own for the values",
                root.display()
            )));
        }
        if let Some(dir) = config_dir
            && let Ok(dir) = std::fs::canonicalize(dir)
            && dir.starts_with(&canonical)
        {
            return Err(config(format!(
                "{} holds the configuration directory {}; give the values a directory of their own, like \"state\"",
                root.display(),
                dir.display()
            )));
        }
        Ok(FsBackend {
            tree,
            inline_threshold_bytes: 0,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    fn error(&self, doing: &str, relative: &str, e: io::Error) -> BackendError {
        let path = self.root().join(relative);
        if e.kind() == io::ErrorKind::InvalidInput {
            return BackendError::invalid_input(format!("{doing} {}: {e}", path.display()));
        }
        BackendError::from_io(format_args!("{doing} {}", path.display()), e)
    }
}

impl PathStore for FsBackend {
    fn inline_below(&self) -> usize {
        self.inline_threshold_bytes
    }

    fn put(&self, relative: &str, value: &str) -> Result<(), BackendError> {
        self.tree
            .write_new(relative, value.as_bytes())
            .map_err(|e| self.error("writing", relative, e))
    }

    fn get(&self, relative: &str) -> Result<String, BackendError> {
        self.tree
            .read(relative)
            .map_err(|e| self.error("reading", relative, e))
    }

    fn remove(&self, relative: &str) -> Result<bool, BackendError> {
        self.tree
            .remove(relative, kept_components(relative))
            .map_err(|e| self.error("deleting", relative, e))
    }

    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        self.tree
            .remove_tree(prefix, kept_components(prefix))
            .map_err(|e| self.error("removing", prefix, e))
    }

    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        self.tree
            .files_under(prefix)
            .map_err(|e| self.error("listing", prefix, e))
    }

    fn sweep_leftovers(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        let mut removed = 0;
        for top in LAYOUT_TOPS {
            removed += self
                .tree
                .sweep(top, older_than)
                .map_err(|e| self.error("sweeping", top, e))?;
        }
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
        // An empty root would resolve to the configuration's directory.
        let root = if options.root.as_os_str().is_empty() {
            options.root
        } else {
            host.resolve_path(&options.root)
        };
        let mut backend = FsBackend::open_with(root, options.fsync, host.config_dir())?;
        backend.inline_threshold_bytes = options.inline_threshold_bytes;
        Ok(backend)
    }
}

export_backend!(FsBackend);

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

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
            json!({"root": dir.path().join("s"), "inline_threshold_bytes": 10}),
        )
        .unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        assert_eq!(write(&fs, &scope, "k", "\"short\""), Serialized::Inline);
        assert!(!dir.path().join("s/v2").exists());
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
        let key_dir = dir.path().join("s/v2/task/d/r/t/0/kept");
        let leftover = key_dir.join(".tmp-00112233aabbccdd");
        let old_style = key_dir.join(".tmp-a1B2c3");
        fs::write(&leftover, "half a val").unwrap();
        fs::write(&old_style, "half a val").unwrap();
        // Not the backend's names, or not in the layout's directories: kept.
        let lookalike = key_dir.join(".tmp-notmine-at-all");
        let in_root = dir.path().join("s/.tmp-00112233aabbccdd");
        let beside = dir.path().join(".tmp-00112233aabbccdd");
        for other in [&lookalike, &in_root, &beside] {
            fs::write(other, "someone else's").unwrap();
        }
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(fs.sweep(past).unwrap(), 0, "too young to sweep");
        assert_eq!(
            fs.sweep(SystemTime::now() + std::time::Duration::from_secs(1))
                .unwrap(),
            2
        );
        assert!(!leftover.exists() && !old_style.exists());
        assert!(lookalike.exists() && in_root.exists() && beside.exists());
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
    fn roots_that_are_not_the_backends_own_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("etc");
        fs::create_dir(&config_dir).unwrap();
        let cases = [
            (json!({"root": ""}), "is empty"),
            (json!({"root": "/"}), "the file system's root"),
            (json!({"root": "."}), "holds the configuration directory"),
            (json!({"root": ".."}), "holds the configuration directory"),
            (
                json!({"root": config_dir}),
                "holds the configuration directory",
            ),
        ];
        for (options, why) in cases {
            let err = backend(&config_dir, options.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{options}");
            assert!(err.message().starts_with("[backends.fs] root"), "{err}");
            assert!(err.message().contains(why), "{options}: {err}");
        }
        assert!(backend(&config_dir, json!({"root": "state"})).is_ok());
        assert!(backend(&config_dir, json!({"root": dir.path().join("elsewhere")})).is_ok());
    }

    #[test]
    fn links_below_the_root_are_never_followed() {
        links_are_never_followed(false);
    }

    #[test]
    fn links_are_never_followed_without_openat2_either() {
        links_are_never_followed(true);
    }

    #[test]
    fn the_component_walk_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = backend(dir.path(), json!({"root": "state", "fsync": false})).unwrap();
        fs.tree.walk_only();
        conformance::run(&fs);
    }

    fn links_are_never_followed(walk_only: bool) {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("k")).unwrap();
        let victim = outside.join("k/0190a0b0-0000-7000-8000-000000000001");
        fs::write(&victim, "\"outside\"").unwrap();
        fs::write(outside.join(".tmp-00112233aabbccdd"), "old").unwrap();
        let mut fs = backend(dir.path(), json!({"root": "s", "fsync": false})).unwrap();
        if walk_only {
            fs.tree.walk_only();
        }
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        write(&fs, &scope, "other", "1");
        // A planted link where the task's directory goes.
        let task_dir = dir.path().join("s/v2/task/d/r/t/-1");
        symlink(&outside, task_dir.join("k")).unwrap();
        let at = StateKey::task(&scope, "k");
        let reference = "v2/task/d/r/t/-1/k/0190a0b0-0000-7000-8000-000000000001";
        let err = fs.deserialize(reference, Some(at)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().contains("never follows links"), "{err}");
        assert!(fs.delete_object(reference, Some(at)).is_err());
        // Writing through it is refused too.
        assert!(fs.serialize(at, conformance::write_id(), "1").is_err());
        // gc's listing and sweep do not enter it; delete and clear remove
        // the link itself.
        let listed = fs.list(None).unwrap();
        assert!(
            listed.iter().all(|o| !o.reference.contains("/k/")),
            "{listed:?}"
        );
        let far_future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(fs.sweep(far_future).unwrap(), 0);
        fs.delete(at).unwrap();
        assert!(!task_dir.join("k").exists());
        fs.clear(ScopeRef::Task(scope.as_ref()), true).unwrap();
        // Nothing outside was read, changed or removed.
        assert_eq!(fs::read_to_string(&victim).unwrap(), "\"outside\"");
        assert!(outside.join(".tmp-00112233aabbccdd").exists());

        // A link as a file, and a FIFO as a file: errors, never followed or
        // waited on.
        let Serialized::Reference(r) = write(&fs, &scope, "f", "1") else {
            panic!("stored inline")
        };
        let file = dir.path().join("s").join(&r);
        fs::remove_file(&file).unwrap();
        symlink(&victim, &file).unwrap();
        let owner = Some(StateKey::task(&scope, "f"));
        assert!(fs.deserialize(&r, owner).is_err());
        fs::remove_file(&file).unwrap();
        let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = fs.deserialize(&r, owner).unwrap_err();
        assert!(err.message().contains("not a regular file"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "\"outside\"");
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
