//! `demo`: a guided round trip. By default on a throwaway store and backend
//! root in a directory of its own, which it names; with `--configured`, on
//! the configured ones.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use statehost::api::TaskScope;
use statehost::config::Config;
use statehost::envelope::{self, Stored};
use statehost::store::RowOwner;
use statehost::{StateHost, plugin};

use crate::output::{Failure, Out, Outcome};
use crate::say;

/// Where a throwaway demo writes.
struct Throwaway {
    dir: PathBuf,
    /// The fs backend's root, when the fs plugin is installed.
    objects: Option<PathBuf>,
}

/// A configuration for the throwaway run: a SQLite file in `dir`, and the
/// `fs` plugin (from the configured plugin directory) rooted in `dir` if
/// it is there.
fn throwaway_config(config: &Config, dir: &Path) -> Result<(Config, Throwaway), Failure> {
    let has_fs = plugin::discover(&config.plugins_dir)
        .map(|found| found.iter().any(|(name, _)| name == "fs"))
        .unwrap_or(false);
    let mut table = toml::Table::new();
    let mut core = toml::Table::new();
    core.insert(
        "plugins_dir".into(),
        config.plugins_dir.display().to_string().into(),
    );
    core.insert(
        "allow_insecure_plugin_permissions".into(),
        config.allow_insecure_plugin_permissions.into(),
    );
    table.insert("core".into(), core.into());
    let mut database = toml::Table::new();
    database.insert("url".into(), "sqlite://demo.db".into());
    table.insert("database".into(), database.into());
    if has_fs {
        let mut workers = toml::Table::new();
        workers.insert("state_backend".into(), "fs".into());
        table.insert("workers".into(), workers.into());
        let mut fs = toml::Table::new();
        fs.insert("root".into(), "objects".into());
        let mut backends = toml::Table::new();
        backends.insert("fs".into(), fs.into());
        table.insert("backends".into(), backends.into());
    }
    let text = toml::to_string(&table)
        .map_err(|e| Failure::Input(format!("cannot write the demo's configuration: {e}")))?;
    // The environment's overrides are for real runs, not this one.
    let demo = Config::parse(&text, None, dir.to_path_buf(), std::iter::empty())?;
    Ok((
        demo,
        Throwaway {
            dir: dir.to_path_buf(),
            objects: has_fs.then(|| dir.join("objects")),
        },
    ))
}

fn make_dir(dir: Option<&Path>) -> Result<PathBuf, Failure> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::Input(format!("--dir {}: cannot create it ({e})", dir.display()))
            })?;
            Ok(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
        }
        None => tempfile::Builder::new()
            .prefix("statehost-demo-")
            .tempdir()
            .map(|d| d.keep())
            .map_err(|e| {
                Failure::Input(format!(
                    "cannot create a temporary directory ({e}); pass --dir DIR"
                ))
            }),
    }
}

/// `statehost demo [--dir DIR | --configured]`
pub fn run(config: &Config, dir: Option<&Path>, configured: bool, out: &mut Out) -> Outcome {
    let (config, throwaway) = if configured {
        (config.clone(), None)
    } else {
        let dir = make_dir(dir)?;
        let (demo, throwaway) = throwaway_config(config, &dir)?;
        (demo, Some(throwaway))
    };
    let host = StateHost::open(&config)?;
    let backend = host.backend_name().map(str::to_string);
    match &throwaway {
        Some(t) => {
            say!(
                out,
                "statehost demo, in {} (a throwaway store):",
                t.dir.display()
            )?;
            say!(out, "  metadata store {}", t.dir.join("demo.db").display())?;
            match &t.objects {
                Some(objects) => say!(out, "  backend fs, files under {}", objects.display())?,
                None => say!(
                    out,
                    "  no fs plugin in {}: values stay inline in the store",
                    config.plugins_dir.display()
                )?,
            }
        }
        None => say!(
            out,
            "statehost demo on the configured store {} and backend {}:",
            host.store().describe(),
            backend.as_deref().unwrap_or("none (values inline)")
        )?,
    }
    let scope = TaskScope::new("demo_dag", "manual__demo", "extract", -1)
        .map_err(|e| Failure::Input(e.message().to_string()))?;
    let state = host.task_state(scope.clone());
    let values = [
        ("job_id", json!("job-2026-001")),
        (
            "checkpoint",
            json!({"offset": 1024, "files": ["a.csv", "b.csv"]}),
        ),
        ("retries_seen", json!(2)),
    ];
    say!(out)?;
    say!(out, "1. set three keys in {scope}:")?;
    for (key, value) in &values {
        state.set(key, value)?;
        say!(out, "   set {key} = {value}")?;
    }
    say!(out)?;
    say!(out, "2. read them back:")?;
    for (key, value) in &values {
        let back = state.get(key)?;
        let same = back.as_ref() == Some(value);
        let shown = back.map_or_else(|| "(absent)".to_string(), |v| v.to_string());
        say!(
            out,
            "   get {key} -> {shown} {}",
            if same { "(same)" } else { "(DIFFERENT!)" }
        )?;
        if !same {
            return Err(Failure::Host(statehost::Error::Corrupt {
                scope: scope.to_string(),
                key: key.to_string(),
                message: "it did not read back as written".to_string(),
            }));
        }
    }
    say!(out)?;
    say!(
        out,
        "3. what the metadata store holds, and where the values really live:"
    )?;
    for row in host.rows()?.rows {
        if !matches!(&row.owner, RowOwner::Task(t) if *t == scope) {
            continue;
        }
        say!(out, "   row {:<13} {}", row.key, row.value)?;
        if let Ok(Stored::Reference(reference)) = envelope::unwrap(&row.value) {
            let place = match throwaway.as_ref().and_then(|t| t.objects.as_ref()) {
                Some(root) => format!("file {}", root.join(reference.as_ref()).display()),
                None => format!(
                    "backend `{}`, reference {reference:?}",
                    backend.as_deref().unwrap_or("?")
                ),
            };
            say!(out, "   {:<17} -> {place}", "")?;
        }
    }
    say!(out)?;
    say!(out, "4. delete job_id:")?;
    state.delete("job_id")?;
    let after = state.get("job_id")?;
    say!(
        out,
        "   get job_id -> {}",
        after.map_or_else(|| "(absent)".to_string(), |v: Value| v.to_string())
    )?;
    say!(out)?;
    say!(out, "5. clear the task's state:")?;
    state.clear(true)?;
    let mut left = 0;
    for key in ["checkpoint", "retries_seen"] {
        left += usize::from(state.get(key)?.is_some());
    }
    say!(out, "   keys left: {left}")?;
    say!(out)?;
    match &throwaway {
        Some(t) => say!(
            out,
            "done. The demo's files are in {}; remove them with `rm -r {}`.",
            t.dir.display(),
            t.dir.display()
        )?,
        None => say!(out, "done.")?,
    }
    say!(
        out,
        "Next: `statehost task-state --dag-id D --run-id R --task-id T set KEY VALUE`, `statehost rows`, `statehost gc`."
    )?;
    Ok(())
}
