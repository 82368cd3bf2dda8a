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
mod error;
pub mod plugin;

pub use error::{Error, Result};
pub use statehost_plugin_api as api;
