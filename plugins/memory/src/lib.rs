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
    AssetIdentity, BackendError, BackendPlugin, Capabilities, HostContext, Options, ScopeRef,
    Serialized, StateBackend, StateKey, StoredObject, WriteId, export_backend, layout,
    validate_key,
};

/// Options of `[backends.memory]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryOptions {
    #[serde(default)]
    inline_threshold_bytes: usize,
}

/// What kind of scope an object was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Task,
    AssetName,
    AssetUri,
}

/// A scope and key as the host names them: the kind, the map index (-1
/// for assets), and the parts: dag, run, task and key; or asset id and
/// key.
fn owner_parts<'a>(at: StateKey<'a>) -> (Kind, i64, [&'a str; 4]) {
    match at.scope {
        ScopeRef::Task(t) => (
            Kind::Task,
            t.map_index(),
            [t.dag_id(), t.run_id(), t.task_id(), at.key],
        ),
        ScopeRef::Asset(AssetIdentity::Name(name)) => (Kind::AssetName, -1, [name, at.key, "", ""]),
        ScopeRef::Asset(AssetIdentity::Uri(uri)) => (Kind::AssetUri, -1, [uri, at.key, "", ""]),
    }
}

/// A length kept in 32 bits: paths, ids and keys are bounded far below
/// (a longer one could only fail to match).
fn short_len(text: &str) -> u32 {
    u32::try_from(text.len()).unwrap_or(u32::MAX)
}

/// One write of a value. Its text holds, in one allocation, its layout
/// path (the reference), the value, and the parts of the scope and key it
/// was written for, so that a read's owner is compared as the host names
/// it instead of being encoded into a path again.
#[derive(Debug)]
struct Object {
    text: Box<str>,
    value_len: usize,
    path_len: u32,
    part_lens: [u32; 4],
    kind: Kind,
    map_index: i64,
}

impl Object {
    fn new(path: &str, value: &str, at: StateKey<'_>) -> Object {
        let (kind, map_index, parts) = owner_parts(at);
        let owner_len: usize = parts.iter().map(|p| p.len()).sum();
        let mut text = String::with_capacity(path.len() + value.len() + owner_len);
        text.push_str(path);
        text.push_str(value);
        for part in parts {
            text.push_str(part);
        }
        Object {
            text: text.into_boxed_str(),
            value_len: value.len(),
            path_len: short_len(path),
            part_lens: parts.map(short_len),
            kind,
            map_index,
        }
    }

    fn path(&self) -> &str {
        self.text.get(..self.path_len as usize).unwrap_or_default()
    }

    fn value(&self) -> &str {
        let start = self.path_len as usize;
        self.text
            .get(start..start + self.value_len)
            .unwrap_or_default()
    }

    /// Whether it was written for exactly this scope and key.
    fn belongs_to(&self, at: StateKey<'_>) -> bool {
        let (kind, map_index, parts) = owner_parts(at);
        if kind != self.kind || map_index != self.map_index {
            return false;
        }
        let text = self.text.as_bytes();
        let mut start = self.path_len as usize + self.value_len;
        for (part, len) in parts.iter().zip(self.part_lens) {
            let len = len as usize;
            if part.len() != len || text.get(start..start + len) != Some(part.as_bytes()) {
                return false;
            }
            start += len;
        }
        true
    }
}

/// Objects by the bits of their write id, which the host never reuses.
type Map = rustc_hash::FxHashMap<u128, Object>;

// Padded to a cache line each: threads on different shards must not fight
// over one line through the locks' counters.
type Shard = crossbeam_utils::CachePadded<RwLock<Map>>;

/// How many independently locked maps objects are spread over, so threads
/// working on different tasks do not queue on one lock (or pass its cache
/// line between cores).
const SHARDS: usize = 16;

/// Values in thread-safe hash maps. Each write is an object of its own,
/// named by plugin-api's [`layout`] path (which is also the reference), so
/// references, listings, `delete` and `clear` mean what they mean for the
/// path-keyed backends. Objects are spread over 16 maps by task (dag, run,
/// task) or asset, so a thread's task stays on its own lock and a clear of
/// every map index of a task, like any single-scope operation, touches one
/// map. Within a map objects are kept by write id: a set, get or delete of
/// one object hashes 16 bytes, and finds the object only when its stored
/// path is the reference itself and it was written for the caller's scope
/// and key, compared part by part; only a reference that finds nothing is
/// taken apart by [`layout::check_reference`], to say what is wrong with
/// it.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inline_threshold_bytes: usize,
    shards: [Shard; SHARDS],
}

