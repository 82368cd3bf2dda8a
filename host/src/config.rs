//! Configuration: a TOML file, then `STATEHOST__SECTION__KEY` environment
//! overrides, then validation.
//!
//! Parsing happens in two stages: the raw file is deserialized with unknown
//! keys rejected (so a typo is an error naming the key and line, not a
//! silently ignored setting), then resolved into a [`Config`] with paths made
//! absolute and defaults filled in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;

use crate::backend::Limits;
use crate::error::{Error, Result};
use crate::store::Synchronous;

/// The largest config file read, in bytes: real ones are a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "STATEHOST__";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    core: RawCore,
    #[serde(default)]
    workers: RawWorkers,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    state_store: RawStateStore,
    #[serde(default)]
    backends: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    synchronous: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStateStore {
    default_retention_days: Option<u32>,
    max_value_bytes: Option<u64>,
    clear_on_success: Option<bool>,
    orphan_grace: Option<RawDuration>,
    /// The spelling of `orphan_grace` before it took units.
    orphan_grace_seconds: Option<u64>,
}

/// A duration: whole seconds, or text with units (`"90s"`, `"1h"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCore {
    plugins_dir: Option<PathBuf>,
    allow_insecure_plugin_permissions: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    state_backend: Option<String>,
    /// Airflow 3.3's spelling of `state_backend`.
    state_store_backend: Option<String>,
    state_backend_sha256: Option<String>,
    state_backend_timeout_ms: Option<u64>,
    state_backend_max_in_flight: Option<u64>,
}

/// The type a known key takes, for reading environment overrides.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Boolean,
}

/// Every `[section] key` the host knows (besides `[backends.<name>]`).
const KEYS: &[(&str, &str, Kind)] = &[
    ("core", "plugins_dir", Kind::Text),
    ("core", "allow_insecure_plugin_permissions", Kind::Boolean),
    ("workers", "state_backend", Kind::Text),
    ("workers", "state_store_backend", Kind::Text),
    ("workers", "state_backend_sha256", Kind::Text),
    ("workers", "state_backend_timeout_ms", Kind::Integer),
    ("workers", "state_backend_max_in_flight", Kind::Integer),
    ("database", "url", Kind::Text),
    ("database", "synchronous", Kind::Text),
    ("state_store", "default_retention_days", Kind::Integer),
    ("state_store", "max_value_bytes", Kind::Integer),
    ("state_store", "clear_on_success", Kind::Boolean),
    ("state_store", "orphan_grace", Kind::Text),
    ("state_store", "orphan_grace_seconds", Kind::Integer),
];

/// The default metadata database: a SQLite file next to the config.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://statehost.db";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// The directory relative paths are relative to: the config file's, or
    /// the working directory.
    pub base_dir: PathBuf,
    /// Where bare plugin names are looked up.
    pub plugins_dir: PathBuf,
    /// `[core] allow_insecure_plugin_permissions`: load plugins that group or
    /// others can write, or that someone else owns (with a warning).
    pub allow_insecure_plugin_permissions: bool,
    /// `[workers] state_backend_sha256`: the SHA-256 (lowercase hex) the
    /// backend library's bytes must have.
    pub state_backend_sha256: Option<String>,
    /// `[workers] state_backend_timeout_ms` (the deadline of every backend
    /// call; 30 s by default, 0 for none) and
    /// `[workers] state_backend_max_in_flight` (64 by default).
    pub limits: Limits,
    /// `[workers] state_backend`; `None` when empty or absent (no backend:
    /// values stay inline in the metadata store).
    pub state_backend: Option<String>,
    /// Every `[backends.<name>]` table, as JSON, with the environment's
    /// overrides in it as strings.
    pub backends: BTreeMap<String, serde_json::Value>,
    /// Per backend, the options an environment variable set: option key to
    /// variable name. The backend parses their text into the types it
    /// declares.
    pub backend_env: BTreeMap<String, BTreeMap<String, String>>,
    /// `[database] url`: `sqlite://<path>` (relative to the config file),
    /// `sqlite::memory:`.
    pub database_url: String,
    /// `[database] synchronous` (SQLite): `full` (the default) or `normal`.
    pub synchronous: Synchronous,
    /// `[state_store]` settings.
    pub state_store: StateStoreSettings,
}

