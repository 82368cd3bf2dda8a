//! [`MemoryStore`]: a metadata store in the process's memory
//! (`[database] url = "memory://"`). Nothing survives the process; use it
//! for throwaway runs, tests, and benchmarks that compare against stores
//! doing the same work (a map, no SQL).

use std::sync::{Mutex, MutexGuard};

use statehost_plugin_api::{AssetIdentity, AssetScope, TaskScope};

use crate::error::{Error, Result};
use crate::store::{MetadataStore, Row, RowOwner};

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    updated_at: i64,
    expires_at: Option<i64>,
}

// Keys are short ids and state keys from the process's own tasks, where
// SipHash's resistance to crafted collisions buys nothing and costs a third
// of a lookup.
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

type Keys = FastMap<String, Entry>;

const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    tasks: FastMap<TaskScope, Keys>,
}

#[derive(Debug, Clone)]
struct AssetRecord {
    name: Option<String>,
    uri: Option<String>,
    canonical: AssetScope,
}

/// A sharded in-memory store with the semantics of the SQLite one.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // One cache line each, so threads on different shards do not contend.
    shards: [crossbeam_utils::CachePadded<Mutex<Shard>>; SHARDS],
    assets: Mutex<Vec<AssetRecord>>,
    asset_rows: Mutex<FastMap<AssetScope, Keys>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Every map index of a task lands in the same shard, so clearing them
    /// all locks one shard.
    fn shard(&self, scope: &TaskScope) -> MutexGuard<'_, Shard> {
        use std::hash::BuildHasher;
        let hash =
            rustc_hash::FxBuildHasher.hash_one((scope.dag_id(), scope.run_id(), scope.task_id()));
        lock(&self.shards[(hash >> 60) as usize % SHARDS])
    }
}

fn same_task(a: &TaskScope, b: &TaskScope) -> bool {
    a.dag_id() == b.dag_id() && a.run_id() == b.run_id() && a.task_id() == b.task_id()
}

impl MetadataStore for MemoryStore {
    fn get_task(&self, scope: &TaskScope, key: &str, now: i64) -> Result<Option<String>> {
        let shard = self.shard(scope);
        Ok(shard
            .tasks
            .get(scope)
            .and_then(|keys| keys.get(key))
            .filter(|e| e.expires_at.is_none_or(|at| at > now))
            .map(|e| e.value.clone()))
    }

    fn put_task(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()> {
        let mut shard = self.shard(scope);
        let keys = match shard.tasks.get_mut(scope) {
            Some(keys) => keys,
            None => shard.tasks.entry(scope.clone()).or_default(),
        };
        match keys.get_mut(key) {
            Some(entry) => {
                entry.value.clear();
                entry.value.push_str(value);
                entry.updated_at = now;
                entry.expires_at = expires_at;
            }
            None => {
                keys.insert(
                    key.to_string(),
                    Entry {
                        value: value.to_string(),
                        updated_at: now,
                        expires_at,
                    },
                );
            }
        }
        Ok(())
    }

    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        let mut shard = self.shard(scope);
        let Some(keys) = shard.tasks.get_mut(scope) else {
            return Ok(None);
        };
        let old = keys.remove(key).map(|e| e.value);
        if keys.is_empty() {
            shard.tasks.remove(scope);
        }
        Ok(old)
    }

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<usize> {
        let mut shard = self.shard(scope);
        if !all_map_indices {
            return Ok(shard.tasks.remove(scope).map_or(0, |keys| keys.len()));
        }
        let mut removed = 0;
        shard.tasks.retain(|s, keys| {
            let doomed = same_task(s, scope);
            if doomed {
                removed += keys.len();
            }
            !doomed
        });
        Ok(removed)
    }

