//! The history test: workers in this process and in other processes (one of
//! them killed with SIGKILL mid-run and replaced), one with a skewed clock
//! and one whose clock is so far off that every write it makes is refused,
//! run random sets, gets, deletes, clears and gcs on a small key space,
//! with slow, hung and failing backend calls and failed and
//! unknown-outcome row writes injected. The recorded history is checked for
//! lost writes, resurrections and dangling rows (guarantees 1-3), then the
//! final store and storage for orphans (guarantee 4).
//!
//! The seed is fixed; `STATEHOST_HISTORY_SEED` picks another,
//! `STATEHOST_HISTORY_OPS` the operations per worker (default 120) and
//! `STATEHOST_HISTORY_ROUNDS` how many seeds in a row (default 1) — for
//! long runs:
//!
//! ```text
//! STATEHOST_HISTORY_ROUNDS=20 STATEHOST_HISTORY_OPS=1000 \
//!     cargo test -p statehost-tests --test integration history:: -- --include-ignored
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statehost::StateHost;
use statehost::config::Config;
use statehost_tests::history::{
    self, Event, Faults, Keyspace, Outcome, Rng, check, monotonic_ns, read_log,
};
use statehost_tests::{Sandbox, artifacts, require_env};

/// The deadline of backend calls, and the orphan grace (at least four
/// deadlines, as the config requires).
const DEADLINE_MS: u64 = 150;
const GRACE_MS: u64 = 2000;
/// The skew of the workers whose writes the fence refuses.
const FAR_SKEW_MS: i64 = GRACE_MS as i64 * 3 / 5;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn worker(config: &Path, name: &str, seed: u64, ops: u64, skew_ms: i64, log: &Path) -> Child {
    Command::new(&artifacts().worker)
        .arg(config)
        .args([
            "history",
            name,
            &seed.to_string(),
            &ops.to_string(),
            "2",
            &skew_ms.to_string(),
        ])
        .arg(log)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a history worker")
}

