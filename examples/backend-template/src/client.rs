//! The storage's client. REPLACE THIS MODULE with your store's client
//! library (a Redis, etcd or DynamoDB client, an HTTP API, ...).
//!
//! This stand-in keeps objects in process memory, one named "server" per
//! endpoint (`mem://<name>`), so that two backends configured with the same
//! endpoint see the same objects, as two workers talking to one server
//! would. It has the shape most clients have: connect to an endpoint, put,
//! get, delete by key, scan and delete by key prefix, and its own error
//! type, which `lib.rs` maps onto statehost's error kinds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

/// What the client can report. A real client's errors map the same way:
/// see `to_backend_error` in `lib.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The endpoint is not one the client understands.
    BadEndpoint(String),
    /// The server could not be reached (retrying later may work).
    Unreachable(String),
    /// No object under that key.
    NoSuchKey(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::BadEndpoint(e) => write!(f, "bad endpoint {e:?}"),
            ClientError::Unreachable(e) => write!(f, "cannot reach {e}"),
            ClientError::NoSuchKey(k) => write!(f, "no such key {k:?}"),
        }
    }
}

type Objects = BTreeMap<String, (String, SystemTime)>;

/// The "servers" of this process, by name.
fn servers() -> &'static Mutex<HashMap<String, Arc<RwLock<Objects>>>> {
    static SERVERS: OnceLock<Mutex<HashMap<String, Arc<RwLock<Objects>>>>> = OnceLock::new();
    SERVERS.get_or_init(Mutex::default)
}

/// A connection to one server.
#[derive(Debug, Clone)]
pub struct Client {
    objects: Arc<RwLock<Objects>>,
}

impl Client {
    /// Connects to `endpoint` (`mem://<name>`).
    pub fn connect(endpoint: &str) -> Result<Client, ClientError> {
        let name = endpoint
            .strip_prefix("mem://")
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ClientError::BadEndpoint(endpoint.to_string()))?;
        if name == "unreachable" {
            return Err(ClientError::Unreachable(endpoint.to_string()));
        }
        let mut servers = servers().lock().unwrap_or_else(|p| p.into_inner());
        let objects = servers.entry(name.to_string()).or_default().clone();
        Ok(Client { objects })
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &str, value: &str) -> Result<(), ClientError> {
        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
        objects.insert(key.to_string(), (value.to_string(), SystemTime::now()));
        Ok(())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<String, ClientError> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        objects
            .get(key)
            .map(|(value, _)| value.clone())
            .ok_or_else(|| ClientError::NoSuchKey(key.to_string()))
    }

    /// Deletes `key`; answers whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
        Ok(objects.remove(key).is_some())
    }

    /// Every key starting with `prefix`, with when it was written.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>, ClientError> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (_, written))| (key.clone(), *written))
            .collect())
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), ClientError> {
        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
        objects.retain(|key, _| !key.starts_with(prefix));
        Ok(())
    }
}
