//! Garbage collection of a storage whose rows live in Apache Airflow's
//! database.
//!
//! With the bridge, Airflow's `task_state_store` and `asset_state_store`
//! tables hold the references and the plugin holds the objects. Airflow
//! never reconciles the two: an overwrite leaves the replaced object
//! behind, and `airflow state-store clean`, `airflow db clean` and deleting
//! a DAG run remove rows without calling the backend. [`gc`] reads
//! Airflow's rows (read-only, SQLite or PostgreSQL) and removes the objects
//! that none references, once they are older than `[state_store]
//! orphan_grace`, by the same rule as statehost's own gc: take the
//! database's time, then list the storage, then read the rows, and remove
//! an unreferenced object only if that time is more than the grace past
//! its write. Only storage that an Airflow worker claimed (see
//! [`crate::ownership`]) is collected.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use statehost_plugin_api::BackendError;

use crate::backend::{Calls, Listed};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ownership::{self, Owner};
use crate::plugin;
use crate::state::envelope::{self, Stored};

/// What [`gc`] did (or would do, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AirflowGcReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Objects the storage holds (ownership markers aside).
    pub objects: usize,
    /// Of those, objects an Airflow row references.
    pub referenced: usize,
    /// Objects no row references, older than the grace: deleted.
    pub orphans: usize,
    /// Objects no row references, but younger than the grace: kept.
    pub young: usize,
    /// Objects no row references whose age nobody knows (no write id, no
    /// modification time): kept.
    pub unknown_age: usize,
}

