//! The `statehost` command line: parses arguments, runs a command of the
//! `statehost` library, prints each error as one line on stderr and exits
//! with the code the README's table gives (see [`output::code`]).

mod args;
mod commands;
mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use statehost::config::Config;

use crate::args::{Cli, Command};
use crate::output::{Failure, Out, code};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    init_logging(cli.verbose);
    let mut out = Out::new();
    let result = run(cli, &mut out).and_then(|()| out.finish().map_err(Failure::Output));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Help and version go to stdout, usage errors to stderr, in clap's format;
/// a closed or full stream does not panic.
fn usage(e: clap::Error) -> ExitCode {
    use std::io::IsTerminal;
    // Colour only for a terminal, as clap itself does.
    let render = |terminal: bool| {
        let styled = e.render();
        if terminal {
            styled.ansi().to_string()
        } else {
            styled.to_string()
        }
    };
    if e.use_stderr() {
        // One line, as every other error: clap's message and what it
        // lists, without the usage block (`--help` has it).
        let text = e.render().to_string();
        let mut line = String::new();
        for part in text.lines().map(str::trim) {
            if part.is_empty()
                || part.starts_with("Usage:")
                || part.starts_with("For more information")
            {
                continue;
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(part);
        }
        output::err_line(format_args!("{line}; see --help"));
        return ExitCode::from(code::BAD_INPUT);
    }
    let text = render(std::io::stdout().is_terminal());
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => Failure::Output(e).report(),
    }
}

/// `-v` turns up statehost's own logging (the host and the plugins'
/// records); other libraries stay at warnings unless `RUST_LOG` says
/// otherwise, since their debug output can quote requests and connection
/// details. Every line passes through the secret filter.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let default = format!("warn,statehost={level}");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|buf, record| {
            let message = record.args().to_string();
            writeln!(
                buf,
                "[{} {}] {}",
                record.level(),
                record.target(),
                statehost::secrets::redact(&output::one_line(&message))
            )
        })
        .init();
}

/// Where the configuration comes from, for commands and their errors.
#[derive(Debug)]
pub struct ConfigSource {
    /// The file, if one was given or found.
    pub file: Option<PathBuf>,
}

impl ConfigSource {
    /// `--config`/`$STATEHOST_CONFIG`, else `./statehost.toml` if it exists,
    /// else none (defaults and the environment).
    fn find(explicit: Option<PathBuf>) -> ConfigSource {
        let file = explicit.or_else(|| {
            let default = PathBuf::from("statehost.toml");
            default.exists().then_some(default)
        });
        ConfigSource { file }
    }

    fn load(&self) -> Result<Config, statehost::Error> {
        match &self.file {
            Some(path) => Config::load(path),
            None => Config::from_env(),
        }
    }

    /// How the configuration was found, for messages.
    pub fn describe(&self) -> String {
        match &self.file {
            Some(path) => format!("the config file {}", path.display()),
            None => {
                "the defaults (no --config, no $STATEHOST_CONFIG, no ./statehost.toml)".to_string()
            }
        }
    }
}

fn run(cli: Cli, out: &mut Out) -> Result<(), Failure> {
    let source = ConfigSource::find(cli.config);
    let config = || source.load();
    match cli.command {
        // The conformance suite needs no configuration.
        Command::Conformance {
            library,
            options,
            json,
        } => commands::conformance::run(&library, options.as_deref(), json, out),
        Command::Plugins { json, load } => commands::plugins::list(&config()?, json, load, out),
        Command::Check { json } => commands::plugins::check(&config()?, &source, json, out),
        Command::TaskState { task, action } => commands::state::task(&config()?, task, action, out),
        Command::AssetState { asset, action } => {
            commands::state::asset(&config()?, asset, action, out)
        }
        Command::Rows { json } => commands::rows::run(&config()?, json, out),
        Command::Gc {
            dry_run,
            json,
            airflow_db: Some(url),
        } => commands::airflow_gc::run(&config()?, &url, dry_run, json, out),
        Command::Gc {
            dry_run,
            json,
            airflow_db: None,
        } => commands::gc::run(&config()?, dry_run, json, out),
        Command::Demo { dir, configured } => {
            commands::demo::run(&config()?, dir.as_deref(), configured, out)
        }
    }
}
