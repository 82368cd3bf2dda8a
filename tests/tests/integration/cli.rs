//! The `statehost` command line, through the real binary: exit codes,
//! output streams that close or fill up, JSON output, times, commands that
//! must not create a database, the demo, and one-line errors.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Output, Stdio};

use serde_json::{Value, json};
use statehost_tests::{Sandbox, TASK, assert_fails, library, statehost_command, text};

fn fs_sandbox() -> Sandbox {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs"), ("fixture_faulty", "faulty")]);
    sandbox.config(
        "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.fs]\nroot = \"objects\"\n",
    );
    sandbox
}

fn task(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Output {
    let all: Vec<&str> = TASK.iter().chain(args).copied().collect();
    sandbox.run(&all, env)
}

fn ok(output: &Output) -> String {
    let (stdout, stderr) = text(output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// A pipe whose reading end is already closed: every write to the other
/// end fails with EPIPE, as when `| head` has quit.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Commands that print, each as an argument list (the demo's files go to
/// `demo_dir`).
fn printing_commands(demo_dir: &str) -> Vec<Vec<&str>> {
    let mut get: Vec<&str> = TASK.to_vec();
    get.extend(["get", "k"]);
    vec![
        vec!["rows"],
        vec!["rows", "--json"],
        get,
        vec!["plugins"],
        vec!["plugins", "--json"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["gc"],
        vec!["gc", "--json"],
        vec!["demo", "--dir", demo_dir],
        vec!["--help"],
        vec!["task-state", "--help"],
        vec!["--version"],
    ]
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let sandbox = fs_sandbox();
    ok(&task(&sandbox, &["set", "k", r#"{"v": 1}"#], &[]));
    let demo_dir = sandbox.path().join("demo").display().to_string();
    for args in printing_commands(&demo_dir) {
        let output = sandbox
            .command(&args, &[])
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?} printed on stderr");
    }
}

#[test]
fn a_full_disk_is_one_line_and_exit_4() {
    let sandbox = fs_sandbox();
    ok(&task(&sandbox, &["set", "k", r#"{"v": 1}"#], &[]));
    let demo_dir = sandbox.path().join("demo").display().to_string();
    for args in printing_commands(&demo_dir) {
        let output = sandbox
            .command(&args, &[])
            .stdout(File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_fails(&output, 4, &["cannot write the output", "No space left"]);
    }
}

#[test]
fn help_marks_required_options_and_gives_examples() {
    let dir = tempfile::tempdir().unwrap();
    let output = statehost_command(dir.path())
        .args(["task-state", "--help"])
        .output()
        .unwrap();
    let help = ok(&output);
    assert!(
        help.contains("Usage: statehost task-state [OPTIONS] --dag-id <DAG_ID> --run-id <RUN_ID> --task-id <TASK_ID> <COMMAND>"),
        "{help}"
    );
    let output = statehost_command(dir.path())
        .args(["task-state", "--run-id", "r", "--task-id", "t", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).1.contains("--dag-id <DAG_ID>"),
        "{:?}",
        text(&output)
    );

    let help = ok(&statehost_command(dir.path())
        .arg("--help")
        .output()
        .unwrap());
    let examples = help.split("Examples:").nth(1).expect("an Examples section");
    for command in [
        "plugins",
        "check",
        "task-state",
        "asset-state",
        "rows",
        "gc",
        "demo",
        "conformance",
    ] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{command} not listed: {help}"
        );
        assert!(
            examples.contains(&format!("statehost {command}")),
            "no example of {command}: {help}"
        );
    }
    assert!(help.contains("Exit codes:"), "{help}");
}

#[test]
fn exit_codes() {
    let sandbox = fs_sandbox();
    ok(&task(&sandbox, &["set", "k", r#"{"v": [1, 2]}"#], &[]));
    assert_eq!(
        ok(&task(&sandbox, &["get", "k"], &[])).trim(),
        r#"{"v":[1,2]}"#
    );
    // Negative numbers are values, not options.
    ok(&task(&sandbox, &["set", "n", "-5"], &[]));
    assert_eq!(ok(&task(&sandbox, &["get", "n"], &[])).trim(), "-5");
    ok(&task(&sandbox, &["set", "f", "-1.5e3"], &[]));
    // Numbers keep their digits (no detour through f64).
    assert_eq!(ok(&task(&sandbox, &["get", "f"], &[])).trim(), "-1.5e+3");

    // 1: no value; nothing on stderr.
    let out = task(&sandbox, &["get", "missing"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out), (String::new(), String::new()));
    // 2: bad input, bad configuration, a plugin that is not there.
    assert_fails(
        &task(&sandbox, &["set", "k", "{not json"], &[]),
        2,
        &["VALUE is not JSON"],
    );
    assert_fails(&task(&sandbox, &["set", "", "1"], &[]), 2, &["key"]);
    assert_fails(
        &sandbox.run(
            &[
                "task-state",
                "--dag-id",
                "d",
                "--run-id",
                "r",
                "--task-id",
                "t",
                "--map-index",
                "-2",
                "get",
                "k",
            ],
            &[],
        ),
        2,
        &["map"],
    );
    assert_fails(
        &task(
            &sandbox,
            &["get", "k"],
            &[("STATEHOST__WORKERS__STATE_BACKEND", "nosuch")],
        ),
        2,
        &["no plugin `nosuch`", "available: faulty, fs"],
    );
    assert_fails(
        &task(
            &sandbox,
            &["get", "k"],
            &[(
                "STATEHOST__WORKERS__STATE_BACKEND",
                "./nowhere/libstatehost_x.so",
            )],
        ),
        2,
        &["does not exist"],
    );
    assert_fails(
        &task(
            &sandbox,
            &["get", "k"],
            &[("STATEHOST__BACKENDS__FS__ROOOT", "x")],
        ),
        2,
        &["rooot"],
    );
    // 3: the backend failed.
    assert_fails(
        &task(
            &sandbox,
            &["set", "k2", "1"],
            &[
                ("STATEHOST__WORKERS__STATE_BACKEND", "faulty"),
                (
                    "STATEHOST__BACKENDS__FAULTY__OPS",
                    r#"{"serialize": "error"}"#,
                ),
            ],
        ),
        3,
        &["injected failure"],
    );
    // With no backend, an envelope is reported, not handed back as the value.
    assert_fails(
        &task(
            &sandbox,
            &["get", "k"],
            &[("STATEHOST__WORKERS__STATE_BACKEND", "")],
        ),
        3,
        &["no backend is configured"],
    );
    // Asset state needs a name or a uri.
    let out = sandbox.run(&["asset-state", "--name", "a", "set", "wm", "\"x\""], &[]);
    ok(&out);
    assert_eq!(
        ok(&sandbox.run(&["asset-state", "--name", "a", "get", "wm"], &[])).trim(),
        "\"x\""
    );
    assert_eq!(
        sandbox
            .run(&["asset-state", "get", "wm"], &[])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn json_output_is_json_with_values_as_json() {
    let sandbox = fs_sandbox();
    ok(&task(
        &sandbox,
        &["set", "k", r#"{"v": [1, 2]}"#, "--retention-days", "1"],
        &[],
    ));
    ok(&sandbox.run(
        &["asset-state", "--uri", "s3://b/o", "set", "wm", "7"],
        &[("STATEHOST__WORKERS__STATE_BACKEND", "")],
    ));

    let rows: Value = serde_json::from_str(&ok(&sandbox.run(&["rows", "--json"], &[]))).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let task_row = rows.iter().find(|r| r["key"] == "k").unwrap();
    // The stored envelope as a JSON object, not a string holding JSON.
    let reference = task_row["value"]["__airflow_state_ref__"].as_str().unwrap();
    assert!(reference.starts_with("v2/task/d/r/t/-1/k/"), "{reference}");
    assert_eq!(
        task_row["scope"],
        json!({"kind": "task", "dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1})
    );
    assert!(
        is_rfc3339(task_row["updated_at"].as_str().unwrap()),
        "{task_row}"
    );
    assert!(
        is_rfc3339(task_row["expires_at"].as_str().unwrap()),
        "{task_row}"
    );
    let asset_row = rows.iter().find(|r| r["key"] == "wm").unwrap();
    assert_eq!(asset_row["value"], json!(7));
    assert_eq!(asset_row["expires_at"], Value::Null);

    let check: Value = serde_json::from_str(&ok(&sandbox.run(&["check", "--json"], &[]))).unwrap();
    assert_eq!(check["backend"]["name"], "fs");
    assert!(
        check["store"].as_str().unwrap().ends_with("meta.db"),
        "{check}"
    );

    let gc: Value =
        serde_json::from_str(&ok(&sandbox.run(&["gc", "--dry-run", "--json"], &[]))).unwrap();
    assert_eq!(gc["dry_run"], true);
    assert_eq!(gc["expired_rows"], 0);
    assert_eq!(gc["orphans"], 0);

    let plugins: Value =
        serde_json::from_str(&ok(&sandbox.run(&["plugins", "--json"], &[]))).unwrap();
    let names: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["faulty", "fs"]);
}

fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && b[23] == b'Z'
        && text.bytes().filter(u8::is_ascii_digit).count() == 17
}

#[test]
fn human_output_prints_rfc3339_times() {
    let sandbox = fs_sandbox();
    ok(&task(
        &sandbox,
        &["set", "k", "1", "--retention-days", "2"],
        &[],
    ));
    let rows = ok(&sandbox.run(&["rows"], &[]));
    let updated = rows.split("updated_at=").nth(1).unwrap();
    assert!(is_rfc3339(&updated[..24]), "{rows}");
    let expires = rows.split("expires_at=").nth(1).unwrap();
    assert!(is_rfc3339(&expires[..24]), "{rows}");
}

#[test]
fn commands_that_only_read_never_create_a_database() {
    // No config anywhere: the default database would be ./statehost.db.
    let dir = tempfile::tempdir().unwrap();
    let mut get = TASK.to_vec();
    get.extend(["get", "k"]);
    for args in [
        vec!["rows"],
        vec!["gc"],
        vec!["gc", "--dry-run"],
        get.clone(),
        vec!["asset-state", "--name", "a", "get", "k"],
    ] {
        let output = statehost_command(dir.path()).args(&args).output().unwrap();
        assert_fails(
            &output,
            2,
            &[
                "no metadata database at",
                "statehost.db",
                "no config file was given or found",
            ],
        );
    }
    // check says the database is not there yet, and succeeds.
    let output = statehost_command(dir.path()).arg("check").output().unwrap();
    assert!(ok(&output).contains("not created yet"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "something was created"
    );

    // With a config file, the error names it.
    let sandbox = fs_sandbox();
    let out = sandbox.run(&["rows"], &[]);
    assert_fails(&out, 2, &["meta.db", "statehost.toml"]);
    assert!(!sandbox.path().join("db").exists());
    // A write creates it.
    ok(&task(&sandbox, &["set", "k", "1"], &[]));
    assert!(sandbox.path().join("db/meta.db").exists());
}

#[test]
fn demo_runs_on_a_throwaway_store_and_says_where() {
    let sandbox = fs_sandbox();
    let demo_dir = sandbox.path().join("demo-here");
    let out = ok(&sandbox.run(&["demo", "--dir", demo_dir.to_str().unwrap()], &[]));
    assert!(out.contains(&demo_dir.display().to_string()), "{out}");
    assert!(
        out.contains("(same)") && !out.contains("DIFFERENT"),
        "{out}"
    );
    assert!(out.contains("__airflow_state_ref__"), "{out}");
    assert!(demo_dir.join("demo.db").exists());
    assert!(
        out.contains(&demo_dir.join("objects").display().to_string()),
        "{out}"
    );
    // The configured store and backend root were not touched.
    assert!(!sandbox.path().join("db").exists());
    assert!(!sandbox.path().join("objects").exists());

    // Without --dir: a fresh temporary directory, named in the output.
    let out = ok(&sandbox.run(&["demo"], &[]));
    let named = out
        .lines()
        .next()
        .and_then(|l| l.split(" in ").nth(1))
        .and_then(|l| l.split(" (").next())
        .unwrap();
    assert!(
        std::path::Path::new(named).join("demo.db").exists(),
        "{out}"
    );
    std::fs::remove_dir_all(named).unwrap();

    // --configured writes into the configured store.
    let out = ok(&sandbox.run(&["demo", "--configured"], &[]));
    assert!(out.contains("meta.db"), "{out}");
    assert!(sandbox.path().join("db/meta.db").exists());
}

#[test]
fn gc_shows_no_progress_when_stderr_is_not_a_terminal() {
    let sandbox = fs_sandbox();
    for i in 0..3 {
        ok(&task(
            &sandbox,
            &["set", &format!("k{i}"), "1", "--retention-days", "0"],
            &[],
        ));
    }
    let out = sandbox.run(&["gc"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("gc deleted:"), "{stdout}");
    assert_eq!(stderr, "");
}

#[test]
fn a_plugins_multi_line_error_is_printed_as_one_line() {
    let sandbox = fs_sandbox();
    let out = task(
        &sandbox,
        &["set", "k", "1"],
        &[
            ("STATEHOST__WORKERS__STATE_BACKEND", "faulty"),
            (
                "STATEHOST__BACKENDS__FAULTY__OPS",
                r#"{"serialize": "multiline"}"#,
            ),
        ],
    );
    assert_fails(
        &out,
        3,
        &["injected failure in serialize; caused by: line two with a tab; and \\u{1b}[31mred"],
    );
}

#[test]
fn environment_overrides_take_the_backends_types() {
    let sandbox = fs_sandbox();
    // A string option given digits stays a string (the root is ./123) ...
    ok(&task(
        &sandbox,
        &["set", "k", "\"v\""],
        &[("STATEHOST__BACKENDS__FS__ROOT", "123")],
    ));
    assert!(sandbox.path().join("123/v2/task").is_dir());
    // ... and a number option given digits is a number.
    ok(&task(
        &sandbox,
        &["set", "small", "1"],
        &[("STATEHOST__BACKENDS__FS__INLINE_THRESHOLD_BYTES", "64")],
    ));
    let rows: Value = serde_json::from_str(&ok(&sandbox.run(&["rows", "--json"], &[]))).unwrap();
    let small = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "small")
        .unwrap();
    assert_eq!(small["value"], json!(1), "kept inline below the threshold");
    // A value the type cannot take names the key, the type and the variable.
    assert_fails(
        &task(
            &sandbox,
            &["get", "k"],
            &[("STATEHOST__BACKENDS__FS__INLINE_THRESHOLD_BYTES", "lots")],
        ),
        2,
        &[
            "[backends.fs] inline_threshold_bytes (set by STATEHOST__BACKENDS__FS__INLINE_THRESHOLD_BYTES)",
            "\"lots\" is not a whole number",
        ],
    );
    // So does a wrong type in the file.
    sandbox.config(
        "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.fs]\nroot = \"objects\"\nfsync = \"yes\"\n",
    );
    assert_fails(
        &task(&sandbox, &["get", "k"], &[]),
        2,
        &["[backends.fs] fsync: invalid type: string \"yes\", expected a boolean"],
    );
}

#[test]
fn the_error_contract_table_matches_what_the_host_does() {
    // The table in plugin-api's docs: kind, retried, exit code.
    let doc = std::fs::read_to_string(
        statehost_tests::workspace_root().join("plugin-api/docs/error-contract.md"),
    )
    .unwrap();
    let rows: Vec<(String, String, i32)> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let kind = cells[1].trim_matches('`').to_string();
            (kind, cells[3].to_string(), cells[4].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 7, "one row per ErrorKind: {rows:?}");
    let sandbox = fs_sandbox();
    for (kind, retried, code) in rows {
        let snake: String = kind
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let lower = c.to_ascii_lowercase();
                if c.is_uppercase() && i > 0 {
                    vec!['_', lower]
                } else {
                    vec![lower]
                }
            })
            .collect();
        let behaviour = format!(r#"{{"serialize": "fail:{snake}"}}"#);
        let out = task(
            &sandbox,
            &["set", "k", "1"],
            &[
                ("STATEHOST__WORKERS__STATE_BACKEND", "faulty"),
                ("STATEHOST__BACKENDS__FAULTY__OPS", &behaviour),
                ("RUST_LOG", "info"),
            ],
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{kind}: {stderr}");
        assert!(
            stderr.contains(&format!("injected {} failure", kind_words(&kind))),
            "{kind}: {stderr}"
        );
        let calls = stderr.matches("faulty: serialize").count();
        let expected = if retried == "no" { 1 } else { 2 };
        assert_eq!(
            calls, expected,
            "{kind}: retried = {retried}, but serialize ran {calls} times: {stderr}"
        );
    }
}

/// `ErrorKind`'s display form (`InvalidInput` -> `invalid input`).
fn kind_words(kind: &str) -> String {
    let mut out = String::new();
    for (i, c) in kind.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn conformance_command_runs_the_suite_on_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("fs.toml");
    std::fs::write(&options, "root = \"objects\"\nfsync = false\n").unwrap();
    let fs = library("statehost_fs");
    let out = statehost_command(dir.path())
        .arg("conformance")
        .arg(fs)
        .arg("--options")
        .arg(&options)
        .output()
        .unwrap();
    let report = ok(&out);
    for check in statehost_plugin_api::conformance::CHECKS {
        assert!(report.contains(&format!("ok    {check}")), "{report}");
    }
    let checks = statehost_plugin_api::conformance::CHECKS.len();
    assert!(
        report.contains(&format!("all {checks} checks passed")),
        "{report}"
    );
    // The relative root went to a temporary directory, now gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let out = statehost_command(dir.path())
        .args(["conformance", "--json"])
        .arg(fs)
        .arg("--options")
        .arg(&options)
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(report["plugin"], "fs");
    assert_eq!(report["failed"], Value::Null);
    assert_eq!(report["passed"].as_array().unwrap().len(), checks);

    // A backend that breaks the contract fails it: exit 1, the check named.
    let faulty_options = dir.path().join("faulty.json");
    std::fs::write(&faulty_options, r#"{"ops": {"deserialize": "malformed"}}"#).unwrap();
    let out = statehost_command(dir.path())
        .arg("conformance")
        .arg(library("fixture_faulty"))
        .arg("--options")
        .arg(&faulty_options)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL  round_trips_every_json_kind"),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("error: conformance check round_trips_every_json_kind failed:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Bad input: no such library, unreadable options, options the backend refuses.
    assert_fails(
        &statehost_command(dir.path())
            .args(["conformance", "./nope.so"])
            .output()
            .unwrap(),
        2,
        &["nope.so"],
    );
    assert_fails(
        &statehost_command(dir.path())
            .arg("conformance")
            .arg(fs)
            .args(["--options", "missing.toml"])
            .output()
            .unwrap(),
        2,
        &["--options missing.toml"],
    );
    assert_fails(
        &statehost_command(dir.path())
            .arg("conformance")
            .arg(fs)
            .output()
            .unwrap(),
        2,
        &["[backends.fs]", "missing field `root`"],
    );
}
