//! The metadata store: one row per (scope, key) holding the value's JSON or
//! its envelope, and the registry of assets.
//!
//! This folder owns the databases: [`MetadataStore`] is the interface,
//! [`sqlite`] the embedded default, [`postgres`] the store that workers on
//! many machines share, [`memory`] a map for throwaway runs, and `suite`
//! the behaviour every implementation must show. It knows nothing of
//! backends or envelopes beyond telling which rows may hold one.
//!
//! What the consistency guarantees need from a store:
//!
//! * **The row is the only pointer, swapped atomically.** Every write hands
//!   back what it replaced, in the same transaction (upserts, deletes,
//!   clears and expiry alike), so exactly one caller learns each replaced
//!   value and deletes its object.
//! * **One clock.** Times (`updated_at`, `expires_at`, what is expired, the
//!   fence of a write) come from the database's clock inside its
//!   statements, never from a worker's.
//! * **Fenced writes.** A row that points at a new object commits only if
//!   the object's write id is younger than the fence's `max_age` by the
//!   database's clock, and garbage collection takes its time
//!   ([`MetadataStore::gc_epoch`]) only after every write that passed its
//!   fence has committed; since gc spares objects younger than twice the
//!   fence's age, it can never collect an object whose row is still on its
//!   way.
//! * **Honest failures.** An error that proves nothing was applied is a
//!   plain error; one that cannot (the connection dropped after the commit
//!   was sent) is [`Error::OutcomeUnknown`], and nothing is retried then.

use statehost_plugin_api::{AssetScope, TaskScope};

use crate::error::{Error, Result};

mod group_commit;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;
#[cfg(feature = "postgres")]
pub mod tls;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sqlite::{SqliteLocation, SqliteStore, Synchronous};

/// The schema version this build writes and understands. Version 2 came
/// with references unique per write: a statehost that knows only version 1
/// (whose gc matched objects by scope and key) refuses such a database.
pub const SCHEMA_VERSION: i64 = 2;

/// Rows read from a store, and those that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// The rows that decode.
    pub rows: Vec<Row>,
    /// The rows that do not (a damaged database, or one written by
    /// something else): skipped, each named.
    pub unreadable: Vec<Unreadable>,
}

/// A row that cannot be decoded: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The row, by its table and its key columns as they are stored.
    pub row: String,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.row, self.problem)
    }
}

impl Unreadable {
    /// A task row, named by its stored key columns (shortened).
    pub(crate) fn task(parts: [&str; 5], problem: impl Into<String>) -> Unreadable {
        let [dag, run, task, map_index, key] = parts.map(crate::error::short);
        Unreadable {
            row: format!(
                "task_state row (dag_id {dag:?}, run_id {run:?}, task_id {task:?}, map_index {map_index}, key {key:?})"
            ),
            problem: problem.into(),
        }
    }

    /// An asset row, named by its asset's id and its key.
    pub(crate) fn asset(asset_id: i64, key: &str, problem: impl Into<String>) -> Unreadable {
        Unreadable {
            row: format!(
                "asset_state row (asset id {asset_id}, key {:?})",
                crate::error::short(key)
            ),
            problem: problem.into(),
        }
    }
}

/// A stored row, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Whose state.
    pub owner: RowOwner,
    /// The key.
    pub key: String,
    /// The stored JSON: the value itself or an envelope.
    pub value: String,
    /// Last write, milliseconds since the Unix epoch (database clock).
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

/// The condition a row write that points at a new object commits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// When the object's write id was minted, ms since the epoch (by the
    /// minting worker's clock).
    pub minted_at: i64,
    /// The write commits only while the database's clock is less than this
    /// far from `minted_at`, in either direction.
    pub max_age_ms: i64,
}

/// One row write.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    /// The stored text (a value's JSON or an envelope).
    pub value: &'a str,
    /// Set when `value` points at an object just written.
    pub fence: Option<Fence>,
    /// Task rows: how long after the write (by the database's clock) the
    /// row expires, in ms; `None` keeps it forever. Ignored for assets.
    pub retention_ms: Option<i64>,
}

