//! `memory`: a state backend that keeps values in a map in the worker's
//! memory. Values live as long as the process; use it for tests, demos and
//! throwaway runs.
//!
//! ```toml
//! [workers]
//! state_backend = "memory"
//!
//! [backends.memory]
//! inline_threshold_bytes = 0   # values whose JSON is shorter stay inline
//! ```

use std::sync::RwLock;
use std::time::SystemTime;

use serde::Deserialize;
use statehost_plugin_api::{
    AssetScope, BackendError, BackendPlugin, Capabilities, HostContext, Options, Scope, Serialized,
    StateBackend, StoredObject, TaskScope, export_backend, layout,
};

/// Options of `[backends.memory]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryOptions {
    #[serde(default)]
    inline_threshold_bytes: usize,
}

// Padded to a cache line each: threads on different shards must not fight
// over one line through the locks' counters.
type Shard =
    crossbeam_utils::CachePadded<RwLock<rustc_hash::FxHashMap<String, (String, SystemTime)>>>;

/// How many independently locked maps values are spread over, so threads
/// working on different tasks do not queue on one lock.
const SHARDS: usize = 16;

/// Values in thread-safe hash maps, keyed by their [`layout`] path, which is
/// also the reference. Values are spread over 16 maps by task (dag,
/// run, task) or asset, so a clear of every map index of a task, like any
/// single-scope operation, touches one map. (Hash maps, not ordered ones:
/// layout paths share long prefixes, which makes every comparison in an
/// ordered map walk them.)
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inline_threshold_bytes: usize,
    shards: [Shard; SHARDS],
}

/// The part of a layout path that picks the shard: the first four
/// components of a task path (`task/<dag>/<run>/<task>`), the first three of
/// an asset path (`asset/<name|uri>/<id>`). Components may span several
/// segments (long ones are cut, each piece but the last ending in `+`).
fn shard_key(path: &str) -> &str {
    let wanted = if path.starts_with("task/") { 4 } else { 3 };
    let mut components = 0;
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' && i > 0 && path.as_bytes()[i - 1] != b'+' {
            components += 1;
            if components == wanted {
                return &path[..i];
            }
        }
    }
    path
}

fn shard_index(path: &str) -> usize {
    use std::hash::BuildHasher;
    // The high bits: FxHash mixes poorly into the low ones.
    (rustc_hash::FxBuildHasher.hash_one(shard_key(path)) >> 60) as usize % SHARDS
}

impl MemoryBackend {
    /// An empty backend that stores every value.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    fn shard(&self, path: &str) -> &Shard {
        &self.shards[shard_index(path)]
    }

    fn store(&self, path: String, value: &str) -> Result<Serialized, BackendError> {
        if value.len() < self.inline_threshold_bytes {
            return Ok(Serialized::Inline);
        }
        let mut values = self.shard(&path).write().unwrap_or_else(|p| p.into_inner());
        match values.get_mut(&path) {
            Some(slot) => {
                slot.0.clear();
                slot.0.push_str(value);
                slot.1 = SystemTime::now();
            }
            None => {
                values.insert(path.clone(), (value.to_owned(), SystemTime::now()));
            }
        }
        Ok(Serialized::Reference(path))
    }

    fn load(&self, reference: &str) -> Result<String, BackendError> {
        let values = self
            .shard(reference)
            .read()
            .unwrap_or_else(|p| p.into_inner());
        values
            .get(reference)
            .map(|(v, _)| v.clone())
            .ok_or_else(|| BackendError::not_found(format!("no value in memory at {reference}")))
    }

    /// Every entry under `prefix/` (in one shard: a scan, which clear and
    /// list can afford and set and get never do).
    fn under<'a>(
        map: &'a rustc_hash::FxHashMap<String, (String, SystemTime)>,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a (String, SystemTime))> + 'a {
        map.iter().filter(move |(k, _)| k.starts_with(prefix))
    }
}

