//! What a plugin says about itself before it is constructed.

use serde::{Deserialize, Serialize};

/// Optional operations a backend supports, as named flags.
///
/// On the wire capabilities travel as a list of names, so later versions can
/// add flags that older hosts simply ignore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`StateBackend::list`](crate::StateBackend::list) is implemented: the
    /// host's garbage collector can find objects that no row references.
    pub list: bool,
    /// [`StateBackend::sweep`](crate::StateBackend::sweep) is implemented:
    /// the garbage collector can remove leftovers of interrupted writes.
    pub sweep: bool,
    /// Every call ends in bounded time without waiting on I/O, the network
    /// or another process (values in this process's memory, for example):
    /// the host then runs its calls on the caller's thread, without
    /// `[workers] state_backend_timeout_ms`, which saves the hand-off to a
    /// pool thread (microseconds) on every call. A promise the host cannot
    /// check: a backend that declares it and hangs hangs its callers. Since
    /// 2.2; older hosts ignore it.
    pub never_blocks: bool,
}

impl Capabilities {
    /// No optional operations.
    pub const NONE: Capabilities = Capabilities {
        list: false,
        sweep: false,
        never_blocks: false,
    };
    /// Listing is supported.
    pub const LIST: Capabilities = Capabilities {
        list: true,
        sweep: false,
        never_blocks: false,
    };

    /// These capabilities and sweeping.
    pub const fn with_sweep(self) -> Capabilities {
        Capabilities {
            sweep: true,
            ..self
        }
    }

    /// These capabilities, and the promise that no call blocks (see
    /// [`never_blocks`](Capabilities::never_blocks)).
    pub const fn with_never_blocks(self) -> Capabilities {
        Capabilities {
            never_blocks: true,
            ..self
        }
    }

    /// The names of the supported capabilities.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.list {
            names.push("list".to_string());
        }
        if self.sweep {
            names.push("sweep".to_string());
        }
        if self.never_blocks {
            names.push("never_blocks".to_string());
        }
        names
    }

    /// Reads capability names; unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        let has = |name: &str| names.iter().any(|n| n.as_ref() == name);
        Capabilities {
            list: has("list"),
            sweep: has("sweep"),
            never_blocks: has("never_blocks"),
        }
    }
}

/// A plugin's self-description, readable without constructing the backend
/// (and so without options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The backend's name, as used in `[workers] state_backend`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The version of `statehost-plugin-api` it was built against.
    pub plugin_api_version: String,
    /// One line on what it stores and where.
    pub description: String,
    /// Names of optional operations it supports (`"list"`, `"sweep"`) and
    /// of its promises (`"never_blocks"`).
    pub capabilities: Vec<String>,
    /// Options whose values are secrets (see
    /// [`BackendPlugin::SECRET_OPTIONS`](crate::BackendPlugin::SECRET_OPTIONS)).
    /// Since 2.1.
    #[serde(default)]
    pub secret_options: Vec<String>,
}

impl Metadata {
    /// The capabilities as flags.
    pub fn capability_flags(&self) -> Capabilities {
        Capabilities::from_names(&self.capabilities)
    }
}
