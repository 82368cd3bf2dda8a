//! [`SqliteStore`]: the embedded metadata store, a SQLite file in WAL mode
//! (or `sqlite::memory:` for throwaway runs).
//!
//! Every write is one `BEGIN IMMEDIATE` transaction: it takes the write
//! lock before reading what it will replace, so writers queue on the busy
//! timeout instead of failing with "database is locked", and the value a
//! write replaces is exactly the one it read. Commits are durable when they
//! return (`synchronous = FULL`) unless `[database] synchronous = "normal"`
//! trades that for speed; then [`MetadataStore::sync`] flushes the WAL
//! before objects the database no longer references are deleted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use statehost_plugin_api::{AssetIdentity, AssetScope, TaskScope};

use super::group_commit::{Errors, GroupCommit};
use super::{
    AssetMatch, MetadataStore, Put, Registered, Row, RowOwner, Rows, SCHEMA_VERSION, Unreadable,
    canonical_when_new, fence_holds, fenced, match_asset, registered_meanwhile,
};
use crate::error::{Error, Result};

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

    fn describe(&self) -> String {
        match self {
            SqliteLocation::File(path) => path.display().to_string(),
            SqliteLocation::Memory => "sqlite::memory:".to_string(),
        }
    }
}

/// `[database] synchronous`: when a commit is on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is flushed before it returns: an acknowledged write or
    /// delete survives power loss.
    #[default]
    Full,
    /// Commits are flushed at checkpoints: faster, but the last commits
    /// can be lost on power loss, so objects are deleted only after a
    /// flush ([`MetadataStore::sync`]).
    Normal,
}

/// How long a writer waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    location: SqliteLocation,
    synchronous: Synchronous,
    /// Idle connections. A file database gets one per concurrent caller; an
    /// in-memory database has exactly one (each connection would be a
    /// separate database).
    pool: Mutex<Vec<Connection>>,
    memory: Option<Mutex<Connection>>,
    /// Opened for reading only: nothing is created or changed, and a
    /// database the process cannot write can still be read.
    read_only: bool,
    /// The writer connection of a file database, whose transaction
    /// concurrent writes share (`None`: each write commits alone).
    group: Option<GroupCommit>,
}

/// The database's clock, ms since the epoch, as an SQL expression.
macro_rules! now {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
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

/// A failure inside a transaction: the driver's, or the store's own
/// verdict (a fence, an asset conflict), both rolled back.
enum TxError {
    Sql(rusqlite::Error),
    Refused(Error),
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        TxError::Sql(e)
    }
}

type TxResult<T> = std::result::Result<T, TxError>;

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    e.sqlite_error_code()
}

impl SqliteStore {
    /// Opens (creating the file and its schema when new, or checking and
    /// upgrading it) a database with durable commits.
    pub fn open(location: SqliteLocation) -> Result<SqliteStore> {
        SqliteStore::open_with(location, Synchronous::Full)
    }

    /// Opens a database with the given commit durability.
    pub fn open_with(location: SqliteLocation, synchronous: Synchronous) -> Result<SqliteStore> {
        let store = SqliteStore {
            location,
            synchronous,
            pool: Mutex::new(Vec::new()),
            memory: None,
            read_only: false,
            group: Some(GroupCommit::new()),
        };
        let mut first = store.connect()?;
        store.migrate(&mut first)?;
        Ok(match store.location {
            SqliteLocation::Memory => SqliteStore {
                memory: Some(Mutex::new(first)),
                ..store
            },
            SqliteLocation::File(_) => {
                store
                    .pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(first);
                store
            }
        })
    }

    /// Whether concurrent writes of this process share transactions, and so
    /// their flush to disk (group commit: on by default). Off, each write
    /// commits (and, with `synchronous = FULL`, waits for the disk) on its
    /// own.
    pub fn with_group_commit(mut self, on: bool) -> SqliteStore {
        self.group = on.then(GroupCommit::new);
        self
    }

