//! Threads writing, reading, deleting, clearing and listing the same keys
//! never read a value that is not the one the reference was written with.

use statehost_memory::MemoryBackend;
use statehost_plugin_api::{
    ErrorKind, ScopeRef, Serialized, StateBackend, StateKey, TaskScope, WriteId,
};
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn concurrent_calls_never_read_another_writes_value() {
    let b = MemoryBackend::new();
    let n = AtomicU64::new(1);
    let scopes: Vec<_> = (0..3)
        .map(|i| TaskScope::new("d", "r", format!("t{i}"), i % 2).unwrap())
        .collect();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (b, n, scopes) = (&b, &n, &scopes);
            s.spawn(move || {
                for i in 0..3000u64 {
                    let sc = &scopes[((i + t) % 3) as usize];
                    let key = ["a", "ab", "a/b"][(i % 3) as usize];
                    let at = StateKey::task(sc, key);
                    let k = n.fetch_add(1, Ordering::Relaxed);
                    let id = WriteId::from_parts(1_700_000_000_000, u128::from(k));
                    let v = format!("\"{k}\"");
                    let Serialized::Reference(r) = b.serialize(at, id, &v).unwrap() else {
                        panic!()
                    };
                    match b.deserialize(&r, Some(at)) {
                        Ok(got) => assert_eq!(got, v),
                        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
                    }
                    match i % 5 {
                        0 => b.delete(at).unwrap(),
                        1 => b.clear(ScopeRef::Task(sc.as_ref()), i % 2 == 0).unwrap(),
                        2 => {
                            b.delete_object(&r, None).unwrap();
                        }
                        _ => {
                            for o in b.list(None).unwrap() {
                                if let Ok(v) = b.deserialize(&o.reference, None) {
                                    let id = o.write_id.unwrap();
                                    assert_eq!(
                                        v,
                                        format!("\"{}\"", id.as_u128() & ((1u128 << 62) - 1))
                                    );
                                }
                            }
                        }
                    }
                }
            });
        }
    });
}
