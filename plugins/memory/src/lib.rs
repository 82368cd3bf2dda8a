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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use statehost_plugin_api::{
    BackendError, BackendPlugin, Capabilities, HostContext, Options, ScopeRef, Serialized,
    StateBackend, StateKey, StoredObject, WriteId, export_backend, layout,
};

/// Options of `[backends.memory]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryOptions {
    #[serde(default)]
    inline_threshold_bytes: usize,
}

/// One write of a value: its layout path (the reference) followed by the
/// value's text, in one allocation.
#[derive(Debug)]
struct Object {
    text: Box<str>,
    path_len: usize,
}

impl Object {
    fn path(&self) -> &str {
        &self.text[..self.path_len]
    }

    fn value(&self) -> &str {
        &self.text[self.path_len..]
    }
}

/// Objects by the bits of their write id, which the host never reuses: a
/// lookup hashes 16 bytes instead of a 100-byte path, and compares the
/// stored path with the reference once.
type Map = rustc_hash::FxHashMap<u128, Object>;

// Padded to a cache line each: threads on different shards must not fight
// over one line through the locks' counters.
type Shard = crossbeam_utils::CachePadded<RwLock<Map>>;

/// How many independently locked maps values are spread over, so threads
/// working on different tasks do not queue on one lock.
const SHARDS: usize = 16;

/// Values in thread-safe hash maps. Each write is an object of its own,
/// named by plugin-api's [`layout`] path (which is also the reference), so
/// references, listings, `delete` and `clear` mean what they mean for the
/// path-keyed backends; the maps are keyed by write id, and an object is
/// found only when its stored path is the reference itself. Values are
/// spread over 16 maps by task (dag, run, task) or asset, so a clear of
/// every map index of a task, like any single-scope operation, touches one
/// map.
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

fn not_found(reference: &str) -> BackendError {
    BackendError::not_found(format!("no value in memory at {reference}"))
}

/// When an object was written, as listings report it: its write id's time,
/// which is the minting host's clock (possibly skewed, for tests) just
/// before the call that stored it. Nothing outside this process can list
/// these objects, so no other clock ever judges their age; and gc goes by
/// the write id whenever there is one, as here there always is.
fn written_at(write_id: u128) -> Option<SystemTime> {
    let ms = WriteId::from_u128(write_id)?.unix_ms();
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

impl MemoryBackend {
    /// An empty backend that stores every value.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    fn shard(&self, path: &str) -> &Shard {
        &self.shards[shard_index(path)]
    }

    /// The write id of the object `reference` names, once the reference is
    /// checked against its row (`None`: a 1.x reference, which names no
    /// object here).
    fn id_of(reference: &str, owner: Option<StateKey<'_>>) -> Result<Option<u128>, BackendError> {
        Ok(layout::check_reference(reference, owner)?.map(|id| id.as_u128()))
    }

    /// Removes every object under `prefix` (a layout prefix, no trailing
    /// `/`), in one shard: a scan, which delete and clear can afford and set
    /// and get never do.
    fn remove_under(&self, prefix: &str) {
        let prefix = format!("{prefix}/");
        let mut objects = self
            .shard(&prefix)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        objects.retain(|_, o| !o.path().starts_with(&prefix));
    }
}

