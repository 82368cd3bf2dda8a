//! `object_store`: a state backend for S3, Google Cloud Storage, Azure Blob
//! Storage, local files or memory, chosen by one URL, built on the
//! [`object_store`] crate.
//!
//! ```toml
//! [workers]
//! state_backend = "object_store"
//!
//! [backends.object_store]
//! url = "s3://my-bucket/statehost"     # gs://, az://, file:///abs/path, memory://
//! inline_threshold_bytes = 0            # values whose JSON is shorter stay inline
//! max_retries = 3                       # per request
//! retry_timeout_ms = 20000              # give up retrying after this long
//! compression = "zstd"                  # or "none"
//! zstd_level = 3
//! encryption_key_env = "STATEHOST_KEY"  # AES-256-GCM key (64 hex digits or base64)
//! operation_timeout_ms = 25000          # one operation, retries included
//! common_io_paths = false               # also read and remove what Airflow's common-io backend wrote
//!
//! [backends.object_store.options]       # handed to the store's builder
//! region = "eu-west-1"
//! endpoint = "http://127.0.0.1:9000"
//! allow_http = "true"
//! ```
//!
//! Credentials and endpoints come from each cloud's standard environment
//! variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and/or the `options` table,
//! whose keys are the builder's own (`region`, `endpoint`, `access_key_id`,
//! `azure_storage_account_name`, `timeout`, `connect_timeout`, ...); an
//! unknown key is rejected by name.
//!
//! Each write of a value is an object of its own at `<url path>/<layout
//! path>` (see [`statehost_plugin_api::layout`]): named by its write id, so
//! a write never replaces another, every component percent-encoded (long
//! ones hashed). Each object records its codecs in a header
//! (see [`codec`]), so reading never guesses and a wrong key or an altered
//! object is an error, never garbage.
//!
//! The plugin follows plugin-api's pattern for async clients: each backend
//! instance owns a small multi-thread tokio runtime (never the host's) and
//! blocks on it per call, which is safe from any number of host threads at
//! once; every operation is bounded by `operation_timeout_ms` (below the
//! host's call deadline), and dropping the backend shuts the runtime down
//! without waiting. It is a [`PathStore`]: objects by relative path, and
//! plugin-api's shared layout does the rest.

pub mod codec;
mod common_io;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload, RetryConfig};
use serde::Deserialize;
use statehost_plugin_api::{
    BackendError, BackendPlugin, Capabilities, ErrorKind, HostContext, Options, PathStore,
    ScopeRef, Serialized, StateBackend, StateKey, StoredObject, WriteId, export_backend,
};

use crate::codec::Codec;
use crate::common_io::CommonIoPaths;

/// Options of `[backends.object_store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreOptions {
    url: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    inline_threshold_bytes: usize,
    #[serde(default = "default_retries")]
    max_retries: usize,
    #[serde(default = "default_retry_timeout_ms")]
    retry_timeout_ms: u64,
    #[serde(default)]
    compression: Compression,
    #[serde(default = "default_zstd_level")]
    zstd_level: i32,
    #[serde(default)]
    encryption_key_env: Option<String>,
    #[serde(default = "default_operation_timeout_ms")]
    operation_timeout_ms: u64,
    /// Also read the references Airflow's common-io backend wrote under
    /// this URL, and remove its objects on delete and clear.
    #[serde(default)]
    common_io_paths: bool,
}

