//! The behaviour every [`MetadataStore`] must have; each implementation's
//! tests run it.

use std::collections::HashMap;

use statehost_plugin_api::{AssetScope, TaskScope};

use super::*;

fn task(map_index: i64) -> TaskScope {
    TaskScope::new("dag", "run", "task", map_index).unwrap()
}

fn plain(value: &str) -> Put<'_> {
    Put {
        value,
        fence: None,
        retention_ms: None,
    }
}

pub(crate) fn run(store: &dyn MetadataStore) {
    upserts_hand_back_what_they_replace(store);
    retention_and_expiry_follow_the_database_clock(store);
    fences_refuse_stale_and_future_writes(store);
    clear_respects_map_indices(store);
    assets_share_rows_by_name_and_uri(store);
    reads_never_register_or_bind_assets(store);
    gc_deletes_only_rows_still_expired(store);
    every_replaced_value_is_handed_to_exactly_one_writer(store);
}

/// Stored text that holds an envelope.
fn envelope(reference: &str) -> String {
    crate::state::envelope::wrap(reference)
}

fn upserts_hand_back_what_they_replace(store: &dyn MetadataStore) {
    let t = task(-1);
    let (one, two) = (envelope("1"), envelope("2"));
    assert_eq!(store.get_task(&t, "k").unwrap(), None);
    assert_eq!(store.put_task(&t, "k", &plain(&one)).unwrap(), None);
    assert_eq!(
        store.put_task(&t, "k", &plain(&two)).unwrap().as_deref(),
        Some(one.as_str())
    );
    assert_eq!(
        store.get_task(&t, "k").unwrap().as_deref(),
        Some(two.as_str())
    );
    let rows: Vec<Row> = store
        .rows()
        .unwrap()
        .rows
        .into_iter()
        .filter(|r| r.key == "k")
        .collect();
    assert_eq!(rows.len(), 1, "upsert keeps one row");
    assert_eq!(
        store.delete_task(&t, "k").unwrap().as_deref(),
        Some(two.as_str())
    );
    assert_eq!(store.delete_task(&t, "k").unwrap(), None);
    // Text that cannot hold an envelope may or may not be handed back.
    store.put_task(&t, "plain", &plain("1")).unwrap();
    let old = store.put_task(&t, "plain", &plain("2")).unwrap();
    assert!(matches!(old.as_deref(), None | Some("1")), "{old:?}");
    store.delete_task(&t, "plain").unwrap();
}

fn retention_and_expiry_follow_the_database_clock(store: &dyn MetadataStore) {
    let t = TaskScope::new("retention", "run", "task", -1).unwrap();
    let before = store.now().unwrap();
    store
        .put_task(
            &t,
            "kept",
            &Put {
                retention_ms: Some(3_600_000),
                ..plain("1")
            },
        )
        .unwrap();
    store
        .put_task(
            &t,
            "gone",
            &Put {
                retention_ms: Some(0),
                ..plain("2")
            },
        )
        .unwrap();
    let after = store.now().unwrap();
    let rows = store.rows().unwrap().rows;
    let kept = rows.iter().find(|r| r.key == "kept").unwrap();
    assert!((before..=after).contains(&kept.updated_at), "{kept:?}");
    assert_eq!(kept.expires_at, Some(kept.updated_at + 3_600_000));
    assert_eq!(store.get_task(&t, "kept").unwrap().as_deref(), Some("1"));
    assert_eq!(store.get_task(&t, "gone").unwrap(), None, "expired at once");
    // An expired row still hands back its value when replaced.
    let expired = envelope("expired");
    store
        .put_task(
            &t,
            "gone",
            &Put {
                retention_ms: Some(0),
                ..plain(&expired)
            },
        )
        .unwrap();
    assert_eq!(
        store.put_task(&t, "gone", &plain("3")).unwrap().as_deref(),
        Some(expired.as_str())
    );
    store.clear_task(&t, true).unwrap();
}

