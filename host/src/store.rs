//! The metadata store: one row per (scope, key) holding the value's JSON or
//! its envelope.
//!
//! [`MetadataStore`] is the interface; [`SqliteStore`] the embedded
//! implementation (a file in WAL mode, or `sqlite::memory:`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use statehost_plugin_api::{AssetScope, TaskScope};

use crate::error::{Error, Result};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// A stored row, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Whose state.
    pub owner: RowOwner,
    /// The key.
    pub key: String,
    /// The stored JSON: the value itself or an envelope.
    pub value: String,
    /// Last write, milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// Expiry, milliseconds since the Unix epoch; `None` = never.
    pub expires_at: Option<i64>,
}

/// The scope of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOwner {
    /// Task state.
    Task(TaskScope),
    /// Asset state, by the asset's canonical scope.
    Asset(AssetScope),
}

/// What the host needs from a metadata database. All times are milliseconds
/// since the Unix epoch. Implementations are shared by threads.
pub trait MetadataStore: Send + Sync {
    /// The stored JSON of a task key, unless absent or expired at `now`.
    fn get_task(&self, scope: &TaskScope, key: &str, now: i64) -> Result<Option<String>>;
    /// Inserts or replaces a task key.
    fn put_task(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()>;
    /// Removes a task key, returning what it held.
    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>>;
    /// Removes a task's keys (every map index with `all_map_indices`),
    /// returning how many rows went.
    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<usize>;

    /// The canonical scope of an asset known by `name` and/or `uri`,
    /// registering it on first use.
    fn resolve_asset(&self, asset: &AssetScope) -> Result<AssetScope>;
    /// The stored JSON of an asset key (by canonical scope).
    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>>;
    /// Inserts or replaces an asset key.
    fn put_asset(&self, asset: &AssetScope, key: &str, value: &str, now: i64) -> Result<()>;
    /// Removes an asset key, returning what it held.
    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>>;
    /// Removes every key of an asset, returning how many rows went.
    fn clear_asset(&self, asset: &AssetScope) -> Result<usize>;

    /// Every row, task rows first.
    fn rows(&self) -> Result<Vec<Row>>;
    /// Task rows expired at `now`.
    fn expired_task_rows(&self, now: i64) -> Result<Vec<Row>>;
    /// Removes one task row if it is still the expired row that was read
    /// (same value and expiry), so a concurrent rewrite survives gc.
    fn delete_expired_task_row(&self, row: &Row, now: i64) -> Result<bool>;
}

/// How a SQLite database is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A file.
    File(PathBuf),
    /// A private in-memory database, gone with the process.
    Memory,
}

impl SqliteLocation {
    /// Parses `sqlite://<path>` (relative to `base_dir`) or `sqlite::memory:`.
    pub fn parse(url: &str, base_dir: &Path) -> Result<SqliteLocation> {
        if url == "sqlite::memory:" {
            return Ok(SqliteLocation::Memory);
        }
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(SqliteLocation::File(base_dir.join(path))),
            _ => Err(Error::Config {
                source_name: "[database] url".to_string(),
                message: format!(
                    "{url:?} is not a database URL this build knows; use sqlite://<path> (relative to the config file), sqlite::memory:, memory:// or postgresql://user@host/db"
                ),
            }),
        }
    }
}

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    location: SqliteLocation,
    /// Idle connections. A file database gets one per concurrent caller; an
    /// in-memory database has exactly one (each connection would be a
    /// separate database).
    pool: Mutex<Vec<Connection>>,
    memory: Option<Mutex<Connection>>,
}