/// Runs one history on the config whose `[database]` and backend sections
/// are `rest`, and checks it.
fn run_history(sandbox: &Sandbox, rest: &str, seed: u64, ops: u64) {
    let config_path = sandbox.config(&format!(
        "[state_store]\norphan_grace = \"{GRACE_MS}ms\"\n\n{rest}"
    ));
    let config = Config::load(&config_path).expect("the history config");
    assert_eq!(
        config.limits.deadline,
        Some(Duration::from_millis(DEADLINE_MS))
    );
    let mut rng = Rng::new(seed);
    let logs = sandbox.path().join(format!("logs-{seed}"));
    std::fs::create_dir_all(&logs).unwrap();

    // Two processes; the first is killed mid-run and a third takes over.
    let mut children = vec![
        (
            "p0",
            worker(&config_path, "p0", seed + 1, ops, 0, &logs.join("p0")),
        ),
        (
            "p1",
            worker(
                &config_path,
                "p1",
                seed + 2,
                ops,
                -(GRACE_MS as i64) / 5,
                &logs.join("p1"),
            ),
        ),
    ];

    // In this process: two workers on one host, one whose clock is ahead
    // by a fifth of the grace (its writes land), and two whose clocks are
    // more than half a grace ahead and behind (their external writes are
    // all refused: behind, their objects would look old enough for gc).
    let events = Mutex::new(Vec::<Event>::new());
    let faults = Faults::standard();
    let hosts: Vec<(&str, StateHost, usize)> = vec![
        (
            "local",
            history::faulty_host(&config, faults, seed + 3, 0).unwrap(),
            2,
        ),
        (
            "ahead",
            history::faulty_host(&config, faults, seed + 4, GRACE_MS as i64 / 5).unwrap(),
            1,
        ),
        (
            "far-ahead",
            history::faulty_host(&config, faults, seed + 5, FAR_SKEW_MS).unwrap(),
            1,
        ),
        (
            "far-behind",
            history::faulty_host(&config, faults, seed + 7, -FAR_SKEW_MS).unwrap(),
            1,
        ),
    ];
    // Kill the first worker after a random number of its operations.
    let kill_at = 20 + rng.below(ops * 2 / 3);
    std::thread::scope(|s| {
        for (name, host, threads) in &hosts {
            for t in 0..*threads {
                let events = &events;
                let seed = seed + 100 + rng.below(1 << 20);
                s.spawn(move || {
                    let keyspace = Keyspace::default();
                    let mut mine = Vec::new();
                    history::drive(
                        host,
                        &format!("{name}-{t}"),
                        seed,
                        ops as usize,
                        &keyspace,
                        &mut |e| {
                            if e.end.is_some() {
                                mine.push(e.clone());
                            }
                        },
                    );
                    events.lock().unwrap().extend(mine);
                });
            }
        }
        // Kill the first worker process mid-run, and start its successor.
        let (_, first) = &mut children[0];
        let log = logs.join("p0");
        let lines = || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0)
        };
        while lines() < kill_at && first.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let killed = first.try_wait().unwrap().is_none();
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        eprintln!(
            "history seed {seed}: killed p0 after {} log lines ({})",
            lines(),
            if killed { "mid-run" } else { "already done" }
        );
        children.push((
            "p2",
            worker(&config_path, "p2", seed + 6, ops, 0, &logs.join("p2")),
        ));
    });
    let mut all = events.into_inner().unwrap();
    for (name, child) in children {
        let output = child.wait_with_output().unwrap();
        if name != "p0" {
            assert!(
                output.status.success(),
                "worker {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        all.extend(read_log(&logs.join(name)));
    }

    // Abandoned calls of this process end (hung ones take ten deadlines);
    // those of the workers ended with them.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    for (_, host, _) in &hosts {
        while host.calls_in_flight() > 0 {
            assert!(std::time::Instant::now() < until, "calls never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(hosts);

    let summary = summarize(&all);
    eprintln!("history seed {seed}: {summary}");
    let violations = check(&all);
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations, the first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );

    // The final state: every key reads (the reads join the history), then
    // after the grace gc leaves exactly the objects rows point at.
    // A host of this test's own: the process's shared backend may belong to
    // another test running beside this one.
    let backend = Arc::new(
        statehost::plugin::load_configured(&config)
            .unwrap()
            .expect("a backend is configured"),
    );
    let clean = StateHost::builder(statehost::state::open_store(&config).unwrap())
        .settings(config.state_store.clone())
        .limits(config.limits)
        .backend(backend.metadata().name.clone(), backend.clone())
        .build();
    let keyspace = Keyspace::default();
    let mut finals = Vec::new();
    for (slot, read) in final_reads(&clean, &keyspace) {
        let now = monotonic_ns();
        finals.push(Event {
            worker: "final".into(),
            op: "get".into(),
            keys: vec![slot],
            value: read.as_ref().ok().cloned().flatten(),
            start: now,
            end: Some(now),
            outcome: match read {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Dangling,
            },
            error: None,
        });
    }
    all.extend(finals);
    let violations = check(&all);
    assert!(
        violations.is_empty(),
        "seed {seed}, final state: {violations:#?}"
    );
    // Objects of writes whose clock ran ahead look young for as much longer.
    std::thread::sleep(Duration::from_millis(GRACE_MS + FAR_SKEW_MS as u64 + 300));
    clean.gc(false, |_, _| {}).unwrap();
    let referenced: HashSet<String> = clean
        .rows()
        .unwrap()
        .rows
        .into_iter()
        .filter_map(|row| match statehost::envelope::unwrap(&row.value) {
            Ok(statehost::envelope::Stored::Reference(r)) => Some(r.into_owned()),
            _ => None,
        })
        .collect();
    let objects: HashSet<String> = statehost_plugin_api::StateBackend::list(&*backend, None)
        .unwrap()
        .into_iter()
        .map(|o| o.reference)
        .collect();
    let orphans: Vec<_> = objects.difference(&referenced).collect();
    let dangling: Vec<_> = referenced.difference(&objects).collect();
    assert!(
        orphans.is_empty(),
        "seed {seed}: guarantee 4: gc left orphans {orphans:?}"
    );
    assert!(
        dangling.is_empty(),
        "seed {seed}: guarantee 2: rows point at missing objects {dangling:?}"
    );
}

/// Reads every key of the key space with a host without faults.
fn final_reads(
    host: &StateHost,
    keyspace: &Keyspace,
) -> Vec<(String, Result<Option<String>, String>)> {
    keyspace
        .slots()
        .into_iter()
        .map(|(name, scope, key)| {
            let read = match scope {
                history::SlotScope::Task(t) => host.task_state(t).get(&key),
                history::SlotScope::Asset(a) => host.asset_state(&a).and_then(|s| s.get(&key)),
            };
            (
                name,
                read.map(|v| v.and_then(|v| v.as_str().map(str::to_string)))
                    .map_err(|e| e.to_string()),
            )
        })
        .collect()
}

fn summarize(events: &[Event]) -> String {
    let count = |op: &str, outcome: Outcome| {
        events
            .iter()
            .filter(|e| e.op == op && e.outcome == outcome)
            .count()
    };
    format!(
        "{} operations: sets {} ok / {} failed / {} unknown; gets {} ok / {} failed; deletes {} ok; clears {} ok; gcs {} ok",
        events.len(),
        count("set", Outcome::Ok),
        count("set", Outcome::Fail),
        count("set", Outcome::Unknown),
        count("get", Outcome::Ok),
        count("get", Outcome::Fail),
        count("delete", Outcome::Ok),
        count("clear", Outcome::Ok),
        count("gc", Outcome::Ok),
    )
}

fn rounds(test: impl Fn(u64, u64)) {
    let seed = env_number("STATEHOST_HISTORY_SEED", 0x5eed_2026);
    let ops = env_number("STATEHOST_HISTORY_OPS", 120);
    for round in 0..env_number("STATEHOST_HISTORY_ROUNDS", 1) {
        test(seed + round * 1000, ops);
    }
}

const FS: &str = "[backends.fs]\nroot = \"objects\"\nfsync = false\n";

fn workers(backend: &str) -> String {
    format!("[workers]\nstate_backend = \"{backend}\"\nstate_backend_timeout_ms = {DEADLINE_MS}\n")
}

#[test]
fn history_on_sqlite_with_the_fs_backend() {
    rounds(|seed, ops| {
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let rest = format!(
            "{}\n[database]\nurl = \"sqlite://meta.db\"\n\n{FS}",
            workers("fs")
        );
        run_history(&sandbox, &rest, seed, ops);
    });
}

#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn history_on_postgresql_with_the_fs_backend() {
    rounds(|seed, ops| {
        let schema = crate::durability::PgSchema::create(&format!("history{seed}"));
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let rest = format!(
            "{}\n[database]\nurl = \"{}\"\n\n{FS}",
            workers("fs"),
            schema.url()
        );
        run_history(&sandbox, &rest, seed, ops);
    });
}

#[test]
#[ignore = "needs PostgreSQL and moto: set STATEHOST_TEST_POSTGRES_URL and STATEHOST_TEST_S3 and run with --include-ignored"]
fn history_on_postgresql_with_object_store_on_moto() {
    let moto = require_env("STATEHOST_TEST_S3");
    rounds(|seed, ops| {
        let (_server, port) = statehost_tests::start_moto(&moto, "history");
        let schema = crate::durability::PgSchema::create(&format!("historys3{seed}"));
        let sandbox = Sandbox::with_plugins(&[("statehost_object_store", "object_store")]);
        let options = statehost_tests::moto_options(port, "history");
        let rest = format!(
            "{}\n[database]\nurl = \"{}\"\n\n[backends.object_store]\n{}",
            workers("object_store"),
            schema.url(),
            toml_table(&options)
        );
        run_history(&sandbox, &rest, seed, ops);
    });
}

/// The object_store options as TOML lines.
fn toml_table(options: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut nested = String::new();
    for (key, value) in options.as_object().unwrap() {
        match value {
            serde_json::Value::Object(table) => {
                nested.push_str(&format!("\n[backends.object_store.{key}]\n"));
                for (k, v) in table {
                    nested.push_str(&format!("{k} = {v}\n"));
                }
            }
            other => out.push_str(&format!("{key} = {other}\n")),
        }
    }
    out + &nested
}