fn fences_refuse_stale_and_future_writes(store: &dyn MetadataStore) {
    let t = TaskScope::new("fence", "run", "task", -1).unwrap();
    let now = store.now().unwrap();
    for minted_at in [now - 60_000, now + 60_000] {
        let put = Put {
            fence: Some(Fence {
                minted_at,
                max_age_ms: 30_000,
            }),
            ..plain("1")
        };
        let err = store.put_task(&t, "k", &put).unwrap_err();
        assert!(!err.outcome_unknown(), "{err}");
        assert!(err.to_string().contains("nothing was stored"), "{err}");
        let asset = AssetScope::by_name("fenced").unwrap();
        assert!(store.put_asset(&asset, &asset, "k", &put).is_err());
        assert_eq!(
            store.find_asset(&asset).unwrap(),
            None,
            "nothing registered"
        );
    }
    assert_eq!(store.get_task(&t, "k").unwrap(), None, "nothing was stored");
    let put = Put {
        fence: Some(Fence {
            minted_at: now,
            max_age_ms: 30_000,
        }),
        ..plain("1")
    };
    store.put_task(&t, "k", &put).unwrap();
    store.clear_task(&t, true).unwrap();
}

fn clear_respects_map_indices(store: &dyn MetadataStore) {
    for m in [0, 1] {
        store.put_task(&task(m), "a", &plain("x")).unwrap();
        store.put_task(&task(m), "b", &plain("y")).unwrap();
    }
    let other = TaskScope::new("dag", "run", "other", 0).unwrap();
    store.put_task(&other, "a", &plain("z")).unwrap();
    let removed = store.clear_task(&task(0), false).unwrap();
    let mut keys: Vec<_> = removed
        .iter()
        .map(|r| (r.key.as_str(), r.value.as_str()))
        .collect();
    keys.sort();
    assert_eq!(keys, [("a", "x"), ("b", "y")]);
    assert!(removed.iter().all(|r| r.owner == RowOwner::Task(task(0))));
    assert_eq!(store.get_task(&task(1), "a").unwrap().as_deref(), Some("x"));
    let removed = store.clear_task(&task(0), true).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|r| r.owner == RowOwner::Task(task(1))));
    assert_eq!(store.get_task(&task(1), "a").unwrap(), None);
    assert_eq!(store.get_task(&other, "a").unwrap().as_deref(), Some("z"));
    store.clear_task(&other, false).unwrap();
}

fn assets_share_rows_by_name_and_uri(store: &dyn MetadataStore) {
    let both = AssetScope::new(Some("orders".into()), Some("s3://b/orders".into())).unwrap();
    let canonical = AssetScope::by_name("orders").unwrap();
    assert_eq!(
        store
            .put_asset(&both, &canonical, "wm", &plain("\"1\""))
            .unwrap(),
        None
    );
    let by_uri = store
        .find_asset(&AssetScope::by_uri("s3://b/orders").unwrap())
        .unwrap();
    assert_eq!(by_uri.as_ref(), Some(&canonical));
    assert_eq!(
        store.get_asset(&canonical, "wm").unwrap().as_deref(),
        Some("\"1\"")
    );

    // Registered by uri first: the namespace stays the uri's when a name
    // is learnt later.
    let uri_first = AssetScope::by_uri("file:///x").unwrap();
    store
        .put_asset(&uri_first, &uri_first, "k", &plain("1"))
        .unwrap();
    let later = AssetScope::new(Some("x".into()), Some("file:///x".into())).unwrap();
    assert_eq!(store.find_asset(&later).unwrap().as_ref(), Some(&uri_first));
    // A put that assumed the name's namespace is refused, binding nothing.
    let err = store
        .put_asset(&later, &AssetScope::by_name("x").unwrap(), "k", &plain("2"))
        .unwrap_err();
    assert!(err.to_string().contains("registered"), "{err}");
    assert_eq!(
        store
            .find_asset(&AssetScope::by_name("x").unwrap())
            .unwrap(),
        None
    );
    store
        .put_asset(&later, &uri_first, "k", &plain("2"))
        .unwrap();
    assert_eq!(
        store
            .find_asset(&AssetScope::by_name("x").unwrap())
            .unwrap()
            .as_ref(),
        Some(&uri_first)
    );

    for clash in [
        AssetScope::new(Some("orders".into()), Some("file:///x".into())).unwrap(),
        AssetScope::new(Some("orders".into()), Some("s3://elsewhere".into())).unwrap(),
    ] {
        assert!(
            matches!(store.find_asset(&clash), Err(Error::InvalidInput { .. })),
            "{clash}"
        );
    }
    assert_eq!(
        store.delete_asset(&canonical, "wm").unwrap().as_deref(),
        Some("\"1\"")
    );
    store
        .put_asset(&canonical, &canonical, "a", &plain("1"))
        .unwrap();
    let cleared = store.clear_asset(&canonical).unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].owner, RowOwner::Asset(canonical));
    store.clear_asset(&uri_first).unwrap();
}

