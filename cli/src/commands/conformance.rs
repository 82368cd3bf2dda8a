//! `conformance`: the backend conformance suite on a plugin library, for
//! authors who do not write Rust tests.

use std::path::Path;

use serde_json::{Value, json};
use statehost::Error;

use crate::output::{Failure, Out, Outcome};
use crate::say;

/// The options file: TOML (the `[backends.<name>]` table's contents), or
/// JSON when it ends in `.json`.
fn read_options(path: &Path) -> Result<Value, Failure> {
    let text = statehost::files::read_text(path, statehost::config::MAX_CONFIG_BYTES)
        .map_err(|e| Failure::Input(format!("--options {}: {e}", path.display())))?;
    let bad = |e: String| Failure::Input(format!("--options {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "json") {
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if !value.is_object() {
            return Err(bad("must be a JSON object of options".to_string()));
        }
        Ok(value)
    } else {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| bad(e.message().trim().replace('\n', " ")))?;
        serde_json::to_value(table).map_err(|e| bad(e.to_string()))
    }
}

/// `statehost conformance LIBRARY [--options FILE] [--json]`
pub fn run(library: &Path, options: Option<&Path>, json: bool, out: &mut Out) -> Outcome {
    let options = match options {
        Some(path) => read_options(path)?,
        None => json!({}),
    };
    let plugin = statehost_plugin_test::load(library, options).map_err(|e| match e {
        // A library path that is not there is the caller's mistake.
        Error::PluginUnreadable { .. } => Failure::Input(e.to_string()),
        e => Failure::Host(e),
    })?;
    let m = plugin.metadata().clone();
    if !json {
        say!(
            out,
            "conformance of `{}` {} (plugin-api {}) from {}:",
            m.name,
            m.version,
            m.plugin_api_version,
            library.display()
        )?;
    }
    // A failing check panics; its message is the report, not noise on
    // stderr.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut passed: Vec<&'static str> = Vec::new();
    let result = plugin.check_reporting(|name| passed.push(name));
    std::panic::set_hook(hook);
    if result.is_err() {
        // The last check started is the one that failed.
        passed.pop();
    }
    if json {
        out.json(&json!({
            "plugin": m.name,
            "version": m.version,
            "plugin_api_version": m.plugin_api_version,
            "passed": passed,
            "failed": result.as_ref().err().map(|f| json!({"check": f.check, "message": f.message})),
        }))?;
    } else {
        for name in &passed {
            say!(out, "  ok    {name}")?;
        }
        match &result {
            Ok(()) => say!(out, "all {} checks passed", passed.len())?,
            Err(failure) => say!(out, "  FAIL  {}", failure.check)?,
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(failure) => Err(Failure::No(Some(failure.to_string()))),
    }
}
