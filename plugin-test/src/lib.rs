//! The test kit for statehost backend authors.
//!
//! * [`load`] loads a built plugin library (`libstatehost_<name>.so`)
//!   through the host's own loader, with the checks and the boundary the
//!   host uses in production, and constructs its backend from options;
//!   [`Plugin::conformance`] then runs the conformance suite on it.
//! * [`Scratch`] gives a temporary directory (removed when dropped) and a
//!   [`HostContext`] rooted in it, to construct a backend in-process in a
//!   unit test, as the host would.
//! * [`Logs`] captures what a backend logs, to assert on it.
//!
//! Everything a test creates goes under a temporary directory that is
//! removed when the value holding it is dropped, and the conformance suite
//! clears every scope it wrote, so a run against a real store leaves
//! nothing behind.
//!
//! ```no_run
//! use serde_json::json;
//!
//! #[test]
//! fn the_built_library_conforms() {
//!     // `cargo test` builds the crate's cdylib; this finds it.
//!     let library = statehost_plugin_test::built_library("statehost_tiny").unwrap();
//!     // Relative paths in the options land in the plugin's scratch directory.
//!     let plugin = statehost_plugin_test::load(library, json!({"root": "objects"})).unwrap();
//!     plugin.conformance();
//! }
//! # fn main() {}
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use statehost::config::BackendOptions;
use statehost::plugin::{LoadPolicy, LoadedBackend, load_library};
use statehost_plugin_api::{BackendError, BackendPlugin, HostContext, Metadata, Options};

pub use statehost::Error;
pub use statehost_plugin_api::conformance::CHECKS;

/// A backend loaded from its library, with a scratch directory that its
/// relative paths resolve into.
#[derive(Debug)]
pub struct Plugin {
    backend: Arc<LoadedBackend>,
    scratch: Scratch,
}

/// Loads the plugin library at `library` through the host's loader and
/// constructs its backend from `options` (the `[backends.<name>]` table, as
/// JSON). Relative paths in the options are relative to a fresh temporary
/// directory, removed when the [`Plugin`] is dropped.
///
/// The error is the host's own, one line, as `statehost check` would print
/// it: not a shared library, built against another plugin-api, options
/// refused by the backend, ...
pub fn load(
    library: impl AsRef<Path>,
    options: serde_json::Value,
) -> Result<Plugin, statehost::Error> {
    load_with(library, &BackendOptions::new(options))
}

/// [`load`], with options some of which come from environment variables.
pub fn load_with(
    library: impl AsRef<Path>,
    options: &BackendOptions,
) -> Result<Plugin, statehost::Error> {
    let scratch = Scratch::new();
    let library = load_library(library.as_ref(), &LoadPolicy::default())?;
    let backend = LoadedBackend::construct(library, options, Some(scratch.path()), None)?;
    Ok(Plugin {
        backend: Arc::new(backend),
        scratch,
    })
}

impl Plugin {
    /// The backend, as the host calls it.
    pub fn backend(&self) -> &LoadedBackend {
        &self.backend
    }

    /// What the plugin says about itself.
    pub fn metadata(&self) -> &Metadata {
        self.backend.metadata()
    }

    /// The scratch directory relative paths in the options resolve into.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Runs the conformance suite; panics on the first failure, naming the
    /// check.
    pub fn conformance(&self) {
        if let Err(failure) = self.check() {
            panic!("{failure}");
        }
    }

