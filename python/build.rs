//! Puts the shipped plugins into the package (`statehost/plugins/`), so the
//! wheel carries them and `plugins_dir` defaults to them.
//!
//! Only when building the extension module (maturin sets
//! `PYO3_BUILD_EXTENSION_MODULE`): a plain `cargo build`, `test` or
//! `clippy` of the workspace leaves the package directory alone. The
//! plugins come from a nested `cargo build` of their crates (in a target
//! directory of its own: this build holds the lock of the outer one), or,
//! when `STATEHOST_PYTHON_PLUGINS` names a directory that already holds
//! them (CI, after the workspace build), from there.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[(&str, &str)] = &[
    ("statehost-memory", "libstatehost_memory.so"),
    ("statehost-fs", "libstatehost_fs.so"),
    ("statehost-object-store", "libstatehost_object_store.so"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");
    println!("cargo:rerun-if-env-changed=STATEHOST_PYTHON_PLUGINS");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("PYO3_BUILD_EXTENSION_MODULE").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dest = manifest_dir.join("statehost").join("plugins");
    std::fs::create_dir_all(&dest).expect("cannot create statehost/plugins");
    let source = match std::env::var_os("STATEHOST_PYTHON_PLUGINS") {
        Some(dir) => PathBuf::from(dir),
        None => build_plugins(&manifest_dir),
    };
    for (_, file) in PLUGINS {
        let from = source.join(file);
        let to = dest.join(file);
        // A copy, then a rename: a library being loaded is never half
        // written.
        let partial = dest.join(format!(".{file}.partial"));
        std::fs::copy(&from, &partial)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
        std::fs::rename(&partial, &to)
            .unwrap_or_else(|e| panic!("cannot install {}: {e}", to.display()));
        println!("cargo:rerun-if-changed={}", from.display());
    }
}

/// Builds the plugin crates with this build's profile; the directory that
/// holds the libraries.
fn build_plugins(manifest_dir: &Path) -> PathBuf {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    // <target>/<profile>/build/<package>-<hash>/out -> <target>/python-plugins
    let target_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(|target| target.join("python-plugins"))
        .unwrap_or_else(|| out_dir.join("plugins-target"));
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(manifest_dir.parent().expect("python/ is in the workspace"))
        .arg("build")
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("PYO3_BUILD_EXTENSION_MODULE");
    if release {
        command.arg("--release");
    }
    for (package, _) in PLUGINS {
        command.args(["-p", package]);
    }
    let status = command.status().expect("cannot run cargo");
    assert!(status.success(), "building the plugins failed");
    for dir in ["plugin-api", "plugins"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.parent().unwrap().join(dir).display()
        );
    }
    target_dir.join(if release { "release" } else { "debug" })
}