    /// Opens an existing database file for reading only: no file or
    /// directory is created, no schema is written, and a database this
    /// process cannot write (a read-only file or directory) still reads.
    pub fn open_read_only(path: PathBuf) -> Result<SqliteStore> {
        let store = SqliteStore {
            location: SqliteLocation::File(path),
            synchronous: Synchronous::Full,
            pool: Mutex::new(Vec::new()),
            memory: None,
            read_only: true,
            group: None,
        };
        let first = store.connect()?;
        if store.schema_version(&first)?.is_none() {
            return Err(Error::Store {
                message: format!(
                    "{} holds no statehost tables: nothing was ever stored in it; point [database] url at the database the workers use",
                    store.location.describe()
                ),
            });
        }
        store
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(first);
        Ok(store)
    }

    /// A read-only connection: plain, or, for a WAL database whose
    /// shared-memory file cannot be made (a read-only directory), one that
    /// treats the file as immutable (no writer can be using it then).
    fn connect_read_only(&self, path: &Path) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let probe = |conn: &Connection| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        };
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| self.error("opening read-only", e))?;
        match probe(&conn) {
            Ok(_) => Ok(conn),
            Err(e) if matches!(code(&e), Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)) => {
                // Immutable means "read the main file alone": right only
                // when no committed write waits in the WAL.
                let wal = {
                    let mut name = path.as_os_str().to_owned();
                    name.push("-wal");
                    PathBuf::from(name)
                };
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(self.error(
                        "opening read-only",
                        format!(
                            "its write-ahead log {} holds commits, and reading them needs a {}-shm file this process cannot create; read it as a user who may write the directory, or let a writer checkpoint it",
                            wal.display(),
                            path.display()
                        ),
                    ));
                }
                let uri = format!(
                    "file:{}?immutable=1",
                    percent_encoding::percent_encode(
                        path.as_os_str().as_encoded_bytes(),
                        percent_encoding::NON_ALPHANUMERIC
                    )
                    .to_string()
                    .replace("%2F", "/")
                );
                let conn = Connection::open_with_flags(&uri, flags)
                    .map_err(|e| self.error("opening read-only", e))?;
                probe(&conn).map_err(|e| self.error("reading", e))?;
                Ok(conn)
            }
            Err(e) => Err(self.error("reading", e)),
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Store {
            message: format!("{} ({what}): {e}", self.location.describe()),
        }
    }

    fn connect(&self) -> Result<Connection> {
        let conn = match &self.location {
            SqliteLocation::Memory => Connection::open_in_memory(),
            SqliteLocation::File(path) => {
                // SQLite would open a FIFO or a device and block or fail
                // obscurely: only a regular file, or nothing yet.
                crate::files::regular_or_absent(path).map_err(|e| Error::Store {
                    message: format!(
                        "{}: {e}; point [database] url at a database file",
                        path.display()
                    ),
                })?;
                if self.read_only {
                    let conn = self.connect_read_only(path)?;
                    conn.busy_timeout(BUSY_TIMEOUT)
                        .map_err(|e| self.error("setting the busy timeout", e))?;
                    return Ok(conn);
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                        path: dir.to_path_buf(),
                        message: format!("cannot create the database directory ({e})"),
                    })?;
                }
                Connection::open(path)
            }
        }
        .map_err(|e| self.error("opening", e))?;
        // Writers wait for each other instead of failing with "database is
        // locked"; WAL lets readers run beside a writer.
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.error("setting the busy timeout", e))?;
        if matches!(self.location, SqliteLocation::File(_)) {
            let level = match self.synchronous {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", level)
                .map_err(|e| self.error("setting synchronous", e))?;
        }
        Ok(conn)
    }

    /// Switches the file to WAL mode, unless it is in it already. Switching
    /// needs the database to itself, and SQLite answers "locked" at once
    /// (without waiting as the busy timeout says) while another process
    /// writes; that is only possible for a new file, so it is retried for
    /// as long as the busy timeout.
    fn enable_wal(&self, conn: &Connection) -> Result<()> {
        let mode = |conn: &Connection| {
            conn.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0))
        };
        let started = std::time::Instant::now();
        loop {
            match mode(conn) {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(_) => match conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                {
                    Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                    Ok(m) => {
                        return Err(
                            self.error("enabling WAL", format!("the journal stayed in {m} mode"))
                        );
                    }
                    Err(e)
                        if matches!(
                            code(&e),
                            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                        ) && started.elapsed() < BUSY_TIMEOUT => {}
                    Err(e) => return Err(self.error("enabling WAL", e)),
                },
                Err(e)
                    if matches!(
                        code(&e),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && started.elapsed() < BUSY_TIMEOUT => {}
                Err(e) => return Err(self.error("reading the journal mode", e)),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Checks what the file holds before changing anything, then creates or
    /// upgrades the schema in one transaction.
    fn migrate(&self, conn: &mut Connection) -> Result<()> {
        self.check_schema(conn)?;
        if matches!(self.location, SqliteLocation::File(_)) {
            self.enable_wal(conn)?;
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error("starting the schema transaction", e))?;
        // Checked again under the write lock: another process may have
        // created the schema meanwhile.
        match self.schema_version(&tx)? {
            None => {
                tx.execute_batch(SCHEMA)
                    .map_err(|e| self.error("creating the schema", e))?;
                tx.execute(
                    "INSERT INTO statehost_meta (name, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| self.error("recording the schema version", e))?;
            }
            // Version 1 has the same tables; version 2 only promises that
            // every writer mints unique references, which a version-1
            // statehost must not meet (its gc matches objects by key).
            Some(1) => {
                tx.execute(
                    "UPDATE statehost_meta SET value = ?1 WHERE name = 'schema_version'",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| self.error("upgrading the schema", e))?;
            }
            Some(_) => {}
        }
        tx.commit()
            .map_err(|e| self.error("committing the schema", e))
    }

    /// The statehost schema version in the file: `None` for an empty
    /// database; an error for a foreign database or a version this build
    /// does not know.
    fn schema_version(&self, conn: &Connection) -> Result<Option<i64>> {
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.error("reading the schema", e))?;
        if tables.is_empty() {
            return Ok(None);
        }
        if !tables.iter().any(|t| t == "statehost_meta") {
            let mut shown = tables
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if tables.len() > 5 {
                shown.push_str(", ...");
            }
            return Err(Error::Store {
                message: format!(
                    "{} is not a statehost database (it holds the tables {shown}); point [database] url at another file",
                    self.location.describe()
                ),
            });
        }
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error("reading the schema version", e))?;
        match version.as_deref().map(str::parse::<i64>) {
            Some(Ok(v)) if v == 1 || v == SCHEMA_VERSION => Ok(Some(v)),
            other => Err(Error::Store {
                message: format!(
                    "{} has statehost schema version {}, and this build knows versions 1 and {SCHEMA_VERSION}; use a statehost that matches it",
                    self.location.describe(),
                    match other {
                        Some(Ok(v)) => v.to_string(),
                        _ => format!("{version:?}"),
                    }
                ),
            }),
        }
    }

    fn check_schema(&self, conn: &Connection) -> Result<()> {
        self.schema_version(conn).map(|_| ())
    }

    /// Runs `f` on a connection from the pool.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        if let Some(memory) = &self.memory {
            let mut conn = memory.lock().unwrap_or_else(|p| p.into_inner());
            return f(&mut conn);
        }
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }

    /// A read outside any write transaction.
    fn read<T>(&self, what: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.with_conn(|c| f(c).map_err(|e| self.error(what, e)))
    }

    /// A write: a `BEGIN IMMEDIATE` transaction of its own, or (a file
    /// database) a savepoint in the one the process's writers share
    /// (group commit). Failures before the commit apply nothing; a
    /// failure of the commit itself may have applied it (a disk error
    /// after the commit record was written).
    fn write<T>(&self, what: &str, f: impl FnOnce(&Connection) -> TxResult<T>) -> Result<T> {
        let begin = |e: rusqlite::Error| match code(&e) {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Store {
                message: format!(
                    "{} ({what}): another process held the database's lock for {} s; nothing was written",
                    self.location.describe(),
                    BUSY_TIMEOUT.as_secs()
                ),
            },
            _ => self.error(what, e),
        };
        let run = |conn: &Connection| match f(conn) {
            Ok(value) => Ok(value),
            Err(TxError::Sql(e)) => Err(self.error(what, e)),
            Err(TxError::Refused(e)) => Err(e),
        };
        if let Some(group) = &self.group
            && matches!(self.location, SqliteLocation::File(_))
        {
            let location = self.location.describe();
            let errors = Errors {
                location: &location,
                begin: &begin,
            };
            return group.write(what, &errors, || self.connect(), run);
        }
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(begin)?;
            let value = run(&tx)?;
            tx.commit().map_err(|e| match code(&e) {
                // Still uncommitted: the transaction is rolled back.
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => self.error(what, e),
                _ => Error::OutcomeUnknown {
                    message: format!(
                        "{} ({what}): the commit failed: {e}",
                        self.location.describe()
                    ),
                },
            })?;
            Ok(value)
        })
    }
}

