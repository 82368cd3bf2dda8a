//! The command line's grammar.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  statehost demo                                   # a round trip on a throwaway store
  statehost plugins                                # the backends in the plugin directory
  statehost check --json                           # load the configured backend, report
  statehost task-state --dag-id etl --run-id r1 --task-id extract set job_id '\"j-42\"'
  statehost asset-state --name orders get watermark
  statehost rows --json                            # rows as stored, envelopes visible
  statehost gc --dry-run                           # what gc would delete
  statehost gc --airflow-db sqlite:////opt/airflow/airflow.db   # orphans of Airflow's rows
  statehost conformance ./libstatehost_kv.so --options kv.toml

Exit codes: 0 ok, 1 no value (get) or a failed conformance check, 2 bad
input or configuration, 3 backend, store or plugin failure, 4 output could
not be written. Errors are one line on stderr; usage errors are clap's.";

#[derive(Debug, Parser)]
#[command(
    name = "statehost",
    version,
    about = "Task and asset state behind pluggable state backends",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Config file [default: $STATEHOST_CONFIG, then ./statehost.toml if it exists]
    #[arg(long, global = true, env = "STATEHOST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the plugin libraries in the plugin directory (read from the files; none is loaded)
    #[command(
        after_help = "Example: statehost plugins --json\n\nEach library's metadata is read from its file (the section export_backend! writes),\nafter the same checks as a load; no library's code runs. Libraries without that\nsection (not plugins, or built with plugin-api older than 2.1) are listed as such;\n--load loads those to ask them, which runs their code."
    )]
    Plugins {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Load the libraries that have no metadata section to ask them (runs their code)
        #[arg(long)]
        load: bool,
    },
    /// Load the configured backend and store, and say what was loaded or why it cannot be
    #[command(after_help = "Example: statehost --config /etc/statehost.toml check")]
    Check {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Read and write task state
    #[command(
        after_help = "Example: statehost task-state --dag-id etl --run-id r1 --task-id extract get job_id"
    )]
    TaskState {
        #[command(flatten)]
        task: TaskArgs,
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Read and write asset state
    #[command(after_help = "Example: statehost asset-state --uri s3://bucket/orders set wm 42")]
    AssetState {
        #[command(flatten)]
        asset: AssetArgs,
        #[command(subcommand)]
        action: AssetAction,
    },
    /// Show the stored rows as the database holds them (envelopes visible)
    #[command(after_help = "Example: statehost rows --json | jq '.[].value'")]
    Rows {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete expired task state and the objects behind it, and objects no row references
    #[command(
        after_help = "Examples:\n  statehost gc --dry-run\n  statehost gc --airflow-db sqlite:////opt/airflow/airflow.db --dry-run\n\nWith --airflow-db, the rows are Airflow's (its task_state_store and asset_state_store\ntables, read-only) and the storage must be one an Airflow worker with\nstatehost.airflow.StatehostBackend claimed; objects no Airflow row references are\ndeleted once older than [state_store] orphan_grace."
    )]
    Gc {
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Collect the storage Airflow's database owns: its URL (sqlite:////path or postgresql://...)
        #[arg(long, value_name = "URL", env = "STATEHOST_AIRFLOW_DB")]
        airflow_db: Option<String>,
    },
    /// A short guided round trip, on a throwaway store and backend root
    #[command(after_help = "Example: statehost demo --dir /tmp/statehost-demo")]
    Demo {
        /// Write the throwaway store and objects here (created if missing;
        /// default: a new temporary directory)
        #[arg(long, value_name = "DIR", conflicts_with = "configured")]
        dir: Option<PathBuf>,
        /// Run on the configured store and backend instead (writes into them)
        #[arg(long)]
        configured: bool,
    },
    /// Run the backend conformance suite on a plugin library
    #[command(
        after_help = "Example: statehost conformance target/release/libstatehost_kv.so --options kv.toml\n\nThe options file holds the backend's options, as in its [backends.<name>] section\n(TOML, or JSON if it ends in .json). Relative paths in it are taken relative to a\nfresh temporary directory, which is removed afterwards."
    )]
    Conformance {
        /// The plugin library (libstatehost_<name>.so)
        library: PathBuf,
        /// The backend's options (TOML or .json)
        #[arg(long, value_name = "FILE")]
        options: Option<PathBuf>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// DAG id
    #[arg(long, required = true)]
    pub dag_id: String,
    /// Run id
    #[arg(long, required = true)]
    pub run_id: String,
    /// Task id
    #[arg(long, required = true)]
    pub task_id: String,
    /// Map index; -1 for a task that is not mapped
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub map_index: i64,
}

#[derive(Debug, Subcommand)]
pub enum TaskAction {
    /// Print the value of KEY as JSON (exit 1 if absent)
    Get { key: String },
    /// Set KEY to VALUE (JSON text; - reads stdin)
    #[command(allow_negative_numbers = true)]
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
#[command(group(ArgGroup::new("asset").required(true).multiple(true).args(["name", "uri"])))]
pub struct AssetArgs {
    /// Asset name
    #[arg(long)]
    pub name: Option<String>,
    /// Asset uri
    #[arg(long)]
    pub uri: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AssetAction {
    /// Print the value of KEY as JSON (exit 1 if absent)
    Get { key: String },
    /// Set KEY to VALUE (JSON text; - reads stdin)
    #[command(allow_negative_numbers = true)]
    Set { key: String, value: String },
    /// Delete KEY
    Delete { key: String },
    /// Delete every key of the asset
    Clear,
}