fn default_operation_timeout_ms() -> u64 {
    // Below the host's default call deadline (30 s), so the plugin gives up
    // first and the host's thread comes back.
    25_000
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Compression {
    #[default]
    None,
    Zstd,
}

fn default_retries() -> usize {
    3
}

fn default_retry_timeout_ms() -> u64 {
    20_000
}

fn default_zstd_level() -> i32 {
    3
}

fn config(message: impl Into<String>) -> BackendError {
    BackendError::config(format!("[backends.object_store] {}", message.into()))
}

/// Turns an object store error into a backend error, keeping "not found"
/// apart from failures worth retrying.
fn store_error(context: &str, e: object_store::Error) -> BackendError {
    let message = format!("{context}: {}", e.to_string().replace('\n', " "));
    match e {
        object_store::Error::NotFound { .. } => BackendError::not_found(message),
        object_store::Error::Precondition { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented => BackendError::unsupported(message),
        _ => BackendError::unavailable(message),
    }
}

/// Applies the `options` table to a cloud builder, rejecting unknown keys.
macro_rules! configure {
    ($builder:expr, $key:ty, $options:expr, $scheme:literal) => {{
        let mut builder = $builder;
        for (name, value) in $options {
            let key: $key = name.parse().map_err(|_| {
                config(format!(
                    "options: unknown key `{name}` for {} URLs; see the object_store builder's configuration keys",
                    $scheme
                ))
            })?;
            builder = builder.with_config(key, value.clone());
        }
        builder
    }};
}

fn build_store(
    url: &url::Url,
    options: &BTreeMap<String, String>,
    retry: RetryConfig,
) -> Result<(Arc<dyn ObjectStore>, StorePath), BackendError> {
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| {
        config(format!(
            "url {url}: {e}; use s3://, gs://, az://, file:// or memory://"
        ))
    })?;
    let no_options = || -> Result<(), BackendError> {
        match options.keys().next() {
            Some(name) => Err(config(format!(
                "options: unknown key `{name}`: {} URLs take no options",
                url.scheme()
            ))),
            None => Ok(()),
        }
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Memory => {
            no_options()?;
            Arc::new(object_store::memory::InMemory::new())
        }
        ObjectStoreScheme::Local => {
            no_options()?;
            let root = url
                .to_file_path()
                .map_err(|_| config(format!("url {url} is not an absolute file path")))?;
            std::fs::create_dir_all(&root).map_err(|e| {
                config(format!("url {url}: cannot create {} ({e})", root.display()))
            })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| config(format!("url {url}: {e}")))?;
            return Ok((Arc::new(local), StorePath::default()));
        }
        #[cfg(feature = "aws")]
        ObjectStoreScheme::AmazonS3 => {
            let builder = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            let builder = configure!(builder, object_store::aws::AmazonS3ConfigKey, options, "s3");
            Arc::new(
                builder
                    .build()
                    .map_err(|e| config(format!("url {url}: {e}")))?,
            )
        }
        #[cfg(feature = "gcp")]
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            let builder = configure!(builder, object_store::gcp::GoogleConfigKey, options, "gs");
            Arc::new(
                builder
                    .build()
                    .map_err(|e| config(format!("url {url}: {e}")))?,
            )
        }
        #[cfg(feature = "azure")]
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            let builder = configure!(builder, object_store::azure::AzureConfigKey, options, "az");
            Arc::new(
                builder
                    .build()
                    .map_err(|e| config(format!("url {url}: {e}")))?,
            )
        }
        other => {
            let _ = retry;
            return Err(config(format!(
                "url {url}: {other:?} storage is not built into this plugin"
            )));
        }
    };
    Ok((store, path))
}

/// Values as objects in an object store.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    codec: Codec,
    inline_threshold_bytes: usize,
    /// The plugin's own I/O runtime; `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The longest one operation may take, retries included.
    operation_timeout: Duration,
}

impl Drop for ObjectStoreBackend {
    fn drop(&mut self) {
        // Never wait for a request that hangs: the host's thread dropping
        // the backend must not hang with it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    fn location(&self, relative: &str) -> Result<StorePath, BackendError> {
        let full = if self.prefix.as_ref().is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.prefix.as_ref())
        };
        StorePath::parse(&full)
            .map_err(|e| BackendError::invalid_input(format!("object path {full}: {e}")))
    }

    /// Runs one operation of the async client to completion on the
    /// plugin's runtime, or gives up after the operation timeout (the host's
    /// threads are never runtime threads, so blocking here is safe).
    fn run<T>(
        &self,
        what: impl std::fmt::Display,
        operation: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, BackendError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        // The timer is made inside the runtime: it needs the runtime's clock.
        let bounded = async { tokio::time::timeout(self.operation_timeout, operation).await };
        match runtime.block_on(bounded) {
            Ok(result) => result.map_err(|e| store_error(&what.to_string(), e)),
            Err(_) => Err(BackendError::unavailable(format!(
                "{what}: no answer within {} ms (operation_timeout_ms)",
                self.operation_timeout.as_millis()
            ))),
        }
    }
}

