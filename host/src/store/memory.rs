//! [`MemoryStore`]: a metadata store in the process's memory
//! (`[database] url = "memory://"`). Nothing survives the process; use it
//! for throwaway runs, tests, and benchmarks that compare against stores
//! doing the same work (a map, no SQL). Its clock is the process's.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use statehost_plugin_api::{AssetScope, TaskScope};

use super::{
    AssetMatch, MetadataStore, Put, Registered, Row, RowOwner, Rows, canonical_when_new,
    fence_holds, fenced, match_asset, registered_meanwhile,
};
use crate::error::Result;

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

/// A sharded in-memory store with the semantics of the SQLite one.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // One cache line each, so threads on different shards do not contend.
    shards: [crossbeam_utils::CachePadded<Mutex<Shard>>; SHARDS],
    /// The asset registry and the asset rows, under one lock: a put
    /// registers and writes together.
    assets: Mutex<Assets>,
}

#[derive(Debug, Default)]
struct Assets {
    registry: Vec<Registered>,
    rows: FastMap<AssetScope, Keys>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn live(entry: &Entry, now: i64) -> bool {
    entry.expires_at.is_none_or(|at| at > now)
}

/// Replaces `keys[key]`, returning the text it held.
fn upsert(
    keys: &mut Keys,
    key: &str,
    value: &str,
    now: i64,
    expires_at: Option<i64>,
) -> Option<String> {
    match keys.get_mut(key) {
        Some(entry) => {
            entry.updated_at = now;
            entry.expires_at = expires_at;
            Some(std::mem::replace(&mut entry.value, value.to_string()))
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
            None
        }
    }
}

fn row(owner: RowOwner, key: &str, e: &Entry) -> Row {
    Row {
        owner,
        key: key.to_string(),
        value: e.value.clone(),
        updated_at: e.updated_at,
        expires_at: e.expires_at,
    }
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

impl Assets {
    fn matching(&self, asset: &AssetScope) -> Result<AssetMatch<usize>> {
        let find = |f: &dyn Fn(&Registered) -> bool| {
            self.registry
                .iter()
                .position(f)
                .map(|i| (i, self.registry[i].clone()))
        };
        let by_name = asset
            .name()
            .and_then(|n| find(&|r: &Registered| r.name.as_deref() == Some(n)));
        let by_uri = asset
            .uri()
            .and_then(|u| find(&|r: &Registered| r.uri.as_deref() == Some(u)));
        match_asset(asset, by_name, by_uri)
    }
}

fn same_task(a: &TaskScope, b: &TaskScope) -> bool {
    a.dag_id() == b.dag_id() && a.run_id() == b.run_id() && a.task_id() == b.task_id()
}

impl MetadataStore for MemoryStore {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    fn now(&self) -> Result<i64> {
        Ok(now_ms())
    }

    fn gc_epoch(&self) -> Result<i64> {
        // Every write fences and commits under one of these locks.
        let shards: Vec<_> = self.shards.iter().map(|s| lock(s)).collect();
        let assets = lock(&self.assets);
        let now = now_ms();
        drop((shards, assets));
        Ok(now)
    }

    fn durability_warning(&self) -> Result<Option<String>> {
        Ok(Some(
            "memory:// keeps nothing once the process ends".to_string(),
        ))
    }

    fn get_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        let shard = self.shard(scope);
        // The clock is read only for a row that can expire: most never do.
        Ok(shard
            .tasks
            .get(scope)
            .and_then(|keys| keys.get(key))
            .filter(|e| e.expires_at.is_none_or(|at| at > now_ms()))
            .map(|e| e.value.clone()))
    }

    fn put_task(&self, scope: &TaskScope, key: &str, put: &Put<'_>) -> Result<Option<String>> {
        let mut shard = self.shard(scope);
        let now = now_ms();
        if !fence_holds(put.fence.as_ref(), now) {
            return Err(fenced(put.fence.as_ref().expect("checked"), now));
        }
        let expires_at = put.retention_ms.map(|ms| now.saturating_add(ms));
        let keys = match shard.tasks.get_mut(scope) {
            Some(keys) => keys,
            None => shard.tasks.entry(scope.clone()).or_default(),
        };
        Ok(upsert(keys, key, put.value, now, expires_at))
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

    fn clear_task(&self, scope: &TaskScope, all_map_indices: bool) -> Result<Vec<Row>> {
        let mut shard = self.shard(scope);
        let doomed: Vec<TaskScope> = shard
            .tasks
            .keys()
            .filter(|s| {
                if all_map_indices {
                    same_task(s, scope)
                } else {
                    *s == scope
                }
            })
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for s in doomed {
            if let Some(keys) = shard.tasks.remove(&s) {
                for (key, e) in &keys {
                    removed.push(row(RowOwner::Task(s.clone()), key, e));
                }
            }
        }
        Ok(removed)
    }

    fn find_asset(&self, asset: &AssetScope) -> Result<Option<AssetScope>> {
        match lock(&self.assets).matching(asset)? {
            AssetMatch::New => Ok(None),
            AssetMatch::Known { record, .. } => record.canonical().map(Some),
        }
    }

    fn get_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.assets)
            .rows
            .get(canonical)
            .and_then(|keys| keys.get(key))
            .map(|e| e.value.clone()))
    }

    fn put_asset(
        &self,
        named: &AssetScope,
        canonical: &AssetScope,
        key: &str,
        put: &Put<'_>,
    ) -> Result<Option<String>> {
        let mut assets = lock(&self.assets);
        let now = now_ms();
        if !fence_holds(put.fence.as_ref(), now) {
            return Err(fenced(put.fence.as_ref().expect("checked"), now));
        }
        match assets.matching(named)? {
            AssetMatch::New => {
                let registered = canonical_when_new(named)?;
                if &registered != canonical {
                    return Err(registered_meanwhile(named, &registered));
                }
                assets.registry.push(Registered {
                    name: named.name().map(Into::into),
                    uri: named.uri().map(Into::into),
                    by_uri: named.name().is_none(),
                });
            }
            AssetMatch::Known {
                id,
                record,
                bind_name,
                bind_uri,
            } => {
                let registered = record.canonical()?;
                if &registered != canonical {
                    return Err(registered_meanwhile(named, &registered));
                }
                let entry = &mut assets.registry[id];
                entry.name = entry.name.take().or(bind_name);
                entry.uri = entry.uri.take().or(bind_uri);
            }
        }
        let keys = assets.rows.entry(canonical.clone()).or_default();
        Ok(upsert(keys, key, put.value, now, None))
    }

    fn delete_asset(&self, canonical: &AssetScope, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.assets)
            .rows
            .get_mut(canonical)
            .and_then(|keys| keys.remove(key))
            .map(|e| e.value))
    }

    fn clear_asset(&self, canonical: &AssetScope) -> Result<Vec<Row>> {
        Ok(lock(&self.assets)
            .rows
            .remove(canonical)
            .map(|keys| {
                keys.iter()
                    .map(|(key, e)| row(RowOwner::Asset(canonical.clone()), key, e))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn rows(&self) -> Result<Rows> {
        let mut rows = Vec::new();
        for shard in &self.shards {
            for (scope, keys) in &lock(shard).tasks {
                for (key, e) in keys {
                    rows.push(row(RowOwner::Task(scope.clone()), key, e));
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
        for (asset, keys) in lock(&self.assets).rows.iter() {
            for (key, e) in keys {
                rows.push(row(RowOwner::Asset(asset.clone()), key, e));
            }
        }
        // Typed in memory: every row decodes.
        Ok(Rows {
            rows,
            unreadable: Vec::new(),
        })
    }

    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize> {
        for shard in &self.shards {
            for keys in lock(shard).tasks.values() {
                keys.values().for_each(|e| visit(&e.value));
            }
        }
        for keys in lock(&self.assets).rows.values() {
            keys.values().for_each(|e| visit(&e.value));
        }
        Ok(0)
    }

    fn expired_task_rows(&self, limit: usize) -> Result<Rows> {
        let now = now_ms();
        let mut out = Vec::new();
        for shard in &self.shards {
            for (scope, keys) in &lock(shard).tasks {
                for (key, e) in keys {
                    if !live(e, now) && out.len() < limit {
                        out.push(row(RowOwner::Task(scope.clone()), key, e));
                    }
                }
            }
        }
        Ok(Rows {
            rows: out,
            unreadable: Vec::new(),
        })
    }

    fn delete_task_if_expired(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        let now = now_ms();
        let mut shard = self.shard(scope);
        let Some(keys) = shard.tasks.get_mut(scope) else {
            return Ok(None);
        };
        if keys.get(key).is_some_and(|e| !live(e, now)) {
            return Ok(keys.remove(key).map(|e| e.value));
        }
        Ok(None)
    }

    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows> {
        let now = now_ms();
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            for (scope, keys) in shard.tasks.iter_mut() {
                let doomed: Vec<String> = keys
                    .iter()
                    .filter(|(_, e)| !live(e, now))
                    .map(|(k, _)| k.clone())
                    .take(limit.saturating_sub(out.len()))
                    .collect();
                for key in doomed {
                    if let Some(e) = keys.remove(&key) {
                        out.push(row(RowOwner::Task(scope.clone()), &key, &e));
                    }
                }
            }
            shard.tasks.retain(|_, keys| !keys.is_empty());
        }
        Ok(Rows {
            rows: out,
            unreadable: Vec::new(),
        })
    }
}
