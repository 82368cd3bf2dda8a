//! `rows`: the metadata store's rows as it holds them, envelopes visible.

use serde_json::{Value, json};
use statehost::config::Config;
use statehost::store::{Row, RowOwner};

use crate::output::{Out, Outcome, err_line, rfc3339_ms};
use crate::say;

/// A row's stored text as JSON: the inline value or the envelope. A row
/// that is not JSON (a damaged database) shows as its text.
fn stored_json(row: &Row) -> Value {
    serde_json::from_str(&row.value).unwrap_or_else(|_| Value::String(row.value.clone()))
}

fn row_json(row: &Row) -> Value {
    let scope = match &row.owner {
        RowOwner::Task(t) => json!({
            "kind": "task", "dag_id": t.dag_id(), "run_id": t.run_id(),
            "task_id": t.task_id(), "map_index": t.map_index(),
        }),
        RowOwner::Asset(a) => json!({"kind": "asset", "name": a.name(), "uri": a.uri()}),
    };
    json!({
        "scope": scope,
        "key": row.key,
        "value": stored_json(row),
        "updated_at": rfc3339_ms(row.updated_at),
        "expires_at": row.expires_at.map(rfc3339_ms),
    })
}

/// `statehost rows [--json]`
pub fn run(config: &Config, json: bool, out: &mut Out) -> Outcome {
    let store = statehost::state::open_read_only_store(config)?;
    let statehost::store::Rows { rows, unreadable } = store.rows()?;
    // A row that cannot be read is skipped and named: one damaged row does
    // not hide everyone else's.
    for bad in &unreadable {
        err_line(format_args!("warning: skipped {bad}"));
    }
    if json {
        out.json(&Value::Array(rows.iter().map(row_json).collect()))?;
    } else {
        if rows.is_empty() && unreadable.is_empty() {
            say!(out, "no rows in {}", store.describe())?;
        }
        for row in &rows {
            let scope = match &row.owner {
                RowOwner::Task(t) => t.to_string(),
                RowOwner::Asset(a) => a.to_string(),
            };
            say!(
                out,
                "{scope}  key={:?}  value={}  updated_at={}  expires_at={}",
                row.key,
                row.value,
                rfc3339_ms(row.updated_at),
                row.expires_at
                    .map_or_else(|| "never".to_string(), rfc3339_ms)
            )?;
        }
    }
    if !unreadable.is_empty() {
        err_line(format_args!(
            "warning: {} rows could not be read and were skipped; fix or delete them in the database",
            unreadable.len()
        ));
    }
    Ok(())
}