fn reads_never_register_or_bind_assets(store: &dyn MetadataStore) {
    let named = AssetScope::new(Some("unread".into()), Some("s3://u".into())).unwrap();
    assert_eq!(store.find_asset(&named).unwrap(), None);
    assert_eq!(
        store.find_asset(&named).unwrap(),
        None,
        "find registered it"
    );
    let by_name = AssetScope::by_name("bound").unwrap();
    store
        .put_asset(&by_name, &by_name, "k", &plain("1"))
        .unwrap();
    let with_uri = AssetScope::new(Some("bound".into()), Some("s3://guess".into())).unwrap();
    assert_eq!(
        store.find_asset(&with_uri).unwrap().as_ref(),
        Some(&by_name)
    );
    // The read above did not bind the uri: another uri still fits.
    let other = AssetScope::new(Some("bound".into()), Some("s3://right".into())).unwrap();
    assert_eq!(store.find_asset(&other).unwrap().as_ref(), Some(&by_name));
    store.clear_asset(&by_name).unwrap();
}

fn gc_deletes_only_rows_still_expired(store: &dyn MetadataStore) {
    let t = TaskScope::new("gc", "run", "task", -1).unwrap();
    let expiring = |value| Put {
        retention_ms: Some(0),
        ..plain(value)
    };
    store.put_task(&t, "old", &expiring("1")).unwrap();
    store
        .put_task(
            &t,
            "new",
            &Put {
                retention_ms: Some(3_600_000),
                ..plain("2")
            },
        )
        .unwrap();
    let expired = store.expired_task_rows(100).unwrap().rows;
    assert_eq!(
        expired.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["old"]
    );
    // "No limit", as a dry run asks (once a negative LIMIT on PostgreSQL).
    assert_eq!(store.expired_task_rows(usize::MAX).unwrap().rows.len(), 1);
    // Rewritten with a new expiry after gc read it: not deleted.
    store
        .put_task(
            &t,
            "old",
            &Put {
                retention_ms: Some(3_600_000),
                ..plain("3")
            },
        )
        .unwrap();
    assert!(store.delete_expired_task_rows(100).unwrap().rows.is_empty());
    store.put_task(&t, "old", &expiring("4")).unwrap();
    let deleted = store.delete_expired_task_rows(100).unwrap().rows;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].key.as_str(), deleted[0].value.as_str()),
        ("old", "4")
    );
    assert_eq!(store.get_task(&t, "old").unwrap(), None);
    // Rows that may hold envelopes are visited, expired or not.
    let envelope = r#"{"__airflow_state_ref__": "r"}"#;
    store.put_task(&t, "env", &expiring(envelope)).unwrap();
    let asset = AssetScope::by_name("gc-asset").unwrap();
    store
        .put_asset(&asset, &asset, "env", &plain(envelope))
        .unwrap();
    let mut seen = Vec::new();
    store
        .for_each_stored(&mut |text| seen.push(text.to_string()))
        .unwrap();
    assert_eq!(
        seen.iter().filter(|t| *t == envelope).count(),
        2,
        "{seen:?}"
    );
    store.clear_task(&t, true).unwrap();
    store.clear_asset(&asset).unwrap();
}

