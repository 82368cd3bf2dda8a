//! The statehost host: configuration, plugin loading, the backend calls'
//! limits, the metadata stores, and the task-state and asset-state
//! accessors.
//!
//! ```no_run
//! use serde_json::json;
//! use statehost::{StateHost, api::TaskScope, config::Config};
//!
//! # fn main() -> Result<(), statehost::Error> {
//! let config = Config::load("statehost.toml".as_ref())?;
//! let host = StateHost::open(&config)?;
//! let scope = TaskScope::new("etl", "manual__1", "extract", -1).expect("valid ids");
//! let state = host.task_state(scope);
//! state.set("job_id", &json!("job-42"))?;
//! assert_eq!(state.get("job_id")?, Some(json!("job-42")));
//! # Ok(())
//! # }
//! ```
//!
//! The crate is organised by concern: [`config`] (the file and the
//! environment), [`plugin`] (finding, checking and loading a backend
//! library), [`backend`] (the deadline and in-flight cap of every backend
//! call), [`store`] (the metadata databases) and [`state`] (the accessors
//! and gc, which keep the consistency guarantees).

pub mod backend;
pub mod config;
mod error;
pub mod plugin;
pub mod state;
pub mod store;

pub use error::{Error, Result};
pub use state::{AssetState, AssetStates, GcReport, Retention, StateHost, TaskState, envelope};
pub use statehost_plugin_api as api;
