//! [`PostgresStore`]: the metadata store on PostgreSQL
//! (`[database] url = "postgresql://..."`), so workers on many machines
//! share state. Same schema and semantics as the SQLite store.

use std::sync::Mutex;
use std::time::Duration;

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement, Transaction};
use statehost_plugin_api::{AssetIdentity, AssetScope, TaskScope};

use crate::error::{Error, Result};
use crate::store::{MetadataStore, Row, RowOwner, SCHEMA_VERSION};

/// Connections kept open for reuse.
const POOL_SIZE: usize = 16;
/// Key of the advisory lock that serializes schema creation and migration
/// between workers starting at once.
const MIGRATION_LOCK: i64 = 0x5354_4154_4548_4f53; // "STATEHOS"
/// Key of the advisory lock that serializes asset registration.
const ASSET_LOCK: i64 = 0x5354_4154_4541_5353; // "STATEASS"

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
    PRIMARY KEY (asset_id, key)
);
";

/// A pooled connection with its prepared statements: each statement is
/// parsed once per connection, so a call costs one round trip, not two.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

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

    fn execute(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> std::result::Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }
}

/// The PostgreSQL store: a small pool of connections.
pub struct PostgresStore {
    config: postgres::Config,
    /// The URL without its password, for messages.
    display: String,
    pool: Mutex<Vec<Conn>>,
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
        format!("{display}: {}", e.to_string().replace('\n', " "))
    }
}

