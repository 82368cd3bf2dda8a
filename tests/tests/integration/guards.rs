//! Loading guards: checked before the library is loaded.

use std::os::unix::fs::PermissionsExt;

use statehost_tests::{Sandbox, assert_fails, library, text};

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_library_others_can_write_is_refused_unless_allowed() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
    chmod(&lib, 0o775);
    sandbox.config("[workers]\nstate_backend = \"memory\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &[
            "refused",
            "writable by group or others",
            "chmod go-w",
            "allow_insecure_plugin_permissions",
        ],
    );

    let output = sandbox.run(
        &["check"],
        &[("STATEHOST__CORE__ALLOW_INSECURE_PLUGIN_PERMISSIONS", "true")],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("backend `memory`"), "{stdout}");
    assert!(
        stderr.contains("WARN") && stderr.contains("writable by group or others"),
        "{stderr}"
    );

    // The listing applies the same guard and goes on.
    let output = sandbox.run(&["plugins"], &[]);
    assert!(text(&output).0.contains("refused"), "{:?}", text(&output));
}

#[test]
fn a_plugin_directory_others_can_write_is_refused() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    chmod(&sandbox.plugins_dir(), 0o777);
    sandbox.config("[workers]\nstate_backend = \"memory\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &["the directory", "writable by group or others"],
    );
}

#[test]
fn a_library_owned_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
    std::os::unix::fs::chown(&lib, Some(4242), None).unwrap();
    sandbox.config("[workers]\nstate_backend = \"memory\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(&output, 3, &["owned by uid 4242", "neither you"]);
}

#[test]
fn a_symlink_out_of_the_plugin_directory_is_refused() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    let outside = sandbox.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.join("libstatehost_real.so");
    std::fs::copy(library("statehost_memory"), &target).unwrap();
    std::os::unix::fs::symlink(
        &target,
        sandbox.plugins_dir().join("libstatehost_linked.so"),
    )
    .unwrap();
    sandbox.config("[workers]\nstate_backend = \"linked\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(&output, 3, &["refused", "outside the plugin directory"]);

    // A link that stays inside the directory is fine.
    std::os::unix::fs::symlink(
        sandbox.plugins_dir().join("libstatehost_memory.so"),
        sandbox.plugins_dir().join("libstatehost_alias.so"),
    )
    .unwrap();
    sandbox.config("[workers]\nstate_backend = \"alias\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert!(output.status.success(), "{:?}", text(&output));
}

#[test]
fn a_sha256_pin_must_match_the_loaded_bytes() {
    use sha2::Digest;
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
    let actual: String = sha2::Sha256::digest(std::fs::read(&lib).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    sandbox.config(&format!(
        "[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"{}\"\n",
        actual.to_uppercase()
    ));
    let output = sandbox.run(&["check"], &[]);
    assert!(output.status.success(), "{:?}", text(&output));

    let wrong = "0".repeat(64);
    sandbox.config(&format!(
        "[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"{wrong}\"\n"
    ));
    let output = sandbox.run(&["check"], &[]);
    assert_fails(&output, 3, &["refused", &actual, &wrong]);

    sandbox.config("[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"abc\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(&output, 2, &["state_backend_sha256", "64 hex digits"]);
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs the CLI, failing the test (instead of hanging it) after 20 s.
fn run_bounded(sandbox: &Sandbox, args: &[&str]) -> std::process::Output {
    bounded(sandbox.command(args, &[]), args)
}

fn bounded(mut command: std::process::Command, args: &[&str]) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("statehost {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn fifos_and_devices_are_refused_without_hanging() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    // A FIFO in the plugin directory and named as the backend.
    mkfifo(&sandbox.plugins_dir().join("libstatehost_fifo.so"));
    sandbox.config("[workers]\nstate_backend = \"fifo\"\n");
    assert_fails(
        &run_bounded(&sandbox, &["check"]),
        3,
        &["libstatehost_fifo.so", "it is a FIFO, not a regular file"],
    );
    let listing = run_bounded(&sandbox, &["plugins"]);
    let (stdout, stderr) = text(&listing);
    assert!(listing.status.success(), "{stderr}");
    assert!(
        stdout.contains("fifo") && stdout.contains("it is a FIFO"),
        "{stdout}"
    );
    assert!(stdout.contains("memory "), "{stdout}");

    // A FIFO or a device as the config file, the database, or the options.
    let fifo = sandbox.path().join("fifo.toml");
    mkfifo(&fifo);
    let with_config = |config: &str| {
        let args = ["--config", config, "plugins"];
        let mut command = statehost_tests::statehost_command(sandbox.path());
        command.args(args);
        bounded(command, &args)
    };
    for config in [fifo.to_str().unwrap(), "/dev/zero"] {
        let output = with_config(config);
        assert_fails(&output, 2, &[config, "not a regular file"]);
    }
    mkfifo(&sandbox.path().join("db.fifo"));
    sandbox.config("[database]\nurl = \"sqlite://db.fifo\"\n");
    assert_fails(
        &run_bounded(&sandbox, &["rows"]),
        3,
        &["db.fifo", "it is a FIFO, not a regular file"],
    );
    let output = run_bounded(
        &sandbox,
        &[
            "conformance",
            library("statehost_memory").to_str().unwrap(),
            "--options",
            "/dev/zero",
        ],
    );
    assert_fails(&output, 2, &["--options /dev/zero", "not a regular file"]);

    // An oversized config file is refused, not read to the end.
    let big = sandbox.path().join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(200_000)).unwrap();
    let output = with_config(big.to_str().unwrap());
    assert_fails(&output, 2, &["big.toml", "bytes, more than the"]);
}
