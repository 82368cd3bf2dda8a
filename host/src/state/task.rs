//! Task state: one task instance's keys, kept for a retention period.

use std::time::Duration;

use serde_json::Value;
use statehost_plugin_api::TaskScope;

use super::{Place, StateHost};
use crate::error::{Error, Result};

/// How long a task-state value is kept.
///
/// A zero duration means "never expire", as `default_retention_days = 0`
/// does; a duration longer than [`MAX_RETENTION`] cannot be stored and is
/// an error, never a wrap to some other time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// `[state_store] default_retention_days`.
    #[default]
    Default,
    /// This long after the write (by the database's clock); zero is
    /// [`Never`](Retention::Never).
    For(Duration),
    /// Forever.
    Never,
}

/// The longest retention: 1000 years, so every expiry stays a time the
/// stores and RFC 3339 can represent.
pub const MAX_RETENTION: Duration = Duration::from_secs(MAX_RETENTION_DAYS * 86_400);

/// [`MAX_RETENTION`] in days.
pub const MAX_RETENTION_DAYS: u64 = 365_000;

impl Retention {
    /// A retention of `days` days: 0 is [`Never`](Retention::Never), more
    /// than [`MAX_RETENTION_DAYS`] an error.
    pub fn days(days: u64) -> Result<Retention> {
        match days.checked_mul(86_400) {
            Some(secs) => Retention::For(Duration::from_secs(secs)).checked(),
            None => Err(too_long(format!("{days} days"))),
        }
    }

    /// The retention as milliseconds (`None`: never), given the default in
    /// days; an error when it is longer than [`MAX_RETENTION`].
    pub fn millis(self, default_days: u32) -> Result<Option<i64>> {
        let retention = match self {
            Retention::Default if default_days == 0 => Retention::Never,
            Retention::Default => {
                Retention::For(Duration::from_secs(u64::from(default_days) * 86_400))
            }
            other => other,
        };
        Ok(match retention.checked()? {
            Retention::For(d) => {
                Some(i64::try_from(d.as_millis()).map_err(|_| too_long(format!("{d:?}")))?)
            }
            _ => None,
        })
    }

    /// Zero as never, and the upper bound checked.
    fn checked(self) -> Result<Retention> {
        match self {
            Retention::For(d) if d.is_zero() => Ok(Retention::Never),
            Retention::For(d) if d > MAX_RETENTION => {
                Err(too_long(format!("{} days", d.as_secs() / 86_400)))
            }
            // Below a millisecond: keep it at least that long.
            Retention::For(d) if d < Duration::from_millis(1) => {
                Ok(Retention::For(Duration::from_millis(1)))
            }
            other => Ok(other),
        }
    }
}

fn too_long(what: String) -> Error {
    Error::InvalidInput {
        message: format!(
            "a retention of {what} is longer than the {MAX_RETENTION_DAYS} days (1000 years) a value can be kept for a time; keep it forever instead (--never-expire, Retention::Never)"
        ),
    }
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

    /// Sets `key`, kept as `retention` says (an error, with nothing
    /// written, when the retention is longer than [`MAX_RETENTION`]).
    pub fn set_with_retention(&self, key: &str, value: &Value, retention: Retention) -> Result<()> {
        let retention_ms = retention.millis(self.host.settings().default_retention_days)?;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Over the whole range of durations: a retention is never, or a
        /// positive number of milliseconds no longer than the maximum, or
        /// an error; never a wrapped or negative time.
        #[test]
        fn every_duration_is_kept_as_itself_or_refused(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            match Retention::For(d).millis(30) {
                Ok(None) => prop_assert!(d.is_zero()),
                Ok(Some(ms)) => {
                    prop_assert!(ms >= 1);
                    prop_assert!(ms as u128 >= d.as_millis());
                    prop_assert!(ms as u128 <= MAX_RETENTION.as_millis());
                }
                Err(e) => {
                    prop_assert!(d > MAX_RETENTION, "{d:?}: {e}");
                    prop_assert!(e.is_bad_input());
                }
            }
        }

        #[test]
        fn every_number_of_days_is_kept_or_refused(days in any::<u64>()) {
            match Retention::days(days).and_then(|r| r.millis(30)) {
                Ok(None) => prop_assert_eq!(days, 0),
                Ok(Some(ms)) => prop_assert_eq!(ms as u128, u128::from(days) * 86_400_000),
                Err(_) => prop_assert!(days > MAX_RETENTION_DAYS),
            }
        }

        #[test]
        fn every_default_is_kept_or_refused(days in any::<u32>()) {
            match Retention::Default.millis(days) {
                Ok(None) => prop_assert_eq!(days, 0),
                Ok(Some(ms)) => prop_assert_eq!(ms as u128, u128::from(days) * 86_400_000),
                Err(_) => prop_assert!(u64::from(days) > MAX_RETENTION_DAYS),
            }
        }
    }

    #[test]
    fn zero_means_never_and_the_edges_hold() {
        assert_eq!(Retention::days(0).unwrap(), Retention::Never);
        assert_eq!(Retention::For(Duration::ZERO).millis(30).unwrap(), None);
        assert_eq!(Retention::Default.millis(0).unwrap(), None);
        assert!(Retention::days(MAX_RETENTION_DAYS).is_ok());
        assert!(Retention::days(MAX_RETENTION_DAYS + 1).is_err());
        assert!(Retention::days(u64::MAX).is_err());
        assert_eq!(
            Retention::For(Duration::from_nanos(1)).millis(30).unwrap(),
            Some(1)
        );
    }
}
