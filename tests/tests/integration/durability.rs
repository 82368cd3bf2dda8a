//! Durability: killed writers, concurrent processes, many workers on one
//! PostgreSQL database, large values and large clears.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use statehost::StateHost;
use statehost::plugin::LoadedBackend;
use statehost::store::{RowOwner, SqliteLocation, SqliteStore};
use statehost_plugin_api::{ScopeRef, StateBackend, TaskScope};
use statehost_tests::{
    Sandbox, artifacts, check_value, host_on, loaded, require_env, short_grace, wait_out_grace,
};

const FS_CONFIG: &str = "[workers]\nstate_backend = \"fs\"\nstate_backend_timeout_ms = 1000\n\n[database]\nurl = \"sqlite://meta.db\"\n\n[state_store]\norphan_grace = \"4s\"\n\n[backends.fs]\nroot = \"objects\"\n";

fn worker(config: &Path) -> Command {
    let mut command = Command::new(&artifacts().worker);
    command.arg(config).env_remove("RUST_LOG");
    command
}

/// The state the workers wrote, opened in this process.
fn open(dir: &Path) -> (StateHost, Arc<LoadedBackend>) {
    let backend = loaded("statehost_fs", json!({"root": dir.join("objects")}), None);
    let store = Arc::new(SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap());
    (host_on(store, Some(&backend), short_grace()), backend)
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

fn scope() -> TaskScope {
    TaskScope::new("crash_dag", "run", "task", -1).unwrap()
}

/// Runs `hammer` workers (one process each) and collects every write
/// they acknowledged, per key, in order.
fn hammer(
    sandbox: &Sandbox,
    config: &Path,
    workers: &[&str],
    threads: usize,
    ops: usize,
) -> HashMap<String, Vec<String>> {
    let children: Vec<_> = workers
        .iter()
        .map(|w| {
            let log = sandbox.path().join(format!("{w}.log"));
            let child = worker(config)
                .args(["hammer", w, &threads.to_string(), &ops.to_string()])
                .arg(&log)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, log)
        })
        .collect();
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for (child, log) in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a worker failed (no error may reach the caller, \"database is locked\" included): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let (key, id) = line.split_once('\t').unwrap();
            acked
                .entry(key.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    acked
}

/// Every acknowledged write stands: a key of one thread holds its last
/// write (or nothing after its last delete); a shared key holds a value
/// some worker wrote, whole.
fn check_acknowledged(host: &StateHost, acked: &HashMap<String, Vec<String>>) {
    let state = host.task_state(scope());
    for (key, ids) in acked {
        let now = state.get(key).unwrap().map(|v| check_value(&v).unwrap());
        if key.starts_with('s') {
            let now = now.unwrap_or_else(|| panic!("{key} was written and never deleted"));
            assert!(
                ids.contains(&now),
                "{key} holds {now}, which no worker wrote"
            );
        } else {
            let last = ids.last().unwrap();
            let expected = (last != "-").then(|| last.clone());
            assert_eq!(now, expected, "{key}: an acknowledged write was lost");
        }
    }
}

#[test]
fn killed_writers_leave_whole_values_and_a_sound_database() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    let config = sandbox.config(FS_CONFIG);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut interrupted = 0;
    for run in 0..60 {
        let mut child = worker(&config)
            .args(["crash", &(run + 1).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 150));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        assert!(
            !output.status.success(),
            "the worker stopped by itself: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(
        interrupted >= 50,
        "only {interrupted} kills hit a running worker"
    );

    let (host, backend) = open(sandbox.path());
    let state = host.task_state(scope());
    let mut present = 0;
    for k in 0..50 {
        match state.get(&format!("k{k}")) {
            Ok(None) => {}
            Ok(Some(value)) => {
                check_value(&value).unwrap_or_else(|e| panic!("k{k}: {e}"));
                present += 1;
            }
            Err(e) => panic!("k{k} cannot be read after the kills: {e}"),
        }
    }
    assert!(present > 0, "the workers never got a write in");

    let db = rusqlite::Connection::open(sandbox.path().join("meta.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");

    wait_out_grace(host.settings());
    host.gc(false, |_, _| {}).unwrap();
    let mut files = Vec::new();
    files_under(&sandbox.path().join("objects"), &mut files);
    let temp: Vec<_> = files
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(temp.is_empty(), "gc left temporary files: {temp:?}");
    let rows: HashSet<String> = host
        .rows()
        .unwrap()
        .rows
        .into_iter()
        .filter_map(|r| match statehost::envelope::unwrap(&r.value) {
            Ok(statehost::envelope::Stored::Reference(r)) => Some(r.into_owned()),
            _ => None,
        })
        .collect();
    for object in StateBackend::list(&*backend, None).unwrap() {
        assert!(
            rows.contains(&object.reference),
            "gc left the orphan {}",
            object.reference
        );
    }
    assert_eq!(
        files.len(),
        rows.len(),
        "one file per row that points at one"
    );
}

#[test]
fn two_processes_of_four_threads_lose_no_acknowledged_write() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    let config = sandbox
        .config(&FS_CONFIG.replace("root = \"objects\"", "root = \"objects\"\nfsync = false"));
    let (threads, ops) = (4, 2500);
    let acked = hammer(&sandbox, &config, &["w0", "w1"], threads, ops);
    assert_eq!(2 * threads * ops, 20_000, "operations in all");
    let (host, _) = open(sandbox.path());
    check_acknowledged(&host, &acked);
    let rows_with_keys = host
        .rows()
        .unwrap()
        .rows
        .into_iter()
        .filter(|r| matches!(&r.owner, RowOwner::Task(t) if *t == scope()))
        .count();
    assert!(rows_with_keys > 0);
}

/// A schema of its own on `STATEHOST_TEST_POSTGRES_URL`, dropped after.
pub(crate) struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    pub(crate) fn create(tag: &str) -> PgSchema {
        let base = require_env("STATEHOST_TEST_POSTGRES_URL");
        let name = format!("statehost_{tag}_{}", std::process::id());
        let mut client = postgres::Client::connect(&base, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .unwrap();
        PgSchema { base, name }
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn four_workers_share_one_postgresql_database() {
    let schema = PgSchema::create("workers");
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    let config = sandbox.config(&format!(
        "[workers]\nstate_backend = \"fs\"\nstate_backend_timeout_ms = 1000\n\n[database]\nurl = \"{}\"\n\n[state_store]\norphan_grace = \"4s\"\n\n[backends.fs]\nroot = \"objects\"\nfsync = false\n",
        schema.url()
    ));
    let acked = hammer(&sandbox, &config, &["w0", "w1", "w2", "w3"], 2, 1000);

    // This process is a fifth worker: same database, same fs root.
    let backend = loaded(
        "statehost_fs",
        json!({"root": sandbox.path().join("objects")}),
        None,
    );
    let store =
        statehost::store::PostgresStore::open(&schema.url(), Duration::from_secs(30)).unwrap();
    let host = host_on(Arc::new(store), Some(&backend), short_grace());
    check_acknowledged(&host, &acked);
    // No row points at nothing.
    for row in host.rows().unwrap().rows {
        if let RowOwner::Task(t) = &row.owner
            && t.task_id() != "expiring"
        {
            host.task_state(t.clone())
                .get(&row.key)
                .unwrap_or_else(|e| panic!("{t} {:?}: {e}", row.key));
        }
    }
    // What the workers let expire, gc here collects, rows and objects.
    let expiring = TaskScope::new("crash_dag", "run", "expiring", -1).unwrap();
    let expiring = Some(ScopeRef::Task(expiring.as_ref()));
    let objects_before = StateBackend::list(&*backend, expiring).unwrap().len();
    assert!(
        objects_before >= 4 * 2 * (1000 / 50),
        "{objects_before} expiring objects"
    );
    let report = host.gc(false, |_, _| {}).unwrap();
    assert_eq!(report.expired_rows, objects_before);
    assert!(StateBackend::list(&*backend, expiring).unwrap().is_empty());
    assert!(
        host.rows()
            .unwrap()
            .rows
            .iter()
            .all(|r| !matches!(&r.owner, RowOwner::Task(t) if t.task_id() == "expiring"))
    );
}

#[test]
fn a_100_mib_value_passes_through_the_fs_backend_in_bounded_memory() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    let config = sandbox
        .config(&FS_CONFIG.replace("root = \"objects\"", "root = \"objects\"\nfsync = false"));
    let output = worker(&config).args(["big", "100"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let peak_kib: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    eprintln!("peak RSS for a 100 MiB value: {} MiB", peak_kib / 1024);
    // The value, its JSON text and the copy read back: a small multiple.
    assert!(
        peak_kib < 5 * 100 * 1024,
        "peak RSS {} MiB",
        peak_kib / 1024
    );
}

#[test]
fn clearing_a_scope_with_ten_thousand_keys() {
    let dir = tempfile::tempdir().unwrap();
    let backend = loaded(
        "statehost_fs",
        json!({"root": dir.path().join("o"), "fsync": false}),
        None,
    );
    let host = host_on(
        Arc::new(SqliteStore::open(SqliteLocation::Memory).unwrap()),
        Some(&backend),
        Default::default(),
    );
    let state = host.task_state(scope());
    for i in 0..10_000 {
        state.set(&format!("key/{i}"), &json!(i)).unwrap();
    }
    let scope = scope();
    assert_eq!(
        StateBackend::list(&*backend, Some(ScopeRef::Task(scope.as_ref())))
            .unwrap()
            .len(),
        10_000
    );
    state.clear(false).unwrap();
    assert!(host.rows().unwrap().rows.is_empty());
    assert!(StateBackend::list(&*backend, None).unwrap().is_empty());
}

/// A forked child that uses its parent's host and drops it, or only drops
/// it, leaves the parent's PostgreSQL sessions alone: it neither talks over
/// them (two processes on one socket interleave their messages) nor ends
/// them (a dropped connection sends the server its goodbye, on the parent's
/// socket). The parent's next read then works the first time.
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn a_forked_child_leaves_the_parents_postgresql_sessions_alone() {
    let schema = PgSchema::create("fork");
    let store =
        statehost::store::PostgresStore::open(&schema.url(), Duration::from_secs(30)).unwrap();
    let host = host_on(Arc::new(store), None, short_grace());
    let state = host.task_state(scope());
    state.set("k", &json!("parent")).unwrap();
    for (round, uses_it) in [(1, true), (2, false)] {
        // SAFETY: the child runs the host (which opens connections of its
        // own) or not, then leaves with _exit; the parent waits for it.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            unsafe { libc::alarm(30) };
            let code = if !uses_it {
                0
            } else {
                match state
                    .set("child", &json!(round))
                    .and_then(|()| state.get("child"))
                {
                    Ok(Some(v)) if v == json!(round) => 0,
                    _ => 2,
                }
            };
            drop(state);
            drop(host);
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child's write did not read back"
        );
        assert_eq!(
            state.get("k").unwrap(),
            Some(json!("parent")),
            "round {round}"
        );
        assert_eq!(state.get("child").unwrap(), Some(json!(1)), "round {round}");
    }
}
