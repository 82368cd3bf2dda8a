//! One module per group of commands.

pub mod airflow_gc;
pub mod conformance;
pub mod demo;
pub mod gc;
pub mod plugins;
pub mod rows;
pub mod state;
