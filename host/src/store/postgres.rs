//! [`PostgresStore`]: the metadata store on PostgreSQL
//! (`[database] url = "postgresql://..."`), so workers on many machines
//! share state. Same schema and semantics as the SQLite store.
//!
//! A row write is one statement that fences, upserts and hands back what it
//! replaced: `INSERT ... ON CONFLICT DO UPDATE SET prev_value =
//! task_state.value ... RETURNING prev_value`. The `SET` reads the locked,
//! latest version of the row (not the statement's snapshot), so of two
//! writers racing on a key each learns exactly the value it replaced.
//! (`prev_value` keeps only text that may hold an envelope; nothing else
//! reads it.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Statement};
use statehost_plugin_api::{AssetIdentity, AssetScope, TaskScope};

use super::{
    AssetMatch, MetadataStore, Put, Registered, Row, RowOwner, Rows, SCHEMA_VERSION, Unreadable,
    canonical_when_new, fenced, match_asset, registered_meanwhile,
};
use crate::error::{Error, Result};

/// Connections kept open for reuse.
const POOL_SIZE: usize = 16;
/// Key of the advisory lock that serializes schema creation and migration
/// between workers starting at once.
const MIGRATION_LOCK: i64 = 0x5354_4154_4548_4f53; // "STATEHOS"
/// Key of the advisory lock that serializes asset registration.
const ASSET_LOCK: i64 = 0x5354_4154_4541_5353; // "STATEASS"
/// Key of the advisory lock between fenced row writes (shared, until they
/// commit) and gc reading its time (exclusive, for an instant).
const GC_LOCK: i64 = 0x5354_4154_4547_4353; // "STATEGCS"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS statehost_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_state (
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    map_index BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    prev_value TEXT,
    PRIMARY KEY (dag_id, run_id, task_id, map_index, key)
);
CREATE INDEX IF NOT EXISTS task_state_expires_at
    ON task_state (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS asset (
    id BIGSERIAL PRIMARY KEY,
    name TEXT UNIQUE,
    uri TEXT UNIQUE,
    identity TEXT NOT NULL CHECK (identity IN ('name', 'uri'))
);
CREATE TABLE IF NOT EXISTS asset_state (
    asset_id BIGINT NOT NULL REFERENCES asset (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    prev_value TEXT,
    PRIMARY KEY (asset_id, key)
);
";

/// Version 1 to 2: the column that carries a replaced value back.
const UPGRADE_FROM_1: &str = "
ALTER TABLE task_state ADD COLUMN IF NOT EXISTS prev_value TEXT;
ALTER TABLE asset_state ADD COLUMN IF NOT EXISTS prev_value TEXT;
";

/// The database's clock, ms since the epoch, as an SQL expression.
macro_rules! now {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// What `prev_value` keeps of a replaced value: the text when it may hold
/// an envelope (see `store::may_hold_envelope`), else NULL.
macro_rules! kept {
    ($column:literal) => {
        concat!(
            "CASE WHEN strpos(",
            $column,
            ", '__airflow_state_ref__') > 0 OR strpos(",
            $column,
            ", '\\u') > 0 THEN ",
            $column,
            " END"
        )
    };
}

/// A pooled connection with its prepared statements: each statement is
/// parsed once per connection, so a call costs one round trip, not two.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A failure and whether it may have been applied.
enum Failure {
    /// Nothing was applied (the server refused, or nothing was sent).
    Definite(postgres::Error),
    /// The statement or commit was sent and no answer came back.
    Unknown(postgres::Error),
    /// The store's own verdict (a fence, an asset conflict).
    Refused(Error),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Definite(e)
    }
}

/// Classifies an error of a statement that was sent: the server's own
/// error proves it was not applied; anything else (a dropped connection)
/// does not.
fn sent(e: postgres::Error) -> Failure {
    if e.as_db_error().is_some() {
        Failure::Definite(e)
    } else {
        Failure::Unknown(e)
    }
}

impl Conn {
    fn statement(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> std::result::Result<Option<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> std::result::Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    /// A write in one statement, outside a transaction: prepared first (a
    /// failure then applies nothing), then sent.
    fn write(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> std::result::Result<Vec<postgres::Row>, Failure> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params).map_err(sent)
    }
}

/// The PostgreSQL store: a small pool of connections.
pub struct PostgresStore {
    config: postgres::Config,
    /// TLS as the URL's `sslmode` and certificate parameters ask.
    tls: super::tls::Tls,
    /// The URL without its password, for messages.
    display: String,
    statement_timeout: Duration,
    pool: Mutex<Vec<Conn>>,
    /// The process whose connections the pool holds
    /// ([`crate::process::kernel_identity`]). A forked child shares their sockets
    /// with its parent: talking over one would interleave two sessions'
    /// messages, and closing one sends the server the parent's goodbye. The
    /// child leaves them (forgotten, never closed) and pools its own.
    pool_owner: AtomicU64,
    /// Opened for reading only: no schema is written, and every
    /// transaction is read-only.
    read_only: bool,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropped in a forked child that never used it: the connections are
        // still the parent's (asked of the kernel, to hold in any child).
        if self.pool_owner.load(Ordering::Acquire) != crate::process::kernel_identity() {
            let pool = self.pool.get_mut().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(std::mem::take(pool));
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.display)
            .finish_non_exhaustive()
    }
}

/// One line from a driver error, with a hint for the usual causes.
fn describe(display: &str, e: &postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let hint = match db.code().code() {
            "28P01" | "28000" => "; check the user and password in [database] url",
            "3D000" => "; create the database or fix its name in [database] url",
            "57014" => "; the statement ran past its timeout (a lock held too long?)",
            _ => "",
        };
        return format!("{display}: {}{hint}", db.message());
    }
    let cause = e
        .source()
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if e.is_closed()
        || cause.contains("refused")
        || cause.contains("timed out")
        || cause.contains("error connecting")
    {
        format!(
            "cannot reach {display} ({cause}); is the server running and the host and port right?"
        )
    } else {
        // The cause matters most here: "error performing TLS handshake"
        // says nothing without "invalid peer certificate: UnknownIssuer".
        format!("{display}: {}", super::tls::error_line(e))
    }
}