/// `[state_store]`: how values are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateStoreSettings {
    /// Days task state is kept after its last write; 0 = forever.
    pub default_retention_days: u32,
    /// Largest inline value (UTF-8 bytes of its JSON); 0 = no limit.
    pub max_value_bytes: u64,
    /// Clear a task's state when it succeeds.
    pub clear_on_success: bool,
    /// gc leaves objects without a row alone until they are this old (by
    /// their write id, on the database's clock), so a set in flight (object
    /// written, row not yet) is never collected; a row write more than half
    /// of this after its write id was minted is refused.
    pub orphan_grace: Duration,
}

impl Default for StateStoreSettings {
    fn default() -> Self {
        StateStoreSettings {
            default_retention_days: 30,
            max_value_bytes: 65535,
            clear_on_success: false,
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Reads `path` and applies the process environment's overrides.
    pub fn load(path: &Path) -> Result<Config> {
        let text = crate::files::read_text(path, MAX_CONFIG_BYTES).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            message: format!(
                "cannot use it as the config file: {e}; pass --config PATH or set STATEHOST_CONFIG"
            ),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        Config::parse(&text, Some(path), base_dir, overrides_from_env()?)
    }

    /// The configuration of a process without a config file: defaults plus
    /// the environment's overrides, relative paths against the working
    /// directory.
    pub fn from_env() -> Result<Config> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Config::parse("", None, cwd, overrides_from_env()?)
    }

    /// Parses TOML text, applies the given `(name, value)` environment
    /// overrides and validates the result. `file` only names the source in
    /// errors; `base_dir` anchors relative paths.
    pub fn parse(
        text: &str,
        file: Option<&Path>,
        base_dir: PathBuf,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let source_name = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "config".to_string());
        // First pass on the text itself, so errors carry line numbers.
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| toml_error(&source_name, text, &e))?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        let mut backend_env: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let raw = if overrides.is_empty() {
            raw
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| toml_error(&source_name, text, &e))?;
            for (name, value) in &overrides {
                if let Some((backend, key)) = apply_override(&mut table, name, value)? {
                    backend_env
                        .entry(backend)
                        .or_default()
                        .insert(key, name.clone());
                }
            }
            let names: Vec<&str> = overrides.iter().map(|(n, _)| n.as_str()).collect();
            RawConfig::deserialize(table).map_err(|e| Error::Config {
                source_name: format!("environment ({})", names.join(", ")),
                message: e.message().to_string(),
            })?
        };
        let mut config = resolve(raw, file, base_dir, &source_name)?;
        config.backend_env = backend_env;
        // From here on, the database password is never printed.
        crate::secrets::redact_url(&config.database_url);
        Ok(config)
    }

    /// The options of backend `name`: its table (`null` if absent) and the
    /// keys the environment set.
    pub fn backend_options(&self, name: &str) -> BackendOptions {
        BackendOptions {
            table: self
                .backends
                .get(name)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            env_keys: self.backend_env.get(name).cloned().unwrap_or_default(),
        }
    }
}

/// The options a backend is constructed with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendOptions {
    /// The `[backends.<name>]` table as JSON (`null` if absent); values the
    /// environment set are strings.
    pub table: serde_json::Value,
    /// Option key to the environment variable that set it.
    pub env_keys: BTreeMap<String, String>,
}

impl BackendOptions {
    /// Options from a table alone.
    pub fn new(table: serde_json::Value) -> Self {
        BackendOptions {
            table,
            env_keys: BTreeMap::new(),
        }
    }
}

