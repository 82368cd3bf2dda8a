//! End-to-end tests: plugins built by a nested cargo build, loaded from a
//! temporary plugin directory, driven through the library, worker
//! processes and the CLI. One test binary, one module per concern; the
//! helpers they share live in the `statehost_tests` crate (`tests/src`).
//!
//! Tests that need a server (PostgreSQL, moto, Azurite) are `#[ignore]`d,
//! so `cargo test` lists them as ignored with the variable that enables
//! them; `.ci/run` runs them with `--include-ignored`, where a missing
//! variable fails the test instead of skipping it.

mod author_kit;
mod bad_input;
mod cli;
mod defects;
mod durability;
mod faults;
mod guards;
mod history;
mod legacy;
mod object_store;
mod older_2x;
mod plugins;
mod postgres_tls;
mod secrets;
mod state;