    /// Runs the conformance suite and reports the first failure instead of
    /// panicking. `starting` is called with each check's name before it
    /// runs.
    pub fn check_reporting(
        &self,
        mut starting: impl FnMut(&'static str),
    ) -> Result<(), ConformanceFailure> {
        let mut current = "";
        let result = catch_unwind(AssertUnwindSafe(|| {
            statehost_plugin_api::conformance::run_reporting(self.backend.as_ref(), |name| {
                current = name;
                starting(name);
            });
        }));
        result.map_err(|payload| ConformanceFailure {
            check: current,
            message: panic_text(&*payload),
        })
    }

    /// [`check_reporting`](Plugin::check_reporting) without the callback.
    pub fn check(&self) -> Result<(), ConformanceFailure> {
        self.check_reporting(|_| {})
    }
}

/// The first conformance check a backend failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailure {
    /// The check (one of [`CHECKS`]).
    pub check: &'static str,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conformance check {} failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ConformanceFailure {}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A temporary directory, removed when dropped, and a host context rooted
/// in it: what a backend constructed in a unit test needs.
///
/// ```
/// use serde_json::json;
/// use statehost_plugin_test::Scratch;
///
/// let scratch = Scratch::new();
/// let context = scratch.context();
/// // Relative paths in options resolve into the scratch directory.
/// assert_eq!(context.resolve_path("objects"), scratch.path().join("objects"));
/// let options = scratch.options(json!({"root": "objects"}));
/// assert_eq!(options.as_json()["root"], "objects");
/// ```
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// A fresh directory under the system's temporary directory.
    ///
    /// # Panics
    ///
    /// When no temporary directory can be created: a test cannot go on.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("statehost-plugin-test-")
                .tempdir()
                .expect("cannot create a temporary directory"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside it.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The host context a backend gets: relative paths resolve into the
    /// scratch directory, as they would into the config file's.
    pub fn context(&self) -> HostContext {
        HostContext::new().with_config_dir(self.dir.path())
    }

    /// Options, as the host hands them over.
    pub fn options(&self, table: serde_json::Value) -> Options {
        Options::new(table)
    }

    /// Constructs backend `B` in-process from `table`, with this scratch's
    /// context: what the host does after loading the library.
    pub fn construct<B: BackendPlugin>(&self, table: serde_json::Value) -> Result<B, BackendError> {
        B::new(&self.options(table), &self.context())
    }
}

/// What backends log, captured for assertions.
///
/// The first call installs a logger for the whole test process (a process
/// has one); records from every thread are kept.
///
/// ```
/// let logs = statehost_plugin_test::Logs::capture();
/// log::warn!(target: "my_backend", "disk almost full");
/// assert!(logs.contains("disk almost full"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Logs {
    records: &'static Mutex<Vec<LogRecord>>,
}

/// One captured log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: log::Level,
    /// Its target (by default the module that logged).
    pub target: String,
    /// The message.
    pub message: String,
}

struct Capture(Mutex<Vec<LogRecord>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LogRecord {
                level: record.level(),
                target: record.target().to_string(),
                message: record.args().to_string(),
            });
    }

    fn flush(&self) {}
}

impl Logs {
    /// Starts capturing (once per process) and returns the capture.
    ///
    /// # Panics
    ///
    /// When another logger was installed first.
    pub fn capture() -> Logs {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        let capture = CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::default())));
            log::set_logger(capture).expect("another logger is installed in this test process");
            log::set_max_level(log::LevelFilter::Trace);
            capture
        });
        Logs {
            records: &capture.0,
        }
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<LogRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether any record's message contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.message.contains(text))
    }
}

/// The path of the plugin library built for `lib_name` (the `[lib] name`,
/// like `statehost_tiny`) in the target directory and profile that built
/// the calling test, found from the test executable's own location:
/// `target/<profile>/deps/lib<lib_name>.so`, which `cargo test` builds for
/// a `cdylib` crate, or `target/<profile>/lib<lib_name>.so` from `cargo
/// build`, whichever is newer. `None` when neither is there.
pub fn built_library(lib_name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // Test executables live in target/<profile>/deps/.
    let deps = exe.parent()?;
    let profile = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()?
    } else {
        deps
    };
    let file = format!("lib{lib_name}.so");
    [deps.join(&file), profile.join(&file)]
        .into_iter()
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use statehost_memory::MemoryBackend;

    use super::*;

    #[test]
    fn scratch_constructs_in_process_backends() {
        let scratch = Scratch::new();
        let backend: MemoryBackend = scratch.construct(json!({})).unwrap();
        statehost_plugin_api::conformance::run(&backend);
        let err = scratch
            .construct::<MemoryBackend>(json!({"nonsense": 1}))
            .unwrap_err();
        assert!(err.message().contains("nonsense"), "{err}");
    }

    #[test]
    fn scratch_directories_go_when_dropped() {
        let scratch = Scratch::new();
        let path = scratch.path().to_path_buf();
        std::fs::write(scratch.join("x"), "1").unwrap();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn loading_something_that_is_not_a_library_fails_with_one_line() {
        let scratch = Scratch::new();
        let fake = scratch.join("libstatehost_fake.so");
        std::fs::write(&fake, "not elf").unwrap();
        let err = load(&fake, json!({})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not a shared library"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
