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
    BackendError, BackendPlugin, Capabilities, HostContext, Options, PathStore, export_backend,
};

/// Options of `[backends.memory]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryOptions {
    #[serde(default)]
    inline_threshold_bytes: usize,
}

type Map = rustc_hash::FxHashMap<String, (String, SystemTime)>;

// Padded to a cache line each: threads on different shards must not fight
// over one line through the locks' counters.
type Shard = crossbeam_utils::CachePadded<RwLock<Map>>;

/// How many independently locked maps values are spread over, so threads
/// working on different tasks do not queue on one lock.
const SHARDS: usize = 16;

/// Values in thread-safe hash maps, keyed by their layout path, which is
/// also the reference: a [`PathStore`], so plugin-api's layout does the
/// naming, the reference checks, `delete`, `clear` and `list`. Values are
/// spread over 16 maps by task (dag, run, task) or asset, so a clear of
/// every map index of a task, like any single-scope operation, touches one
/// map. (Hash maps, not ordered ones:
/// layout paths share long prefixes, which makes every comparison in an
/// ordered map walk them.)
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inline_threshold_bytes: usize,
    shards: [Shard; SHARDS],
}

/// The part of a layout path that picks the shard: `v2/task/<dag>/<run>/<task>`
/// for task state, `v2/asset/<name|uri>/<id>` for asset state.
fn shard_key(path: &str) -> &str {
    let wanted = if path.starts_with("v2/task/") { 5 } else { 4 };
    let mut slashes = 0;
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' {
            slashes += 1;
            if slashes == wanted {
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
}

impl PathStore for MemoryBackend {
    fn inline_below(&self) -> usize {
        self.inline_threshold_bytes
    }

    fn put(&self, path: &str, value: &str) -> Result<(), BackendError> {
        let entry = (value.to_owned(), SystemTime::now());
        self.shard(path)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), entry);
        Ok(())
    }

    fn get(&self, path: &str) -> Result<String, BackendError> {
        let values = self.shard(path).read().unwrap_or_else(|p| p.into_inner());
        values
            .get(path)
            .map(|(v, _)| v.clone())
            .ok_or_else(|| BackendError::not_found(format!("no value in memory at {path}")))
    }

    fn remove(&self, path: &str) -> Result<bool, BackendError> {
        let mut values = self.shard(path).write().unwrap_or_else(|p| p.into_inner());
        Ok(values.remove(path).is_some())
    }

    /// Removes every entry under `prefix/`, in one shard: a scan, which
    /// delete and clear can afford and set and get never do.
    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        let prefix = format!("{prefix}/");
        let mut values = self
            .shard(&prefix)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        values.retain(|path, _| !path.starts_with(&prefix));
        Ok(())
    }

    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let prefix = format!("{prefix}/");
        // A scope's prefix picks its shard; the roots of the layout span all.
        let shards: Vec<&Shard> = if prefix.matches('/').count() > 2 {
            vec![self.shard(&prefix)]
        } else {
            self.shards.iter().collect()
        };
        let mut out = Vec::new();
        for shard in shards {
            let values = shard.read().unwrap_or_else(|p| p.into_inner());
            out.extend(
                values
                    .iter()
                    .filter(|(path, _)| path.starts_with(&prefix))
                    .map(|(path, (_, modified))| (path.clone(), Some(*modified))),
            );
        }
        Ok(out)
    }
}

impl BackendPlugin for MemoryBackend {
    const NAME: &'static str = "memory";
    const DESCRIPTION: &'static str =
        "values in a map in the worker's memory; gone when the process ends (tests, demos)";
    const CAPABILITIES: Capabilities = Capabilities::LIST.with_never_blocks();

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
    use statehost_plugin_api::{
        AssetScope, ErrorKind, ScopeRef, Serialized, StateBackend, StateKey, TaskScope,
        conformance, layout,
    };

    #[test]
    fn passes_the_conformance_suite() {
        let backend = MemoryBackend::new();
        conformance::run(&backend);
        assert!(
            backend.list(None).unwrap().is_empty(),
            "the suite cleans up"
        );
    }

    #[test]
    fn small_values_stay_inline_below_the_threshold() {
        let options = Options::new(serde_json::json!({"inline_threshold_bytes": 4}));
        let backend = <MemoryBackend as BackendPlugin>::new(&options, &HostContext::new()).unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let at = StateKey::task(&scope, "k");
        assert_eq!(
            backend
                .serialize(at, conformance::write_id(), "123")
                .unwrap(),
            Serialized::Inline
        );
        assert!(matches!(
            backend
                .serialize(at, conformance::write_id(), "1234")
                .unwrap(),
            Serialized::Reference(_)
        ));
    }

    #[test]
    fn a_scope_and_all_its_map_indices_share_a_shard() {
        let long = "d".repeat(700);
        for dag in ["d", long.as_str()] {
            let m0 = TaskScope::new(dag, "r", "t", 0).unwrap();
            let m1 = m0.with_map_index(1).unwrap();
            let path = layout::object_path(StateKey::task(&m0, "k"), conformance::write_id());
            let all = layout::clear_prefix(ScopeRef::Task(m0.as_ref()), true);
            assert_eq!(shard_key(&path), all);
            assert_eq!(
                shard_index(&path),
                shard_index(&layout::object_path(
                    StateKey::task(&m1, "x/y"),
                    conformance::write_id()
                ))
            );
            assert_eq!(shard_index(&format!("{all}/")), shard_index(&path));
        }
        let asset = AssetScope::by_name("a/b").unwrap();
        let path = layout::object_path(StateKey::asset(&asset, "k"), conformance::write_id());
        assert_eq!(
            shard_key(&path),
            layout::scope_prefix(ScopeRef::Asset(asset.identity()))
        );
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