/// The map a scope's objects live in: by its task (dag, run, task; every
/// map index of a task shares it) or its asset, as the host names them.
fn shard_index(scope: ScopeRef<'_>) -> usize {
    use std::hash::BuildHasher;
    let hash = match scope {
        ScopeRef::Task(t) => {
            rustc_hash::FxBuildHasher.hash_one((t.dag_id(), t.run_id(), t.task_id()))
        }
        ScopeRef::Asset(AssetIdentity::Name(name)) => {
            rustc_hash::FxBuildHasher.hash_one((0u8, name))
        }
        ScopeRef::Asset(AssetIdentity::Uri(uri)) => rustc_hash::FxBuildHasher.hash_one((1u8, uri)),
    };
    // (rustc-hash's `finish` rotates its best-mixed bits down to the low
    // ones.)
    (hash % SHARDS as u64) as usize
}

/// Whether `object` is the one `reference` names, and (when the caller
/// knows the row's scope and key) was written for them.
fn is_the_object(object: &Object, reference: &str, owner: Option<StateKey<'_>>) -> bool {
    object.path() == reference && owner.is_none_or(|at| object.belongs_to(at))
}

fn not_found(reference: &str) -> BackendError {
    BackendError::not_found(format!("no value in memory at {reference}"))
}

/// The write id a reference of the layout ends with, read without looking
/// at the rest of it: the object it finds is then compared with the whole
/// reference.
fn trailing_id(reference: &str) -> Option<u128> {
    let id = reference.get(reference.len().checked_sub(37)?..)?;
    Some(id.strip_prefix('/')?.parse::<WriteId>().ok()?.as_u128())
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

    fn shard(&self, scope: ScopeRef<'_>) -> &Shard {
        &self.shards[shard_index(scope)]
    }

    /// The maps an object of `reference` can be in: its owner's, or without
    /// an owner (a caller that has only the reference) every map.
    fn shards_for(&self, owner: Option<StateKey<'_>>) -> &[Shard] {
        match owner {
            Some(at) => std::slice::from_ref(self.shard(at.scope)),
            None => &self.shards,
        }
    }

    /// Removes every object of `scope`'s map under `prefix` (a layout
    /// prefix, no trailing `/`): a scan, which delete and clear can afford
    /// and set and get never do.
    fn remove_under(&self, scope: ScopeRef<'_>, prefix: &str) {
        let prefix = format!("{prefix}/");
        let mut objects = self.shard(scope).write().unwrap_or_else(|p| p.into_inner());
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
        // A key the layout cannot read back (the host never sends one) is
        // refused, so every stored path parses: a read without an owner
        // then needs no parse to answer as the layout would.
        validate_key(at.key)?;
        let path = layout::object_path(at, write_id);
        let object = Object::new(&path, value, at);
        let id = write_id.as_u128();
        let mut objects = self
            .shard(at.scope)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match objects.entry(id) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(object);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                // (Within this task or asset's map; an id reused in another
                // map is stored apart, and the path check tells them apart.)
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
        if let Some(id) = trailing_id(reference) {
            for shard in self.shards_for(owner) {
                let objects = shard.read().unwrap_or_else(|p| p.into_inner());
                if let Some(object) = objects
                    .get(&id)
                    .filter(|o| is_the_object(o, reference, owner))
                {
                    return Ok(object.value().to_owned());
                }
            }
        }
        // Nothing of the owner's there: the layout says what is wrong with
        // the reference, if anything is.
        layout::check_reference(reference, owner)?;
        Err(not_found(reference))
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        if let Some(id) = trailing_id(reference) {
            let holder = match owner {
                Some(at) => Some(self.shard(at.scope)),
                // Without an owner the map is found under read locks, so
                // the search blocks no one; objects never change maps.
                None => self.shards.iter().find(|shard| {
                    let objects = shard.read().unwrap_or_else(|p| p.into_inner());
                    objects
                        .get(&id)
                        .is_some_and(|o| is_the_object(o, reference, None))
                }),
            };
            if let Some(shard) = holder {
                let mut objects = shard.write().unwrap_or_else(|p| p.into_inner());
                if objects
                    .get(&id)
                    .is_some_and(|o| is_the_object(o, reference, owner))
                {
                    objects.remove(&id);
                    return Ok(true);
                }
            }
        }
        layout::check_reference(reference, owner)?;
        Ok(false)
    }

    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.remove_under(at.scope, &layout::key_prefix(at));
        Ok(())
    }

    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        self.remove_under(scope, &layout::clear_prefix(scope, all_map_indices));
        Ok(())
    }

    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        let prefix = scope.map(|s| format!("{}/", layout::scope_prefix(s)));
        // A scope's objects are in its map; a listing of everything spans all.
        let shards: Vec<&Shard> = match scope {
            Some(scope) => vec![self.shard(scope)],
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
    fn a_task_and_all_its_map_indices_share_a_map_and_clear_reaches_them() {
        let backend = MemoryBackend::new();
        for dag in ["d", "d".repeat(700).as_str()] {
            let m0 = TaskScope::new(dag, "r", "t", 0).unwrap();
            let m1 = m0.with_map_index(1).unwrap();
            assert_eq!(
                shard_index(ScopeRef::Task(m0.as_ref())),
                shard_index(ScopeRef::Task(m1.as_ref()))
            );
            let refs: Vec<String> = [&m0, &m1]
                .iter()
                .map(|scope| {
                    let at = StateKey::task(scope, "x/y");
                    match backend.serialize(at, conformance::write_id(), "1").unwrap() {
                        Serialized::Reference(r) => r,
                        Serialized::Inline => panic!("stored inline"),
                    }
                })
                .collect();
            backend.clear(ScopeRef::Task(m0.as_ref()), true).unwrap();
            for r in &refs {
                // Without an owner every map is searched: nothing is left.
                let err = backend.deserialize(r, None).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
            }
        }
        // An asset's name and uri of the same text are two scopes.
        let by_name = AssetScope::by_name("x").unwrap();
        let by_uri = AssetScope::by_uri("x").unwrap();
        let id = conformance::write_id();
        let Serialized::Reference(r) = backend
            .serialize(StateKey::asset(&by_uri, "k"), id, "1")
            .unwrap()
        else {
            panic!("stored inline")
        };
        backend
            .clear(ScopeRef::Asset(by_name.identity()), false)
            .unwrap();
        assert_eq!(backend.deserialize(&r, None).unwrap(), "1");
    }

    #[test]
    fn keys_the_layout_cannot_read_back_are_refused() {
        let backend = MemoryBackend::new();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        for key in ["", "a\nb"] {
            let err = backend
                .serialize(StateKey::task(&scope, key), conformance::write_id(), "1")
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{key:?}: {err}");
        }
        assert!(backend.list(None).unwrap().is_empty());
    }

    #[test]
    fn owners_are_compared_part_by_part() {
        // The reference itself, read as the row of another scope or key
        // whose parts run together into the same text, or of an asset with
        // the same name as a uri, is refused, never read.
        let backend = MemoryBackend::new();
        let written = TaskScope::new("ab", "c", "t", -1).unwrap();
        let at = StateKey::task(&written, "k");
        let Serialized::Reference(r) = backend.serialize(at, conformance::write_id(), "1").unwrap()
        else {
            panic!("stored inline")
        };
        let shifted = TaskScope::new("a", "bc", "t", -1).unwrap();
        let other_index = TaskScope::new("ab", "c", "t", 0).unwrap();
        let task_k = TaskScope::new("ab", "c", "tk", -1).unwrap();
        for wrong in [
            StateKey::task(&shifted, "k"),
            StateKey::task(&other_index, "k"),
            StateKey::task(&task_k, ""),
        ] {
            let err = backend.deserialize(&r, Some(wrong)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(backend.delete_object(&r, Some(wrong)).is_err());
        }
        assert_eq!(backend.deserialize(&r, Some(at)).unwrap(), "1");

        let by_name = AssetScope::by_name("x").unwrap();
        let by_uri = AssetScope::by_uri("x").unwrap();
        let id = conformance::write_id();
        let Serialized::Reference(r) = backend
            .serialize(StateKey::asset(&by_name, "k"), id, "2")
            .unwrap()
        else {
            panic!("stored inline")
        };
        let err = backend
            .deserialize(&r, Some(StateKey::asset(&by_uri, "k")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(
            backend
                .deserialize(&r, Some(StateKey::asset(&by_name, "k")))
                .unwrap(),
            "2"
        );
    }

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