impl PathStore for ObjectStoreBackend {
    fn inline_below(&self) -> usize {
        self.inline_threshold_bytes
    }

    fn put(&self, relative: &str, value: &str) -> Result<(), BackendError> {
        let location = self.location(relative)?;
        let bytes = self.codec.encode(relative, value.as_bytes())?;
        // A single put of a name no other write has: the object appears
        // whole or not at all, and never replaces another.
        self.run(
            format_args!("writing {location}"),
            self.store.put(&location, PutPayload::from(bytes)),
        )?;
        Ok(())
    }

    fn get(&self, relative: &str) -> Result<String, BackendError> {
        let location = self.location(relative)?;
        let bytes = self.run(format_args!("reading {location}"), async {
            self.store.get(&location).await?.bytes().await
        })?;
        let value = self.codec.decode(relative, &bytes)?;
        String::from_utf8(value).map_err(|_| {
            BackendError::invalid_input(format!("the object at {location} is not UTF-8 text"))
        })
    }

    fn remove(&self, relative: &str) -> Result<bool, BackendError> {
        let location = self.location(relative)?;
        // Most stores answer a delete of a missing object with success: ask
        // first, so that what is reported removed was there (gc counts it).
        match self.run(
            format_args!("looking up {location}"),
            self.store.head(&location),
        ) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        match self.run(
            format_args!("deleting {location}"),
            self.store.delete(&location),
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        let locations = self
            .list_under(prefix)?
            .into_iter()
            .map(|(relative, _)| self.location(&relative))
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = self.run(format_args!("deleting under {prefix}"), async {
            let stream = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
            self.store
                .delete_stream(stream)
                .try_for_each(|_| async { Ok(()) })
                .await
        });
        match deleted {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let base = self.location(prefix)?;
        let strip = if self.prefix.as_ref().is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.as_ref())
        };
        self.run(format_args!("listing {base}"), async {
            self.store
                .list(Some(&base))
                .map_ok(|meta| {
                    let full = meta.location.as_ref().to_string();
                    let relative = full.strip_prefix(&strip).unwrap_or(&full).to_string();
                    (relative, Some(SystemTime::from(meta.last_modified)))
                })
                .try_collect::<Vec<_>>()
                .await
        })
    }
}

/// The exported backend: the objects of the shared layout, plus (with
/// `common_io_paths`) what Airflow's common-io backend wrote under the same
/// URL.
#[derive(Debug)]
pub struct ObjectStorePlugin {
    objects: ObjectStoreBackend,
    common_io: Option<CommonIoPaths>,
}

impl ObjectStorePlugin {
    /// The value at common-io's path `relative`.
    fn read_common_io(&self, relative: &str) -> Result<String, BackendError> {
        let location = self.objects.location(relative)?;
        let bytes = self
            .objects
            .run(format_args!("reading {location}"), async {
                self.objects.store.get(&location).await?.bytes().await
            })?;
        common_io::decode(relative, &bytes)
    }