    fn resolve_asset(&self, asset: &AssetScope) -> Result<AssetScope> {
        let mut assets = lock(&self.assets);
        let by_name = asset
            .name()
            .and_then(|n| assets.iter().position(|a| a.name.as_deref() == Some(n)));
        let by_uri = asset
            .uri()
            .and_then(|u| assets.iter().position(|a| a.uri.as_deref() == Some(u)));
        let found = match (by_name, by_uri) {
            (Some(a), Some(b)) if a != b => {
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
        let Some(index) = found else {
            let canonical = match asset.identity() {
                AssetIdentity::Name(n) => AssetScope::by_name(n),
                AssetIdentity::Uri(u) => AssetScope::by_uri(u),
            }
            .map_err(|e| Error::InvalidInput {
                message: e.message().to_string(),
            })?;
            assets.push(AssetRecord {
                name: asset.name().map(Into::into),
                uri: asset.uri().map(Into::into),
                canonical: canonical.clone(),
            });
            return Ok(canonical);
        };
        let record = &mut assets[index];
        for (have, want, what) in [
            (&record.name, asset.name(), "name"),
            (&record.uri, asset.uri(), "uri"),
        ] {
            if let (Some(have), Some(want)) = (have, want)
                && have != want
            {
                return Err(Error::InvalidInput {
                    message: format!(
                        "{} is registered with {what} {have:?}, not {want:?}",
                        record.canonical
                    ),
                });
            }
        }
        if record.name.is_none() {
            record.name = asset.name().map(Into::into);
        }
        if record.uri.is_none() {
            record.uri = asset.uri().map(Into::into);
        }
        Ok(record.canonical.clone())
    }

    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.asset_rows)
            .get(asset)
            .and_then(|keys| keys.get(key))
            .map(|e| e.value.clone()))
    }

    fn put_asset(&self, asset: &AssetScope, key: &str, value: &str, now: i64) -> Result<()> {
        lock(&self.asset_rows)
            .entry(asset.clone())
            .or_default()
            .insert(
                key.to_string(),
                Entry {
                    value: value.to_string(),
                    updated_at: now,
                    expires_at: None,
                },
            );
        Ok(())
    }

    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.asset_rows)
            .get_mut(asset)
            .and_then(|keys| keys.remove(key))
            .map(|e| e.value))
    }

    fn clear_asset(&self, asset: &AssetScope) -> Result<usize> {
        Ok(lock(&self.asset_rows).remove(asset).map_or(0, |k| k.len()))
    }

    fn rows(&self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for shard in &self.shards {
            for (scope, keys) in &lock(shard).tasks {
                for (key, e) in keys {
                    rows.push(Row {
                        owner: RowOwner::Task(scope.clone()),
                        key: key.clone(),
                        value: e.value.clone(),
                        updated_at: e.updated_at,
                        expires_at: e.expires_at,
                    });
                }
            }
        }
        rows.sort_by(|a, b| match (&a.owner, &b.owner) {
            (RowOwner::Task(x), RowOwner::Task(y)) => (
                x.dag_id(),
                x.run_id(),
                x.task_id(),
                x.map_index(),
                &a.key,
            )
                .cmp(&(y.dag_id(), y.run_id(), y.task_id(), y.map_index(), &b.key)),
            _ => std::cmp::Ordering::Equal,
        });
        for (asset, keys) in lock(&self.asset_rows).iter() {
            for (key, e) in keys {
                rows.push(Row {
                    owner: RowOwner::Asset(asset.clone()),
                    key: key.clone(),
                    value: e.value.clone(),
                    updated_at: e.updated_at,
                    expires_at: None,
                });
            }
        }
        Ok(rows)
    }

    fn expired_task_rows(&self, now: i64) -> Result<Vec<Row>> {
        Ok(self
            .rows()?
            .into_iter()
            .filter(|r| {
                matches!(r.owner, RowOwner::Task(_)) && r.expires_at.is_some_and(|at| at <= now)
            })
            .collect())
    }

    fn delete_expired_task_row(&self, row: &Row, now: i64) -> Result<bool> {
        let RowOwner::Task(scope) = &row.owner else {
            return Ok(false);
        };
        let mut shard = self.shard(scope);
        let Some(keys) = shard.tasks.get_mut(scope) else {
            return Ok(false);
        };
        let still_expired = keys
            .get(&row.key)
            .is_some_and(|e| e.value == row.value && e.expires_at.is_some_and(|at| at <= now));
        if still_expired {
            keys.remove(&row.key);
            if keys.is_empty() {
                shard.tasks.remove(scope);
            }
        }
        Ok(still_expired)
    }
}
