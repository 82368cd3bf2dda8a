//! Helpers for statehost's cross-crate integration tests.
//!
//! The tests never trust whatever happens to sit in `target/`: the first
//! test that needs a plugin or the CLI runs one nested `cargo build
//! --message-format=json` for the plugins, the fixtures and the `statehost`
//! binary, and takes the artifact paths cargo reports.

pub mod history;
pub mod paired;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use statehost::StateHost;
use statehost::backend::Limits;
use statehost::config::StateStoreSettings;
use statehost::plugin::LoadedBackend;
use statehost::store::{MetadataStore, SqliteLocation, SqliteStore};

/// The packages the tests load as plugins, and the binary they drive.
const PACKAGES: &[&str] = &[
    "statehost-cli",
    "statehost-tests",
    "statehost-object-store",
    "statehost-memory",
    "statehost-fs",
    "statehost-fixture-faulty",
    "statehost-fixture-abi-mismatch",
    "statehost-fixture-not-a-plugin",
    "statehost-fixture-v1-memory",
    "statehost-fixture-v22-memory",
];

/// What the nested build produced.
#[derive(Debug)]
pub struct Artifacts {
    /// Shared library per library target name (`statehost_fs`,
    /// `fixture_faulty`, ...).
    pub libraries: HashMap<String, PathBuf>,
    /// The `statehost` executable.
    pub statehost: PathBuf,
    /// The `state-worker` test helper.
    pub worker: PathBuf,
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Builds the plugins, fixtures and CLI (dev profile) once per test binary.
pub fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| build(false))
}

/// The same, built with `--release`, for benchmarks.
pub fn release_artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| build(true))
}

fn build(release: bool) -> Artifacts {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--message-format=json-render-diagnostics"]);
    if release {
        command.arg("--release");
    }
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    let output = command.output().expect("cannot run cargo");
    assert!(
        output.status.success(),
        "building the plugins failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut libraries = HashMap::new();
    let mut statehost = None;
    let mut worker = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let target = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(exe) = message["executable"].as_str() {
            match target {
                "statehost" => statehost = Some(PathBuf::from(exe)),
                "state-worker" => worker = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            let file = file.as_str().unwrap_or_default();
            if file.ends_with(".so") {
                libraries.insert(target.to_string(), PathBuf::from(file));
            }
        }
    }
    Artifacts {
        libraries,
        statehost: statehost.expect("cargo reported no statehost executable"),
        worker: worker.expect("cargo reported no state-worker executable"),
    }
}

/// The built shared library of a library target (`statehost_fs`).
pub fn library(target: &str) -> &'static Path {
    artifacts()
        .libraries
        .get(target)
        .unwrap_or_else(|| panic!("no library built for {target}: {:?}", artifacts().libraries))
}

/// The release-built shared library of a library target, for benchmarks.
pub fn release_library(target: &str) -> &'static Path {
    release_artifacts()
        .libraries
        .get(target)
        .unwrap_or_else(|| panic!("no library built for {target}"))
}

/// Loads a built plugin (by library target name) with `options`; relative
/// paths in them are relative to `dir`.
pub fn loaded(target: &str, options: serde_json::Value, dir: Option<&Path>) -> Arc<LoadedBackend> {
    Arc::new(
        LoadedBackend::load(library(target), &options, dir)
            .unwrap_or_else(|e| panic!("loading {target}: {e}")),
    )
}

/// A SQLite store in `dir/meta.db`.
pub fn sqlite_in(dir: &Path) -> Arc<dyn MetadataStore> {
    Arc::new(SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).expect("open SQLite"))
}