/// What the host needs from a metadata database. Implementations are
/// shared by threads; every method is one transaction.
pub trait MetadataStore: Send + Sync {
    /// Where the store is, for messages (passwords redacted).
    fn describe(&self) -> String;

    /// The database's clock, ms since the epoch.
    fn now(&self) -> Result<i64>;

    /// The database's clock for garbage collection (its `T0`), read only
    /// once every row write that passed its fence before has committed: a
    /// write whose row gc cannot see yet then has a fence younger than `T0`,
    /// so gc, which spares objects younger than twice the fence's age by
    /// `T0`, spares its object.
    fn gc_epoch(&self) -> Result<i64>;

    /// The stored text of a task key, unless absent or expired.
    fn get_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>>;
    /// Inserts or replaces a task key, returning the text it replaced
    /// (expired or not) when that text [may hold an
    /// envelope](may_hold_envelope) (other replaced text may or may not be
    /// returned). Fails, applying nothing, when the fence does not hold.
    fn put_task(&self, scope: &TaskScope, key: &str, put: &Put<'_>) -> Result<Option<String>>;
    /// Removes a task key, returning what it held (expired or not).
    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>>;
    /// Removes a task's keys (every map index with `all_map_indices`),
    /// returning the rows removed.
    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<Vec<Row>>;

    /// The canonical scope of an asset known by `name` and/or `uri`, if it
    /// is registered; an error if the name and the uri belong to two
    /// different assets or to another pairing. Registers and binds nothing.
    fn find_asset(&self, asset: &AssetScope) -> Result<Option<AssetScope>>;
    /// The stored text of an asset key (by canonical scope).
    fn get_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>>;
    /// Registers the asset as `named` (binding a name or uri learnt now)
    /// and inserts or replaces its key, in one transaction, returning the
    /// text replaced. Fails, applying nothing, if the asset's canonical
    /// scope is not `canonical` (another worker registered it differently
    /// meanwhile) or the fence does not hold. What it returns is as for
    /// [`put_task`](MetadataStore::put_task).
    fn put_asset(
        &self,
        named: &AssetScope,
        canonical: &AssetScope,
        key: &str,
        put: &Put<'_>,
    ) -> Result<Option<String>>;
    /// Removes an asset key, returning what it held.
    fn delete_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>>;
    /// Removes every key of an asset, returning the rows removed.
    fn clear_asset(&self, canonical: &AssetScope) -> Result<Vec<Row>>;

    /// Every row, task rows first; a row that cannot be decoded is
    /// reported, not an error for the whole listing.
    fn rows(&self) -> Result<Rows>;
    /// Calls `visit` with the stored text of every row, expired or not, that
    /// might hold an envelope (a superset: the caller parses). Answers how
    /// many rows' text could not be read at all (then the caller cannot know
    /// every reference).
    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize>;
    /// Up to `limit` task rows expired by the database's clock, unchanged.
    fn expired_task_rows(&self, limit: usize) -> Result<Rows>;
    /// Removes up to `limit` task rows expired by the database's clock,
    /// returning them. A row rewritten meanwhile (no longer expired) stays.
    /// An expired row that cannot be decoded is removed too (it is expired
    /// by the database's own clock) and reported as unreadable: the caller
    /// must not act on what it may point at.
    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows>;

    /// Removes one task row if it is expired by the database's clock,
    /// returning what it held.
    fn delete_task_if_expired(&self, scope: &TaskScope, key: &str) -> Result<Option<String>>;

    /// Makes every change committed so far survive power loss. Stores whose
    /// commits are durable when they return (the default) do nothing.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// A warning when an acknowledged commit can be lost on a crash or power
    /// loss (for `statehost check`).
    fn durability_warning(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

impl std::fmt::Debug for dyn MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Whether stored text may hold an envelope: it mentions the marker, or it
/// escapes characters (and so might spell the marker escaped). Anything
/// else certainly does not.
pub fn may_hold_envelope(text: &str) -> bool {
    text.contains(crate::state::envelope::MARKER) || text.contains("\\u")
}

/// An asset as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    pub name: Option<String>,
    pub uri: Option<String>,
    /// Whether the uri (rather than the name) names its namespace.
    pub by_uri: bool,
}

impl Registered {
    pub(crate) fn canonical(&self) -> Result<AssetScope> {
        let scope = if self.by_uri {
            self.uri.clone().map(AssetScope::by_uri)
        } else {
            self.name.clone().map(AssetScope::by_name)
        };
        match scope {
            Some(Ok(scope)) => Ok(scope),
            _ => Err(Error::Store {
                message: format!(
                    "the asset registry holds an asset without its {} (name {:?}, uri {:?}); fix or delete that row of the asset table",
                    if self.by_uri { "uri" } else { "name" },
                    self.name,
                    self.uri
                ),
            }),
        }
    }
}

/// How a request for an asset matches the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AssetMatch<I> {
    /// Not registered: registering would make `named`'s identity canonical.
    New,
    /// Registered as `id`; a put binds the name or uri it lacks.
    Known {
        id: I,
        record: Registered,
        bind_name: Option<String>,
        bind_uri: Option<String>,
    },
}

/// Matches `asset` against the registered assets found by its name and by
/// its uri. A name and a uri of two different assets, or a name or uri
/// registered with another partner, is an error that binds nothing.
pub(crate) fn match_asset<I: PartialEq + Copy>(
    asset: &AssetScope,
    by_name: Option<(I, Registered)>,
    by_uri: Option<(I, Registered)>,
) -> Result<AssetMatch<I>> {
    let found = match (by_name, by_uri) {
        (Some(a), Some(b)) if a.0 != b.0 => {
            return Err(Error::InvalidInput {
                message: format!(
                    "asset name {:?} and uri {:?} belong to two different assets; use the pair they were registered with",
                    asset.name().unwrap_or_default(),
                    asset.uri().unwrap_or_default()
                ),
            });
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    let Some((id, record)) = found else {
        return Ok(AssetMatch::New);
    };
    let canonical = record.canonical()?;
    for (have, want, what) in [
        (&record.name, asset.name(), "name"),
        (&record.uri, asset.uri(), "uri"),
    ] {
        if let (Some(have), Some(want)) = (have, want)
            && have != want
        {
            return Err(Error::InvalidInput {
                message: format!(
                    "{canonical} is registered with {what} {have:?}, not {want:?}; use the {what} it was registered with"
                ),
            });
        }
    }
    let bind_name = record
        .name
        .is_none()
        .then(|| asset.name().map(str::to_string))
        .flatten();
    let bind_uri = record
        .uri
        .is_none()
        .then(|| asset.uri().map(str::to_string))
        .flatten();
    Ok(AssetMatch::Known {
        id,
        record,
        bind_name,
        bind_uri,
    })
}

/// The canonical scope an asset gets when it is registered as `named` now.
pub(crate) fn canonical_when_new(named: &AssetScope) -> Result<AssetScope> {
    let registered = Registered {
        name: named.name().map(Into::into),
        uri: named.uri().map(Into::into),
        by_uri: named.name().is_none(),
    };
    registered.canonical()
}

/// The error of a put whose asset was registered differently meanwhile.
pub(crate) fn registered_meanwhile(named: &AssetScope, canonical: &AssetScope) -> Error {
    Error::Store {
        message: format!(
            "{named} was registered by another worker as {canonical} while this value was being written; nothing was stored, set it again"
        ),
    }
}

/// The error of a put whose fence did not hold.
pub(crate) fn fenced(fence: &Fence, now: i64) -> Error {
    let age = now - fence.minted_at;
    Error::Store {
        message: if age >= 0 {
            format!(
                "the write took {} ms from minting its write id to writing its row, more than the {} ms allowed (half of [state_store] orphan_grace), or this worker's clock is behind the database's; nothing was stored",
                age, fence.max_age_ms
            )
        } else {
            format!(
                "this worker's clock is {} ms ahead of the database's, more than the {} ms allowed (half of [state_store] orphan_grace); fix the clock (NTP); nothing was stored",
                -age, fence.max_age_ms
            )
        },
    }
}

/// Whether a fence holds at the database's time `now`.
pub(crate) fn fence_holds(fence: Option<&Fence>, now: i64) -> bool {
    fence.is_none_or(|f| (now - f.minted_at).abs() < f.max_age_ms)
}