fn db_now(tx: &Connection) -> rusqlite::Result<i64> {
    tx.prepare_cached(concat!("SELECT ", now!()))?
        .query_row([], |r| r.get(0))
}

/// Checks the fence at the database's time, just before the row is
/// written and committed.
fn check_fence(tx: &Connection, put: &Put<'_>) -> TxResult<i64> {
    let now = db_now(tx)?;
    if !fence_holds(put.fence.as_ref(), now) {
        return Err(TxError::Refused(fenced(
            put.fence.as_ref().expect("checked"),
            now,
        )));
    }
    Ok(now)
}

fn registered(
    tx: &Connection,
    column: &str,
    value: Option<&str>,
) -> rusqlite::Result<Option<(i64, Registered)>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let sql = match column {
        "name" => "SELECT id, name, uri, identity FROM asset WHERE name = ?1",
        _ => "SELECT id, name, uri, identity FROM asset WHERE uri = ?1",
    };
    tx.prepare_cached(sql)?
        .query_row([value], |r| {
            Ok((
                r.get(0)?,
                Registered {
                    name: r.get(1)?,
                    uri: r.get(2)?,
                    by_uri: r.get::<_, String>(3)? == "uri",
                },
            ))
        })
        .optional()
}

fn matching(tx: &Connection, asset: &AssetScope) -> TxResult<AssetMatch<i64>> {
    let by_name = registered(tx, "name", asset.name())?;
    let by_uri = registered(tx, "uri", asset.uri())?;
    match_asset(asset, by_name, by_uri).map_err(TxError::Refused)
}

