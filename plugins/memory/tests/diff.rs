//! The memory backend, which keeps objects by write id, against a plain
//! path-keyed `PathStore` (the shared layout's own semantics): the same
//! random operations, with forged references (another object's write id,
//! a path rebuilt under another key, the wrong owner or none), must give
//! the same answers and the same listings.
//!
//! Seeds 1 to 10 run by default; `STATEHOST_MEMORY_DIFF_SEEDS=<n>` runs n.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use statehost_memory::MemoryBackend;
use statehost_plugin_api::{
    AssetScope, BackendError, PathStore, Scope, ScopeRef, Serialized, StateBackend, StateKey,
    TaskScope, WriteId, layout,
};

/// The layout over a map: what the memory backend was as a `PathStore`.
#[derive(Default)]
struct Oracle(Mutex<BTreeMap<String, String>>);
impl PathStore for Oracle {
    fn put(&self, p: &str, v: &str) -> Result<(), BackendError> {
        self.0.lock().unwrap().insert(p.into(), v.into());
        Ok(())
    }
    fn get(&self, p: &str) -> Result<String, BackendError> {
        self.0
            .lock()
            .unwrap()
            .get(p)
            .cloned()
            .ok_or_else(|| BackendError::not_found("nf"))
    }
    fn remove(&self, p: &str) -> Result<bool, BackendError> {
        Ok(self.0.lock().unwrap().remove(p).is_some())
    }
    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        let prefix = format!("{prefix}/");
        self.0
            .lock()
            .unwrap()
            .retain(|p, _| !p.starts_with(&prefix));
        Ok(())
    }
    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let prefix = format!("{prefix}/");
        Ok(self
            .0
            .lock()
            .unwrap()
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .map(|p| (p.clone(), Some(SystemTime::now())))
            .collect())
    }
}

/// xorshift64: a fixed sequence per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn res<T: std::fmt::Debug>(r: Result<T, BackendError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {:?}", e.kind()),
    }
}

fn listing(b: &dyn StateBackend, s: Option<ScopeRef<'_>>) -> Vec<(String, Option<WriteId>)> {
    let mut v: Vec<_> = b
        .list(s)
        .unwrap()
        .into_iter()
        .map(|o| (o.reference, o.write_id))
        .collect();
    v.sort();
    v
}

#[test]
fn answers_as_a_path_store_over_the_same_layout_does() {
    let long = "x".repeat(300);
    let long2 = format!("{}y", "x".repeat(299));
    let mut scopes = vec![];
    for dag in ["d", "d2", "dä", long.as_str(), long2.as_str()] {
        for task in ["t", "t2"] {
            for mi in [-1, 0, 1, 10] {
                scopes.push(Scope::Task(TaskScope::new(dag, "r", task, mi).unwrap()));
            }
        }
    }
    for n in ["a", "a/b", "ab", "é", long.as_str(), long2.as_str()] {
        scopes.push(Scope::Asset(AssetScope::by_name(n).unwrap()));
        scopes.push(Scope::Asset(
            AssetScope::by_uri(format!("s3://{n}")).unwrap(),
        ));
    }
    // A name and a uri of the same text are two assets.
    scopes.push(Scope::Asset(AssetScope::by_uri("a").unwrap()));
    let lk = "k".repeat(200);
    let lk2 = format!("{}j", "k".repeat(199));
    let keys = [
        "a",
        "ab",
        "a/b",
        "a b",
        "..",
        "ключ",
        lk.as_str(),
        lk2.as_str(),
    ];
    let seeds: u64 = std::env::var("STATEHOST_MEMORY_DIFF_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15));
        let (new, old) = (MemoryBackend::new(), Oracle::default());
        let mut refs: Vec<(usize, usize, String)> = vec![];
        let mut n = 0u128;
        for step in 0..400 {
            let (si, ki) = (rng.pick(scopes.len()), rng.pick(keys.len()));
            let at = StateKey {
                scope: scopes[si].as_ref(),
                key: keys[ki],
            };
            let op = rng.pick(10);
            let (a, b) = match op {
                0..=3 => {
                    n += 1;
                    let id = WriteId::from_parts(1_700_000_000_000 + n as u64, n);
                    let v = format!("\"{step}\"");
                    let (a, b) = (new.serialize(at, id, &v), old.serialize(at, id, &v));
                    if let Ok(Serialized::Reference(r)) = &a {
                        refs.push((si, ki, r.clone()));
                    }
                    (res(a), res(b))
                }
                4 => (res(new.delete(at)), res(old.delete(at))),
                5 => {
                    let all = rng.pick(2) == 0;
                    (
                        res(new.clear(scopes[si].as_ref(), all)),
                        res(old.clear(scopes[si].as_ref(), all)),
                    )
                }
                _ if refs.is_empty() => continue,
                _ => {
                    let (rs, rk, r) = refs[rng.pick(refs.len())].clone();
                    // owner: the right one, a random one, or none; reference: as is or with
                    // another object's write id, or with its own id under a random key, or
                    // damaged (cut short, or with a two-byte character where the id starts).
                    let mut r = r;
                    match rng.pick(5) {
                        3 => {
                            let mut cut = r.len() - 1 - rng.pick(40);
                            while !r.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            r.truncate(cut);
                        }
                        4 => r.insert(r.len() - 36, 'é'),
                        0 => {}
                        1 => {
                            let other = &refs[rng.pick(refs.len())].2;
                            r = format!("{}{}", &r[..r.len() - 36], &other[other.len() - 36..]);
                        }
                        _ => {
                            let id: WriteId = r[r.len() - 36..].parse().unwrap();
                            r = layout::object_path(at, id);
                        }
                    }
                    let right = StateKey {
                        scope: scopes[rs].as_ref(),
                        key: keys[rk],
                    };
                    let owner = match rng.pick(3) {
                        0 => Some(right),
                        1 => Some(at),
                        _ => None,
                    };
                    if op.is_multiple_of(2) {
                        (
                            res(new.deserialize(&r, owner)),
                            res(old.deserialize(&r, owner)),
                        )
                    } else {
                        (
                            res(new.delete_object(&r, owner)),
                            res(old.delete_object(&r, owner)),
                        )
                    }
                }
            };
            assert_eq!(a, b, "seed {seed} step {step} op {op}");
            assert_eq!(
                listing(&new, None),
                listing(&old, None),
                "seed {seed} step {step}"
            );
            for s in &scopes {
                assert_eq!(
                    listing(&new, Some(s.as_ref())),
                    listing(&old, Some(s.as_ref()))
                );
            }
        }
    }
}

#[test]
fn one_x_references_answer_as_a_path_store_does() {
    let (new, old) = (MemoryBackend::new(), Oracle::default());
    let s = TaskScope::new("a", "run 1", "t", 0).unwrap();
    let at = StateKey::task(&s, "k");
    for r in ["task/a/run%201/t/0/k", "asset/name/x/k"] {
        for owner in [Some(at), None] {
            assert_eq!(
                res(new.deserialize(r, owner)),
                res(old.deserialize(r, owner)),
                "{r}"
            );
            assert_eq!(
                res(new.delete_object(r, owner)),
                res(old.delete_object(r, owner)),
                "{r}"
            );
        }
    }
}
