//! [`TimeoutBackend`]: a deadline on every backend call
//! (`[workers] state_backend_timeout_ms`).
//!
//! A call into a plugin cannot be interrupted, so each call runs on a
//! thread of its own and the caller stops waiting at the deadline. The late
//! call goes on in the background and its result is dropped: a late write
//! leaves an object no row points at, which gc collects. Starting a thread
//! per call costs some microseconds, so this is off unless configured.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use statehost_plugin_api::{
    AssetScope, BackendError, ErrorKind, Scope, Serialized, StateBackend, StoredObject, TaskScope,
};

/// Wraps a backend so that no call waits longer than a deadline.
pub struct TimeoutBackend {
    inner: Arc<dyn StateBackend>,
    timeout: Duration,
}

impl std::fmt::Debug for TimeoutBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBackend")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TimeoutBackend {
    /// `inner`, with every call limited to `timeout`.
    pub fn new(inner: Arc<dyn StateBackend>, timeout: Duration) -> Self {
        TimeoutBackend { inner, timeout }
    }

    fn call<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&dyn StateBackend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let inner = self.inner.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("statehost-{operation}"))
            .spawn(move || {
                let _ = tx.send(f(inner.as_ref()));
            })
            .map_err(|e| {
                BackendError::unavailable(format!("cannot start a thread for {operation}: {e}"))
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(BackendError::unavailable(format!(
                "no answer to {operation} within {} ms ([workers] state_backend_timeout_ms); the call goes on in the background and gc collects anything it leaves",
                self.timeout.as_millis()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(BackendError::new(
                ErrorKind::Panicked,
                format!("the {operation} call ended without an answer"),
            )),
        }
    }
}

impl StateBackend for TimeoutBackend {
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        let (scope, key, value) = (scope.clone(), key.to_string(), value.to_string());
        self.call("serialize_task_state", move |b| {
            b.serialize_task_state(&scope, &key, &value)
        })
    }

    fn deserialize_task_state(&self, reference: &str) -> Result<String, BackendError> {
        let reference = reference.to_string();
        self.call("deserialize_task_state", move |b| {
            b.deserialize_task_state(&reference)
        })
    }

    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> Result<Serialized, BackendError> {
        let (scope, key, value) = (scope.clone(), key.to_string(), value.to_string());
        self.call("serialize_asset_state", move |b| {
            b.serialize_asset_state(&scope, &key, &value)
        })
    }

    fn deserialize_asset_state(&self, reference: &str) -> Result<String, BackendError> {
        let reference = reference.to_string();
        self.call("deserialize_asset_state", move |b| {
            b.deserialize_asset_state(&reference)
        })
    }

    fn visit_task_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let reference = reference.to_string();
        let bytes = self.call("deserialize_task_state", move |b| {
            let mut out = Vec::new();
            b.visit_task_state(&reference, &mut |t| out.extend_from_slice(t))?;
            Ok(out)
        })?;
        visit(&bytes);
        Ok(())
    }

    fn visit_asset_state(
        &self,
        reference: &str,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let reference = reference.to_string();
        let bytes = self.call("deserialize_asset_state", move |b| {
            let mut out = Vec::new();
            b.visit_asset_state(&reference, &mut |t| out.extend_from_slice(t))?;
            Ok(out)
        })?;
        visit(&bytes);
        Ok(())
    }

    fn delete(&self, scope: &Scope, key: &str) -> Result<(), BackendError> {
        let (scope, key) = (scope.clone(), key.to_string());
        self.call("delete", move |b| b.delete(&scope, &key))
    }

    fn clear(&self, scope: &Scope, all_map_indices: bool) -> Result<(), BackendError> {
        let scope = scope.clone();
        self.call("clear", move |b| b.clear(&scope, all_map_indices))
    }

    fn list(&self, scope: Option<&Scope>) -> Result<Vec<StoredObject>, BackendError> {
        let scope = scope.cloned();
        self.call("list", move |b| b.list(scope.as_ref()))
    }

    fn sweep(&self, older_than: std::time::SystemTime) -> Result<usize, BackendError> {
        self.call("sweep", move |b| b.sweep(older_than))
    }
}