/// The id of a registered asset, by its canonical scope.
fn asset_id(c: &Connection, canonical: &AssetScope) -> rusqlite::Result<Option<i64>> {
    match canonical.identity() {
        AssetIdentity::Name(name) => c
            .prepare_cached("SELECT id FROM asset WHERE name = ?1 AND identity = 'name'")?
            .query_row([name], |r| r.get(0))
            .optional(),
        AssetIdentity::Uri(uri) => c
            .prepare_cached("SELECT id FROM asset WHERE uri = ?1 AND identity = 'uri'")?
            .query_row([uri], |r| r.get(0))
            .optional(),
    }
}

/// A column as text, whatever its type, to name a row in a message.
fn shown(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<blob of {} bytes>", b.len()),
    }
}

fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

fn text_of(v: ValueRef<'_>, column: &str) -> std::result::Result<String, String> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(str::to_owned)
            .map_err(|_| format!("{column} is not UTF-8")),
        other => Err(format!("{column} is {}, not text", type_name(other))),
    }
}

fn int_of(v: ValueRef<'_>, column: &str) -> std::result::Result<i64, String> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        other => Err(format!("{column} is {}, not an integer", type_name(other))),
    }
}

/// The first `N` columns of a row, as stored.
fn columns<'r, const N: usize>(r: &'r rusqlite::Row<'_>) -> rusqlite::Result<[ValueRef<'r>; N]> {
    let mut out = [ValueRef::Null; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = r.get_ref(i)?;
    }
    Ok(out)
}