/// The URL with any password replaced, for messages (and the password
/// registered as a secret).
pub(crate) fn redact(url: &str) -> String {
    crate::secrets::redact_url(url)
}

/// A task row from its eight columns, or what is wrong with it (the
/// columns are typed; the scope and key may still break the rules).
fn task_row(r: &postgres::Row) -> std::result::Result<Row, Unreadable> {
    let text = |i: usize| r.try_get::<_, String>(i).map_err(|e| e.to_string());
    let decoded = (|| -> std::result::Result<Row, String> {
        let scope = TaskScope::new(
            text(0)?,
            text(1)?,
            text(2)?,
            r.try_get(3).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.message().to_string())?;
        let key = text(4)?;
        statehost_plugin_api::validate_key(&key).map_err(|e| e.message().to_string())?;
        Ok(Row {
            owner: RowOwner::Task(scope),
            key,
            value: text(5)?,
            updated_at: r.try_get(6).map_err(|e| e.to_string())?,
            expires_at: r.try_get(7).map_err(|e| e.to_string())?,
        })
    })();
    decoded.map_err(|problem| {
        let part = |i: usize| r.try_get::<_, String>(i).unwrap_or_default();
        let map_index = r
            .try_get::<_, i64>(3)
            .map(|m| m.to_string())
            .unwrap_or_default();
        Unreadable::task(
            [&part(0), &part(1), &part(2), &map_index, &part(4)],
            problem,
        )
    })
}

fn sorted(decoded: impl IntoIterator<Item = std::result::Result<Row, Unreadable>>) -> Rows {
    let mut rows = Rows::default();
    for row in decoded {
        match row {
            Ok(row) => rows.rows.push(row),
            Err(bad) => rows.unreadable.push(bad),
        }
    }
    rows
}

/// The rows that decode; those that do not are named in a warning (their
/// rows are gone, whatever they pointed at is left to gc's orphan pass).
fn readable(rows: &[postgres::Row]) -> Vec<Row> {
    let rows = sorted(rows.iter().map(task_row));
    for bad in &rows.unreadable {
        log::warn!("removed a {bad}; whatever it pointed at is left to gc");
    }
    rows.rows
}