fn store_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        message: format!("{context}: {e}"),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS statehost_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_state (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    map_index INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (dag_id, run_id, task_id, map_index, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_state_expires_at
    ON task_state (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS asset (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE,
    uri TEXT UNIQUE,
    -- which attribute names the asset's namespace, fixed at registration
    identity TEXT NOT NULL CHECK (identity IN ('name', 'uri'))
);
CREATE TABLE IF NOT EXISTS asset_state (
    asset_id INTEGER NOT NULL REFERENCES asset (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (asset_id, key)
) WITHOUT ROWID;
";

impl SqliteStore {
    /// Opens (and creates or checks the schema of) a database.
    pub fn open(location: SqliteLocation) -> Result<SqliteStore> {
        let first = Self::connect(&location)?;
        Self::migrate(&first)?;
        let store = match location {
            SqliteLocation::Memory => SqliteStore {
                location,
                pool: Mutex::new(Vec::new()),
                memory: Some(Mutex::new(first)),
            },
            SqliteLocation::File(_) => SqliteStore {
                location,
                pool: Mutex::new(vec![first]),
                memory: None,
            },
        };
        Ok(store)
    }

    fn connect(location: &SqliteLocation) -> Result<Connection> {
        let conn = match location {
            SqliteLocation::Memory => Connection::open_in_memory(),
            SqliteLocation::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                        path: dir.to_path_buf(),
                        message: format!("cannot create the database directory ({e})"),
                    })?;
                }
                Connection::open(path)
            }
        }
        .map_err(|e| store_err(&format!("opening {}", location_name(location)), e))?;
        // Writers wait for each other instead of failing with "database is
        // locked"; WAL lets readers run beside a writer.
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| store_err("setting the busy timeout", e))?;
        if matches!(location, SqliteLocation::File(_)) {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(|e| store_err("enabling WAL", e))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| store_err("setting synchronous", e))?;
        }
        Ok(conn)
    }

    fn migrate(conn: &Connection) -> Result<()> {
        conn.execute_batch(SCHEMA)
            .map_err(|e| store_err("creating the schema", e))?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| store_err("reading the schema version", e))?;
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                conn.execute(
                    "INSERT OR IGNORE INTO statehost_meta (name, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| store_err("recording the schema version", e))?;
                Ok(())
            }
            Some(Ok(SCHEMA_VERSION)) => Ok(()),
            Some(other) => Err(Error::Store {
                message: format!(
                    "the database has schema version {}, this build knows version {SCHEMA_VERSION}; use a statehost that matches it",
                    other.map(|v| v.to_string()).unwrap_or_else(|_| "?".into())
                ),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>, what: &str) -> Result<T> {
        if let Some(memory) = &self.memory {
            let conn = memory.lock().unwrap_or_else(|p| p.into_inner());
            return f(&conn).map_err(|e| store_err(what, e));
        }
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => Self::connect(&self.location)?,
        };
        let result = f(&conn).map_err(|e| store_err(what, e));
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }

    fn asset_id(conn: &Connection, asset: &AssetScope) -> rusqlite::Result<Option<i64>> {
        match asset.identity() {
            statehost_plugin_api::AssetIdentity::Name(name) => conn
                .prepare_cached("SELECT id FROM asset WHERE name = ?1 AND identity = 'name'")?
                .query_row([name], |r| r.get(0))
                .optional(),
            statehost_plugin_api::AssetIdentity::Uri(uri) => conn
                .prepare_cached("SELECT id FROM asset WHERE uri = ?1 AND identity = 'uri'")?
                .query_row([uri], |r| r.get(0))
                .optional(),
        }
    }
}

fn location_name(location: &SqliteLocation) -> String {
    match location {
        SqliteLocation::File(path) => path.display().to_string(),
        SqliteLocation::Memory => "sqlite::memory:".to_string(),
    }
}

fn asset_scope(
    name: Option<String>,
    uri: Option<String>,
    identity: &str,
) -> rusqlite::Result<AssetScope> {
    let scope = if identity == "uri" {
        uri.map(AssetScope::by_uri)
    } else {
        name.map(AssetScope::by_name)
    };
    match scope {
        Some(Ok(scope)) => Ok(scope),
        _ => Err(rusqlite::Error::InvalidColumnType(
            0,
            "asset identity".into(),
            rusqlite::types::Type::Null,
        )),
    }
}

impl MetadataStore for SqliteStore {
    fn get_task(&self, scope: &TaskScope, key: &str, now: i64) -> Result<Option<String>> {
        self.with(
            |c| {
                c.prepare_cached(
                    "SELECT value FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 AND key = ?5 AND (expires_at IS NULL OR expires_at > ?6)",
                )?
                .query_row(
                    params![scope.dag_id(), scope.run_id(), scope.task_id(), scope.map_index(), key, now],
                    |r| r.get(0),
                )
                .optional()
            },
            "reading task state",
        )
    }

