//! Task state: one task instance's keys, kept for a retention period.

use std::time::Duration;

use serde_json::Value;
use statehost_plugin_api::TaskScope;

use super::{Place, StateHost};
use crate::error::Result;

/// How long a task-state value is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// `[state_store] default_retention_days`.
    #[default]
    Default,
    /// This long after the write (by the database's clock).
    For(Duration),
    /// Forever.
    Never,
}

/// The state of one task instance.
#[derive(Debug, Clone)]
pub struct TaskState {
    host: StateHost,
    scope: TaskScope,
}

impl TaskState {
    pub(crate) fn new(host: StateHost, scope: TaskScope) -> Self {
        TaskState { host, scope }
    }

    /// The scope.
    pub fn scope(&self) -> &TaskScope {
        &self.scope
    }

    fn place(&self) -> Place<'_> {
        Place::Task(&self.scope)
    }

    /// The value of `key`, or `None` (also once it expired).
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        self.host.inner().get(self.place(), key)
    }

    /// Sets `key` with the default retention.
    pub fn set(&self, key: &str, value: &Value) -> Result<()> {
        self.set_with_retention(key, value, Retention::Default)
    }

    /// Sets `key`, kept as `retention` says.
    pub fn set_with_retention(&self, key: &str, value: &Value, retention: Retention) -> Result<()> {
        let retention_ms = match retention {
            Retention::Never => None,
            Retention::For(d) => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Retention::Default => match self.host.settings().default_retention_days {
                0 => None,
                days => Some(i64::from(days) * 86_400_000),
            },
        };
        self.host
            .inner()
            .set(self.place(), key, value, retention_ms)
    }

    /// Removes `key` and its object; removing a missing key succeeds.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.host.inner().delete(self.place(), key)
    }

    /// Removes every key of this map index, or with `all_map_indices` of
    /// every map index of the task, and their objects.
    pub fn clear(&self, all_map_indices: bool) -> Result<()> {
        let inner = self.host.inner();
        if let Some(fencing) = &inner.legacy {
            return super::legacy::clear_task(inner, fencing, &self.scope, all_map_indices);
        }
        let rows = inner.store.clear_task(&self.scope, all_map_indices)?;
        inner.cleared(rows)
    }
}
