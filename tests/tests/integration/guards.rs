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
