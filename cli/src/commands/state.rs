//! `task-state` and `asset-state`: get, set, delete and clear one scope's
//! keys.

use std::io::Read;
use std::time::Duration;

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
    serde_json::from_str(&text).map_err(|e| {
        Failure::Input(format!(
            "VALUE is not JSON ({e}); quote strings as JSON, e.g. '\"text\"'"
        ))
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

/// Reads need an existing database; writes create one.
fn open(config: &Config, only_reads: bool) -> Result<StateHost, Failure> {
    Ok(if only_reads {
        StateHost::open_existing(config)?
    } else {
        StateHost::open(config)?
    })
}

/// `statehost task-state ...`
pub fn task(config: &Config, task: TaskArgs, action: TaskAction, out: &mut Out) -> Outcome {
    let scope = TaskScope::new(task.dag_id, task.run_id, task.task_id, task.map_index)
        .map_err(|e| Failure::Input(format!("task-state: {}", e.message())))?;
    // Check the value before opening anything.
    let value = match &action {
        TaskAction::Set { value, .. } => Some(parse_value(value)?),
        _ => None,
    };
    let host = open(config, matches!(action, TaskAction::Get { .. }))?;
    let state = host.task_state(scope);
    match action {
        TaskAction::Get { key } => print_value(state.get(&key)?, out),
        TaskAction::Set {
            key,
            retention_days,
            never_expire,
            ..
        } => {
            let retention = match (retention_days, never_expire) {
                (_, true) => Retention::Never,
                (Some(days), false) => {
                    Retention::For(Duration::from_secs(days.saturating_mul(86_400)))
                }
                (None, false) => Retention::Default,
            };
            let value = value.expect("parsed above");
            Ok(state.set_with_retention(&key, &value, retention)?)
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
        AssetAction::Set { value, .. } => Some(parse_value(value)?),
        _ => None,
    };
    let host = open(config, matches!(action, AssetAction::Get { .. }))?;
    let state = host.asset_state(&scope)?;
    match action {
        AssetAction::Get { key } => print_value(state.get(&key)?, out),
        AssetAction::Set { key, .. } => Ok(state.set(&key, &value.expect("parsed above"))?),
        AssetAction::Delete { key } => Ok(state.delete(&key)?),
        AssetAction::Clear => Ok(state.clear()?),
    }
}
