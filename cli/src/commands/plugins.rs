//! `plugins` (what the plugin directory holds) and `check` (load the
//! configured backend and store, and report).

use std::path::PathBuf;

use serde_json::{Value, json};
use statehost::api::Metadata;
use statehost::config::Config;
use statehost::{Error, plugin};

use crate::ConfigSource;
use crate::output::{Out, Outcome};
use crate::say;

/// The legacy-plugin warning `check` gives.
const LEGACY_WARNING: &str = "built against plugin-api 1.x (no write ids, no exact deletes): served with in-process fencing, so no lost write, no dangling reference and no resurrection hold within this process only; rebuild it against statehost-plugin-api 2";

/// What the listing learned of one library.
struct Listed {
    name: String,
    path: PathBuf,
    metadata: Result<Metadata, Error>,
    /// Its code was run (`--load`) to read the metadata.
    loaded: bool,
}

/// Reads a library's metadata from its file; with `load`, a library that
/// has none is loaded and asked.
fn describe(name: String, path: PathBuf, policy: &plugin::LoadPolicy, load: bool) -> Listed {
    let metadata = plugin::read_metadata(&path, policy);
    if load && matches!(metadata, Err(Error::NoMetadata { .. })) {
        let metadata = plugin::load_library(&path, policy).map(|lib| lib.metadata().clone());
        return Listed {
            name,
            path,
            metadata,
            loaded: true,
        };
    }
    Listed {
        name,
        path,
        metadata,
        loaded: false,
    }
}

/// `statehost plugins [--json] [--load]`
pub fn list(config: &Config, json: bool, load: bool, out: &mut Out) -> Outcome {
    let policy = plugin::LoadPolicy {
        allow_insecure_permissions: config.allow_insecure_plugin_permissions,
        sha256: None,
        confine_to: Some(config.plugins_dir.clone()),
    };
    let listed: Vec<Listed> = plugin::discover(&config.plugins_dir)?
        .into_iter()
        .map(|(name, path)| describe(name, path, &policy, load))
        .collect();
    if json {
        let listing = listed
            .iter()
            .map(|l| match &l.metadata {
                Ok(m) => json!({
                    "file": l.path, "name": m.name, "version": m.version,
                    "plugin_api_version": m.plugin_api_version,
                    "description": m.description, "capabilities": m.capabilities,
                    "loaded": l.loaded,
                }),
                Err(e) => json!({
                    "file": l.path, "name": l.name, "error": e.to_string(), "loaded": l.loaded,
                }),
            })
            .collect();
        return Ok(out.json(&Value::Array(listing))?);
    }
    say!(out, "plugins in {}:", config.plugins_dir.display())?;
    if listed.is_empty() {
        say!(
            out,
            "  none (build them with `cargo build --release --workspace`, or set [core] plugins_dir)"
        )?;
    }
    for l in &listed {
        let loaded = if l.loaded { " (loaded to ask it)" } else { "" };
        match &l.metadata {
            Ok(m) => say!(
                out,
                "  {:<14} {:<8} plugin-api {:<7} [{}] {}{loaded}",
                m.name,
                m.version,
                m.plugin_api_version,
                m.capabilities.join(","),
                m.description
            )?,
            Err(e) => say!(out, "  {:<14} cannot list: {e}{loaded}", l.name)?,
        }
    }
    Ok(())
}

/// `statehost check [--json]`: fails (with the loader's or the store's
/// one-line error) when either cannot be used.
pub fn check(config: &Config, source: &ConfigSource, json: bool, out: &mut Out) -> Outcome {
    let backend = plugin::shared_backend(config)?;
    let mut warnings = Vec::new();
    if backend.as_ref().is_some_and(|b| b.is_legacy()) {
        warnings.push(LEGACY_WARNING.to_string());
    }
    // Checking never creates the database: one that is not there yet is
    // reported as such (the first write creates it).
    let store = match statehost::state::open_read_only_store(config) {
        Ok(store) => {
            if let Some(warning) = store.durability_warning()? {
                warnings.push(warning);
            }
            store.describe()
        }
        Err(Error::NoDatabase { path, .. }) => format!(
            "{} (not created yet: the first write creates it)",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if json {
        let backend = backend.as_ref().map(|b| {
            let m = b.metadata();
            json!({
                "name": m.name, "version": m.version,
                "plugin_api_version": m.plugin_api_version,
                "description": m.description, "capabilities": m.capabilities,
                "file": b.path(), "legacy": b.is_legacy(),
            })
        });
        return Ok(out.json(&json!({
            "config": source.file,
            "backend": backend,
            "store": store,
            "warnings": warnings,
        }))?);
    }
    say!(out, "config: {}", source.describe())?;
    match &backend {
        None => say!(
            out,
            "ok: no state backend configured: values are kept inline in the metadata store"
        )?,
        Some(backend) => {
            let m = backend.metadata();
            say!(
                out,
                "ok: backend `{}` {} (plugin-api {}) from {}",
                m.name,
                m.version,
                m.plugin_api_version,
                backend.path().display()
            )?;
            say!(out, "  {}", m.description)?;
            let capabilities = if m.capabilities.is_empty() {
                "none".to_string()
            } else {
                m.capabilities.join(", ")
            };
            say!(out, "  capabilities: {capabilities}")?;
        }
    }
    say!(out, "ok: metadata store {store}")?;
    for warning in &warnings {
        say!(out, "  warning: {warning}")?;
    }
    Ok(())
}
