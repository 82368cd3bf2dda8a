//! The `statehost` command line: parses arguments, calls the library, maps
//! errors to exit codes (0 ok, 1 get of a missing key, 2 bad input or usage,
//! 3 backend, store or plugin failure) and prints each error as one line on
//! stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use statehost::api::{AssetScope, TaskScope};
use statehost::config::Config;
use statehost::store::RowOwner;
use statehost::{Error, Retention, StateHost, plugin};

#[derive(Debug, Parser)]
#[command(
    name = "statehost",
    version,
    about = "Task and asset state behind pluggable state backends"
)]
struct Cli {
    /// Config file [default: $STATEHOST_CONFIG, then ./statehost.toml if it exists]
    #[arg(long, global = true, env = "STATEHOST_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every plugin library in the plugin directory
    Plugins {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Load the configured backend and say what was loaded, or why it cannot be
    Check,
    /// Read and write task state
    TaskState {
        #[command(flatten)]
        task: TaskArgs,
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Read and write asset state
    AssetState {
        #[command(flatten)]
        asset: AssetArgs,
        #[command(subcommand)]
        action: AssetAction,
    },
    /// Show the stored rows as the database holds them (envelopes visible)
    Rows {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete expired task state and the objects behind it, and objects no row references
    Gc {
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// A short guided round trip on the configured backend
    Demo,
}

#[derive(Debug, Args)]
struct TaskArgs {
    /// DAG id
    #[arg(long, global = true)]
    dag_id: Option<String>,
    /// Run id
    #[arg(long, global = true)]
    run_id: Option<String>,
    /// Task id
    #[arg(long, global = true)]
    task_id: Option<String>,
    /// Map index; -1 for a task that is not mapped
    #[arg(long, global = true, default_value_t = -1, allow_negative_numbers = true)]
    map_index: i64,
}

#[derive(Debug, Subcommand)]
enum TaskAction {
    /// Print the value of KEY as JSON (exit 1 if absent)
    Get { key: String },
    /// Set KEY to VALUE (JSON text; - reads stdin)
    Set {
        key: String,
        value: String,
        /// Keep the value this many days (instead of [state_store] default_retention_days)
        #[arg(long, conflicts_with = "never_expire")]
        retention_days: Option<u64>,
        /// Keep the value forever
        #[arg(long)]
        never_expire: bool,
    },
    /// Delete KEY
    Delete { key: String },
    /// Delete every key of the task instance
    Clear {
        /// Every map index of the task, not just --map-index
        #[arg(long)]
        all_map_indices: bool,
    },
}

#[derive(Debug, Args)]
struct AssetArgs {
    /// Asset name
    #[arg(long, global = true)]
    name: Option<String>,
    /// Asset uri
    #[arg(long, global = true)]
    uri: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AssetAction {
    /// Print the value of KEY as JSON (exit 1 if absent)
    Get { key: String },
    /// Set KEY to VALUE (JSON text; - reads stdin)
    Set { key: String, value: String },
    /// Delete KEY
    Delete { key: String },
    /// Delete every key of the asset
    Clear,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_bad_input() {
                ExitCode::from(2)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .init();
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, Error> {
    match explicit {
        Some(path) => Config::load(&path),
        None => {
            let default = PathBuf::from("statehost.toml");
            if default.exists() {
                Config::load(&default)
            } else {
                Config::from_env()
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let config = load_config(cli.config)?;
    match cli.command {
        Command::Plugins { json } => list_plugins(&config, json),
        Command::Check => check(&config),
        Command::TaskState { task, action } => task_state(&config, task, action),
        Command::AssetState { asset, action } => asset_state(&config, asset, action),
        Command::Rows { json } => rows(&config, json),
        Command::Gc { dry_run } => gc(&config, dry_run),
        Command::Demo => demo(&config),
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::InvalidInput {
        message: message.into(),
    }
}

fn parse_value(text: &str) -> Result<Value, Error> {
    let text = if text == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .map_err(|e| bad(format!("cannot read the value from stdin: {e}")))?;
        buf
    } else {
        text.to_string()
    };
    serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "VALUE is not JSON ({e}); quote strings as JSON, e.g. '\"text\"'"
        ))
    })
}

fn print_value(value: Option<Value>) -> ExitCode {
    match value {
        Some(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        None => ExitCode::from(1),
    }
}

fn task_state(config: &Config, task: TaskArgs, action: TaskAction) -> Result<ExitCode, Error> {
    let missing = |what: &str| bad(format!("task-state needs --{what}"));
    let scope = TaskScope::new(
        task.dag_id.ok_or_else(|| missing("dag-id"))?,
        task.run_id.ok_or_else(|| missing("run-id"))?,
        task.task_id.ok_or_else(|| missing("task-id"))?,
        task.map_index,
    )
    .map_err(|e| bad(e.message()))?;
    if let TaskAction::Set { value, .. } = &action
        && value != "-"
    {
        parse_value(value)?;
    }
    let host = StateHost::open(config)?;
    let state = host.task_state(scope);
    match action {
        TaskAction::Get { key } => return Ok(print_value(state.get(&key)?)),
        TaskAction::Set {
            key,
            value,
            retention_days,
            never_expire,
        } => {
            let retention = match (retention_days, never_expire) {
                (_, true) => Retention::Never,
                (Some(days), false) => {
                    Retention::For(std::time::Duration::from_secs(days.saturating_mul(86_400)))
                }
                (None, false) => Retention::Default,
            };
            state.set_with_retention(&key, &parse_value(&value)?, retention)?;
        }
        TaskAction::Delete { key } => state.delete(&key)?,
        TaskAction::Clear { all_map_indices } => state.clear(all_map_indices)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn asset_state(config: &Config, asset: AssetArgs, action: AssetAction) -> Result<ExitCode, Error> {
    let scope = AssetScope::new(asset.name, asset.uri).map_err(|e| {
        bad(format!(
            "asset-state: {} (--name N, --uri U, or both)",
            e.message()
        ))
    })?;
    if let AssetAction::Set { value, .. } = &action
        && value != "-"
    {
        parse_value(value)?;
    }
    let host = StateHost::open(config)?;
    let state = host.asset_state(&scope)?;
    match action {
        AssetAction::Get { key } => return Ok(print_value(state.get(&key)?)),
        AssetAction::Set { key, value } => state.set(&key, &parse_value(&value)?)?,
        AssetAction::Delete { key } => state.delete(&key)?,
        AssetAction::Clear => state.clear()?,
    }
    Ok(ExitCode::SUCCESS)
}

fn time_text(ms: Option<i64>) -> String {
    match ms {
        None => "never".to_string(),
        Some(ms) => format!("{}.{:03}", ms / 1000, ms % 1000),
    }
}

fn rows(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let store = statehost::state::open_store(config)?;
    let rows = store.rows()?;
    if json {
        let listing: Vec<Value> = rows
            .iter()
            .map(|row| {
                let scope = match &row.owner {
                    RowOwner::Task(t) => serde_json::json!({
                        "kind": "task", "dag_id": t.dag_id(), "run_id": t.run_id(),
                        "task_id": t.task_id(), "map_index": t.map_index(),
                    }),
                    RowOwner::Asset(a) => serde_json::json!({
                        "kind": "asset", "name": a.name(), "uri": a.uri(),
                    }),
                };
                serde_json::json!({
                    "scope": scope, "key": row.key, "value": row.value,
                    "updated_at_ms": row.updated_at, "expires_at_ms": row.expires_at,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&listing).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no rows in {}", config.database_url);
    }
    for row in rows {
        let scope = match &row.owner {
            RowOwner::Task(t) => t.to_string(),
            RowOwner::Asset(a) => a.to_string(),
        };
        println!(
            "{scope}  key={:?}  value={}  updated_at={}  expires_at={}",
            row.key,
            row.value,
            time_text(Some(row.updated_at)),
            time_text(row.expires_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn gc(config: &Config, dry_run: bool) -> Result<ExitCode, Error> {
    let host = StateHost::open(config)?;
    let report = host.gc(dry_run, |done, _| {
        if done % 1000 == 0 {
            eprintln!("gc: {done} expired rows so far");
        }
    })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let orphans = match report.orphans {
        Some(n) => format!("{n} orphaned objects"),
        None => "orphans not checked (the backend cannot list)".to_string(),
    };
    let swept = match report.swept {
        Some(n) => format!(", {n} leftover temporary files"),
        None => String::new(),
    };
    println!(
        "gc {verb}: {} expired rows, {} objects behind them, {orphans}{swept}",
        report.expired_rows, report.objects
    );
    Ok(ExitCode::SUCCESS)
}

fn demo(config: &Config) -> Result<ExitCode, Error> {
    let host = StateHost::open(config)?;
    let backend = host.backend_name().map(str::to_string);
    println!(
        "statehost demo: backend {}, metadata store {}",
        backend.as_deref().unwrap_or("none (values inline)"),
        config.database_url
    );
    let scope =
        TaskScope::new("demo_dag", "manual__demo", "extract", -1).map_err(|e| bad(e.message()))?;
    let state = host.task_state(scope.clone());
    let values = [
        ("job_id", serde_json::json!("job-2026-001")),
        (
            "checkpoint",
            serde_json::json!({"offset": 1024, "files": ["a.csv", "b.csv"]}),
        ),
        ("retries_seen", serde_json::json!(2)),
    ];
    println!("\n1. set three keys in {scope}:");
    for (key, value) in &values {
        state.set(key, value)?;
        println!("   set {key} = {value}");
    }
    println!("\n2. read them back:");
    for (key, value) in &values {
        let back = state.get(key)?;
        let same = back.as_ref() == Some(value);
        println!(
            "   get {key} -> {} {}",
            back.map(|v| v.to_string())
                .unwrap_or_else(|| "(absent)".into()),
            if same { "(same)" } else { "(DIFFERENT!)" }
        );
        if !same {
            return Err(bad(format!("demo: {key} did not read back as written")));
        }
    }
    println!("\n3. what the metadata store holds, and where the values really live:");
    for row in host.rows()? {
        let RowOwner::Task(t) = &row.owner else {
            continue;
        };
        if t != &scope {
            continue;
        }
        println!("   row {:<13} {}", row.key, row.value);
        if let Ok(statehost::envelope::Stored::Reference(r)) =
            statehost::envelope::unwrap(&row.value)
        {
            let place = match config.backend_options("fs").get("root") {
                Some(Value::String(root)) if backend.as_deref() == Some("fs") => {
                    format!(
                        "file {}",
                        config.base_dir.join(root).join(r.as_ref()).display()
                    )
                }
                _ => format!(
                    "backend `{}` under reference {r:?}",
                    backend.as_deref().unwrap_or("?")
                ),
            };
            println!("   {:<17} -> {place}", "");
        }
    }
    println!("\n4. delete job_id:");
    state.delete("job_id")?;
    println!(
        "   get job_id -> {}",
        state
            .get("job_id")?
            .map(|v| v.to_string())
            .unwrap_or_else(|| "(absent)".into())
    );
    println!("\n5. clear the task's state:");
    state.clear(true)?;
    let left = ["checkpoint", "retries_seen"]
        .iter()
        .filter_map(|k| state.get(k).transpose())
        .count();
    println!("   keys left: {left}");
    println!(
        "\ndone. Next: `statehost task-state --dag-id D --run-id R --task-id T set KEY VALUE`, `statehost rows`, `statehost gc`."
    );
    Ok(ExitCode::SUCCESS)
}

fn list_plugins(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let found = plugin::discover(&config.plugins_dir)?;
    let rows: Vec<(String, PathBuf, Result<statehost::api::Metadata, Error>)> = found
        .into_iter()
        .map(|(name, path)| {
            let policy = plugin::LoadPolicy {
                allow_insecure_permissions: config.allow_insecure_plugin_permissions,
                sha256: None,
                confine_to: Some(config.plugins_dir.clone()),
            };
            let loaded = plugin::load_library(&path, &policy).map(|lib| lib.metadata().clone());
            (name, path, loaded)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let listing: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, path, loaded)| match loaded {
                Ok(m) => serde_json::json!({
                    "file": path, "name": m.name, "version": m.version,
                    "plugin_api_version": m.plugin_api_version,
                    "description": m.description, "capabilities": m.capabilities,
                }),
                Err(e) => serde_json::json!({"file": path, "name": name, "error": e.to_string()}),
            })
            .collect();
        let text = serde_json::to_string_pretty(&listing).unwrap_or_default();
        let _ = writeln!(out, "{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let _ = writeln!(out, "plugins in {}:", config.plugins_dir.display());
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "  none (build them with `cargo build --release --workspace`, or set [core] plugins_dir)"
        );
    }
    for (name, _, loaded) in &rows {
        let _ = match loaded {
            Ok(m) => writeln!(
                out,
                "  {:<14} {:<8} plugin-api {:<7} [{}] {}",
                m.name,
                m.version,
                m.plugin_api_version,
                m.capabilities.join(","),
                m.description
            ),
            Err(e) => writeln!(out, "  {name:<14} cannot load: {e}"),
        };
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: &Config) -> Result<ExitCode, Error> {
    match plugin::shared_backend(config)? {
        None => {
            println!("no state backend configured: values are kept inline in the metadata store")
        }
        Some(backend) => {
            let m = backend.metadata();
            println!(
                "ok: backend `{}` {} (plugin-api {}) from {}",
                m.name,
                m.version,
                m.plugin_api_version,
                backend.path().display()
            );
            println!("  {}", m.description);
            println!(
                "  capabilities: {}",
                if m.capabilities.is_empty() {
                    "none".to_string()
                } else {
                    m.capabilities.join(", ")
                }
            );
            if backend.is_legacy() {
                println!(
                    "  warning: built against plugin-api 1.x (no write ids, no exact deletes): served with in-process fencing, so no lost write, no dangling reference and no resurrection hold within this process only; rebuild it against statehost-plugin-api 2"
                );
            }
        }
    }
    let store = statehost::state::open_store(config)?;
    if let Some(warning) = store.durability_warning()? {
        println!("  warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