impl StateBackend for MemoryBackend {
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.store(layout::task_object_path(scope, key), value)
    }

    fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError> {
        self.load(reference)
    }

    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.store(layout::asset_object_path(scope, key), value)
    }

    fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError> {
        self.load(reference)
    }

    fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError> {
        let path = layout::object_path(scope, key);
        let mut values = self.shard(&path).write().unwrap_or_else(|p| p.into_inner());
        values.remove(&path);
        Ok(())
    }

    fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError> {
        let prefix = format!("{}/", layout::clear_prefix(scope, all_map_indices));
        let mut values = self
            .shard(&prefix)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<String> = Self::under(&values, &prefix)
            .map(|(k, _)| k.clone())
            .collect();
        for path in doomed {
            values.remove(&path);
        }
        Ok(())
    }

    fn list(&self, scope: Option<&Scope>) -> Result<Vec<StoredObject>, BackendError> {
        let prefix = scope
            .map(|s| format!("{}/", layout::scope_prefix(s)))
            .unwrap_or_default();
        let shards: Vec<&Shard> = match scope {
            Some(_) => vec![self.shard(&prefix)],
            None => self.shards.iter().collect(),
        };
        let mut out = Vec::new();
        for shard in shards {
            let values = shard.read().unwrap_or_else(|p| p.into_inner());
            out.extend(
                Self::under(&values, &prefix).filter_map(|(path, (_, modified))| {
                    let (scope, key) = layout::parse_object_path(path)?;
                    Some(StoredObject {
                        scope,
                        key,
                        reference: path.clone(),
                        modified: Some(*modified),
                    })
                }),
            );
        }
        Ok(out)
    }
}

impl BackendPlugin for MemoryBackend {
    const NAME: &'static str = "memory";
    const DESCRIPTION: &'static str =
        "values in a map in the worker's memory; gone when the process ends (tests, demos)";
    const CAPABILITIES: Capabilities = Capabilities::LIST;

    fn new(options: &Options, _host: &HostContext) -> Result<Self, BackendError> {
        let options: MemoryOptions = options.parse(Self::NAME)?;
        Ok(MemoryBackend {
            inline_threshold_bytes: options.inline_threshold_bytes,
            ..MemoryBackend::default()
        })
    }
}

export_backend!(MemoryBackend);

#[cfg(test)]
mod tests {
    use super::*;
    use statehost_plugin_api::ErrorKind;

    #[test]
    fn passes_the_conformance_suite() {
        statehost_plugin_api::conformance::run(&MemoryBackend::new());
    }

    #[test]
    fn small_values_stay_inline_below_the_threshold() {
        let options = Options::new(serde_json::json!({"inline_threshold_bytes": 4}));
        let backend = <MemoryBackend as BackendPlugin>::new(&options, &HostContext::new()).unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        assert_eq!(
            backend.serialize_task_state(&scope, "k", "123").unwrap(),
            Serialized::Inline
        );
        assert!(matches!(
            backend.serialize_task_state(&scope, "k", "1234").unwrap(),
            Serialized::Reference(_)
        ));
    }

    #[test]
    fn a_scope_and_all_its_map_indices_share_a_shard() {
        let long = "d".repeat(700);
        for dag in ["d", long.as_str()] {
            let m0 = TaskScope::new(dag, "r", "t", 0).unwrap();
            let m1 = m0.with_map_index(1).unwrap();
            let path = layout::task_object_path(&m0, "k");
            assert_eq!(shard_key(&path), layout::task_all_maps_prefix(&m0));
            assert_eq!(
                shard_index(&path),
                shard_index(&layout::task_object_path(&m1, "x/y"))
            );
            let clear = format!("{}/", layout::task_all_maps_prefix(&m0));
            assert_eq!(shard_index(&clear), shard_index(&path));
        }
        let asset = AssetScope::by_name("a/b").unwrap();
        let path = layout::asset_object_path(&asset, "k");
        assert_eq!(shard_key(&path), layout::asset_prefix(&asset));
    }

    #[test]
    fn unknown_options_are_rejected_by_name() {
        let options = Options::new(serde_json::json!({"inline_threshold": 4}));
        let err = <MemoryBackend as BackendPlugin>::new(&options, &HostContext::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("inline_threshold"), "{err}");
        assert!(err.message().contains("[backends.memory]"), "{err}");
    }
}
