//! Bad input through the real binary, table-driven: for every case the exit
//! code, one line on stderr naming what was wrong, and the store (the
//! database and the objects) byte for byte as it was before. Then the
//! valid inputs next to them, which must keep working as before: a zero
//! retention, numbers beyond 64 bits, the longest ids, damaged rows that
//! the others must not be hidden by, a read-only database.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use statehost_tests::{Sandbox, library, statehost_command, task_args, text};

const BASE: &str = "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.fs]\nroot = \"objects\"\n";

const FAULTY: &str = "[workers]\nstate_backend = \"faulty\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.faulty.ops]\nserialize = \"fail:unavailable\"\n";

fn asset_args(name: &str, uri: Option<&str>, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["asset-state".to_string(), "--name".into(), name.into()];
    if let Some(uri) = uri {
        args.extend(["--uri".to_string(), uri.to_string()]);
    }
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

/// A sandbox with the fs and faulty plugins, the base config, and some
/// state: a task key inline, one in an object file, an asset.
fn seeded() -> Sandbox {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs"), ("fixture_faulty", "faulty")]);
    sandbox.config(BASE);
    let big = format!("\"{}\"", "x".repeat(4096));
    for args in [
        task_args(&["set", "seed", "\"kept\""]),
        task_args(&["set", "big", &big]),
        asset_args("a", Some("s3://b/a"), &["set", "k", "1"]),
    ] {
        let out = sandbox.run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    }
    sandbox
}

/// Every file and directory of the sandbox but the plugins and the config,
/// with its bytes (SQLite's `-wal`/`-shm` companions left out: a reader
/// may make them, and they hold no committed data once writers close).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let name = relative.to_string_lossy();
            if name == "plugins" || name.ends_with(".toml") {
                continue;
            }
            if name.ends_with("-wal") || name.ends_with("-shm") {
                continue;
            }
            if path.is_dir() {
                into.insert(relative, None);
                walk(root, &path, into);
            } else {
                into.insert(relative, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// One bad input.
struct Case {
    /// What is wrong, for the failure message.
    what: &'static str,
    /// The config's body (after `[core] plugins_dir`).
    config: &'static str,
    /// Changes made to the sandbox before the run (and before the
    /// snapshot): a damaged database, a renamed plugin.
    prepare: fn(&Sandbox),
    env: Vec<(&'static str, OsString)>,
    args: Vec<String>,
    code: i32,
    /// What the stderr line must contain.
    needles: Vec<&'static str>,
    /// What it must not contain.
    absent: Vec<&'static str>,
    /// Warnings expected before the error line.
    warnings: usize,
    /// Run without the sandbox's `--config` (the case gives its own).
    own_config: bool,
}

fn case(what: &'static str, args: Vec<String>, code: i32, needles: &[&'static str]) -> Case {
    Case {
        what,
        config: BASE,
        prepare: |_| {},
        env: Vec::new(),
        args,
        code,
        needles: needles.to_vec(),
        absent: Vec::new(),
        warnings: 0,
        own_config: false,
    }
}

impl Case {
    fn config(mut self, config: &'static str) -> Case {
        self.config = config;
        self
    }
    fn prepare(mut self, prepare: fn(&Sandbox)) -> Case {
        self.prepare = prepare;
        self
    }
    fn env(mut self, name: &'static str, value: impl Into<OsString>) -> Case {
        self.env.push((name, value.into()));
        self
    }
    fn absent(mut self, text: &'static str) -> Case {
        self.absent.push(text);
        self
    }
    fn warnings(mut self, count: usize) -> Case {
        self.warnings = count;
        self
    }
    fn own_config(mut self) -> Case {
        self.own_config = true;
        self
    }
}

fn run(sandbox: &Sandbox, args: &[String], env: &[(&str, OsString)]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_command(sandbox.command(&args, &[]), env)
}

fn run_command(mut command: std::process::Command, env: &[(&str, OsString)]) -> Output {
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn set_schema_version(sandbox: &Sandbox, version: &str) {
    let db = rusqlite::Connection::open(sandbox.path().join("db/meta.db")).unwrap();
    db.execute(
        "UPDATE statehost_meta SET value = ?1 WHERE name = 'schema_version'",
        [version],
    )
    .unwrap();
}

fn cases() -> Vec<Case> {
    let long_id = "i".repeat(1024);
    let long = |args: &[&str]| {
        let mut all: Vec<String> = vec![
            "task-state".into(),
            "--dag-id".into(),
            long_id.clone(),
            "--run-id".into(),
            long_id.clone(),
            "--task-id".into(),
            long_id.clone(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    vec![
        // 1. Retention.
        case(
            "a retention beyond what can be stored",
            task_args(&["set", "k", "1", "--retention-days", "200000000000"]),
            2,
            &["retention of 200000000000 days", "365000 days", "--never-expire"],
        ),
        case(
            "the largest u64 as a retention",
            task_args(&["set", "k", "1", "--retention-days", "18446744073709551615"]),
            2,
            &["365000 days"],
        ),
        case(
            "a retention beyond u64",
            task_args(&["set", "k", "1", "--retention-days", "18446744073709551616"]),
            2,
            &["--retention-days", "18446744073709551616"],
        ),
        case(
            "a negative retention",
            task_args(&["set", "k", "1", "--retention-days", "-1"]),
            2,
            &["-1", "see --help"],
        ),
        // 3. The environment.
        case(
            "a non-UTF-8 STATEHOST__ variable",
            task_args(&["get", "seed"]),
            2,
            &["STATEHOST__WORKERS__STATE_BACKEND", "UTF-8"],
        )
        .env(
            "STATEHOST__WORKERS__STATE_BACKEND",
            OsString::from_vec(b"f\xffs".to_vec()),
        ),
        // 4. Stores.
        case(
            "a database of a future schema version",
            task_args(&["set", "k", "1"]),
            3,
            &["meta.db", "99"],
        )
        .prepare(|s| set_schema_version(s, "99")),
        case(
            "a foreign SQLite database",
            task_args(&["set", "k", "1"]),
            3,
            &["other.db", "not a statehost database", "users"],
        )
        .config(
            "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://other.db\"\n[backends.fs]\nroot = \"objects\"\n",
        )
        .prepare(|s| {
            let db = rusqlite::Connection::open(s.path().join("other.db")).unwrap();
            db.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ann');")
                .unwrap();
        }),
        case(
            "rows of a foreign SQLite database",
            vec!["rows".into()],
            3,
            &["other.db", "not a statehost database"],
        )
        .config("[database]\nurl = \"sqlite://other.db\"\n")
        .prepare(|s| {
            let db = rusqlite::Connection::open(s.path().join("other.db")).unwrap();
            db.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY);")
                .unwrap();
        }),
        case(
            "rows of a mistyped database path",
            vec!["rows".into()],
            2,
            &["no metadata database at", "typo/meta.db"],
        )
        .config("[database]\nurl = \"sqlite://typo/meta.db\"\n"),
        case(
            "get from a mistyped database path",
            task_args(&["get", "seed"]),
            2,
            &["no metadata database at", "typo/meta.db"],
        )
        .config(
            "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://typo/meta.db\"\n[backends.fs]\nroot = \"objects\"\n",
        ),
        case(
            "gc --dry-run on a mistyped database path",
            vec!["gc".into(), "--dry-run".into()],
            2,
            &["no metadata database at", "typo/meta.db"],
        )
        .config("[database]\nurl = \"sqlite://typo/meta.db\"\n"),
        case(
            "a database path that is a directory",
            task_args(&["set", "k", "1"]),
            3,
            &["objects", "not a regular file"],
        )
        .config(
            "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://objects\"\n[backends.fs]\nroot = \"objects\"\n",
        ),
        // 5. Assets.
        case(
            "an asset read with another uri",
            asset_args("a", Some("s3://b/x"), &["get", "k"]),
            2,
            &["s3://b/a", "s3://b/x"],
        ),
        case(
            "an asset written with another uri",
            asset_args("a", Some("s3://b/x"), &["set", "k", "2"]),
            2,
            &["s3://b/a", "s3://b/x"],
        ),
        case(
            "a read of an asset never used",
            asset_args("fresh", None, &["get", "k"]),
            1,
            &[],
        ),
        case(
            "a clear of an asset never used",
            asset_args("fresh", Some("s3://b/fresh"), &["clear"]),
            0,
            &[],
        ),
        case(
            "a set whose backend write fails",
            asset_args("fresh", Some("s3://b/fresh"), &["set", "k", "1"]),
            3,
            &["faulty", "injected"],
        )
        .config(FAULTY),
        // 6. Limits.
        case(
            "a key over the limit",
            task_args(&["set", &"k".repeat(513), "1"]),
            2,
            &["513 bytes", "512"],
        ),
        case(
            "a dag_id over the limit",
            {
                let mut args = long(&["get", "k"]);
                args[2].push('i');
                args
            },
            2,
            &["1025 bytes", "1024"],
        ),
        case(
            "a failed write with the longest ids (a short line)",
            long(&["set", &"k".repeat(512), "1"]),
            3,
            &["injected unavailable failure", "bytes)"],
        )
        .config(FAULTY),
        // 8. Errors.
        case(
            "a PostgreSQL URL with a bad port",
            vec!["rows".into()],
            2,
            &["[database] url", "port"],
        )
        .config("[database]\nurl = \"postgresql://u@127.0.0.1:99999/db\"\n"),
        case(
            "a PostgreSQL URL with an unknown parameter",
            vec!["rows".into()],
            2,
            &["[database] url", "unknown option `foo`"],
        )
        .config("[database]\nurl = \"postgresql://u@127.0.0.1/db?foo=bar\"\n"),
        case(
            "a PostgreSQL URL with a bad connect_timeout",
            vec!["rows".into()],
            2,
            &["[database] url", "connect_timeout"],
        )
        .config("[database]\nurl = \"postgresql://u@127.0.0.1/db?connect_timeout=abc\"\n"),
        case(
            "a PostgreSQL URL without a host",
            vec!["rows".into()],
            2,
            &["[database] url", "names no host"],
        )
        .config("[database]\nurl = \"postgresql://\"\n"),
        case(
            "an orphan grace too long to count",
            vec!["gc".into()],
            2,
            &["orphan_grace", "1000 years"],
        )
        .env("STATEHOST__STATE_STORE__ORPHAN_GRACE", "18446744073709551615"),
        case(
            "a value with the JSON library's number key",
            task_args(&["set", "k", r#"{"$serde_json::private::Number":"12"}"#]),
            2,
            &["VALUE holds an object with the key", "rename that key"],
        ),
        case(
            "a PostgreSQL host that does not resolve",
            vec!["rows".into()],
            3,
            &["nonexistent.invalid", "lookup"],
        )
        .config("[database]\nurl = \"postgresql://u@nonexistent.invalid/db\"\n"),
        case(
            "an empty backend name in an environment override",
            task_args(&["get", "seed"]),
            2,
            &["STATEHOST__BACKENDS____ROOT", "backend name is empty"],
        )
        .env("STATEHOST__BACKENDS____ROOT", "x"),
        case(
            "a plugin path that does not exist",
            task_args(&["get", "seed"]),
            2,
            &["nothere/libstatehost_x.so", "does not exist"],
        )
        .config(
            "[workers]\nstate_backend = \"./nothere/libstatehost_x.so\"\n[database]\nurl = \"sqlite://db/meta.db\"\n",
        ),
        case(
            "a plugin path to a file that is not a library",
            task_args(&["get", "seed"]),
            2,
            &["libstatehost_junk.so", "not a shared library"],
        )
        .config(
            "[workers]\nstate_backend = \"junk\"\n[database]\nurl = \"sqlite://db/meta.db\"\n",
        )
        .prepare(|s| std::fs::write(s.plugins_dir().join("libstatehost_junk.so"), b"junk").unwrap()),
        case(
            "a bad option of a plugin installed under another name",
            task_args(&["get", "seed"]),
            2,
            &["[backends.fs]"],
        )
        .config(
            "[workers]\nstate_backend = \"files\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.fs]\nroot = \"objects\"\nfsync = \"often\"\n",
        )
        .prepare(|s| {
            s.install(library("statehost_fs"), "files");
        })
        .warnings(1)
        .absent("[backends.files]"),
        case(
            "control characters in a path",
            vec![
                "--config".into(),
                "conf\u{1b}[31m\nx.toml".into(),
                "rows".into(),
            ],
            2,
            &["conf\\u{1b}[31m; x.toml"],
        )
        .own_config()
        .absent("\u{1b}"),
        case(
            "a value nested deeper than the parser goes",
            task_args(&["set", "k", &nested(200)]),
            2,
            &["deeper than 128 levels"],
        )
        .absent("quote strings"),
        // Inputs the other tests cover too.
        case(
            "VALUE that is not JSON",
            task_args(&["set", "k", "text"]),
            2,
            &["VALUE is not JSON"],
        ),
        case("an empty key", task_args(&["set", "", "1"]), 2, &["key is empty"]),
        case(
            "a missing --dag-id",
            vec![
                "task-state".into(),
                "--run-id".into(),
                "r".into(),
                "--task-id".into(),
                "t".into(),
                "get".into(),
                "k".into(),
            ],
            2,
            &["--dag-id"],
        ),
        case(
            "a misspelt config key",
            task_args(&["get", "seed"]),
            2,
            &["state_bakend"],
        )
        .config("[workers]\nstate_bakend = \"fs\"\n"),
        case(
            "an unknown environment override",
            task_args(&["get", "seed"]),
            2,
            &["STATEHOST__WORKERS__NOPE"],
        )
        .env("STATEHOST__WORKERS__NOPE", "1"),
    ]
}

#[test]
fn every_bad_input_is_one_line_and_leaves_the_store_as_it_was() {
    let mut failures = Vec::new();
    for case in cases() {
        let sandbox = seeded();
        sandbox.config(case.config);
        (case.prepare)(&sandbox);
        let before = snapshot(sandbox.path());
        let output = if case.own_config {
            let mut command = statehost_command(sandbox.path());
            command.args(&case.args);
            run_command(command, &case.env)
        } else {
            run(&sandbox, &case.args, &case.env)
        };
        let (stdout, stderr) = text(&output);
        let mut problems = Vec::new();
        if output.status.code() != Some(case.code) {
            problems.push(format!(
                "exit {:?}, not {}",
                output.status.code(),
                case.code
            ));
        }
        match case.code {
            // Absent, or done: nothing to say.
            0 | 1 => {
                if !stderr.is_empty() {
                    problems.push("something on stderr".to_string());
                }
            }
            _ => {
                let lines: Vec<&str> = stderr.lines().collect();
                let warned = lines.iter().filter(|l| l.starts_with("[WARN ")).count();
                if lines.len() != case.warnings + 1
                    || warned != case.warnings
                    || !lines.last().is_some_and(|l| l.starts_with("error: "))
                {
                    problems.push(format!(
                        "not {} warnings and one `error:` line",
                        case.warnings
                    ));
                }
            }
        }
        for needle in &case.needles {
            if !stderr.contains(needle) {
                problems.push(format!("{needle:?} missing"));
            }
        }
        for text in &case.absent {
            if stderr.contains(text) {
                problems.push(format!("{text:?} present"));
            }
        }
        if stderr.len() > 1000 {
            problems.push(format!("{} bytes on stderr", stderr.len()));
        }
        for bad in ["panicked", "backtrace"] {
            if stderr.contains(bad) {
                problems.push(format!("{bad:?} on stderr"));
            }
        }
        if snapshot(sandbox.path()) != before {
            problems.push("the store changed".to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stdout: {}\n  stderr: {}",
                case.what,
                problems.join(", "),
                stdout.trim(),
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn ok(sandbox: &Sandbox, args: &[String], env: &[(&str, OsString)]) -> (String, String) {
    let output = run(sandbox, args, env);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {stdout} {stderr}");
    (stdout, stderr)
}

fn rows_json(sandbox: &Sandbox) -> Vec<Value> {
    let (stdout, _) = ok(sandbox, &["rows".into(), "--json".into()], &[]);
    serde_json::from_str::<Value>(&stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_zero_retention_means_never_as_in_the_config() {
    let sandbox = seeded();
    ok(
        &sandbox,
        &task_args(&["set", "z", "1", "--retention-days", "0"]),
        &[],
    );
    let (stdout, _) = ok(&sandbox, &task_args(&["get", "z"]), &[]);
    assert_eq!(stdout.trim(), "1");
    let row = rows_json(&sandbox)
        .into_iter()
        .find(|r| r["key"] == "z")
        .unwrap();
    assert_eq!(row["expires_at"], Value::Null, "{row}");
    // The largest retention is kept, and is a real date.
    ok(
        &sandbox,
        &task_args(&["set", "m", "1", "--retention-days", "365000"]),
        &[],
    );
    let row = rows_json(&sandbox)
        .into_iter()
        .find(|r| r["key"] == "m")
        .unwrap();
    assert!(
        row["expires_at"].as_str().unwrap().starts_with("30"),
        "{row}"
    );
}

#[test]
fn numbers_keep_every_digit() {
    let sandbox = seeded();
    // As written, but for an exponent, which gains its sign.
    for (number, read) in [
        ("18446744073709551616", "18446744073709551616"),
        ("-18446744073709551617", "-18446744073709551617"),
        (
            "123456789012345678901234567890123456789",
            "123456789012345678901234567890123456789",
        ),
        (
            "3.14159265358979323846264338327950288419716939937510",
            "3.14159265358979323846264338327950288419716939937510",
        ),
        ("0.1", "0.1"),
        ("1e400", "1e+400"),
        ("-2.5E-400", "-2.5e-400"),
    ] {
        // (`--`: clap takes only plain negative numbers for values.)
        ok(&sandbox, &task_args(&["set", "n", "--", number]), &[]);
        let (stdout, _) = ok(&sandbox, &task_args(&["get", "n"]), &[]);
        assert_eq!(stdout.trim(), read);
        // Inside a value.
        let value = format!("{{\"n\":[{number}]}}");
        ok(&sandbox, &task_args(&["set", "o", &value]), &[]);
        let (stdout, _) = ok(&sandbox, &task_args(&["get", "o"]), &[]);
        assert_eq!(stdout.trim(), format!("{{\"n\":[{read}]}}"));
    }
}

#[test]
fn unrelated_variables_are_ignored_even_when_not_utf8() {
    let sandbox = seeded();
    let env = [(
        "SOME_OTHER_VARIABLE",
        OsString::from_vec(b"\xff\xfe".to_vec()),
    )];
    let (stdout, stderr) = ok(&sandbox, &task_args(&["get", "seed"]), &env);
    assert_eq!(stdout.trim(), "\"kept\"");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn the_longest_ids_and_key_can_be_stored_on_the_fs_backend() {
    let sandbox = seeded();
    let id = "é".repeat(512); // 1024 bytes, 6 once percent-encoded
    let key = "/".repeat(512);
    let scope = |rest: &[&str]| {
        let mut args: Vec<String> = [
            "task-state",
            "--dag-id",
            &id,
            "--run-id",
            &id,
            "--task-id",
            &id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    let big = format!("\"{}\"", "v".repeat(4096));
    ok(&sandbox, &scope(&["set", &key, &big]), &[]);
    let (stdout, _) = ok(&sandbox, &scope(&["get", &key]), &[]);
    assert_eq!(stdout.trim(), big);
    ok(&sandbox, &scope(&["delete", &key]), &[]);
    let output = run(&sandbox, &scope(&["get", &key]), &[]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn an_asset_keeps_its_identity_after_a_mismatch() {
    let sandbox = seeded();
    let output = run(
        &sandbox,
        &asset_args("a", Some("s3://b/x"), &["get", "k"]),
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let (stdout, _) = ok(
        &sandbox,
        &asset_args("a", Some("s3://b/a"), &["get", "k"]),
        &[],
    );
    assert_eq!(stdout.trim(), "1");
    let (stdout, _) = ok(&sandbox, &asset_args("a", None, &["get", "k"]), &[]);
    assert_eq!(stdout.trim(), "1");
}

/// Damages rows the way a hand edit or another program might.
fn damage(sandbox: &Sandbox) {
    let db = rusqlite::Connection::open(sandbox.path().join("db/meta.db")).unwrap();
    db.execute_batch(
        "UPDATE task_state SET expires_at = 'soon' WHERE key = 'seed';
         INSERT INTO task_state (dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at)
           SELECT '', run_id, task_id, map_index, 'nodag', value, updated_at, 1
           FROM task_state WHERE key = 'big';
         INSERT INTO asset (name, uri, identity) VALUES (NULL, NULL, 'name');
         INSERT INTO asset_state (asset_id, key, value, updated_at)
           VALUES ((SELECT max(id) FROM asset), 'nameless', '1', 0);",
    )
    .unwrap();
}

#[test]
fn rows_and_gc_skip_damaged_rows_and_name_them() {
    let sandbox = seeded();
    damage(&sandbox);
    let objects_before = snapshot(&sandbox.path().join("objects"));

    let (stdout, stderr) = ok(&sandbox, &["rows".into()], &[]);
    assert!(stdout.contains("key=\"big\""), "{stdout}");
    assert!(
        stdout.contains("key=\"k\""),
        "the asset row is listed: {stdout} {stderr}"
    );
    for named in [
        "key \"seed\"",
        "key \"nodag\"",
        "key \"nameless\"",
        "3 rows could not be read",
    ] {
        assert!(stderr.contains(named), "{named} not in {stderr}");
    }
    let rows = rows_json(&sandbox);
    assert_eq!(rows.len(), 2, "{rows:?}");

    // The row without a dag_id has expired: gc removes it, but not the
    // object it names (`big`'s), nor any other.
    let (stdout, stderr) = ok(&sandbox, &["gc".into()], &[]);
    assert!(
        stdout.contains("1 expired rows, 0 objects behind them"),
        "{stdout}"
    );
    assert!(stderr.contains("key \"nodag\""), "{stderr}");
    assert!(stderr.contains("1 rows could not be read"), "{stderr}");
    assert_eq!(snapshot(&sandbox.path().join("objects")), objects_before);
    let (stdout, _) = ok(&sandbox, &task_args(&["get", "big"]), &[]);
    assert_eq!(stdout.trim().len(), 4098);
}

#[test]
fn a_read_only_database_can_be_read() {
    let sandbox = seeded();
    let (rows_before, _) = ok(&sandbox, &["rows".into()], &[]);
    let before = snapshot(sandbox.path());
    let output = read_only_run(&sandbox, &["rows".into()]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, rows_before);
    let output = read_only_run(&sandbox, &["gc".into(), "--dry-run".into()]);
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert_eq!(snapshot(sandbox.path()), before);
}

/// The number of files below `root` (0 when it does not exist).
fn files(root: &Path) -> usize {
    std::fs::read_dir(root).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { files(&p) } else { 1 })
            .sum()
    })
}

#[test]
fn a_grace_too_long_to_count_is_refused_not_wrapped() {
    let sandbox = seeded();
    // An object whose row has not landed yet: seconds old.
    rusqlite::Connection::open(sandbox.path().join("db/meta.db"))
        .unwrap()
        .execute("DELETE FROM task_state WHERE key = 'big'", [])
        .unwrap();
    let objects = files(&sandbox.path().join("objects"));
    assert!(objects > 0);
    for grace in ["18446744073709551615", "300000000000"] {
        let env = [(
            "STATEHOST__STATE_STORE__ORPHAN_GRACE",
            OsString::from(grace),
        )];
        let output = run(&sandbox, &["gc".into()], &env);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("orphan_grace"), "{stderr}");
        assert_eq!(files(&sandbox.path().join("objects")), objects);
    }
}

#[test]
fn a_read_only_read_refuses_a_wal_it_cannot_read() {
    // Values kept in the database, so the WAL holds the newer one.
    let sandbox = seeded();
    sandbox.config(&BASE.replace(
        "root = \"objects\"",
        "root = \"objects\"\ninline_threshold_bytes = 100000",
    ));
    ok(&sandbox, &task_args(&["set", "w", "\"old\""]), &[]);
    let db_dir = sandbox.path().join("db");
    let writer = rusqlite::Connection::open(db_dir.join("meta.db")).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute(
            "UPDATE task_state SET value = '\"new\"' WHERE key = 'w'",
            [],
        )
        .unwrap();
    // Closed without a checkpoint, as a writer that died would leave it.
    std::mem::forget(writer);
    std::fs::remove_file(db_dir.join("meta.db-shm")).unwrap();
    let output = read_only_run(&sandbox, &task_args(&["get", "w"]));
    let (stdout, stderr) = text(&output);
    assert_ne!(stdout.trim(), "\"old\"", "a committed write was ignored");
    assert_eq!(output.status.code(), Some(3), "{stdout} {stderr}");
    assert!(stderr.contains("meta.db-wal"), "{stderr}");
}

/// Runs the binary on the sandbox with its database directory and file
/// made read-only, as an unprivileged user when this is root (who may
/// write anything).
fn read_only_run(sandbox: &Sandbox, args: &[String]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let db_dir = sandbox.path().join("db");
    mode(sandbox.path(), 0o755);
    for entry in std::fs::read_dir(&db_dir).unwrap() {
        mode(&entry.unwrap().path(), 0o444);
    }
    mode(&db_dir, 0o555);
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(&statehost_tests::artifacts().statehost);
        c
    } else {
        std::process::Command::new(&statehost_tests::artifacts().statehost)
    };
    command
        .current_dir(sandbox.path())
        .arg("--config")
        .arg(sandbox.path().join("statehost.toml"))
        .args(args);
    let output = command.output().unwrap();
    mode(&db_dir, 0o755);
    output
}

#[test]
fn reading_creates_no_backend_root() {
    let sandbox = seeded();
    sandbox.config(&BASE.replace("root = \"objects\"", "root = \"fresh/objects\""));
    for args in [
        task_args(&["get", "seed"]),
        asset_args("a", None, &["get", "k"]),
        vec!["gc".into(), "--dry-run".into()],
        vec!["check".into()],
    ] {
        let output = run(&sandbox, &args, &[]);
        assert!(output.status.code().is_some(), "{args:?}");
        assert!(
            !sandbox.path().join("fresh").exists(),
            "{args:?} created the backend's root"
        );
    }
    // The first write makes it.
    ok(&sandbox, &task_args(&["set", "n", "\"x\""]), &[]);
    assert!(sandbox.path().join("fresh/objects").is_dir());
}

#[test]
fn an_object_with_the_json_librarys_number_key_is_refused_not_changed() {
    let sandbox = seeded();
    for value in [
        r#"{"$serde_json::private::Number":"12"}"#,
        r#"{"a":[{"$serde_json::private::Number" : "x"}]}"#,
    ] {
        let output = run(&sandbox, &task_args(&["set", "k", value]), &[]);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("reserves for numbers"), "{stderr}");
    }
    // As a string it is a value like any other.
    let value = r#"["$serde_json::private::Number"]"#;
    ok(&sandbox, &task_args(&["set", "k", value]), &[]);
    let (stdout, _) = ok(&sandbox, &task_args(&["get", "k"]), &[]);
    assert_eq!(stdout.trim(), value);
}

#[test]
fn deletes_and_clears_create_no_database() {
    let sandbox = seeded();
    sandbox.config(&BASE.replace("sqlite://db/meta.db", "sqlite://typo/meta.db"));
    for args in [
        task_args(&["delete", "k"]),
        task_args(&["clear"]),
        asset_args("a", None, &["delete", "k"]),
        asset_args("a", None, &["clear"]),
    ] {
        let output = run(&sandbox, &args, &[]);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("no metadata database"), "{stderr}");
        assert!(!sandbox.path().join("typo").exists(), "{args:?}");
    }
}

/// The tables of `schema`, as PostgreSQL lists them.
fn pg_tables(client: &mut postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgresql_reads_create_nothing_and_a_foreign_asset_table_is_refused() {
    let base = statehost_tests::require_env("STATEHOST_TEST_POSTGRES_URL");
    let mut client = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    let sandbox = seeded();
    for (tag, foreign) in [
        ("empty", ""),
        (
            "airflow",
            "CREATE TABLE {s}.asset (id serial PRIMARY KEY, name text, uri text);",
        ),
    ] {
        let schema = format!("statehost_bad_{tag}_{}", std::process::id());
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; {}",
                foreign.replace("{s}", &schema)
            ))
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let before = pg_tables(&mut client, &schema);
        let env = [("STATEHOST__DATABASE__URL", OsString::from(&url))];
        for args in [vec!["rows".to_string()], task_args(&["get", "k"])] {
            let output = run(&sandbox, &args, &env);
            let (_, stderr) = text(&output);
            assert_eq!(output.status.code(), Some(3), "{tag} {args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        assert_eq!(
            pg_tables(&mut client, &schema),
            before,
            "{tag}: a read changed the schema"
        );
        // A write refuses a database that has someone else's asset table.
        let output = run(&sandbox, &task_args(&["set", "k", "1"]), &env);
        let (_, stderr) = text(&output);
        if foreign.is_empty() {
            assert_eq!(output.status.code(), Some(0), "{stderr}");
        } else {
            assert_eq!(output.status.code(), Some(3), "{stderr}");
            assert!(
                stderr.contains("asset table that statehost did not create"),
                "{stderr}"
            );
            assert_eq!(pg_tables(&mut client, &schema), before);
        }
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }
}
