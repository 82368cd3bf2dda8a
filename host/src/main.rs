//! The `statehost` command line: parses arguments, calls the library, maps
//! errors to exit codes (0 ok, 2 bad input or usage, 3 backend, store or
//! plugin failure) and prints each error as one line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use statehost::config::Config;
use statehost::{Error, plugin};

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
    }
}

fn list_plugins(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let found = plugin::discover(&config.plugins_dir)?;
    let rows: Vec<(String, PathBuf, Result<statehost::api::Metadata, Error>)> = found
        .into_iter()
        .map(|(name, path)| {
            let loaded = plugin::load_library(&path).map(|lib| lib.metadata().clone());
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