    fn put_task(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()> {
        self.with(
            |c| {
                c.prepare_cached(
                    "INSERT INTO task_state (dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET
                     value = excluded.value, updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                )?
                .execute(params![
                    scope.dag_id(), scope.run_id(), scope.task_id(), scope.map_index(),
                    key, value, now, expires_at
                ])
                .map(|_| ())
            },
            "writing task state",
        )
    }

    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.with(
            |c| {
                c.prepare_cached(
                    "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 AND key = ?5 RETURNING value",
                )?
                .query_row(
                    params![
                        scope.dag_id(),
                        scope.run_id(),
                        scope.task_id(),
                        scope.map_index(),
                        key
                    ],
                    |r| r.get(0),
                )
                .optional()
            },
            "deleting task state",
        )
    }

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<usize> {
        self.with(
            |c| {
                if all_map_indices {
                    c.prepare_cached(
                        "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3",
                    )?
                    .execute(params![scope.dag_id(), scope.run_id(), scope.task_id()])
                } else {
                    c.prepare_cached(
                        "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND map_index = ?4",
                    )?
                    .execute(params![scope.dag_id(), scope.run_id(), scope.task_id(), scope.map_index()])
                }
            },
            "clearing task state",
        )
    }

    fn resolve_asset(&self, asset: &AssetScope) -> Result<AssetScope> {
        let outcome = self.with(
            |c| {
                let tx = c.unchecked_transaction()?;
                let by_name: Option<(i64, Option<String>, Option<String>, String)> = match asset.name() {
                    Some(name) => tx
                        .prepare_cached("SELECT id, name, uri, identity FROM asset WHERE name = ?1")?
                        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()?,
                    None => None,
                };
                let by_uri: Option<(i64, Option<String>, Option<String>, String)> = match asset.uri() {
                    Some(uri) => tx
                        .prepare_cached("SELECT id, name, uri, identity FROM asset WHERE uri = ?1")?
                        .query_row([uri], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()?,
                    None => None,
                };
                let found = match (by_name, by_uri) {
                    (Some(a), Some(b)) if a.0 != b.0 => {
                        return Ok(Err(format!(
                            "asset name {:?} and uri {:?} belong to two different assets; use the pair they were registered with",
                            asset.name().unwrap_or_default(),
                            asset.uri().unwrap_or_default()
                        )));
                    }
                    (Some(a), _) => Some(a),
                    (None, b) => b,
                };
                let resolved = match found {
                    None => {
                        let identity = if asset.name().is_some() { "name" } else { "uri" };
                        tx.execute(
                            "INSERT INTO asset (name, uri, identity) VALUES (?1, ?2, ?3)",
                            params![asset.name(), asset.uri(), identity],
                        )?;
                        asset_scope(asset.name().map(Into::into), asset.uri().map(Into::into), identity)?
                    }
                    Some((id, name, uri, identity)) => {
                        if let (Some(have), Some(want)) = (&name, asset.name())
                            && have != want
                        {
                            return Ok(Err(format!(
                                "asset uri {:?} is registered with name {have:?}, not {want:?}",
                                uri.unwrap_or_default()
                            )));
                        }
                        if let (Some(have), Some(want)) = (&uri, asset.uri())
                            && have != want
                        {
                            return Ok(Err(format!(
                                "asset {:?} is registered with uri {have:?}, not {want:?}",
                                name.unwrap_or_default()
                            )));
                        }
                        // Fill in what was not known at registration; the
                        // namespace (identity) never changes.
                        let name = name.or_else(|| asset.name().map(Into::into));
                        let uri = uri.or_else(|| asset.uri().map(Into::into));
                        tx.execute(
                            "UPDATE asset SET name = ?2, uri = ?3 WHERE id = ?1",
                            params![id, name, uri],
                        )?;
                        asset_scope(name, uri, &identity)?
                    }
                };
                tx.commit()?;
                Ok(Ok(resolved))
            },
            "resolving the asset",
        )?;
        outcome.map_err(|message| Error::InvalidInput { message })
    }

    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.with(
            |c| {
                let Some(id) = Self::asset_id(c, asset)? else {
                    return Ok(None);
                };
                c.prepare_cached("SELECT value FROM asset_state WHERE asset_id = ?1 AND key = ?2")?
                    .query_row(params![id, key], |r| r.get(0))
                    .optional()
            },
            "reading asset state",
        )
    }