fn resolve(
    raw: RawConfig,
    file: Option<&Path>,
    base_dir: PathBuf,
    source_name: &str,
) -> Result<Config> {
    let state_backend = match (raw.workers.state_backend, raw.workers.state_store_backend) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Config {
                source_name: source_name.to_string(),
                message: format!(
                    "[workers] state_backend = {a:?} and state_store_backend = {b:?} disagree; they are two spellings of one setting, keep one"
                ),
            });
        }
        (a, b) => a.or(b).filter(|s| !s.trim().is_empty()),
    };
    let plugins_dir = match raw.core.plugins_dir {
        Some(dir) => base_dir.join(dir),
        None => default_plugins_dir(),
    };
    let backends = raw
        .backends
        .into_iter()
        .map(|(name, table)| {
            let json = serde_json::to_value(&table).unwrap_or(serde_json::Value::Null);
            (name, json)
        })
        .collect();
    let state_backend_sha256 = match raw.workers.state_backend_sha256 {
        None => None,
        Some(pin) if pin.trim().is_empty() => None,
        Some(pin) => {
            let pin = pin.trim().to_ascii_lowercase();
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Config {
                    source_name: source_name.to_string(),
                    message: format!(
                        "[workers] state_backend_sha256 = {pin:?} is not a SHA-256: give the 64 hex digits `sha256sum` prints for the library"
                    ),
                });
            }
            Some(pin)
        }
    };
    let defaults = StateStoreSettings::default();
    let store = raw.state_store;
    let bad = |message: String| Error::Config {
        source_name: source_name.to_string(),
        message,
    };
    let limits = Limits {
        deadline: match raw.workers.state_backend_timeout_ms {
            None => Limits::default().deadline,
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        },
        max_in_flight: match raw.workers.state_backend_max_in_flight {
            None => Limits::default().max_in_flight,
            Some(0) => {
                return Err(bad(
                    "[workers] state_backend_max_in_flight = 0 would refuse every backend call; give 1 or more (64 is the default)".to_string(),
                ));
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
    };
    let synchronous = match raw.database.synchronous.as_deref().map(str::trim) {
        None | Some("full") | Some("FULL") => Synchronous::Full,
        Some("normal") | Some("NORMAL") => Synchronous::Normal,
        Some(other) => {
            return Err(bad(format!(
                "[database] synchronous = {other:?} is not a level; use \"full\" (every commit survives power loss, the default) or \"normal\" (faster; the last commits can be lost on power loss)"
            )));
        }
    };
    let orphan_grace = match (store.orphan_grace, store.orphan_grace_seconds) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "[state_store] orphan_grace and orphan_grace_seconds are two spellings of one setting; keep orphan_grace".to_string(),
            ));
        }
        (Some(RawDuration::Seconds(s)), None) | (None, Some(s)) => Duration::from_secs(s),
        (Some(RawDuration::Text(text)), None) => parse_duration(&text).ok_or_else(|| {
            bad(format!(
                "[state_store] orphan_grace = {text:?} is not a duration; write it like \"1h\", \"30m\" or \"90s\", or as whole seconds"
            ))
        })?,
        (None, None) => defaults.orphan_grace,
    };
    if let Some(days) = store.default_retention_days
        && u64::from(days) > crate::state::MAX_RETENTION_DAYS
    {
        return Err(bad(format!(
            "[state_store] default_retention_days = {days} is longer than the {} days (1000 years) a value can be kept for a time; use 0 to keep values forever",
            crate::state::MAX_RETENTION_DAYS
        )));
    }
    if orphan_grace > crate::state::MAX_RETENTION {
        return Err(bad(format!(
            "[state_store] orphan_grace = {} is longer than the 1000 years the store can count; give a shorter grace (objects are collected only after it)",
            humantime::format_duration(orphan_grace)
        )));
    }
    if orphan_grace < Duration::from_secs(1) {
        return Err(bad(format!(
            "[state_store] orphan_grace = {} is too short: a write's row must land within half of it; give at least 1s",
            humantime::format_duration(orphan_grace)
        )));
    }
    if let Some(deadline) = limits.deadline
        && orphan_grace < deadline * 4
    {
        return Err(bad(format!(
            "[state_store] orphan_grace = {} must be at least four times [workers] state_backend_timeout_ms = {} ms, so a write that takes its whole deadline still lands its row within half the grace; raise the grace or lower the timeout",
            humantime::format_duration(orphan_grace),
            deadline.as_millis()
        )));
    }
    Ok(Config {
        file: file.map(Path::to_path_buf),
        base_dir,
        plugins_dir,
        allow_insecure_plugin_permissions: raw
            .core
            .allow_insecure_plugin_permissions
            .unwrap_or(false),
        state_backend_sha256,
        limits,
        state_backend,
        backends,
        backend_env: BTreeMap::new(),
        database_url: raw
            .database
            .url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
        synchronous,
        state_store: StateStoreSettings {
            default_retention_days: store
                .default_retention_days
                .unwrap_or(defaults.default_retention_days),
            max_value_bytes: store.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            clear_on_success: store.clear_on_success.unwrap_or(defaults.clear_on_success),
            orphan_grace,
        },
    })
}

/// The process's `STATEHOST__*` variables. Other variables are not read at
/// all (one that is not UTF-8 is none of statehost's business); one of ours
/// that is not UTF-8 is an error naming it.
fn overrides_from_env() -> Result<Vec<(String, String)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !name.as_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => found.push((name, value)),
            (name, _) => {
                let name = match name {
                    Ok(name) => name,
                    Err(raw) => raw.to_string_lossy().escape_default().to_string(),
                };
                return Err(Error::Config {
                    source_name: name,
                    message: "is not UTF-8 text; set it to a UTF-8 value or unset it".to_string(),
                });
            }
        }
    }
    Ok(found)
}