impl PostgresStore {
    /// Connects, and creates or checks the schema (safe when several
    /// workers start at once: they take turns under an advisory lock).
    pub fn open(url: &str) -> Result<PostgresStore> {
        let mut config: postgres::Config = url.parse().map_err(|e| Error::Config {
            source_name: "[database] url".to_string(),
            message: format!("not a PostgreSQL URL ({e})"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let display = redact(url);
        let store = PostgresStore {
            config,
            display,
            pool: Mutex::new(Vec::new()),
        };
        let mut conn = store.connect()?;
        store.migrate(&mut conn.client)?;
        store
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(store)
    }

    fn connect(&self) -> Result<Conn> {
        let client = self.config.connect(NoTls).map_err(|e| Error::Store {
            message: describe(&self.display, &e),
        })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn migrate(&self, client: &mut Client) -> Result<()> {
        let err = |e: postgres::Error| Error::Store {
            message: describe(&self.display, &e),
        };
        let mut tx = client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err)?;
        tx.batch_execute(SCHEMA).map_err(err)?;
        let version: Option<String> = tx
            .query_opt(
                "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
                &[],
            )
            .map_err(err)?
            .map(|r| r.get(0));
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                tx.execute(
                    "INSERT INTO statehost_meta (name, value) VALUES ('schema_version', $1)",
                    &[&SCHEMA_VERSION.to_string()],
                )
                .map_err(err)?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(other) => {
                return Err(Error::Store {
                    message: format!(
                        "{} has schema version {}, this build knows version {SCHEMA_VERSION}; use a statehost that matches it",
                        self.display,
                        other.map(|v| v.to_string()).unwrap_or_else(|_| "?".into())
                    ),
                });
            }
        }
        tx.commit().map_err(err)
    }

    /// Runs `f` on a pooled connection; a broken connection is dropped and
    /// the call retried once on a fresh one.
    fn with<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Conn) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        for attempt in 0..2 {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match pooled {
                Some(conn) if !conn.client.is_closed() => conn,
                _ => self.connect()?,
            };
            match f(&mut conn) {
                Ok(value) => {
                    let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                    if pool.len() < POOL_SIZE {
                        pool.push(conn);
                    }
                    return Ok(value);
                }
                Err(e) if e.is_closed() && attempt == 0 => continue,
                Err(e) => {
                    return Err(Error::Store {
                        message: format!("{what}: {}", describe(&self.display, &e)),
                    });
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

fn asset_id(
    tx: &mut impl postgres::GenericClient,
    asset: &AssetScope,
) -> std::result::Result<Option<i64>, postgres::Error> {
    Ok(match asset.identity() {
        AssetIdentity::Name(name) => tx.query_opt(
            "SELECT id FROM asset WHERE name = $1 AND identity = 'name'",
            &[&name],
        )?,
        AssetIdentity::Uri(uri) => tx.query_opt(
            "SELECT id FROM asset WHERE uri = $1 AND identity = 'uri'",
            &[&uri],
        )?,
    }
    .map(|r| r.get(0)))
}

fn canonical(name: Option<String>, uri: Option<String>, identity: &str) -> Option<AssetScope> {
    if identity == "uri" {
        uri.and_then(|u| AssetScope::by_uri(u).ok())
    } else {
        name.and_then(|n| AssetScope::by_name(n).ok())
    }
}

fn resolve(
    tx: &mut Transaction<'_>,
    asset: &AssetScope,
) -> std::result::Result<std::result::Result<AssetScope, String>, postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ASSET_LOCK])?;
    type Found = (i64, Option<String>, Option<String>, String);
    let find = |tx: &mut Transaction<'_>,
                column: &str,
                value: Option<&str>|
     -> std::result::Result<Option<Found>, postgres::Error> {
        let Some(value) = value else { return Ok(None) };
        Ok(tx
            .query_opt(
                &format!("SELECT id, name, uri, identity FROM asset WHERE {column} = $1"),
                &[&value],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    };
    let by_name = find(tx, "name", asset.name())?;
    let by_uri = find(tx, "uri", asset.uri())?;
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
    let Some((id, name, uri, identity)) = found else {
        let identity = if asset.name().is_some() {
            "name"
        } else {
            "uri"
        };
        tx.execute(
            "INSERT INTO asset (name, uri, identity) VALUES ($1, $2, $3)",
            &[&asset.name(), &asset.uri(), &identity],
        )?;
        return Ok(canonical(
            asset.name().map(Into::into),
            asset.uri().map(Into::into),
            identity,
        )
        .ok_or_else(|| "the asset has no identity".to_string()));
    };
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
    let name = name.or_else(|| asset.name().map(Into::into));
    let uri = uri.or_else(|| asset.uri().map(Into::into));
    tx.execute(
        "UPDATE asset SET name = $2, uri = $3 WHERE id = $1",
        &[&id, &name, &uri],
    )?;
    Ok(canonical(name, uri, &identity).ok_or_else(|| "the asset has no identity".to_string()))
}

fn task_row(r: &postgres::Row) -> Option<Row> {
    Some(Row {
        owner: RowOwner::Task(
            TaskScope::new(
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get(3),
            )
            .ok()?,
        ),
        key: r.get(4),
        value: r.get(5),
        updated_at: r.get(6),
        expires_at: r.get(7),
    })
}

impl MetadataStore for PostgresStore {
    fn get_task(&self, scope: &TaskScope, key: &str, now: i64) -> Result<Option<String>> {
        self.with("reading task state", |c| {
            Ok(c.query_opt(
                "SELECT value FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                 AND map_index = $4 AND key = $5 AND (expires_at IS NULL OR expires_at > $6)",
                &[
                    &scope.dag_id(),
                    &scope.run_id(),
                    &scope.task_id(),
                    &scope.map_index(),
                    &key,
                    &now,
                ],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn put_task(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()> {
        self.with("writing task state", |c| {
            c.execute(
                "INSERT INTO task_state (dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET
                 value = excluded.value, updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                &[&scope.dag_id(), &scope.run_id(), &scope.task_id(), &scope.map_index(), &key, &value, &now, &expires_at],
            )
            .map(|_| ())
        })
    }

    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.with("deleting task state", |c| {
            Ok(c.query_opt(
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
            .map(|r| r.get(0)))
        })
    }

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<usize> {
        self.with("clearing task state", |c| {
            let n = if all_map_indices {
                c.execute(
                    "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3",
                    &[&scope.dag_id(), &scope.run_id(), &scope.task_id()],
                )?
            } else {
                c.execute(
                    "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND map_index = $4",
                    &[&scope.dag_id(), &scope.run_id(), &scope.task_id(), &scope.map_index()],
                )?
            };
            Ok(n as usize)
        })
    }

    fn resolve_asset(&self, asset: &AssetScope) -> Result<AssetScope> {
        let outcome = self.with("resolving the asset", |c| {
            let mut tx = c.client.transaction()?;
            let outcome = resolve(&mut tx, asset)?;
            tx.commit()?;
            Ok(outcome)
        })?;
        outcome.map_err(|message| Error::InvalidInput { message })
    }

    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.with("reading asset state", |c| {
            let Some(id) = asset_id(&mut c.client, asset)? else {
                return Ok(None);
            };
            Ok(c.query_opt(
                "SELECT value FROM asset_state WHERE asset_id = $1 AND key = $2",
                &[&id, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn put_asset(&self, asset: &AssetScope, key: &str, value: &str, now: i64) -> Result<()> {
        let written = self.with("writing asset state", |c| {
            let Some(id) = asset_id(&mut c.client, asset)? else { return Ok(false) };
            c.execute(
                "INSERT INTO asset_state (asset_id, key, value, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (asset_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&id, &key, &value, &now],
            )?;
            Ok(true)
        })?;
        if written {
            Ok(())
        } else {
            Err(Error::Store {
                message: format!("writing asset state: {asset} is not registered"),
            })
        }
    }

    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.with("deleting asset state", |c| {
            let Some(id) = asset_id(&mut c.client, asset)? else {
                return Ok(None);
            };
            Ok(c.query_opt(
                "DELETE FROM asset_state WHERE asset_id = $1 AND key = $2 RETURNING value",
                &[&id, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn clear_asset(&self, asset: &AssetScope) -> Result<usize> {
        self.with("clearing asset state", |c| {
            let Some(id) = asset_id(&mut c.client, asset)? else {
                return Ok(0);
            };
            Ok(c.execute("DELETE FROM asset_state WHERE asset_id = $1", &[&id])? as usize)
        })
    }

    fn rows(&self) -> Result<Vec<Row>> {
        self.with("listing rows", |c| {
            let mut rows: Vec<Row> = c
                .query(
                    "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at FROM task_state
                     ORDER BY dag_id, run_id, task_id, map_index, key",
                    &[],
                )?
                .iter()
                .filter_map(task_row)
                .collect();
            for r in c.query(
                "SELECT a.name, a.uri, a.identity, s.key, s.value, s.updated_at
                 FROM asset_state s JOIN asset a ON a.id = s.asset_id ORDER BY a.id, s.key",
                &[],
            )? {
                if let Some(scope) = canonical(r.get(0), r.get(1), &r.get::<_, String>(2)) {
                    rows.push(Row {
                        owner: RowOwner::Asset(scope),
                        key: r.get(3),
                        value: r.get(4),
                        updated_at: r.get(5),
                        expires_at: None,
                    });
                }
            }
            Ok(rows)
        })
    }

    fn expired_task_rows(&self, now: i64) -> Result<Vec<Row>> {
        self.with("finding expired rows", |c| {
            Ok(c.query(
                "SELECT dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at FROM task_state
                 WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&now],
            )?
            .iter()
            .filter_map(task_row)
            .collect())
        })
    }

    fn delete_expired_task_row(&self, row: &Row, now: i64) -> Result<bool> {
        let RowOwner::Task(scope) = &row.owner else {
            return Ok(false);
        };
        self.with("deleting an expired row", |c| {
            Ok(c.execute(
                "DELETE FROM task_state WHERE dag_id = $1 AND run_id = $2 AND task_id = $3
                 AND map_index = $4 AND key = $5 AND value = $6 AND expires_at <= $7",
                &[
                    &scope.dag_id(),
                    &scope.run_id(),
                    &scope.task_id(),
                    &scope.map_index(),
                    &row.key,
                    &row.value,
                    &now,
                ],
            )? > 0)
        })
    }
}
