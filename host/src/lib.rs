//! The statehost host: configuration, plugin loading, and the one cached
//! backend of a process.
//!
//! ```no_run
//! use statehost::{config::Config, plugin};
//!
//! # fn main() -> Result<(), statehost::Error> {
//! let config = Config::load("statehost.toml".as_ref())?;
//! if let Some(backend) = plugin::shared_backend(&config)? {
//!     println!("using {} {}", backend.metadata().name, backend.metadata().version);
//! }
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod envelope;
mod error;
pub mod memstore;
#[cfg(feature = "postgres")]
pub mod pgstore;
pub mod plugin;
pub mod state;
pub mod store;
pub mod timeout;

pub use error::{Error, Result};
pub use state::{AssetState, AssetStates, GcReport, Retention, StateHost, TaskState};
pub use statehost_plugin_api as api;