    fn put_asset(&self, asset: &AssetScope, key: &str, value: &str, now: i64) -> Result<()> {
        self.with(
            |c| {
                let id = Self::asset_id(c, asset)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                c.prepare_cached(
                    "INSERT INTO asset_state (asset_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (asset_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )?
                .execute(params![id, key, value, now])
                .map(|_| ())
            },
            "writing asset state",
        )
    }

    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.with(
            |c| {
                let Some(id) = Self::asset_id(c, asset)? else {
                    return Ok(None);
                };
                c.prepare_cached(
                    "DELETE FROM asset_state WHERE asset_id = ?1 AND key = ?2 RETURNING value",
                )?
                .query_row(params![id, key], |r| r.get(0))
                .optional()
            },
            "deleting asset state",
        )
    }

    fn clear_asset(&self, asset: &AssetScope) -> Result<usize> {
        self.with(
            |c| {
                let Some(id) = Self::asset_id(c, asset)? else {
                    return Ok(0);
                };
                c.prepare_cached("DELETE FROM asset_state WHERE asset_id = ?1")?
                    .execute([id])
            },
            "clearing asset state",
        )
    }

    fn rows(&self) -> Result<Vec<Row>> {
        self.with(
            |c| {
                let mut rows = task_rows(c, "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at FROM task_state ORDER BY dag_id, run_id, task_id, map_index, key", None)?;
                let mut stmt = c.prepare(
                    "SELECT a.name, a.uri, a.identity, s.key, s.value, s.updated_at
                     FROM asset_state s JOIN asset a ON a.id = s.asset_id ORDER BY a.id, s.key",
                )?;
                let assets = stmt.query_map([], |r| {
                    Ok(Row {
                        owner: RowOwner::Asset(asset_scope(r.get(0)?, r.get(1)?, &r.get::<_, String>(2)?)?),
                        key: r.get(3)?,
                        value: r.get(4)?,
                        updated_at: r.get(5)?,
                        expires_at: None,
                    })
                })?;
                for row in assets {
                    rows.push(row?);
                }
                Ok(rows)
            },
            "listing rows",
        )
    }

    fn expired_task_rows(&self, now: i64) -> Result<Vec<Row>> {
        self.with(
            |c| task_rows(c, "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at FROM task_state WHERE expires_at IS NOT NULL AND expires_at <= ?1", Some(now)),
            "finding expired rows",
        )
    }

    fn delete_expired_task_row(&self, row: &Row, now: i64) -> Result<bool> {
        let RowOwner::Task(scope) = &row.owner else {
            return Ok(false);
        };
        self.with(
            |c| {
                c.prepare_cached(
                    "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 AND key = ?5 AND value = ?6 AND expires_at <= ?7",
                )?
                .execute(params![
                    scope.dag_id(),
                    scope.run_id(),
                    scope.task_id(),
                    scope.map_index(),
                    row.key,
                    row.value,
                    now
                ])
                .map(|n| n > 0)
            },
            "deleting an expired row",
        )
    }
}

fn task_rows(c: &Connection, sql: &str, now: Option<i64>) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = c.prepare(sql)?;
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
        let scope = TaskScope::new(
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get(3)?,
        )
        .map_err(|e| {
            rusqlite::Error::InvalidColumnType(0, e.to_string(), rusqlite::types::Type::Text)
        })?;
        Ok(Row {
            owner: RowOwner::Task(scope),
            key: r.get(4)?,
            value: r.get(5)?,
            updated_at: r.get(6)?,
            expires_at: r.get(7)?,
        })
    };
    match now {
        Some(now) => stmt.query_map([now], map)?.collect(),
        None => stmt.query_map([], map)?.collect(),
    }
}