/// Writers racing on one key each learn exactly the value they replaced:
/// every value written is handed back once, or is the final value.
fn every_replaced_value_is_handed_to_exactly_one_writer(store: &dyn MetadataStore) {
    let t = TaskScope::new("race", "run", "task", -1).unwrap();
    let asset = AssetScope::by_name("race").unwrap();
    let replaced = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for thread in 0..4 {
            let (replaced, t, asset) = (&replaced, &t, &asset);
            s.spawn(move || {
                for i in 0..25 {
                    let value = envelope(&format!("{thread}-{i}"));
                    let old = store.put_task(t, "k", &plain(&value)).unwrap();
                    let old_asset = store.put_asset(asset, asset, "k", &plain(&value)).unwrap();
                    let mut replaced = replaced.lock().unwrap();
                    replaced.extend(old.map(|o| ("task", o)));
                    replaced.extend(old_asset.map(|o| ("asset", o)));
                }
            });
        }
    });
    let mut counts: HashMap<(&str, String), usize> = HashMap::new();
    for entry in replaced.into_inner().unwrap() {
        *counts.entry(entry).or_default() += 1;
    }
    counts.insert(("task", store.get_task(&t, "k").unwrap().unwrap()), 1);
    counts.insert(("asset", store.get_asset(&asset, "k").unwrap().unwrap()), 1);
    for kind in ["task", "asset"] {
        for thread in 0..4 {
            for i in 0..25 {
                let value = envelope(&format!("{thread}-{i}"));
                assert_eq!(
                    counts.get(&(kind, value.clone())),
                    Some(&1),
                    "{kind} value {value} was handed back {:?} times",
                    counts.get(&(kind, value.clone()))
                );
            }
        }
    }
    store.clear_task(&t, true).unwrap();
    store.clear_asset(&asset).unwrap();
}

/// gc's time waits for a write that holds the barrier (it passed its fence
/// and has not committed): `hold` opens such a write and returns a closure
/// that commits it.
fn gc_epoch_waits_for_writes_in_flight(
    store: &dyn MetadataStore,
    hold: impl FnOnce() -> Box<dyn FnOnce() + Send>,
) {
    let commit = hold();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let t0 = store.gc_epoch().unwrap();
            sender.send(t0).unwrap();
        });
        assert!(
            receiver
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "gc read its time while a fenced write was still open"
        );
        commit();
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("gc's time once the write committed");
    });
}

#[test]
fn sqlite_gc_waits_for_writes_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(SqliteLocation::File(path.clone())).unwrap();
    gc_epoch_waits_for_writes_in_flight(&store, || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Box::new(move || conn.execute_batch("COMMIT").unwrap())
    });
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgres_gc_waits_for_writes_in_flight() {
    let schema = PgSchema::create("barrier");
    let store = pg(&schema.url()).unwrap();
    let url = schema.url();
    gc_epoch_waits_for_writes_in_flight(&store, || {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock_shared({})",
                0x5354_4154_4547_4353_i64
            ))
            .unwrap();
        Box::new(move || client.batch_execute("COMMIT").unwrap())
    });
}

#[test]
fn sqlite_file_store() {
    let dir = tempfile::tempdir().unwrap();
    run(&SqliteStore::open(SqliteLocation::File(dir.path().join("s.db"))).unwrap());
}

#[test]
fn sqlite_file_store_with_normal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(
        SqliteLocation::File(dir.path().join("s.db")),
        Synchronous::Normal,
    )
    .unwrap();
    run(&store);
    store.sync().unwrap();
}

#[test]
fn sqlite_memory_store() {
    run(&SqliteStore::open(SqliteLocation::Memory).unwrap());
}

#[test]
fn memory_store() {
    run(&MemoryStore::new());
}