/// Parses a duration: whole seconds, or text with units (`"1h 30m"`).
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).ok(),
    }
}

/// The directory holding the running executable: `cargo build --release
/// --workspace` puts the shipped plugins beside `statehost`.
pub fn default_plugins_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Applies one `STATEHOST__...` variable to the raw table. A backend option
/// is stored as text for the backend to parse, and its (backend, key) is
/// returned.
fn apply_override(
    table: &mut toml::Table,
    name: &str,
    value: &str,
) -> Result<Option<(String, String)>> {
    let bad = |message: String| Error::Config {
        source_name: name.to_string(),
        message,
    };
    let rest = &name[ENV_PREFIX.len()..];
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    match parts.as_slice() {
        [backends, backend, key] if backends == "backends" => {
            if backend.is_empty() || key.is_empty() {
                return Err(bad(format!(
                    "the {} is empty; write STATEHOST__BACKENDS__<NAME>__<KEY>",
                    if backend.is_empty() {
                        "backend name"
                    } else {
                        "option key"
                    }
                )));
            }
            // Backend options are the plugin's to type: it parses the text
            // into the type its options declare (plugin-api 2.1 and later).
            let parsed = toml::Value::String(value.to_string());
            let section = table
                .entry("backends")
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let Some(section) = section.as_table_mut() else {
                return Err(bad("[backends] is not a table in the config file".into()));
            };
            let entry = section
                .entry(backend.as_str())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match entry.as_table_mut() {
                Some(t) => {
                    t.insert(key.clone(), parsed);
                }
                None => return Err(bad(format!("[backends.{backend}] is not a table"))),
            }
            Ok(Some((backend.clone(), key.clone())))
        }
        [section, key] => {
            let Some((_, _, kind)) = KEYS
                .iter()
                .find(|(s, k, _)| *s == section.as_str() && *k == key.as_str())
            else {
                let known: Vec<String> = KEYS
                    .iter()
                    .map(|(s, k, _)| {
                        format!("{ENV_PREFIX}{}__{}", s.to_uppercase(), k.to_uppercase())
                    })
                    .collect();
                return Err(bad(format!(
                    "names no setting [{section}] {key}; known: {}, {ENV_PREFIX}BACKENDS__<NAME>__<KEY>",
                    known.join(", ")
                )));
            };
            let parsed = match kind {
                Kind::Text => toml::Value::String(value.to_string()),
                Kind::Integer => toml::Value::Integer(value.trim().parse().map_err(|_| {
                    bad(format!(
                        "[{section}] {key} takes a whole number, not {value:?}"
                    ))
                })?),
                Kind::Boolean => toml::Value::Boolean(match value.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(bad(format!(
                            "[{section}] {key} takes true or false, not {value:?}"
                        )));
                    }
                }),
            };
            let section_table = table
                .entry(section.as_str())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match section_table.as_table_mut() {
                Some(t) => {
                    t.insert(key.clone(), parsed);
                }
                None => return Err(bad(format!("[{section}] is not a table"))),
            }
            Ok(None)
        }
        _ => Err(bad(format!(
            "not of the form {ENV_PREFIX}<SECTION>__<KEY> or {ENV_PREFIX}BACKENDS__<NAME>__<KEY>"
        ))),
    }
}