/// The behaviour every [`MetadataStore`] must have; each implementation's
/// tests run it.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    fn task(map_index: i64) -> TaskScope {
        TaskScope::new("dag", "run", "task", map_index).unwrap()
    }

    pub(crate) fn run(store: &dyn MetadataStore) {
        task_rows_upsert_expire_and_delete(store);
        clear_respects_map_indices(store);
        assets_share_rows_by_name_and_uri(store);
        gc_deletes_only_rows_still_expired(store);
    }

    fn task_rows_upsert_expire_and_delete(store: &dyn MetadataStore) {
        let t = task(-1);
        assert_eq!(store.get_task(&t, "k", 0).unwrap(), None);
        store.put_task(&t, "k", "1", 10, None).unwrap();
        store.put_task(&t, "k", "2", 20, Some(100)).unwrap();
        assert_eq!(store.get_task(&t, "k", 99).unwrap().as_deref(), Some("2"));
        assert_eq!(
            store.get_task(&t, "k", 100).unwrap(),
            None,
            "expired at expires_at"
        );
        let rows: Vec<Row> = store
            .rows()
            .unwrap()
            .into_iter()
            .filter(|r| r.key == "k")
            .collect();
        assert_eq!(rows.len(), 1, "upsert keeps one row");
        assert_eq!((rows[0].updated_at, rows[0].expires_at), (20, Some(100)));
        assert_eq!(store.delete_task(&t, "k").unwrap().as_deref(), Some("2"));
        assert_eq!(store.delete_task(&t, "k").unwrap(), None);
    }

    fn clear_respects_map_indices(store: &dyn MetadataStore) {
        for m in [0, 1] {
            store.put_task(&task(m), "a", "x", 1, None).unwrap();
            store.put_task(&task(m), "b", "y", 1, None).unwrap();
        }
        let other = TaskScope::new("dag", "run", "other", 0).unwrap();
        store.put_task(&other, "a", "z", 1, None).unwrap();
        assert_eq!(store.clear_task(&task(0), false).unwrap(), 2);
        assert_eq!(
            store.get_task(&task(1), "a", 0).unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(store.clear_task(&task(0), true).unwrap(), 2);
        assert_eq!(store.get_task(&task(1), "a", 0).unwrap(), None);
        assert_eq!(
            store.get_task(&other, "a", 0).unwrap().as_deref(),
            Some("z")
        );
        store.clear_task(&other, false).unwrap();
    }

    fn assets_share_rows_by_name_and_uri(store: &dyn MetadataStore) {
        let both = AssetScope::new(Some("orders".into()), Some("s3://b/orders".into())).unwrap();
        let canonical = store.resolve_asset(&both).unwrap();
        assert_eq!(canonical, AssetScope::by_name("orders").unwrap());
        let by_uri = store
            .resolve_asset(&AssetScope::by_uri("s3://b/orders").unwrap())
            .unwrap();
        assert_eq!(by_uri, canonical);
        store.put_asset(&canonical, "wm", "\"1\"", 5).unwrap();
        assert_eq!(
            store.get_asset(&by_uri, "wm").unwrap().as_deref(),
            Some("\"1\"")
        );

        // Registered by uri first: the namespace stays the uri's when a name
        // is learnt later.
        let uri_first = store
            .resolve_asset(&AssetScope::by_uri("file:///x").unwrap())
            .unwrap();
        let later = store
            .resolve_asset(&AssetScope::new(Some("x".into()), Some("file:///x".into())).unwrap())
            .unwrap();
        assert_eq!(later, uri_first);
        assert_eq!(
            store
                .resolve_asset(&AssetScope::by_name("x").unwrap())
                .unwrap(),
            uri_first
        );

        for clash in [
            AssetScope::new(Some("orders".into()), Some("file:///x".into())).unwrap(),
            AssetScope::new(Some("orders".into()), Some("s3://elsewhere".into())).unwrap(),
        ] {
            assert!(
                matches!(store.resolve_asset(&clash), Err(Error::InvalidInput { .. })),
                "{clash}"
            );
        }
        assert_eq!(
            store.delete_asset(&canonical, "wm").unwrap().as_deref(),
            Some("\"1\"")
        );
        store.put_asset(&canonical, "a", "1", 5).unwrap();
        assert_eq!(store.clear_asset(&canonical).unwrap(), 1);
    }

    fn gc_deletes_only_rows_still_expired(store: &dyn MetadataStore) {
        let t = TaskScope::new("gc", "run", "task", -1).unwrap();
        store.put_task(&t, "old", "1", 1, Some(10)).unwrap();
        store.put_task(&t, "new", "2", 1, Some(1_000)).unwrap();
        let expired = store.expired_task_rows(50).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].key, "old");
        // Rewritten after gc read it: the row is not deleted.
        store.put_task(&t, "old", "3", 60, Some(70)).unwrap();
        assert!(!store.delete_expired_task_row(&expired[0], 50).unwrap());
        let expired = store.expired_task_rows(80).unwrap();
        assert!(store.delete_expired_task_row(&expired[0], 80).unwrap());
        assert_eq!(store.get_task(&t, "old", 0).unwrap(), None);
        store.clear_task(&t, true).unwrap();
    }

    #[test]
    fn sqlite_file_store() {
        let dir = tempfile::tempdir().unwrap();
        run(&SqliteStore::open(SqliteLocation::File(dir.path().join("s.db"))).unwrap());
    }

    #[test]
    fn sqlite_memory_store() {
        run(&SqliteStore::open(SqliteLocation::Memory).unwrap());
    }

    #[test]
    fn memory_store() {
        run(&crate::memstore::MemoryStore::new());
    }

    /// A fresh schema on the server named by `STATEHOST_TEST_POSTGRES_URL`,
    /// dropped when the guard goes; `None` (and a note) when unset.
    #[cfg(feature = "postgres")]
    pub(crate) struct PgSchema {
        base: String,
        name: String,
    }

    #[cfg(feature = "postgres")]
    impl PgSchema {
        pub(crate) fn create(tag: &str) -> Option<PgSchema> {
            let Ok(base) = std::env::var("STATEHOST_TEST_POSTGRES_URL") else {
                eprintln!(
                    "skipped: set STATEHOST_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test) to run against PostgreSQL"
                );
                return None;
            };
            let name = format!(
                "statehost_{tag}_{}_{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            );
            let mut client = postgres::Client::connect(&base, postgres::NoTls)
                .expect("connect to STATEHOST_TEST_POSTGRES_URL");
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .unwrap();
            Some(PgSchema { base, name })
        }

        /// The URL that puts every table in this schema.
        pub(crate) fn url(&self) -> String {
            let sep = if self.base.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
        }
    }

    #[cfg(feature = "postgres")]
    impl Drop for PgSchema {
        fn drop(&mut self) {
            if let Ok(mut client) = postgres::Client::connect(&self.base, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
            }
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_store() {
        let Some(schema) = PgSchema::create("suite") else {
            return;
        };
        run(&crate::pgstore::PostgresStore::open(&schema.url()).unwrap());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_workers_starting_at_once_share_one_schema() {
        let Some(schema) = PgSchema::create("race") else {
            return;
        };
        let url = schema.url();
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| crate::pgstore::PostgresStore::open(&url).unwrap());
            }
        });
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let versions: i64 = client
            .query_one(
                "SELECT count(*) FROM statehost_meta WHERE name = 'schema_version'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(versions, 1);
        client
            .batch_execute("UPDATE statehost_meta SET value = '99' WHERE name = 'schema_version'")
            .unwrap();
        let err = crate::pgstore::PostgresStore::open(&url)
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_errors_are_one_clear_line() {
        // Nothing listens on port 1.
        let err = crate::pgstore::PostgresStore::open("postgresql://statehost@127.0.0.1:1/nowhere")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot reach") && !err.contains('\n'), "{err}");
        let Ok(base) = std::env::var("STATEHOST_TEST_POSTGRES_URL") else {
            return;
        };
        let mut url = url::Url::parse(&base).unwrap();
        url.set_username("statehost_no_such_user").unwrap();
        let err = crate::pgstore::PostgresStore::open(url.as_str())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("statehost_no_such_user") && !err.contains('\n'),
            "{err}"
        );
        let err = crate::pgstore::PostgresStore::open("postgresql://a:secret@127.0.0.1:1/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "the password leaked: {err}");
    }

    #[test]
    fn sqlite_refuses_an_unknown_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(SqliteLocation::File(path.clone())).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE statehost_meta SET value = '99' WHERE name = 'schema_version'",
                [],
            )
            .unwrap();
        let err = SqliteStore::open(SqliteLocation::File(path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
