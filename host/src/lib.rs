//! The statehost host: configuration, plugin loading, the backend calls'
//! limits, the metadata stores, and the task-state and asset-state
//! accessors.
//!
//! From a configuration (the file a worker reads, here written on the
//! spot): task state kept in a SQLite database, values inline because no
//! backend is selected:
//!
//! ```
//! use serde_json::json;
//! use statehost::{StateHost, api::TaskScope, config::Config};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("statehost.toml");
//! std::fs::write(&file, "[database]\nurl = \"sqlite://state.db\"\n")?;
//!
//! let config = Config::load(&file)?;
//! let host = StateHost::open(&config)?;
//! let state = host.task_state(TaskScope::new("etl", "manual__1", "extract", -1)?);
//! state.set("job_id", &json!("job-42"))?;
//! assert_eq!(state.get("job_id")?, Some(json!("job-42")));
//! assert!(dir.path().join("state.db").exists());
//! # Ok(())
//! # }
//! ```
//!
//! With `[workers] state_backend = "fs"` the values go to the `fs` plugin's
//! files and the database keeps `{"__airflow_state_ref__": "<reference>"}`.
//! Embedding statehost, a host can also be built from parts: any metadata
//! store and a backend compiled into the program instead of loaded:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//!
//! use serde_json::json;
//! use statehost::api::{AssetScope, BackendError, Capabilities, PathStore};
//! use statehost::store::MemoryStore;
//! use statehost::{StateHost, envelope};
//!
//! #[derive(Default)]
//! struct Objects(Mutex<BTreeMap<String, String>>);
//!
//! impl PathStore for Objects {
//!     fn put(&self, path: &str, value: &str) -> Result<(), BackendError> {
//!         self.0.lock().unwrap().insert(path.into(), value.into());
//!         Ok(())
//!     }
//!     fn get(&self, path: &str) -> Result<String, BackendError> {
//!         self.0.lock().unwrap().get(path).cloned()
//!             .ok_or_else(|| BackendError::not_found(path.to_string()))
//!     }
//!     fn remove(&self, path: &str) -> Result<bool, BackendError> {
//!         Ok(self.0.lock().unwrap().remove(path).is_some())
//!     }
//!     fn remove_under(&self, prefix: &str) -> Result<(), BackendError> {
//!         let prefix = format!("{prefix}/");
//!         self.0.lock().unwrap().retain(|path, _| !path.starts_with(&prefix));
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = StateHost::builder(Arc::new(MemoryStore::new()))
//!     .in_process("objects", Objects::default(), Capabilities::NONE)
//!     .build();
//! let orders = host.asset_state(&AssetScope::by_name("orders")?)?;
//! orders.set("watermark", &json!({"offset": 1024}))?;
//! assert_eq!(orders.get("watermark")?, Some(json!({"offset": 1024})));
//!
//! // The row holds a reference to the backend's object, not the value.
//! let row = host.rows()?.rows.pop().expect("one row");
//! assert!(matches!(envelope::unwrap(&row.value)?, envelope::Stored::Reference(_)));
//! # Ok(())
//! # }
//! ```
//!
//! The crate is organised by concern: [`config`] (the file and the
//! environment), [`plugin`] (finding, checking and loading a backend
//! library), [`backend`] (the deadline and in-flight cap of every backend
//! call), [`store`] (the metadata databases) and [`state`] (the accessors
//! and gc, which keep the consistency guarantees).

#![deny(missing_docs)]

pub mod airflow_db;
pub mod backend;
pub mod bridge;
pub mod config;
mod error;
pub mod files;
pub mod ownership;
pub mod plugin;
pub mod process;
pub mod secrets;
pub mod state;
pub mod store;

pub use error::{Error, Result};
pub use state::{AssetState, AssetStates, GcReport, Retention, StateHost, TaskState, envelope};
pub use statehost_plugin_api as api;
