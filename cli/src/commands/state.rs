//! `task-state` and `asset-state`: get, set, delete and clear one scope's
//! keys.

use std::io::Read;

use serde_json::Value;
use statehost::api::{AssetScope, TaskScope};
use statehost::config::Config;
use statehost::{Retention, StateHost};

use crate::args::{AssetAction, AssetArgs, TaskAction, TaskArgs};
use crate::output::{Failure, Out, Outcome};
use crate::say;

/// `VALUE` as JSON; `-` reads it from stdin.
fn parse_value(text: &str) -> Result<Value, Failure> {
    let text = if text == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| Failure::Input(format!("cannot read the value from stdin: {e}")))?;
        buf
    } else {
        text.to_string()
    };
    statehost::state::parse_value(&text).map_err(|e| match e {
        statehost::Error::InvalidInput { message } => {
            Failure::Input(message.replacen("the value", "VALUE", 1))
        }
        other => other.into(),
    })
}

/// Prints a value read back as JSON; an absent key prints nothing and
/// exits 1.
fn print_value(value: Option<Value>, out: &mut Out) -> Outcome {
    match value {
        Some(v) => Ok(say!(out, "{v}")?),
        None => Err(Failure::No(None)),
    }
}

/// What a command does to the database, which decides how it is opened.
enum Access {
    /// Reads only: an existing database, opened read-only (a mistyped
    /// path creates nothing, and a read-only database still reads).
    Read,
    /// Deletes: an existing database (there is nothing to delete in a new
    /// one, and a mistyped path must not create it).
    Delete,
    /// Writes: the database is created if it is not there.
    Write,
}

fn open(config: &Config, access: Access) -> Result<StateHost, Failure> {
    Ok(match access {
        Access::Read => StateHost::open_read_only(config)?,
        Access::Delete => StateHost::open_existing(config)?,
        Access::Write => StateHost::open(config)?,
    })
}

/// What a `set` writes, checked before anything is opened.
struct Write {
    key: String,
    value: Value,
    retention: Retention,
}

fn checked_key(key: &str) -> Result<(), Failure> {
    statehost::api::validate_key(key).map_err(|e| Failure::Input(e.message().to_string()))
}

/// `statehost task-state ...`
pub fn task(config: &Config, task: TaskArgs, action: TaskAction, out: &mut Out) -> Outcome {
    let scope = TaskScope::new(task.dag_id, task.run_id, task.task_id, task.map_index)
        .map_err(|e| Failure::Input(format!("task-state: {}", e.message())))?;
    // Every input is checked before anything is opened (or created).
    let write = match &action {
        TaskAction::Set {
            key,
            value,
            retention_days,
            never_expire,
        } => {
            checked_key(key)?;
            let retention = match (retention_days, never_expire) {
                (_, true) => Retention::Never,
                (Some(days), false) => Retention::days(*days)?,
                (None, false) => Retention::Default,
            };
            Some(Write {
                key: key.clone(),
                value: parse_value(value)?,
                retention,
            })
        }
        TaskAction::Get { key } | TaskAction::Delete { key } => {
            checked_key(key)?;
            None
        }
        TaskAction::Clear { .. } => None,
    };
    let host = open(
        config,
        match action {
            TaskAction::Get { .. } => Access::Read,
            TaskAction::Set { .. } => Access::Write,
            TaskAction::Delete { .. } | TaskAction::Clear { .. } => Access::Delete,
        },
    )?;
    let state = host.task_state(scope);
    match action {
        TaskAction::Get { key } => print_value(state.get(&key)?, out),
        TaskAction::Set { .. } => {
            let w = write.expect("checked above");
            Ok(state.set_with_retention(&w.key, &w.value, w.retention)?)
        }
        TaskAction::Delete { key } => Ok(state.delete(&key)?),
        TaskAction::Clear { all_map_indices } => Ok(state.clear(all_map_indices)?),
    }
}

/// `statehost asset-state ...`
pub fn asset(config: &Config, asset: AssetArgs, action: AssetAction, out: &mut Out) -> Outcome {
    let scope = AssetScope::new(asset.name, asset.uri)
        .map_err(|e| Failure::Input(format!("asset-state: {}", e.message())))?;
    let value = match &action {
        AssetAction::Set { key, value } => {
            checked_key(key)?;
            Some(parse_value(value)?)
        }
        AssetAction::Get { key } | AssetAction::Delete { key } => {
            checked_key(key)?;
            None
        }
        AssetAction::Clear => None,
    };
    let host = open(
        config,
        match action {
            AssetAction::Get { .. } => Access::Read,
            AssetAction::Set { .. } => Access::Write,
            AssetAction::Delete { .. } | AssetAction::Clear => Access::Delete,
        },
    )?;
    let state = host.asset_state(&scope)?;
    match action {
        AssetAction::Get { key } => print_value(state.get(&key)?, out),
        AssetAction::Set { key, .. } => Ok(state.set(&key, &value.expect("checked above"))?),
        AssetAction::Delete { key } => Ok(state.delete(&key)?),
        AssetAction::Clear => Ok(state.clear()?),
    }
}