/// One line from a TOML error: file, line, the offending line's text, and
/// what is wrong.
fn toml_error(source_name: &str, text: &str, err: &toml::de::Error) -> Error {
    let message = err.message().trim().replace('\n', " ");
    let source_name = match err.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let column = start - text[..start].rfind('\n').map_or(0, |i| i + 1) + 1;
            // The key, never the value: a line that fails to parse may hold
            // a password.
            let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
            let key = line_text
                .split_once('=')
                .map(|(key, _)| format!(" (in the value of `{}`)", key.trim()))
                .unwrap_or_else(|| format!(" (in `{}`)", crate::secrets::redact(line_text)));
            return Error::Config {
                source_name: format!("{source_name}:{line}:{column}"),
                message: format!("{message}{key}"),
            };
        }
        None => source_name.to_string(),
    };
    Error::Config {
        source_name,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        Config::parse(
            text,
            Some(Path::new("/etc/statehost/statehost.toml")),
            PathBuf::from("/etc/statehost"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn reads_sections_and_resolves_relative_paths() {
        let config = parse(
            "[core]\nplugins_dir = \"plugins\"\n[workers]\nstate_backend = \"fs\"\n[backends.fs]\nroot = \"state\"\nfsync = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.plugins_dir, PathBuf::from("/etc/statehost/plugins"));
        assert_eq!(config.state_backend.as_deref(), Some("fs"));
        assert_eq!(
            config.backend_options("fs"),
            BackendOptions::new(serde_json::json!({"root": "state", "fsync": false}))
        );
        assert_eq!(
            config.backend_options("memory"),
            BackendOptions::new(serde_json::Value::Null)
        );
    }

    #[test]
    fn airflow_spelling_is_accepted_and_conflicts_are_errors() {
        let config = parse("[workers]\nstate_store_backend = \"memory\"\n", &[]).unwrap();
        assert_eq!(config.state_backend.as_deref(), Some("memory"));
        let err = parse(
            "[workers]\nstate_backend = \"fs\"\nstate_store_backend = \"memory\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_key_and_line() {
        let err = parse("[workers]\n\nstate_bakend = \"fs\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("statehost.toml:3"), "{msg}");
        assert!(msg.contains("state_bakend"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        let err = parse("[core]\nplugins_dir = 3\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":2") && msg.contains("plugins_dir"), "{msg}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = parse(
            "[workers]\nstate_backend = \"fs\"\n[backends.fs]\nroot = \"a\"\n",
            &[
                ("STATEHOST__WORKERS__STATE_BACKEND", "memory"),
                ("STATEHOST__BACKENDS__FS__ROOT", "/b"),
                ("STATEHOST__BACKENDS__FS__INLINE_THRESHOLD_BYTES", "12"),
                ("STATEHOST__CORE__PLUGINS_DIR", "/opt/plugins"),
                ("STATEHOST_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.state_backend.as_deref(), Some("memory"));
        assert_eq!(config.plugins_dir, PathBuf::from("/opt/plugins"));
        // Backend options stay text, marked with their variable, for the
        // backend to parse into the types it declares.
        let options = config.backend_options("fs");
        assert_eq!(
            options.table,
            serde_json::json!({"root": "/b", "inline_threshold_bytes": "12"})
        );
        assert_eq!(
            options.env_keys,
            BTreeMap::from([
                (
                    "inline_threshold_bytes".to_string(),
                    "STATEHOST__BACKENDS__FS__INLINE_THRESHOLD_BYTES".to_string()
                ),
                (
                    "root".to_string(),
                    "STATEHOST__BACKENDS__FS__ROOT".to_string()
                ),
            ])
        );
    }

    #[test]
    fn an_empty_backend_from_the_environment_means_none() {
        let config = parse(
            "[workers]\nstate_backend = \"fs\"\n",
            &[("STATEHOST__WORKERS__STATE_BACKEND", "")],
        )
        .unwrap();
        assert_eq!(config.state_backend, None);
    }

    #[test]
    fn state_store_settings_have_defaults_and_overrides() {
        let config = parse("", &[]).unwrap();
        assert_eq!(config.state_store, StateStoreSettings::default());
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        let config = parse(
            "[state_store]\nmax_value_bytes = 10\n[database]\nurl = \"sqlite::memory:\"\n",
            &[
                ("STATEHOST__STATE_STORE__DEFAULT_RETENTION_DAYS", "0"),
                ("STATEHOST__STATE_STORE__CLEAR_ON_SUCCESS", "true"),
            ],
        )
        .unwrap();
        assert_eq!(config.state_store.max_value_bytes, 10);
        assert_eq!(config.state_store.default_retention_days, 0);
        assert!(config.state_store.clear_on_success);
        assert_eq!(config.database_url, "sqlite::memory:");
        let err = parse("", &[("STATEHOST__STATE_STORE__MAX_VALUE_BYTES", "lots")]).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_gives_one_line(text in "(\\[[a-z_.]{0,12}\\]\n|[a-z_]{1,20} = (\"[^\"\n]{0,10}\"|[0-9]{1,5}|true|\\[\\])\n|\\PC{0,10}\n){0,8}") {
            if let Err(e) = parse(&text, &[]) {
                proptest::prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }
    }

    #[test]
    fn unknown_environment_keys_are_errors() {
        let err = parse("", &[("STATEHOST__WORKERS__STATE_BAKEND", "fs")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("STATEHOST__WORKERS__STATE_BAKEND:"),
            "{msg}"
        );
        assert!(msg.contains("STATEHOST__WORKERS__STATE_BACKEND"), "{msg}");
    }
}