/// Settings whose orphan grace is short enough for tests to wait out.
pub fn short_grace() -> StateStoreSettings {
    StateStoreSettings {
        orphan_grace: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Limits with a short deadline, for tests with slow calls.
pub fn deadline_ms(ms: u64) -> Limits {
    Limits {
        deadline: Some(Duration::from_millis(ms)),
        ..Limits::default()
    }
}

/// A host on `store` serving the loaded `backend` (or none).
pub fn host_on(
    store: Arc<dyn MetadataStore>,
    backend: Option<&Arc<LoadedBackend>>,
    settings: StateStoreSettings,
) -> StateHost {
    let mut builder = StateHost::builder(store).settings(settings);
    if let Some(backend) = backend {
        builder = builder.backend(backend.metadata().name.clone(), backend.clone());
    }
    builder.build()
}

/// Drives one task scope and one asset through their accessors: a value
/// overwritten and read back (then `after_overwrite` runs), a delete, a
/// clear, and the same for an asset named `orders`.
pub fn exercise_accessors(
    host: &StateHost,
    scope: statehost_plugin_api::TaskScope,
    after_overwrite: impl FnOnce(),
) {
    use serde_json::json;
    let state = host.task_state(scope);
    state.set("k", &json!({"v": 1})).unwrap();
    state.set("k", &json!({"v": 2})).unwrap();
    assert_eq!(state.get("k").unwrap(), Some(json!({"v": 2})));
    after_overwrite();
    state.delete("k").unwrap();
    assert_eq!(state.get("k").unwrap(), None);
    state.set("a", &json!(1)).unwrap();
    state.clear(false).unwrap();
    assert_eq!(state.get("a").unwrap(), None);
    let asset = host
        .asset_state(&statehost_plugin_api::AssetScope::by_name("orders").unwrap())
        .unwrap();
    asset.set("wm", &json!("2026")).unwrap();
    assert_eq!(asset.get("wm").unwrap(), Some(json!("2026")));
    asset.clear().unwrap();
    assert_eq!(asset.get("wm").unwrap(), None);
}

/// Waits out the orphan grace of `settings`, so gc may collect what was
/// left before now.
pub fn wait_out_grace(settings: &StateStoreSettings) {
    std::thread::sleep(settings.orphan_grace + Duration::from_millis(100));
}

/// A JSON string value whose JSON text is exactly `bytes` long (at least 2).
pub fn json_string_of(bytes: usize) -> serde_json::Value {
    serde_json::Value::String("x".repeat(bytes.saturating_sub(2)))
}

/// The value sizes every benchmark runs at: 16 B, 1 KiB, 64 KiB, 1 MiB.
pub const BENCH_SIZES: [usize; 4] = [16, 1 << 10, 64 << 10, 1 << 20];

/// Times `iters` writes of `value` to the key `at`, each a new object,
/// and returns the time they took; the objects are deleted between
/// batches, untimed, so a long run does not fill the storage.
pub fn timed_writes(
    backend: &dyn statehost_plugin_api::StateBackend,
    at: statehost_plugin_api::StateKey<'_>,
    value: &str,
    iters: u64,
) -> Duration {
    use statehost_plugin_api::Serialized;
    timed(
        iters,
        value.len(),
        |id| match backend.serialize(at, id, std::hint::black_box(value)) {
            Ok(Serialized::Reference(r)) => Some(r),
            Ok(Serialized::Inline) => None,
            Err(e) => panic!("serialize: {e}"),
        },
        |r| {
            backend.delete_object(r, Some(at)).expect("delete_object");
        },
    )
}

/// As [`timed_writes`], through the host's backend interface, which the
/// accessors use: the reference a plugin returns is lent, not copied.
pub fn timed_lent_writes(
    backend: &dyn statehost::backend::Backend,
    at: statehost_plugin_api::StateKey<'_>,
    value: &str,
    iters: u64,
) -> Duration {
    timed(
        iters,
        value.len(),
        |id| {
            backend
                .serialize_lent(at, id, std::hint::black_box(value))
                .unwrap_or_else(|e| panic!("serialize: {e}"))
        },
        |r| {
            backend.delete_object(r, Some(at)).expect("delete_object");
        },
    )
}

/// Times `iters` calls of `write` (each with a fresh write id), deleting
/// what they wrote with `delete` between timed batches. The ids are made
/// before the clock starts (minting one reads the clock and asks for the
/// pid, which cost more than a small call), so only the call is timed.
fn timed<R: std::ops::Deref<Target = str>>(
    iters: u64,
    value_len: usize,
    mut write: impl FnMut(statehost_plugin_api::WriteId) -> Option<R>,
    mut delete: impl FnMut(&str),
) -> Duration {
    // Keep at most ~64 MiB of objects between deletions.
    let batch = (64 << 20) / value_len.max(1);
    let batch = batch.clamp(1, 1000) as u64;
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut written = Vec::with_capacity(batch as usize);
    let mut ids = Vec::with_capacity(batch as usize);
    while left > 0 {
        let n = left.min(batch);
        ids.clear();
        ids.extend((0..n).map(|_| statehost_plugin_api::conformance::write_id()));
        let start = std::time::Instant::now();
        for &id in &ids {
            if let Some(r) = write(id) {
                written.push(r);
            }
        }
        total += start.elapsed();
        for r in written.drain(..) {
            delete(&r);
        }
        left -= n;
    }
    total
}

/// The least work of a durable write of `bytes` to `target` in `dir`: a
/// temporary file written and flushed, renamed to the target, and the
/// directory flushed (what the fs backend does with `fsync = true`).
pub fn fs_floor_write(dir: &Path, target: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .unwrap();
    temp.write_all(bytes).unwrap();
    temp.as_file().sync_all().unwrap();
    temp.persist(target).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// Times `iters` floor writes of `bytes` into `dir`, each to a new name
/// as every backend write is (renaming over an existing file would also
/// free the old one, which a backend write never does); the files are
/// removed between timed batches.
pub fn timed_floor_writes(dir: &Path, bytes: &[u8], iters: u64) -> Duration {
    let batch = ((64 << 20) / bytes.len().max(1)).clamp(1, 1000) as u64;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(batch);
        let names: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("value-{i}"))).collect();
        let start = std::time::Instant::now();
        for name in &names {
            fs_floor_write(dir, name, std::hint::black_box(bytes));
        }
        total += start.elapsed();
        for name in &names {
            std::fs::remove_file(name).unwrap();
        }
        left -= n;
    }
    total
}

