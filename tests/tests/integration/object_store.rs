//! The object_store plugin through its .so: memory:// and file:// always,
//! S3 (moto) and Azure Blob (Azurite) on loopback when their variables
//! name them.

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use statehost::plugin::LoadedBackend;
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{Serialized, StateBackend, StateKey, TaskScope};
use statehost_tests::{Server, free_port, http, library, require_env, start_moto, wait_for};

const KEY_VAR: &str = "STATEHOST_TEST_OBJECT_STORE_KEY";

fn load(options: Value) -> LoadedBackend {
    // SAFETY: every test sets the same value; set before the plugin reads it.
    unsafe { std::env::set_var(KEY_VAR, "5a".repeat(32)) };
    LoadedBackend::load(library("statehost_object_store"), &options, None)
        .unwrap_or_else(|e| panic!("loading object_store with {options}: {e}"))
}

/// The suite, then the same with compression and encryption on; with
/// `shared` storage (not memory://), each reads what the other wrote.
fn run_suite(options: Value, shared: bool) {
    let plain = load(options.clone());
    statehost_plugin_api::conformance::run(&plain);
    let mut coded = options;
    coded["compression"] = json!("zstd");
    coded["encryption_key_env"] = json!(KEY_VAR);
    let coded = load(coded);
    statehost_plugin_api::conformance::run(&coded);
    if !shared {
        return;
    }
    // What the plain instance wrote, the coded one reads: objects say how.
    let scope = TaskScope::new("interop", "run", "t", -1).unwrap();
    let at = StateKey::task(&scope, "k");
    let Serialized::Reference(r) = plain.serialize(at, write_id(), "[1,2]").unwrap() else {
        panic!("stored inline")
    };
    assert_eq!(coded.deserialize(&r, Some(at)).unwrap(), "[1,2]");
    plain.delete_object(&r, Some(at)).unwrap();
}

#[test]
fn memory_urls_through_the_so() {
    run_suite(json!({"url": "memory://"}), false);
}

#[test]
fn file_urls_through_the_so() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(
        json!({"url": format!("file://{}/objects", dir.path().display())}),
        true,
    );
}

/// gc counts the objects a delete reports removed: a delete of an object
/// that is not there must say so, though most stores answer it with
/// success.
fn deletes_report_what_was_there(options: Value) {
    let backend = load(options);
    let scope = TaskScope::new("count", "run", "t", -1).unwrap();
    let at = StateKey::task(&scope, "k");
    let Serialized::Reference(r) = backend.serialize(at, write_id(), "1").unwrap() else {
        panic!("stored inline")
    };
    assert!(backend.delete_object(&r, Some(at)).unwrap(), "it was there");
    assert!(!backend.delete_object(&r, Some(at)).unwrap(), "it was gone");
}

#[test]
fn a_delete_of_a_missing_object_reports_nothing_removed() {
    deletes_report_what_was_there(json!({"url": "memory://"}));
    let dir = tempfile::tempdir().unwrap();
    deletes_report_what_was_there(json!({"url": format!("file://{}/o", dir.path().display())}));
}

#[test]
#[ignore = "needs moto: set STATEHOST_TEST_S3 to moto_server and run with --include-ignored"]
fn s3_against_moto() {
    let moto = require_env("STATEHOST_TEST_S3");
    let (_server, port) = start_moto(&moto, "statehost-test");
    run_suite(statehost_tests::moto_options(port, "statehost-test"), true);
    deletes_report_what_was_there(statehost_tests::moto_options(port, "statehost-test"));
}

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
// Azurite's well-known development key (public, documented).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// RFC 1123 date, as x-ms-date wants it.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates a container with a SharedKey-signed request (the plugin, like
/// object_store, reads and writes blobs but does not create containers).
fn create_container(port: u16, container: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let date = http_date(SystemTime::now());
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    http(
        port,
        &format!(
            "PUT /{AZURITE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
}

#[test]
#[ignore = "needs Azurite: set STATEHOST_TEST_AZURE to azurite-blob and run with --include-ignored"]
fn azure_blob_against_azurite() {
    let azurite = require_env("STATEHOST_TEST_AZURE");
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let _server = Server(
        Command::new(azurite)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--location",
            ])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob"),
    );
    wait_for(port, "Azurite");
    let status = create_container(port, "statehost");
    assert!(status.contains("201"), "creating the container: {status}");
    run_suite(
        json!({
            "url": "az://statehost/prefix",
            "max_retries": 1,
            "options": {
                "azure_storage_account_name": AZURITE_ACCOUNT,
                "azure_storage_account_key": AZURITE_KEY,
                "azure_endpoint": format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
                "azure_allow_http": "true",
            },
        }),
        true,
    );
}