/// A task row from the columns [`TASK_COLUMNS`], or what is wrong with it.
/// (SQLite keeps whatever type a writer put in a column.)
fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<std::result::Result<Row, Unreadable>> {
    let v: [ValueRef<'_>; 8] = columns(r)?;
    let decoded = (|| -> std::result::Result<Row, String> {
        let scope = TaskScope::new(
            text_of(v[0], "dag_id")?,
            text_of(v[1], "run_id")?,
            text_of(v[2], "task_id")?,
            int_of(v[3], "map_index")?,
        )
        .map_err(|e| e.message().to_string())?;
        let key = text_of(v[4], "key")?;
        statehost_plugin_api::validate_key(&key).map_err(|e| e.message().to_string())?;
        Ok(Row {
            owner: RowOwner::Task(scope),
            key,
            value: text_of(v[5], "value")?,
            updated_at: int_of(v[6], "updated_at")?,
            expires_at: match v[7] {
                ValueRef::Null => None,
                other => Some(int_of(other, "expires_at")?),
            },
        })
    })();
    Ok(decoded.map_err(|problem| {
        let parts = [
            shown(v[0]),
            shown(v[1]),
            shown(v[2]),
            shown(v[3]),
            shown(v[4]),
        ];
        Unreadable::task(
            [&parts[0], &parts[1], &parts[2], &parts[3], &parts[4]],
            problem,
        )
    }))
}

/// The rows that decode; those that do not are named in a warning (their
/// rows are gone, whatever they pointed at is left to gc's orphan pass).
fn readable(decoded: Vec<std::result::Result<Row, Unreadable>>) -> Vec<Row> {
    let rows = sorted(decoded);
    for bad in &rows.unreadable {
        log::warn!("removed a {bad}; whatever it pointed at is left to gc");
    }
    rows.rows
}

/// Splits decoded rows into the readable and the unreadable.
fn sorted(decoded: Vec<std::result::Result<Row, Unreadable>>) -> Rows {
    let mut rows = Rows::default();
    for row in decoded {
        match row {
            Ok(row) => rows.rows.push(row),
            Err(bad) => rows.unreadable.push(bad),
        }
    }
    rows
}

const TASK_COLUMNS: &str = "dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at";

impl MetadataStore for SqliteStore {
    fn describe(&self) -> String {
        self.location.describe()
    }

    fn now(&self) -> Result<i64> {
        self.read("reading the clock", db_now)
    }

    fn gc_epoch(&self) -> Result<i64> {
        if self.read_only {
            // Nothing will be deleted through a read-only store.
            return self.read("reading the clock for gc", db_now);
        }
        // Writers fence and commit under the write lock: taking it waits for
        // any of them still between the two.
        self.write("reading the clock for gc", |tx| Ok(db_now(tx)?))
    }

    fn get_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.read("reading task state", |c| {
            c.prepare_cached(concat!(
                "SELECT value FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                 AND map_index = ?4 AND key = ?5 AND (expires_at IS NULL OR expires_at > ",
                now!(),
                ")"
            ))?
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
        })
    }

    fn put_task(&self, scope: &TaskScope, key: &str, put: &Put<'_>) -> Result<Option<String>> {
        self.write("writing task state", |tx| {
            let pk = params![scope.dag_id(), scope.run_id(), scope.task_id(), scope.map_index(), key];
            let old: Option<String> = tx
                .prepare_cached(
                    "SELECT value FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 AND key = ?5",
                )?
                .query_row(pk, |r| r.get(0))
                .optional()?;
            let now = check_fence(tx, put)?;
            let expires_at = put.retention_ms.map(|ms| now.saturating_add(ms));
            tx.prepare_cached(
                "INSERT INTO task_state (dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET
                 value = excluded.value, updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            )?
            .execute(params![
                scope.dag_id(), scope.run_id(), scope.task_id(), scope.map_index(),
                key, put.value, now, expires_at
            ])?;
            Ok(old)
        })
    }

    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.write("deleting task state", |tx| {
            Ok(tx
                .prepare_cached(
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
                .optional()?)
        })
    }

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<Vec<Row>> {
        self.write("clearing task state", |tx| {
            let rows = if all_map_indices {
                tx.prepare_cached(&format!(
                    "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     RETURNING {TASK_COLUMNS}"
                ))?
                .query_map(
                    params![scope.dag_id(), scope.run_id(), scope.task_id()],
                    task_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?
            } else {
                tx.prepare_cached(&format!(
                    "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 RETURNING {TASK_COLUMNS}"
                ))?
                .query_map(
                    params![
                        scope.dag_id(),
                        scope.run_id(),
                        scope.task_id(),
                        scope.map_index()
                    ],
                    task_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            Ok(readable(rows))
        })
    }

    fn find_asset(&self, asset: &AssetScope) -> Result<Option<AssetScope>> {
        let found = self.with_conn(|c| {
            let by_name = registered(c, "name", asset.name());
            let by_uri = registered(c, "uri", asset.uri());
            match (by_name, by_uri) {
                (Ok(n), Ok(u)) => match_asset(asset, n, u),
                (Err(e), _) | (_, Err(e)) => Err(self.error("reading the asset registry", e)),
            }
        })?;
        match found {
            AssetMatch::New => Ok(None),
            AssetMatch::Known { record, .. } => record.canonical().map(Some),
        }
    }

    fn get_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        self.read("reading asset state", |c| {
            let Some(id) = asset_id(c, canonical)? else {
                return Ok(None);
            };
            c.prepare_cached("SELECT value FROM asset_state WHERE asset_id = ?1 AND key = ?2")?
                .query_row(params![id, key], |r| r.get(0))
                .optional()
        })
    }

    fn put_asset(
        &self,
        named: &AssetScope,
        canonical: &AssetScope,
        key: &str,
        put: &Put<'_>,
    ) -> Result<Option<String>> {
        self.write("writing asset state", |tx| {
            let id = match matching(tx, named)? {
                AssetMatch::New => {
                    let registered = canonical_when_new(named).map_err(TxError::Refused)?;
                    if &registered != canonical {
                        return Err(TxError::Refused(registered_meanwhile(named, &registered)));
                    }
                    let identity = if named.name().is_some() { "name" } else { "uri" };
                    tx.prepare_cached("INSERT INTO asset (name, uri, identity) VALUES (?1, ?2, ?3)")?
                        .execute(params![named.name(), named.uri(), identity])?;
                    tx.last_insert_rowid()
                }
                AssetMatch::Known {
                    id,
                    record,
                    bind_name,
                    bind_uri,
                } => {
                    let registered = record.canonical().map_err(TxError::Refused)?;
                    if &registered != canonical {
                        return Err(TxError::Refused(registered_meanwhile(named, &registered)));
                    }
                    if bind_name.is_some() || bind_uri.is_some() {
                        tx.prepare_cached(
                            "UPDATE asset SET name = coalesce(name, ?2), uri = coalesce(uri, ?3) WHERE id = ?1",
                        )?
                        .execute(params![id, bind_name, bind_uri])?;
                    }
                    id
                }
            };
            let old: Option<String> = tx
                .prepare_cached("SELECT value FROM asset_state WHERE asset_id = ?1 AND key = ?2")?
                .query_row(params![id, key], |r| r.get(0))
                .optional()?;
            let now = check_fence(tx, put)?;
            tx.prepare_cached(
                "INSERT INTO asset_state (asset_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (asset_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )?
            .execute(params![id, key, put.value, now])?;
            Ok(old)
        })
    }

    fn delete_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        self.write("deleting asset state", |tx| {
            let Some(id) = asset_id(tx, canonical)? else {
                return Ok(None);
            };
            Ok(tx
                .prepare_cached(
                    "DELETE FROM asset_state WHERE asset_id = ?1 AND key = ?2 RETURNING value",
                )?
                .query_row(params![id, key], |r| r.get(0))
                .optional()?)
        })
    }

    fn clear_asset(&self, canonical: &AssetScope) -> Result<Vec<Row>> {
        self.write("clearing asset state", |tx| {
            let Some(id) = asset_id(tx, canonical)? else {
                return Ok(Vec::new());
            };
            Ok(tx
                .prepare_cached(
                    "DELETE FROM asset_state WHERE asset_id = ?1 RETURNING key, value, updated_at",
                )?
                .query_map([id], |r| {
                    Ok(Row {
                        owner: RowOwner::Asset(canonical.clone()),
                        key: r.get(0)?,
                        value: r.get(1)?,
                        updated_at: r.get(2)?,
                        expires_at: None,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn rows(&self) -> Result<Rows> {
        let mut rows = sorted(self.read("listing rows", |c| {
            c.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM task_state ORDER BY dag_id, run_id, task_id, map_index, key"
            ))?
            .query_map([], task_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?);
        let assets = self.read("listing rows", |c| {
            c.prepare(
                "SELECT a.id, a.name, a.uri, a.identity, s.key, s.value, s.updated_at
                 FROM asset_state s JOIN asset a ON a.id = s.asset_id ORDER BY a.id, s.key",
            )?
            .query_map([], |r| {
                let v: [ValueRef<'_>; 7] = columns(r)?;
                let id = match v[0] {
                    ValueRef::Integer(i) => i,
                    _ => -1,
                };
                let optional_text = |v: ValueRef<'_>, column: &str| match v {
                    ValueRef::Null => Ok(None),
                    other => text_of(other, column).map(Some),
                };
                let decoded = (|| -> std::result::Result<Row, String> {
                    let registered = Registered {
                        name: optional_text(v[1], "name")?,
                        uri: optional_text(v[2], "uri")?,
                        by_uri: text_of(v[3], "identity")? == "uri",
                    };
                    Ok(Row {
                        owner: RowOwner::Asset(registered.canonical().map_err(|e| e.to_string())?),
                        key: text_of(v[4], "key")?,
                        value: text_of(v[5], "value")?,
                        updated_at: int_of(v[6], "updated_at")?,
                        expires_at: None,
                    })
                })();
                Ok(decoded.map_err(|problem| Unreadable::asset(id, &shown(v[4]), problem)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let assets = sorted(assets);
        rows.rows.extend(assets.rows);
        rows.unreadable.extend(assets.unreadable);
        Ok(rows)
    }

    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize> {
        self.read("reading references", |c| {
            let mut statement = c.prepare(
                "SELECT value FROM task_state
                 WHERE instr(value, '__airflow_state_ref__') > 0 OR instr(value, '\\u') > 0
                    OR typeof(value) <> 'text'
                 UNION ALL
                 SELECT value FROM asset_state
                 WHERE instr(value, '__airflow_state_ref__') > 0 OR instr(value, '\\u') > 0
                    OR typeof(value) <> 'text'",
            )?;
            let mut rows = statement.query([])?;
            let mut unreadable = 0;
            while let Some(row) = rows.next()? {
                match row.get_ref(0)? {
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(text) => visit(text),
                        Err(_) => unreadable += 1,
                    },
                    _ => unreadable += 1,
                }
            }
            Ok(unreadable)
        })
    }

    fn expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.read("finding expired rows", |c| {
            c.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM task_state WHERE expires_at IS NOT NULL AND expires_at <= {} LIMIT ?1",
                now!()
            ))?
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], task_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map(sorted)
        })
    }

    fn delete_task_if_expired(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.write("deleting an expired row", |tx| {
            Ok(tx
                .prepare_cached(concat!(
                    "DELETE FROM task_state WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3
                     AND map_index = ?4 AND key = ?5 AND expires_at IS NOT NULL AND expires_at <= ",
                    now!(),
                    " RETURNING value"
                ))?
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
                .optional()?)
        })
    }

    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.write("deleting expired rows", |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "DELETE FROM task_state WHERE (dag_id, run_id, task_id, map_index, key) IN (
                         SELECT dag_id, run_id, task_id, map_index, key FROM task_state
                         WHERE expires_at IS NOT NULL AND expires_at <= {} LIMIT ?1)
                     RETURNING {TASK_COLUMNS}",
                    now!()
                ))?
                .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], task_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(sorted)?)
        })
    }

    fn durability_warning(&self) -> Result<Option<String>> {
        Ok(match (&self.location, self.synchronous) {
            (SqliteLocation::Memory, _) => Some(format!(
                "{} keeps nothing once the process ends",
                self.location.describe()
            )),
            (SqliteLocation::File(_), Synchronous::Normal) => Some(format!(
                "{} runs with [database] synchronous = \"normal\": the last commits can be lost on power loss (objects they replaced are deleted only after the WAL is flushed)",
                self.location.describe()
            )),
            (SqliteLocation::File(_), Synchronous::Full) => None,
        })
    }

    fn sync(&self) -> Result<()> {
        let SqliteLocation::File(path) = &self.location else {
            return Ok(());
        };
        if self.synchronous == Synchronous::Full {
            return Ok(());
        }
        // Every commit so far is in the WAL (or, after a checkpoint, in the
        // database file, which the checkpoint flushed): flushing the WAL
        // makes them all durable.
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal).and_then(|f| f.sync_all()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Store {
                message: format!("{}: cannot flush the WAL: {e}", self.location.describe()),
            }),
        }
    }
}