/// A readable label for a size.
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Where file benchmarks write: `$STATEHOST_BENCH_DIR` (e.g. /dev/shm for
/// tmpfs), else the system temp directory.
pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("STATEHOST_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("temp dir in STATEHOST_BENCH_DIR"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// A temporary directory holding a plugin directory (`plugins/`) with the
/// given `(package, plugin name)` libraries installed as
/// `libstatehost_<name>.so`, and room for a config and state.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox with these plugins installed.
    pub fn with_plugins(plugins: &[(&str, &str)]) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let sandbox = Sandbox { dir };
        std::fs::create_dir(sandbox.plugins_dir()).expect("plugins dir");
        for (target, name) in plugins {
            sandbox.install(library(target), name);
        }
        sandbox
    }

    /// Copies `library` into the plugin directory as `libstatehost_<name>.so`.
    pub fn install(&self, library: &Path, name: &str) -> PathBuf {
        let target = self.plugins_dir().join(format!("libstatehost_{name}.so"));
        std::fs::copy(library, &target).expect("copy plugin");
        target
    }

    /// The sandbox root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin directory.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Writes `statehost.toml` with `[core] plugins_dir` pointing at the
    /// sandbox's plugins, followed by `rest`; returns its path.
    pub fn config(&self, rest: &str) -> PathBuf {
        let path = self.dir.path().join("statehost.toml");
        std::fs::write(
            &path,
            format!("[core]\nplugins_dir = \"plugins\"\n\n{rest}"),
        )
        .expect("write config");
        path
    }

    /// Runs the `statehost` CLI with this sandbox's config and a clean
    /// environment (no `STATEHOST_*` or `RUST_LOG` from the caller).
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().expect("run statehost")
    }

    /// The command [`run`](Sandbox::run) runs, to set its streams.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = statehost_command(self.path());
        command
            .arg("--config")
            .arg(self.path().join("statehost.toml"));
        command.args(args).envs(env.iter().copied());
        command
    }
}