/// A fresh schema on the server named by `STATEHOST_TEST_POSTGRES_URL`,
/// dropped when the guard goes.
#[cfg(feature = "postgres")]
pub(crate) struct PgSchema {
    base: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    pub(crate) fn create(tag: &str) -> PgSchema {
        let base = std::env::var("STATEHOST_TEST_POSTGRES_URL").expect(
            "set STATEHOST_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test) to run the PostgreSQL tests",
        );
        let name = format!(
            "statehost_{tag}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut client = ::postgres::Client::connect(&base, ::postgres::NoTls)
            .expect("connect to STATEHOST_TEST_POSTGRES_URL");
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap();
        PgSchema { base, name }
    }

    /// The URL that puts every table in this schema.
    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = ::postgres::Client::connect(&self.base, ::postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

#[cfg(feature = "postgres")]
fn pg(url: &str) -> Result<PostgresStore> {
    PostgresStore::open(url, std::time::Duration::from_secs(30))
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgres_store() {
    let schema = PgSchema::create("suite");
    run(&pg(&schema.url()).unwrap());
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgres_workers_starting_at_once_share_one_schema() {
    let schema = PgSchema::create("race");
    let url = schema.url();
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| pg(&url).unwrap());
        }
    });
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let versions: i64 = client
        .query_one(
            "SELECT count(*) FROM statehost_meta WHERE name = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
    client
        .batch_execute("UPDATE statehost_meta SET value = '99' WHERE name = 'schema_version'")
        .unwrap();
    let err = pg(&url).unwrap_err().to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgres_upgrades_a_version_1_schema() {
    let schema = PgSchema::create("upgrade");
    let url = schema.url();
    drop(pg(&url).unwrap());
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    client
        .batch_execute(
            "ALTER TABLE task_state DROP COLUMN prev_value;
             ALTER TABLE asset_state DROP COLUMN prev_value;
             UPDATE statehost_meta SET value = '1' WHERE name = 'schema_version';",
        )
        .unwrap();
    let store = pg(&url).unwrap();
    run(&store);
    let version: String = client
        .query_one(
            "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION.to_string());
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_errors_are_one_clear_line() {
    // Nothing listens on port 1.
    let err = pg("postgresql://statehost@127.0.0.1:1/nowhere")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach") && !err.contains('\n'), "{err}");
    let err = pg("postgresql://a:secret@127.0.0.1:1/x")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret"), "the password leaked: {err}");
}

#[cfg(feature = "postgres")]
#[test]
#[ignore = "needs PostgreSQL: set STATEHOST_TEST_POSTGRES_URL and run with --include-ignored"]
fn postgres_authentication_errors_name_the_user() {
    let base = std::env::var("STATEHOST_TEST_POSTGRES_URL").unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_username("statehost_no_such_user").unwrap();
    let err = pg(url.as_str()).unwrap_err().to_string();
    assert!(
        err.contains("statehost_no_such_user") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn sqlite_refuses_an_unknown_schema_version_and_foreign_files_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(SqliteStore::open(SqliteLocation::File(path.clone())).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE statehost_meta SET value = '99' WHERE name = 'schema_version'",
            [],
        )
        .unwrap();
    let err = SqliteStore::open(SqliteLocation::File(path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");

    let foreign = dir.path().join("foreign.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE orders (id INTEGER); INSERT INTO orders VALUES (1);")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&foreign).unwrap();
    let err = SqliteStore::open(SqliteLocation::File(foreign.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a statehost database") && err.contains("orders") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "the file changed");
}

#[test]
fn sqlite_upgrades_a_version_1_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(SqliteStore::open(SqliteLocation::File(path.clone())).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE statehost_meta SET value = '1' WHERE name = 'schema_version'",
        [],
    )
    .unwrap();
    let store = SqliteStore::open(SqliteLocation::File(path)).unwrap();
    run(&store);
    let version: String = conn
        .query_row(
            "SELECT value FROM statehost_meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
}