/// Removes the objects of the configured backend's storage that no row of
/// the Airflow database at `airflow_db` references (see the module docs).
pub fn gc(config: &Config, airflow_db: &str, dry_run: bool) -> Result<AirflowGcReport> {
    let backend = plugin::shared_backend(config)?.ok_or(Error::NoBackend)?;
    let name = backend.metadata().name.clone();
    let calls = Arc::new(Calls::new(name, backend, config.limits));
    if !calls.backend().capabilities().list {
        return Err(Error::Config {
            source_name: format!("backend `{}`", calls.name()),
            message: "it cannot list what it stores, so its orphans cannot be found".to_string(),
        });
    }
    let owners = ownership::check(&calls, Owner::Airflow)?;
    if !owners {
        return Err(Error::Config {
            source_name: format!("backend `{}`", calls.name()),
            message: format!(
                "no Airflow worker has claimed its storage (the marker {}/{} is missing), so it may hold objects another store references; nothing was collected. An Airflow worker with statehost.airflow.StatehostBackend claims it when it starts",
                ownership::OWNER_ASSET,
                ownership::OWNER_KEY
            ),
        });
    }
    let mut db = AirflowDb::open(airflow_db)?;
    // One clock: Airflow's database's, taken before the listing.
    let t0_ms = db.now_ms()?;
    let listed: Vec<Listed> = calls
        .run_long("list", |b| b.list(None))
        .map_err(|e| list_error(&calls, e))?;
    let referenced = db.references()?;
    let grace_ms = i64::try_from(config.state_store.orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let mut report = AirflowGcReport {
        dry_run,
        ..AirflowGcReport::default()
    };
    let mut first_error = None;
    for object in listed {
        if ownership::is_marker(&object) {
            continue;
        }
        report.objects += 1;
        if referenced.contains(&object.reference) {
            report.referenced += 1;
            continue;
        }
        // The younger of the two ages where both are known: the write id
        // is the worker's clock, the modification time the storage's, and
        // Airflow lands a row after its object with no fence to refuse a
        // late one (see README, "The guarantees under Airflow").
        let modified_ms = object
            .modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let written_ms = match (object.write_id.map(|id| id.unix_ms() as i64), modified_ms) {
            (Some(id), Some(modified)) => Some(id.max(modified)),
            (id, modified) => id.or(modified),
        };
        let Some(written_ms) = written_ms else {
            report.unknown_age += 1;
            continue;
        };
        if t0_ms.saturating_sub(written_ms) <= grace_ms {
            report.young += 1;
            continue;
        }
        report.orphans += 1;
        if dry_run {
            continue;
        }
        let reference = object.reference.clone();
        if let Err(e) = calls.run_plain("delete_object", move |b| b.delete_object(&reference, None))
            && first_error.is_none()
        {
            first_error = Some(Error::Backend {
                plugin: calls.name().to_string(),
                operation: "delete",
                scope: "the orphaned object".to_string(),
                key: object.reference.clone(),
                error: e,
            });
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn list_error(calls: &Calls, error: BackendError) -> Error {
    Error::Backend {
        plugin: calls.name().to_string(),
        operation: "list",
        scope: "all scopes".to_string(),
        key: String::new(),
        error,
    }
}

/// Airflow's metadata database, opened read-only.
enum AirflowDb {
    Sqlite(rusqlite::Connection),
    #[cfg(feature = "postgres")]
    Postgres(Box<postgres::Client>),
}

/// Every row's value as text (a `json` column too), NULLs included.
const ROWS: &str = "SELECT CAST(value AS TEXT) FROM task_state_store UNION ALL SELECT CAST(value AS TEXT) FROM asset_state_store";

impl AirflowDb {
    /// Opens Airflow's `sql_alchemy_conn` URL: `sqlite:////absolute/path`
    /// (`sqlite:///relative`), or `postgresql://...` (a `+driver` suffix
    /// of the scheme is ignored).
    fn open(url: &str) -> Result<AirflowDb> {
        let bad = |message: String| Error::Config {
            source_name: "--airflow-db".to_string(),
            message,
        };
        if let Some(rest) = url.strip_prefix("sqlite:///") {
            // sqlite:////absolute or sqlite:///relative, as SQLAlchemy has it.
            let path = rest.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err(bad("the SQLite URL names no file".to_string()));
            }
            if !std::path::Path::new(&path).exists() {
                return Err(bad(format!("no Airflow database at {path}")));
            }
            let connection = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| bad(format!("cannot open {path} read-only: {e}")))?;
            connection
                .busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| bad(e.to_string()))?;
            return Ok(AirflowDb::Sqlite(connection));
        }
        let scheme = url.split("://").next().unwrap_or("");
        if scheme == "postgresql" || scheme == "postgres" || scheme.starts_with("postgresql+") {
            #[cfg(feature = "postgres")]
            {
                let rest = &url[scheme.len()..];
                let url = format!("postgresql{rest}");
                let crate::store::tls::PgConnect { mut config, tls } =
                    crate::store::tls::parse(&url)
                        .map_err(|e| bad(crate::secrets::redact(&e).into_owned()))?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(std::time::Duration::from_secs(10));
                }
                let mut client = config.connect(tls).map_err(|e| {
                    bad(format!(
                        "cannot connect: {}",
                        crate::store::tls::error_line(&e)
                    ))
                })?;
                client
                    .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    .map_err(|e| bad(crate::store::tls::error_line(&e)))?;
                return Ok(AirflowDb::Postgres(Box::new(client)));
            }
            #[cfg(not(feature = "postgres"))]
            return Err(bad(
                "this build has no PostgreSQL support; rebuild statehost with the `postgres` feature"
                    .to_string(),
            ));
        }
        Err(bad(format!(
            "{:?} is not an Airflow database URL: give sqlite:////path/to/airflow.db or postgresql://user:password@host/db",
            crate::secrets::redact(url)
        )))
    }

    /// The database's time, in milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> Result<i64> {
        match self {
            AirflowDb::Sqlite(c) => c
                .query_row(
                    "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| Error::Store {
                    message: format!("Airflow's database: {e}"),
                }),
            #[cfg(feature = "postgres")]
            AirflowDb::Postgres(c) => c
                .query_one(
                    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| Error::Store {
                    message: format!("Airflow's database: {}", crate::store::tls::error_line(&e)),
                }),
        }
    }

    /// Every reference Airflow's state rows hold.
    fn references(&mut self) -> Result<HashSet<String>> {
        let values: Vec<Option<String>> = match self {
            AirflowDb::Sqlite(c) => {
                let mut statement = c.prepare(ROWS).map_err(|e| Error::Store {
                    message: format!("Airflow's database: {e} (is it Airflow 3.3 or later?)"),
                })?;
                let rows = statement
                    .query_map([], |r| r.get::<_, Option<String>>(0))
                    .map_err(|e| Error::Store {
                        message: format!("Airflow's database: {e}"),
                    })?;
                rows.collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::Store {
                        message: format!("Airflow's database: {e}"),
                    })?
            }
            #[cfg(feature = "postgres")]
            AirflowDb::Postgres(c) => c
                .query(ROWS, &[])
                .map_err(|e| Error::Store {
                    message: format!(
                        "Airflow's database: {} (is it Airflow 3.3 or later?)",
                        crate::store::tls::error_line(&e)
                    ),
                })?
                .iter()
                .map(|r| r.try_get::<_, Option<String>>(0))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Store {
                    message: format!(
                        "Airflow's database: a row's value cannot be read as text ({})",
                        crate::store::tls::error_line(&e)
                    ),
                })?,
        };
        let mut referenced = HashSet::new();
        for text in values.iter().flatten() {
            referenced_by(text, &mut referenced)?;
        }
        Ok(referenced)
    }
}

/// Adds what a row's value may reference. An envelope names its reference;
/// a value that mentions the envelope's key in any other shape (nested,
/// encoded twice) keeps every string in it, so that a row read in a way
/// this code does not expect can only keep objects, never lose them; one
/// that cannot be read at all stops gc.
fn referenced_by(text: &str, into: &mut HashSet<String>) -> Result<()> {
    if let Ok(Stored::Reference(r)) = envelope::unwrap(text) {
        into.insert(r.into_owned());
        return Ok(());
    }
    if !text.contains(envelope::MARKER) {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Store {
        message: format!(
            "Airflow's database: a row mentions {:?} but is not JSON ({e}); nothing was collected, as the objects it may reference cannot be known",
            envelope::MARKER
        ),
    })?;
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => {
                into.insert(s.clone());
                if s.contains(envelope::MARKER) {
                    referenced_by(s, into)?;
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    Ok(())
}
