//! `template`: a statehost state backend that keeps each value as an object
//! in a key-value store, under a key prefix.
//!
//! ```toml
//! [workers]
//! state_backend = "template"
//!
//! [backends.template]
//! endpoint = "mem://shared"      # required: where the store is
//! key_prefix = "statehost/"      # every key starts with this
//! inline_threshold_bytes = 0     # values whose JSON is shorter stay inline
//! ```
//!
//! Making it yours: replace `client.rs` with your store's client, keep the
//! shape of this file (options, [`PathStore`], [`BackendPlugin`],
//! [`export_backend!`]), and keep `tests/` passing. If your client is async,
//! read "Backends with an async client" in the plugin-api docs.
//!
//! The backend implements [`PathStore`]: plain puts, gets and removes of
//! objects by name. plugin-api's layout gives every write its own name (so
//! a late write never replaces a newer one), encodes scopes and keys so no
//! key escapes the prefix, and checks every reference read back from the
//! database before this code sees it.

mod client;

use std::time::SystemTime;

use serde::Deserialize;
use statehost_plugin_api::{
    BackendError, BackendPlugin, Capabilities, HostContext, Options, PathStore, export_backend,
};

pub use client::{Client, ClientError};

/// The options of `[backends.template]`. Unknown keys are refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateOptions {
    endpoint: String,
    #[serde(default)]
    key_prefix: String,
    #[serde(default)]
    inline_threshold_bytes: usize,
}

/// The backend: a client and where in its keyspace the objects go.
#[derive(Debug)]
pub struct TemplateBackend {
    client: Client,
    key_prefix: String,
    inline_threshold_bytes: usize,
}

/// Maps the client's errors onto statehost's kinds, which decide what the
/// host and the operator do (see the error contract in the plugin-api
/// docs): a missing object is `NotFound`, a server that cannot be reached is
/// `Unavailable`, a bad endpoint is the operator's `Config` to fix.
fn to_backend_error(what: &str, e: ClientError) -> BackendError {
    let message = format!("{what}: {e}");
    match e {
        ClientError::NoSuchKey(_) => BackendError::not_found(message),
        ClientError::Unreachable(_) => BackendError::unavailable(message),
        ClientError::BadEndpoint(_) => BackendError::config(message),
    }
}

impl TemplateBackend {
    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.key_prefix)
    }
}

impl PathStore for TemplateBackend {
    fn inline_below(&self) -> usize {
        self.inline_threshold_bytes
    }

    fn put(&self, path: &str, value: &str) -> Result<(), BackendError> {
        let key = self.key(path);
        self.client
            .put(&key, value)
            .map_err(|e| to_backend_error(&format!("writing {key}"), e))
    }

    fn get(&self, path: &str) -> Result<String, BackendError> {
        let key = self.key(path);
        self.client
            .get(&key)
            .map_err(|e| to_backend_error(&format!("reading {key}"), e))
    }

    fn remove(&self, path: &str) -> Result<bool, BackendError> {
        let key = self.key(path);
        self.client
            .delete(&key)
            .map_err(|e| to_backend_error(&format!("deleting {key}"), e))
    }

    fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
        let prefix = self.key(&format!("{prefix}/"));
        self.client
            .delete_prefix(&prefix)
            .map_err(|e| to_backend_error(&format!("deleting under {prefix}"), e))
    }

    fn list_under(&self, prefix: &str) -> Result<Vec<(String, Option<SystemTime>)>, BackendError> {
        let full = self.key(&format!("{prefix}/"));
        let found = self
            .client
            .scan(&full)
            .map_err(|e| to_backend_error(&format!("listing {full}"), e))?;
        Ok(found
            .into_iter()
            .filter_map(|(key, written)| {
                let path = key.strip_prefix(&self.key_prefix)?;
                Some((path.to_string(), Some(written)))
            })
            .collect())
    }
}

impl BackendPlugin for TemplateBackend {
    const NAME: &'static str = "template";
    const DESCRIPTION: &'static str = "each value an object in a key-value store, under a prefix";
    // It lists (gc finds orphaned objects through it); it has no leftovers
    // to sweep, as every put is whole.
    const CAPABILITIES: Capabilities = Capabilities::LIST;

    fn new(options: &Options, _host: &HostContext) -> Result<Self, BackendError> {
        let options: TemplateOptions = options.parse(Self::NAME)?;
        let client = Client::connect(&options.endpoint)
            .map_err(|e| to_backend_error(&format!("[backends.{}] endpoint", Self::NAME), e))?;
        log::info!("template backend at {}", options.endpoint);
        Ok(TemplateBackend {
            client,
            key_prefix: options.key_prefix,
            inline_threshold_bytes: options.inline_threshold_bytes,
        })
    }
}

export_backend!(TemplateBackend);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use statehost_plugin_api::{
        ErrorKind, Serialized, StateBackend, StateKey, TaskScope, conformance,
    };
    use statehost_plugin_test::{Logs, Scratch};

    use super::*;

    #[test]
    fn passes_the_conformance_suite_in_process() {
        let scratch = Scratch::new();
        let backend: TemplateBackend = scratch
            .construct(json!({"endpoint": "mem://unit", "key_prefix": "p/"}))
            .unwrap();
        conformance::run(&backend);
        // The suite cleaned up after itself.
        assert_eq!(backend.client.scan("").unwrap(), vec![]);
    }

    #[test]
    fn options_are_checked_by_name() {
        let scratch = Scratch::new();
        let err = scratch.construct::<TemplateBackend>(json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("endpoint"), "{err}");
        let err = scratch
            .construct::<TemplateBackend>(json!({"endpoint": "mem://x", "endpont": 1}))
            .unwrap_err();
        assert!(err.message().contains("endpont"), "{err}");
        let err = scratch
            .construct::<TemplateBackend>(json!({"endpoint": "http://x"}))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let err = scratch
            .construct::<TemplateBackend>(json!({"endpoint": "mem://unreachable"}))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }

    #[test]
    fn values_live_under_the_key_prefix() {
        let logs = Logs::capture();
        let scratch = Scratch::new();
        let backend: TemplateBackend = scratch
            .construct(json!({"endpoint": "mem://prefix", "key_prefix": "tenant-a/"}))
            .unwrap();
        assert!(logs.contains("template backend at mem://prefix"));
        let scope = TaskScope::new("dag", "run", "task", -1).unwrap();
        let at = StateKey::task(&scope, "k");
        let Serialized::Reference(reference) = backend
            .serialize(at, conformance::write_id(), "42")
            .unwrap()
        else {
            panic!("stored inline");
        };
        let keys = backend.client.scan("").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0, format!("tenant-a/{reference}"));
        assert_eq!(backend.deserialize(&reference, Some(at)).unwrap(), "42");
    }
}
