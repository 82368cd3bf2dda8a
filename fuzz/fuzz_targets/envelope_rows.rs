//! Row and envelope decoding: any stored text decodes without panicking;
//! an envelope round-trips its reference; a row round-trips through the
//! SQLite store byte for byte.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use statehost::envelope::{self, Stored};
use statehost::store::{MetadataStore, SqliteLocation, SqliteStore};
use statehost_plugin_api::TaskScope;

fn store() -> &'static SqliteStore {
    static STORE: OnceLock<SqliteStore> = OnceLock::new();
    STORE.get_or_init(|| SqliteStore::open(SqliteLocation::Memory).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Any row text: decodes or says why not, never panics.
    if let Ok(Stored::Reference(r)) = envelope::unwrap(text) {
        assert!(!r.is_empty(), "an empty reference was accepted");
    }
    // Any non-empty reference survives wrap + unwrap exactly.
    if !text.is_empty() {
        let wrapped = envelope::wrap(text);
        match envelope::unwrap(&wrapped) {
            Ok(Stored::Reference(r)) => assert_eq!(r, text),
            other => panic!("wrap({text:?}) read back as {other:?}"),
        }
    }
    // Rows keep their text exactly.
    let scope = TaskScope::new("fuzz", "run", "task", -1).unwrap();
    store().put_task(&scope, "k", text, 1, None).unwrap();
    assert_eq!(store().get_task(&scope, "k", 0).unwrap().as_deref(), Some(text));
});