impl StateBackend for MemoryBackend {
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        if value.len() < self.inline_threshold_bytes {
            return Ok(Serialized::Inline);
        }
        let path = layout::object_path(at, write_id);
        let mut text = String::with_capacity(path.len() + value.len());
        text.push_str(&path);
        text.push_str(value);
        let object = Object {
            text: text.into_boxed_str(),
            path_len: path.len(),
        };
        let mut objects = self.shard(&path).write().unwrap_or_else(|p| p.into_inner());
        match objects.entry(write_id.as_u128()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(object);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                // (Within this task or asset; ids reused across shards are
                // stored apart, and the path check still tells them apart.)
                return Err(BackendError::invalid_input(format!(
                    "the write id {write_id} was already used; every write needs a new one"
                )));
            }
        }
        drop(objects);
        Ok(Serialized::Reference(path))
    }

    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<String, BackendError> {
        let id = Self::id_of(reference, owner)?.ok_or_else(|| not_found(reference))?;
        let objects = self
            .shard(reference)
            .read()
            .unwrap_or_else(|p| p.into_inner());
        objects
            .get(&id)
            .filter(|o| o.path() == reference)
            .map(|o| o.value().to_owned())
            .ok_or_else(|| not_found(reference))
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        let Some(id) = Self::id_of(reference, owner)? else {
            return Ok(false);
        };
        let mut objects = self
            .shard(reference)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if objects.get(&id).is_some_and(|o| o.path() == reference) {
            objects.remove(&id);
            return Ok(true);
        }
        Ok(false)
    }

    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.remove_under(&layout::key_prefix(at));
        Ok(())
    }

    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        self.remove_under(&layout::clear_prefix(scope, all_map_indices));
        Ok(())
    }

    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        // A scope's prefix picks its shard; a listing of everything spans all.
        let prefix = scope.map(|s| format!("{}/", layout::scope_prefix(s)));
        let shards: Vec<&Shard> = match &prefix {
            Some(prefix) => vec![self.shard(prefix)],
            None => self.shards.iter().collect(),
        };
        let mut out = Vec::new();
        for shard in shards {
            let objects = shard.read().unwrap_or_else(|p| p.into_inner());
            out.extend(
                objects
                    .iter()
                    .filter(|(_, o)| prefix.as_ref().is_none_or(|p| o.path().starts_with(p)))
                    .filter_map(|(id, o)| {
                        StoredObject::from_layout_path(o.path().to_owned(), written_at(*id))
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
    use statehost_plugin_api::{AssetScope, ErrorKind, TaskScope, conformance};

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
    fn a_reference_with_another_keys_write_id_finds_nothing() {
        // Objects are kept by write id: a tampered row that puts another
        // key's write id under its own key's path must not reach that
        // key's value, to read or to delete.
        let backend = MemoryBackend::new();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let (mine, theirs) = (
            StateKey::task(&scope, "mine"),
            StateKey::task(&scope, "theirs"),
        );
        let id = conformance::write_id();
        let Serialized::Reference(real) = backend.serialize(theirs, id, "\"secret\"").unwrap()
        else {
            panic!("stored inline")
        };
        let forged = layout::object_path(mine, id);
        let err = backend.deserialize(&forged, Some(mine)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(!backend.delete_object(&forged, Some(mine)).unwrap());
        assert_eq!(
            backend.deserialize(&real, Some(theirs)).unwrap(),
            "\"secret\""
        );
    }

    #[test]
    fn a_reused_write_id_is_refused_and_the_first_object_kept() {
        let backend = MemoryBackend::new();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let (a, b) = (StateKey::task(&scope, "a"), StateKey::task(&scope, "b"));
        let id = conformance::write_id();
        let Serialized::Reference(first) = backend.serialize(a, id, "1").unwrap() else {
            panic!("stored inline")
        };
        let err = backend.serialize(b, id, "2").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().contains("already used"), "{err}");
        assert_eq!(backend.deserialize(&first, Some(a)).unwrap(), "1");
    }

    #[test]
    fn listed_objects_carry_their_write_time() {
        let backend = MemoryBackend::new();
        let scope = TaskScope::new("d", "r", "t", 3).unwrap();
        let id = conformance::write_id();
        backend
            .serialize(StateKey::task(&scope, "k"), id, "1")
            .unwrap();
        let listed = backend.list(Some(ScopeRef::Task(scope.as_ref()))).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].write_id, Some(id));
        assert_eq!(
            listed[0].modified,
            Some(UNIX_EPOCH + Duration::from_millis(id.unix_ms()))
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