/// `statehost task-state` for one task instance (`d`/`r`/`t`), the prefix
/// of the CLI tests' task commands.
pub const TASK: [&str; 7] = [
    "task-state",
    "--dag-id",
    "d",
    "--run-id",
    "r",
    "--task-id",
    "t",
];

/// [`TASK`] followed by `rest`.
pub fn task_args(rest: &[&str]) -> Vec<String> {
    TASK.iter().chain(rest).map(|s| s.to_string()).collect()
}

/// The `statehost` CLI in `dir`, with no `STATEHOST_*` or `RUST_LOG` from
/// the caller's environment and no config file unless the caller adds one.
pub fn statehost_command(dir: &Path) -> Command {
    let mut command = Command::new(&artifacts().statehost);
    command.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("STATEHOST") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// A value that proves it was written whole: `id` repeated to `len` bytes
/// in `pad`; see [`check_value`].
pub fn make_value(id: &str, len: usize) -> serde_json::Value {
    let mut pad = id.repeat(len / id.len().max(1) + 1);
    pad.truncate(len);
    serde_json::json!({ "id": id, "len": len, "pad": pad })
}

/// The id of a value made by [`make_value`], if it is whole.
pub fn check_value(value: &serde_json::Value) -> Result<String, String> {
    let id = value["id"].as_str().ok_or("no id")?;
    let len = value["len"].as_u64().ok_or("no len")? as usize;
    let pad = value["pad"].as_str().ok_or("no pad")?;
    // Compare without building the expected text: values can be large.
    let whole = !id.is_empty()
        && pad.len() == len
        && pad
            .as_bytes()
            .chunks(id.len())
            .all(|chunk| id.as_bytes().starts_with(chunk));
    if whole {
        Ok(id.to_string())
    } else {
        Err(format!(
            "value {id} is not whole ({} of {len} bytes)",
            pad.len()
        ))
    }
}

/// Asserts a failed CLI run: the exit code, one line on stderr containing
/// every `needle`, and no panic text or backtrace.
pub fn assert_fails(output: &Output, code: i32, needles: &[&str]) {
    let (stdout, stderr) = text(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "stderr should be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    for bad in ["panicked at", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in {stderr}");
    }
}

/// The value of a variable that names a server a test needs. Such tests
/// are `#[ignore]`d (`cargo test` lists them as ignored, with the variable
/// to set); run them with `--include-ignored`, where a missing variable is
/// a failure, not a skip.
pub fn require_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{var} is not set: this test needs the server it names (see README, Tests)"),
    }
}

/// For tests that measure the whole process (its threads, its memory):
/// reruns the test `name` alone in a fresh copy of the test binary and
/// returns `false` here (after checking that it passed there), or returns
/// `true` in that copy, where the test's body then runs.
pub fn in_own_process(name: &str) -> bool {
    const VAR: &str = "STATEHOST_TEST_OWN_PROCESS";
    if std::env::var(VAR).as_deref() == Ok(name) {
        return true;
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, name)
        .output()
        .expect("rerun the test binary");
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    false
}

/// stdout and stderr of a run, as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A server process, killed when dropped.
#[derive(Debug)]
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (up to a minute) until something accepts connections on `port`.
pub fn wait_for(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sends a raw HTTP/1.1 request to loopback; returns the status line.
pub fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

/// Starts moto's S3 server (`moto_server`, from PyPI) on loopback and
/// creates `bucket`; the server stops when the returned guard drops.
pub fn start_moto(moto_server: &str, bucket: &str) -> (Server, u16) {
    let port = free_port();
    let server = Server(
        Command::new(moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    wait_for(port, "moto");
    let status = http(
        port,
        &format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.contains("200"), "creating bucket {bucket}: {status}");
    (server, port)
}

/// Options for the object_store plugin against a moto server.
pub fn moto_options(port: u16, bucket: &str) -> serde_json::Value {
    serde_json::json!({
        "url": format!("s3://{bucket}/prefix"),
        "max_retries": 1,
        "options": {
            "endpoint": format!("http://127.0.0.1:{port}"),
            "allow_http": "true",
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
    })
}