fn registered(
    tx: &mut impl postgres::GenericClient,
    column: &str,
    value: Option<&str>,
) -> std::result::Result<Option<(i64, Registered)>, postgres::Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let sql = match column {
        "name" => "SELECT id, name, uri, identity FROM asset WHERE name = $1",
        _ => "SELECT id, name, uri, identity FROM asset WHERE uri = $1",
    };
    Ok(tx.query_opt(sql, &[&value])?.map(|r| {
        (
            r.get(0),
            Registered {
                name: r.get(1),
                uri: r.get(2),
                by_uri: r.get::<_, String>(3) == "uri",
            },
        )
    }))
}

fn asset_id(
    c: &mut impl postgres::GenericClient,
    canonical: &AssetScope,
) -> std::result::Result<Option<i64>, postgres::Error> {
    Ok(match canonical.identity() {
        AssetIdentity::Name(name) => c.query_opt(
            "SELECT id FROM asset WHERE name = $1 AND identity = 'name'",
            &[&name],
        )?,
        AssetIdentity::Uri(uri) => c.query_opt(
            "SELECT id FROM asset WHERE uri = $1 AND identity = 'uri'",
            &[&uri],
        )?,
    }
    .map(|r| r.get(0)))
}

impl PostgresStore {
    /// Connects, and creates, checks or upgrades the schema (safe when
    /// several workers start at once: they take turns under an advisory
    /// lock). Statements that wait longer than `statement_timeout` (for a
    /// lock, say) fail without applying anything.
    pub fn open(url: &str, statement_timeout: Duration) -> Result<PostgresStore> {
        PostgresStore::open_with(url, statement_timeout, false)
    }

    /// Opens an existing statehost database for reading only: nothing is
    /// created or upgraded, and the server refuses any write.
    pub fn open_read_only(url: &str, statement_timeout: Duration) -> Result<PostgresStore> {
        PostgresStore::open_with(url, statement_timeout, true)
    }