    fn remove_common_io_under(&self, prefix: &str) -> Result<(), BackendError> {
        match self.objects.remove_under(prefix) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

impl StateBackend for ObjectStorePlugin {
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        self.objects.serialize(at, write_id, value)
    }

    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<String, BackendError> {
        if let Some(relative) = self.common_io.as_ref().and_then(|c| c.relative(reference)) {
            return self.read_common_io(&relative);
        }
        self.objects.deserialize(reference, owner)
    }

    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> Result<bool, BackendError> {
        if let Some(relative) = self.common_io.as_ref().and_then(|c| c.relative(reference)) {
            return self.objects.remove(&relative);
        }
        self.objects.delete_object(reference, owner)
    }

    fn delete(&self, at: StateKey<'_>) -> Result<(), BackendError> {
        self.objects.delete(at)?;
        if let Some(common_io) = &self.common_io {
            for path in common_io.key_paths(at) {
                self.objects.remove(&path)?;
            }
        }
        Ok(())
    }

    fn clear(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> Result<(), BackendError> {
        self.objects.clear(scope, all_map_indices)?;
        if let Some(common_io) = &self.common_io {
            self.remove_common_io_under(&common_io.scope_prefix(scope, all_map_indices))?;
        }
        Ok(())
    }

    fn list(&self, scope: Option<ScopeRef<'_>>) -> Result<Vec<StoredObject>, BackendError> {
        self.objects.list(scope)
    }

    fn sweep(&self, older_than: SystemTime) -> Result<usize, BackendError> {
        self.objects.sweep(older_than)
    }
}

impl BackendPlugin for ObjectStorePlugin {
    const NAME: &'static str = "object_store";
    const DESCRIPTION: &'static str = "each value an object in S3, GCS, Azure Blob, local files or memory, chosen by URL; optional zstd and AES-256-GCM";
    const CAPABILITIES: Capabilities = Capabilities::LIST;
    // The builder's credential keys; the host also hides any option whose
    // name says it is a secret.
    const SECRET_OPTIONS: &'static [&'static str] = &[
        "options.aws_secret_access_key",
        "options.aws_session_token",
        "options.azure_storage_account_key",
        "options.azure_storage_access_key",
        "options.azure_client_secret",
        "options.azure_storage_sas_key",
        "options.azure_storage_token",
        "options.google_service_account_key",
    ];

    fn new(options: &Options, host: &HostContext) -> Result<Self, BackendError> {
        let options: StoreOptions = options.parse(Self::NAME)?;
        let url = url::Url::parse(&options.url).or_else(|e| {
            // A bare path is a local directory, relative to the config file.
            if options.url.contains("://") {
                Err(config(format!("url {:?}: {e}", options.url)))
            } else {
                url::Url::from_directory_path(host.resolve_path(&options.url))
                    .map_err(|_| config(format!("url {:?} is not a usable path", options.url)))
            }
        })?;
        let key = match &options.encryption_key_env {
            None => None,
            Some(var) => {
                let text = std::env::var(var).map_err(|_| {
                    config(format!(
                        "encryption_key_env names {var}, which is not set; export it with the 256-bit key (64 hex digits or base64)"
                    ))
                })?;
                Some(Codec::parse_key(&text).ok_or_else(|| {
                    config(format!(
                        "{var} does not hold a 256-bit key (64 hex digits or base64)"
                    ))
                })?)
            }
        };
        let retry = RetryConfig {
            max_retries: options.max_retries,
            retry_timeout: Duration::from_millis(options.retry_timeout_ms),
            ..RetryConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("statehost-object-store")
            .enable_all()
            .build()
            .map_err(|e| BackendError::unavailable(format!("cannot start the I/O runtime: {e}")))?;
        // Builders may need the runtime (credential providers).
        let (store, prefix) = {
            let _guard = runtime.enter();
            build_store(&url, &options.options, retry)?
        };
        log::info!("object_store backend at {url} ({store})");
        let common_io = options.common_io_paths.then(|| CommonIoPaths::new(&url));
        let objects = ObjectStoreBackend {
            store,
            prefix,
            codec: Codec::new(
                (options.compression == Compression::Zstd).then_some(options.zstd_level),
                key,
            ),
            inline_threshold_bytes: options.inline_threshold_bytes,
            runtime: Some(runtime),
            operation_timeout: Duration::from_millis(options.operation_timeout_ms),
        };
        Ok(ObjectStorePlugin { objects, common_io })
    }
}

export_backend!(ObjectStorePlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use statehost_plugin_api::{Serialized, StateBackend, StateKey, TaskScope, conformance};

    fn backend(options: serde_json::Value) -> Result<ObjectStorePlugin, BackendError> {
        <ObjectStorePlugin as BackendPlugin>::new(&Options::new(options), &HostContext::new())
    }

    #[test]
    fn memory_urls_pass_the_conformance_suite() {
        conformance::run(&backend(json!({"url": "memory://"})).unwrap());
    }

    #[test]
    fn file_urls_pass_the_conformance_suite_with_every_codec() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var("STATEHOST_TEST_OBJECT_KEY", "11".repeat(32)) };
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let b = backend(json!({
            "url": url.as_str(),
            "compression": "zstd",
            "encryption_key_env": "STATEHOST_TEST_OBJECT_KEY",
        }))
        .unwrap();
        conformance::run(&b);
    }

