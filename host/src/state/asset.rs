//! Asset state: one asset's keys, shared by every task that names the
//! asset, by its name or by its uri. Asset state never expires.
//!
//! An asset is registered (its identity fixed, a name or uri it lacked
//! bound) only by a `set`, in the same transaction as the row: reads,
//! deletes and clears of an asset never used register nothing.

use std::sync::OnceLock;

use serde_json::Value;
use statehost_plugin_api::AssetScope;

use super::{Place, StateHost};
use crate::error::{Error, Result};
use crate::store::canonical_when_new;

/// The state of one asset.
#[derive(Debug, Clone)]
pub struct AssetState {
    host: StateHost,
    /// As the caller named it.
    named: AssetScope,
    /// Its canonical scope, once the registry knows it.
    canonical: OnceLock<AssetScope>,
}

impl AssetState {
    pub(crate) fn new(host: StateHost, named: AssetScope) -> Result<Self> {
        let state = AssetState {
            host,
            named,
            canonical: OnceLock::new(),
        };
        // A name and uri of two different assets is an error now, not at
        // the first call.
        state.registered()?;
        Ok(state)
    }

    /// The asset's canonical scope, if it is registered (asked of the store
    /// until it is, then remembered: a registration never changes).
    fn registered(&self) -> Result<Option<&AssetScope>> {
        if let Some(canonical) = self.canonical.get() {
            return Ok(Some(canonical));
        }
        match self.host.inner().store.find_asset(&self.named)? {
            Some(canonical) => Ok(Some(self.canonical.get_or_init(|| canonical))),
            None => Ok(None),
        }
    }

    /// The asset's canonical scope: the registered one, or the one a first
    /// `set` would register.
    pub fn scope(&self) -> AssetScope {
        match self.registered() {
            Ok(Some(canonical)) => canonical.clone(),
            _ => canonical_when_new(&self.named).unwrap_or_else(|_| self.named.clone()),
        }
    }

    /// The asset as the caller named it.
    pub fn named(&self) -> &AssetScope {
        &self.named
    }

    /// The value of `key`, or `None`.
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        let Some(canonical) = self.registered()? else {
            super::Inner::check_key(key)?;
            return Ok(None);
        };
        self.host.inner().get(
            Place::Asset {
                named: &self.named,
                canonical,
            },
            key,
        )
    }

    /// Sets `key` (registering the asset on first use). Asset state never
    /// expires.
    pub fn set(&self, key: &str, value: &Value) -> Result<()> {
        let fresh;
        let canonical = match self.registered()? {
            Some(canonical) => canonical,
            None => {
                fresh = canonical_when_new(&self.named)?;
                &fresh
            }
        };
        self.host.inner().set(
            Place::Asset {
                named: &self.named,
                canonical,
            },
            key,
            value,
            None,
        )?;
        let _ = self.canonical.set(canonical.clone());
        Ok(())
    }

    /// Removes `key` and its object; removing a missing key succeeds.
    pub fn delete(&self, key: &str) -> Result<()> {
        let Some(canonical) = self.registered()? else {
            return super::Inner::check_key(key);
        };
        self.host.inner().delete(
            Place::Asset {
                named: &self.named,
                canonical,
            },
            key,
        )
    }

    /// Removes every key of the asset and their objects.
    pub fn clear(&self) -> Result<()> {
        let Some(canonical) = self.registered()? else {
            return Ok(());
        };
        let inner = self.host.inner();
        if let Some(fencing) = &inner.legacy {
            return super::legacy::clear_asset(inner, fencing, canonical);
        }
        let rows = inner.store.clear_asset(canonical)?;
        inner.cleared(rows)
    }
}

/// The states of a task's assets.
#[derive(Debug, Clone)]
pub struct AssetStates {
    states: Vec<AssetState>,
}

impl AssetStates {
    pub(crate) fn new(host: &StateHost, assets: Vec<AssetScope>) -> Result<Self> {
        let states = assets
            .into_iter()
            .map(|a| AssetState::new(host.clone(), a))
            .collect::<Result<Vec<_>>>()?;
        Ok(AssetStates { states })
    }

    /// The state of the asset known by `asset` (name or uri of one of the
    /// task's assets).
    pub fn get(&self, asset: &AssetScope) -> Result<&AssetState> {
        self.states
            .iter()
            .find(|state| {
                let matches = |scope: &AssetScope| {
                    asset.name().is_some_and(|n| scope.name() == Some(n))
                        || asset.uri().is_some_and(|u| scope.uri() == Some(u))
                };
                matches(&state.named) || matches(&state.scope())
            })
            .ok_or_else(|| Error::InvalidInput {
                message: format!("{asset} is not one of this task's assets"),
            })
    }

    /// The state of the task's only asset.
    pub fn single(&self) -> Result<&AssetState> {
        match self.states.as_slice() {
            [only] => Ok(only),
            states => Err(Error::InvalidInput {
                message: format!(
                    "this task has {} assets ({}), so the single-asset shorthand is ambiguous; pick one by name or uri",
                    states.len(),
                    states
                        .iter()
                        .map(|s| s.named.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Every asset's state.
    pub fn iter(&self) -> impl Iterator<Item = &AssetState> {
        self.states.iter()
    }
}