    fn open_with(url: &str, statement_timeout: Duration, read_only: bool) -> Result<PostgresStore> {
        let display = redact(url);
        let super::tls::PgConnect { mut config, tls } =
            super::tls::parse(url).map_err(|e| Error::Config {
                source_name: "[database] url".to_string(),
                message: crate::secrets::redact(&e).into_owned(),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let store = PostgresStore {
            config,
            tls,
            display,
            statement_timeout,
            pool: Mutex::new(Vec::new()),
            pool_owner: AtomicU64::new(crate::process::kernel_identity()),
            read_only,
        };
        let mut conn = store.connect()?;
        store.migrate(&mut conn.client)?;
        store.give_back(conn);
        Ok(store)
    }

    fn error(&self, what: &str, e: &postgres::Error) -> Error {
        Error::Store {
            message: format!("{what}: {}", describe(&self.display, e)),
        }
    }

    fn connect(&self) -> Result<Conn> {
        let mut client = self
            .config
            .connect(self.tls.clone())
            .map_err(|e| Error::Store {
                message: describe(&self.display, &e),
            })?;
        // A statement stalled on a lock, or a transaction left idle by a
        // paused client, is cut off rather than committing a fenced write
        // late.
        let timeout = self.statement_timeout.as_millis().max(1);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {timeout}; SET idle_in_transaction_session_timeout = {timeout}{}",
                if self.read_only {
                    "; SET default_transaction_read_only = on"
                } else {
                    ""
                }
            ))
            .map_err(|e| self.error("setting the statement timeout", &e))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// The pool, once it holds only this process's connections. In a
    /// forked child, the first call leaves the parent's; `None` if the lock
    /// is held, which in a child may be for good (by a parent's thread that
    /// is not here): the call then works without the pool.
    fn own_pool(&self) -> Option<MutexGuard<'_, Vec<Conn>>> {
        // Asked of the kernel, so that a child made without the C library's
        // `fork` is told apart too: a system call is nothing next to a
        // statement's round trip.
        let me = crate::process::kernel_identity();
        if self.pool_owner.load(Ordering::Acquire) == me {
            return Some(self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let mut pool = match self.pool.try_lock() {
            Ok(pool) => pool,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if self.pool_owner.load(Ordering::Acquire) != me {
            std::mem::forget(std::mem::take(&mut *pool));
            self.pool_owner.store(me, Ordering::Release);
        }
        Some(pool)
    }

    fn give_back(&self, conn: Conn) {
        if let Some(mut pool) = self.own_pool()
            && pool.len() < POOL_SIZE
            && !conn.client.is_closed()
        {
            pool.push(conn);
        }
    }

    fn take(&self) -> Result<Conn> {
        let pooled = self.own_pool().and_then(|mut pool| pool.pop());
        match pooled {
            Some(conn) if !conn.client.is_closed() => Ok(conn),
            _ => self.connect(),
        }
    }

    fn migrate(&self, client: &mut Client) -> Result<()> {
        let err = |e: postgres::Error| self.error("checking the schema", &e);
        let mut tx = client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err)?;
        let has = |tx: &mut postgres::Transaction<'_>, table: &str| -> Result<bool> {
            let found: Option<String> = tx
                .query_one("SELECT to_regclass($1)::text", &[&table])
                .map_err(err)?
                .get(0);
            Ok(found.is_some())
        };
        if has(&mut tx, "statehost_meta")? {
            let version: Option<String> = tx
                .query_opt(
                    "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
                    &[],
                )
                .map_err(err)?
                .map(|r| r.get(0));
            match version.as_deref().map(str::parse::<i64>) {
                Some(Ok(SCHEMA_VERSION)) => {}
                Some(Ok(1)) if self.read_only => {
                    return Err(Error::Store {
                        message: format!(
                            "{} has statehost schema version 1, which a write upgrades to {SCHEMA_VERSION}; this command only reads: run a write (or `statehost check` with write access) first",
                            self.display
                        ),
                    });
                }
                Some(Ok(1)) => {
                    tx.batch_execute(UPGRADE_FROM_1).map_err(err)?;
                    tx.execute(
                        "UPDATE statehost_meta SET value = $1 WHERE name = 'schema_version'",
                        &[&SCHEMA_VERSION.to_string()],
                    )
                    .map_err(err)?;
                }
                other => {
                    return Err(Error::Store {
                        message: format!(
                            "{} has statehost schema version {}, and this build knows versions 1 and {SCHEMA_VERSION}; use a statehost that matches it",
                            self.display,
                            match other {
                                Some(Ok(v)) => v.to_string(),
                                _ => format!("{version:?}"),
                            }
                        ),
                    });
                }
            }
        } else if let Some(table) = ["task_state", "asset", "asset_state"]
            .into_iter()
            .map(|t| has(&mut tx, t).map(|found| found.then_some(t)))
            .find_map(|r| r.transpose())
            .transpose()?
        {
            // Airflow's own database has an `asset` table, for one.
            return Err(Error::Store {
                message: format!(
                    "{} holds a {table} table that statehost did not create (no statehost_meta); use another database or schema (?options=-csearch_path%3Dmyschema)",
                    self.display
                ),
            });
        } else if self.read_only {
            return Err(Error::Store {
                message: format!(
                    "{} holds no statehost tables: nothing was ever stored in it; point [database] url at the database the workers use",
                    self.display
                ),
            });
        } else {
            tx.batch_execute(SCHEMA).map_err(err)?;
            tx.execute(
                "INSERT INTO statehost_meta (name, value) VALUES ('schema_version', $1)",
                &[&SCHEMA_VERSION.to_string()],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// A read on a pooled connection; a broken connection is dropped and
    /// the read retried once on a fresh one (reads change nothing).
    fn read<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Conn) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        for attempt in 0..2 {
            let mut conn = self.take()?;
            match f(&mut conn) {
                Ok(value) => {
                    self.give_back(conn);
                    return Ok(value);
                }
                Err(e) if e.is_closed() && attempt == 0 => continue,
                Err(e) => return Err(self.error(what, &e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A write, never retried: a failure after the statement was sent may
    /// have been applied and is reported as such.
    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Conn) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut conn = self.take()?;
        match f(&mut conn) {
            Ok(value) => {
                self.give_back(conn);
                Ok(value)
            }
            Err(Failure::Refused(e)) => {
                self.give_back(conn);
                Err(e)
            }
            Err(Failure::Definite(e)) => {
                self.give_back(conn);
                Err(self.error(what, &e))
            }
            Err(Failure::Unknown(e)) => Err(Error::OutcomeUnknown {
                message: format!("{what}: {}", describe(&self.display, &e)),
            }),
        }
    }

    /// The fence's verdict, for the message of a refused write.
    fn refused(&self, c: &mut Conn, put: &Put<'_>) -> Failure {
        match (c.query_opt(concat!("SELECT ", now!()), &[]), &put.fence) {
            (Ok(Some(row)), Some(fence)) => Failure::Refused(fenced(fence, row.get(0))),
            (Err(e), _) => Failure::Definite(e),
            _ => Failure::Refused(Error::Store {
                message: format!("{}: the row write was refused", self.display),
            }),
        }
    }

    fn fence_params(put: &Put<'_>) -> (Option<i64>, i64) {
        match put.fence {
            Some(f) => (Some(f.minted_at), f.max_age_ms),
            None => (None, 0),
        }
    }
}

impl MetadataStore for PostgresStore {
    fn describe(&self) -> String {
        self.display.clone()
    }

    fn now(&self) -> Result<i64> {
        self.read("reading the clock", |c| {
            Ok(c.query_opt(concat!("SELECT ", now!()), &[])?
                .map(|r| r.get(0))
                .unwrap_or_default())
        })
    }

    fn gc_epoch(&self) -> Result<i64> {
        self.write("reading the clock for gc", |c| {
            let mut tx = c.client.transaction()?;
            // Waits for every fenced write still open to commit.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GC_LOCK])?;
            let now: i64 = tx.query_one(concat!("SELECT ", now!()), &[])?.get(0);
            tx.commit()?;
            Ok(now)
        })
    }

    fn get_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.read("reading task state", |c| {
            Ok(c.query_opt(
                concat!(
                    "SELECT value FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                     AND map_index = $4 AND key = $5 AND (expires_at IS NULL OR expires_at > ",
                    now!(),
                    ")"
                ),
                &[
                    &scope.dag_id(),
                    &scope.run_id(),
                    &scope.task_id(),
                    &scope.map_index(),
                    &key,
                ],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn put_task(&self, scope: &TaskScope, key: &str, put: &Put<'_>) -> Result<Option<String>> {
        let (minted_at, max_age) = Self::fence_params(put);
        self.write("writing task state", |c| {
            let rows = c.write(
                concat!(
                    "WITH barrier AS (SELECT pg_advisory_xact_lock_shared($10)),
                     clock AS (SELECT ", now!(), " AS now FROM barrier)
                     INSERT INTO task_state (dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at)
                     SELECT $1, $2, $3, $4, $5, $6, clock.now, clock.now + $7::bigint FROM clock
                     WHERE $8::bigint IS NULL OR abs(clock.now - $8::bigint) < $9::bigint
                     ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET
                     value = excluded.value, updated_at = excluded.updated_at, expires_at = excluded.expires_at,
                     prev_value = ", kept!("task_state.value"), "
                     RETURNING prev_value"
                ),
                &[
                    &scope.dag_id(), &scope.run_id(), &scope.task_id(), &scope.map_index(), &key,
                    &put.value, &put.retention_ms, &minted_at, &max_age, &GC_LOCK,
                ],
            )?;
            match rows.first() {
                Some(row) => Ok(row.get(0)),
                None => Err(self.refused(c, put)),
            }
        })
    }

    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.write("deleting task state", |c| {
            Ok(c.write(
                "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                 AND map_index = $4 AND key = $5 RETURNING value",
                &[
                    &scope.dag_id(),
                    &scope.run_id(),
                    &scope.task_id(),
                    &scope.map_index(),
                    &key,
                ],
            )?
            .first()
            .map(|r| r.get(0)))
        })
    }

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<Vec<Row>> {
        self.write("clearing task state", |c| {
            let rows = if all_map_indices {
                c.write(
                    "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                     RETURNING dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at",
                    &[&scope.dag_id(), &scope.run_id(), &scope.task_id()],
                )?
            } else {
                c.write(
                    "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                     AND map_index = $4
                     RETURNING dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at",
                    &[&scope.dag_id(), &scope.run_id(), &scope.task_id(), &scope.map_index()],
                )?
            };
            Ok(readable(&rows))
        })
    }

    fn find_asset(&self, asset: &AssetScope) -> Result<Option<AssetScope>> {
        let found = self.read("reading the asset registry", |c| {
            let by_name = registered(&mut c.client, "name", asset.name())?;
            let by_uri = registered(&mut c.client, "uri", asset.uri())?;
            Ok(match_asset(asset, by_name, by_uri))
        })??;
        match found {
            AssetMatch::New => Ok(None),
            AssetMatch::Known { record, .. } => record.canonical().map(Some),
        }
    }

    fn get_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        self.read("reading asset state", |c| {
            let Some(id) = asset_id(&mut c.client, canonical)? else {
                return Ok(None);
            };
            Ok(c.query_opt(
                "SELECT value FROM asset_state WHERE asset_id = $1 AND key = $2",
                &[&id, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn put_asset(
        &self,
        named: &AssetScope,
        canonical: &AssetScope,
        key: &str,
        put: &Put<'_>,
    ) -> Result<Option<String>> {
        let (minted_at, max_age) = Self::fence_params(put);
        self.write("writing asset state", |c| {
            let mut tx = c.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ASSET_LOCK])?;
            // Held until the commit: gc reads its time only after.
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&GC_LOCK])?;
            let by_name = registered(&mut tx, "name", named.name())?;
            let by_uri = registered(&mut tx, "uri", named.uri())?;
            let id: i64 = match match_asset(named, by_name, by_uri).map_err(Failure::Refused)? {
                AssetMatch::New => {
                    let registered = canonical_when_new(named).map_err(Failure::Refused)?;
                    if &registered != canonical {
                        return Err(Failure::Refused(registered_meanwhile(named, &registered)));
                    }
                    let identity = if named.name().is_some() { "name" } else { "uri" };
                    tx.query_one(
                        "INSERT INTO asset (name, uri, identity) VALUES ($1, $2, $3) RETURNING id",
                        &[&named.name(), &named.uri(), &identity],
                    )?
                    .get(0)
                }
                AssetMatch::Known {
                    id,
                    record,
                    bind_name,
                    bind_uri,
                } => {
                    let registered = record.canonical().map_err(Failure::Refused)?;
                    if &registered != canonical {
                        return Err(Failure::Refused(registered_meanwhile(named, &registered)));
                    }
                    if bind_name.is_some() || bind_uri.is_some() {
                        tx.execute(
                            "UPDATE asset SET name = coalesce(name, $2), uri = coalesce(uri, $3) WHERE id = $1",
                            &[&id, &bind_name, &bind_uri],
                        )?;
                    }
                    id
                }
            };
            let rows = tx.query(
                concat!(
                    "WITH clock AS (SELECT ", now!(), " AS now)
                     INSERT INTO asset_state (asset_id, key, value, updated_at)
                     SELECT $1, $2, $3, clock.now FROM clock
                     WHERE $4::bigint IS NULL OR abs(clock.now - $4::bigint) < $5::bigint
                     ON CONFLICT (asset_id, key) DO UPDATE SET
                     value = excluded.value, updated_at = excluded.updated_at,
                     prev_value = ", kept!("asset_state.value"), "
                     RETURNING prev_value"
                ),
                &[&id, &key, &put.value, &minted_at, &max_age],
            )?;
            let Some(row) = rows.first() else {
                drop(tx);
                return Err(self.refused(c, put));
            };
            let old: Option<String> = row.get(0);
            // Only the commit can leave the outcome unknown.
            tx.commit().map_err(sent)?;
            Ok(old)
        })
    }

    fn delete_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        self.write("deleting asset state", |c| {
            let Some(id) = asset_id(&mut c.client, canonical)? else {
                return Ok(None);
            };
            Ok(c.write(
                "DELETE FROM asset_state WHERE asset_id = $1 AND key = $2 RETURNING value",
                &[&id, &key],
            )?
            .first()
            .map(|r| r.get(0)))
        })
    }

    fn clear_asset(&self, canonical: &AssetScope) -> Result<Vec<Row>> {
        self.write("clearing asset state", |c| {
            let Some(id) = asset_id(&mut c.client, canonical)? else {
                return Ok(Vec::new());
            };
            Ok(c.write(
                "DELETE FROM asset_state WHERE asset_id = $1 RETURNING key, value, updated_at",
                &[&id],
            )?
            .iter()
            .map(|r| Row {
                owner: RowOwner::Asset(canonical.clone()),
                key: r.get(0),
                value: r.get(1),
                updated_at: r.get(2),
                expires_at: None,
            })
            .collect())
        })
    }

    fn rows(&self) -> Result<Rows> {
        let (tasks, assets) = self.read("listing rows", |c| {
            let tasks = c.query(
                "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at FROM task_state
                 ORDER BY dag_id, run_id, task_id, map_index, key",
                &[],
            )?;
            let assets = c.query(
                "SELECT a.id, a.name, a.uri, a.identity, s.key, s.value, s.updated_at
                 FROM asset_state s JOIN asset a ON a.id = s.asset_id ORDER BY a.id, s.key",
                &[],
            )?;
            Ok((tasks, assets))
        })?;
        let mut rows = sorted(tasks.iter().map(task_row));
        for r in assets {
            let key: String = r.get(4);
            let registered = Registered {
                name: r.get(1),
                uri: r.get(2),
                by_uri: r.get::<_, String>(3) == "uri",
            };
            match registered.canonical() {
                Ok(canonical) => rows.rows.push(Row {
                    owner: RowOwner::Asset(canonical),
                    key,
                    value: r.get(5),
                    updated_at: r.get(6),
                    expires_at: None,
                }),
                Err(e) => rows
                    .unreadable
                    .push(Unreadable::asset(r.get(0), &key, e.to_string())),
            }
        }
        Ok(rows)
    }

    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize> {
        let rows = self.read("reading references", |c| {
            c.query(
                "SELECT value FROM task_state
                 WHERE strpos(value, '__airflow_state_ref__') > 0 OR strpos(value, '\\u') > 0
                 UNION ALL
                 SELECT value FROM asset_state
                 WHERE strpos(value, '__airflow_state_ref__') > 0 OR strpos(value, '\\u') > 0",
                &[],
            )
        })?;
        // The column is TEXT NOT NULL: every value reads.
        for row in rows {
            visit(row.get(0));
        }
        Ok(0)
    }

    fn expired_task_rows(&self, limit: usize) -> Result<Rows> {
        let rows = self.read("finding expired rows", |c| {
            c.query(
                concat!(
                    "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at
                     FROM task_state WHERE expires_at IS NOT NULL AND expires_at <= ",
                    now!(),
                    " LIMIT $1"
                ),
                &[&i64::try_from(limit).unwrap_or(i64::MAX)],
            )
        })?;
        Ok(sorted(rows.iter().map(task_row)))
    }

    fn durability_warning(&self) -> Result<Option<String>> {
        let setting: String = self.read("reading synchronous_commit", |c| {
            Ok(c.query_opt("SHOW synchronous_commit", &[])?
                .map(|r| r.get(0))
                .unwrap_or_default())
        })?;
        Ok((setting == "off").then(|| {
            format!(
                "{} runs with synchronous_commit = off: a crash can lose commits statehost reported as done; set it to on",
                self.display
            )
        }))
    }

    fn delete_task_if_expired(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.write("deleting an expired row", |c| {
            Ok(c.write(
                concat!(
                    "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                     AND map_index = $4 AND key = $5 AND expires_at IS NOT NULL AND expires_at <= ",
                    now!(),
                    " RETURNING value"
                ),
                &[
                    &scope.dag_id(),
                    &scope.run_id(),
                    &scope.task_id(),
                    &scope.map_index(),
                    &key,
                ],
            )?
            .first()
            .map(|r| r.get(0)))
        })
    }

    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.write("deleting expired rows", |c| {
            // Locked rows are another gc's; a row rewritten meanwhile has a
            // new version (another ctid) and a new expiry, and stays.
            let rows = c.write(
                concat!(
                    "DELETE FROM task_state WHERE ctid IN (
                         SELECT ctid FROM task_state WHERE expires_at IS NOT NULL AND expires_at <= ",
                    now!(),
                    " LIMIT $1 FOR UPDATE SKIP LOCKED)
                     AND expires_at <= ",
                    now!(),
                    " RETURNING dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at"
                ),
                &[&i64::try_from(limit).unwrap_or(i64::MAX)],
            )?;
            Ok(sorted(rows.iter().map(task_row)))
        })
    }
}