    #[test]
    fn unknown_options_are_rejected_by_name() {
        let err = backend(json!({"url": "memory://", "urll": "x"})).unwrap_err();
        assert!(err.message().contains("urll"), "{err}");
        let err = backend(json!({"url": "memory://", "options": {"region": "x"}})).unwrap_err();
        assert!(err.message().contains("region"), "{err}");
        let err = backend(json!({"url": "s3://bucket/p", "options": {"regoin": "eu-west-1"}}))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().contains("regoin") && err.message().contains("s3"),
            "{err}"
        );
        let err = backend(
            json!({"url": "memory://", "encryption_key_env": "STATEHOST_NOT_SET_ANYWHERE"}),
        )
        .unwrap_err();
        assert!(
            err.message().contains("STATEHOST_NOT_SET_ANYWHERE"),
            "{err}"
        );
    }

    #[test]
    fn cloud_urls_parse_their_configuration() {
        // Building a client needs no network; only requests do.
        let s3 = backend(json!({
            "url": "s3://bucket/prefix",
            "options": {"region": "eu-west-1", "endpoint": "http://127.0.0.1:1", "allow_http": "true",
                        "access_key_id": "a", "secret_access_key": "b"},
        }));
        assert!(s3.is_ok(), "{:?}", s3.err());
        let gcs = backend(json!({
            "url": "gs://bucket/prefix",
            "options": {"google_service_account_key": "{}"},
        }));
        // An unusable service-account key is a configuration error, not a panic.
        if let Err(e) = &gcs {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        }
        let err =
            backend(json!({"url": "gs://bucket", "options": {"bucket_nmae": "x"}})).unwrap_err();
        assert!(err.message().contains("bucket_nmae"), "{err}");
        let az = backend(json!({
            "url": "az://container/prefix",
            "options": {"azure_storage_account_name": "devstoreaccount1", "azure_storage_use_emulator": "true"},
        }));
        assert!(az.is_ok(), "{:?}", az.err());
    }

    fn write(b: &ObjectStorePlugin, scope: &TaskScope, key: &str, value: &str) -> Serialized {
        b.serialize(StateKey::task(scope, key), conformance::write_id(), value)
            .unwrap()
    }

    #[test]
    fn values_below_the_threshold_stay_inline() {
        let b = backend(json!({"url": "memory://", "inline_threshold_bytes": 8})).unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        assert_eq!(write(&b, &scope, "k", "1"), Serialized::Inline);
        assert!(matches!(
            write(&b, &scope, "k", "\"longer value\""),
            Serialized::Reference(_)
        ));
    }

    #[test]
    fn tampered_and_swapped_objects_are_errors() {
        // SAFETY: as above.
        unsafe { std::env::set_var("STATEHOST_TEST_OBJECT_KEY2", "22".repeat(32)) };
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let b = backend(
            json!({"url": url.as_str(), "encryption_key_env": "STATEHOST_TEST_OBJECT_KEY2"}),
        )
        .unwrap();
        let scope = TaskScope::new("d", "r", "t", -1).unwrap();
        let Serialized::Reference(a) = write(&b, &scope, "a", "\"A\"") else {
            panic!()
        };
        let Serialized::Reference(bb) = write(&b, &scope, "b", "\"B\"") else {
            panic!()
        };
        // Swap: put a's bytes at b's path.
        std::fs::copy(dir.path().join(&a), dir.path().join(&bb)).unwrap();
        let err = b.deserialize(&bb, None).unwrap_err();
        assert!(err.message().contains("does not decrypt"), "{err}");
        // Tamper: flip a byte of a.
        let path = dir.path().join(&a);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert!(b.deserialize(&a, None).is_err());
        // Without the key the objects are refused plainly.
        let keyless = backend(json!({"url": url.as_str()})).unwrap();
        let err = keyless.deserialize(&bb, None).unwrap_err();
        assert!(err.message().contains("encrypted"), "{err}");
    }
}
