//! Where state belongs: task and asset scopes, and key validation.

use std::fmt;

use crate::BackendError;

/// The longest key accepted, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The longest dag id, run id or task id accepted, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// The longest asset name or uri accepted, in UTF-8 bytes.
pub const MAX_ASSET_BYTES: usize = 1500;

/// Checks a state key: 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 without control
/// characters. `/` is allowed; backends must encode it (see
/// [`layout`](crate::layout)).
pub fn validate_key(key: &str) -> Result<(), BackendError> {
    check_text("key", key, MAX_KEY_BYTES)
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), BackendError> {
    if text.is_empty() {
        return Err(BackendError::invalid_input(format!(
            "{what} is empty; give 1 to {max} bytes"
        )));
    }
    if text.len() > max {
        return Err(BackendError::invalid_input(format!(
            "{what} is {} bytes long; the limit is {max} bytes",
            text.len()
        )));
    }
    // Printable ASCII (the usual case) has no control characters; only
    // other text needs decoding to check.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(BackendError::invalid_input(format!(
            "{what} {text:?} contains the control character {c:?}; remove it"
        )));
    }
    Ok(())
}

/// The scope of task state: one task instance, stable across its retries.
///
/// `map_index` is `-1` for a task that is not mapped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskScope {
    // The three ids in one buffer (one allocation per scope: scopes are
    // rebuilt on every call that crosses the plugin boundary).
    ids: String,
    run_start: usize,
    task_start: usize,
    map_index: i64,
}

impl fmt::Debug for TaskScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskScope")
            .field("dag_id", &self.dag_id())
            .field("run_id", &self.run_id())
            .field("task_id", &self.task_id())
            .field("map_index", &self.map_index)
            .finish()
    }
}

impl TaskScope {
    /// A validated task scope: each id 1 to [`MAX_ID_BYTES`] bytes without
    /// control characters, `map_index >= -1`.
    pub fn new(
        dag_id: impl AsRef<str>,
        run_id: impl AsRef<str>,
        task_id: impl AsRef<str>,
        map_index: i64,
    ) -> Result<Self, BackendError> {
        let (dag_id, run_id, task_id) = (dag_id.as_ref(), run_id.as_ref(), task_id.as_ref());
        check_text("dag_id", dag_id, MAX_ID_BYTES)?;
        check_text("run_id", run_id, MAX_ID_BYTES)?;
        check_text("task_id", task_id, MAX_ID_BYTES)?;
        if map_index < -1 {
            return Err(BackendError::invalid_input(format!(
                "map_index is {map_index}; use -1 for a task that is not mapped, or 0 and above"
            )));
        }
        let mut ids = String::with_capacity(dag_id.len() + run_id.len() + task_id.len());
        ids.push_str(dag_id);
        ids.push_str(run_id);
        ids.push_str(task_id);
        Ok(TaskScope {
            ids,
            run_start: dag_id.len(),
            task_start: dag_id.len() + run_id.len(),
            map_index,
        })
    }

    /// The dag id.
    pub fn dag_id(&self) -> &str {
        &self.ids[..self.run_start]
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.ids[self.run_start..self.task_start]
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.ids[self.task_start..]
    }

    /// The map index; `-1` when the task is not mapped.
    pub fn map_index(&self) -> i64 {
        self.map_index
    }

    /// The same task with another map index.
    pub fn with_map_index(&self, map_index: i64) -> Result<Self, BackendError> {
        TaskScope::new(self.dag_id(), self.run_id(), self.task_id(), map_index)
    }
}

impl fmt::Display for TaskScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {}/{}/{}[{}]",
            self.dag_id(),
            self.run_id(),
            self.task_id(),
            self.map_index
        )
    }
}

/// The scope of asset state: an asset, by name and/or uri.
///
/// A backend must derive its storage location from [`AssetScope::identity`]
/// only, so that the host's choice of canonical identity decides the
/// namespace (the host always passes the same scope for the same asset).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetScope {
    name: Option<String>,
    uri: Option<String>,
}

/// Which attribute identifies an asset's storage namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetIdentity<'a> {
    /// The asset's name (preferred when both are known).
    Name(&'a str),
    /// The asset's uri.
    Uri(&'a str),
}

impl AssetScope {
    /// A validated asset scope: at least one of name and uri, each 1 to
    /// [`MAX_ASSET_BYTES`] bytes without control characters.
    pub fn new(name: Option<String>, uri: Option<String>) -> Result<Self, BackendError> {
        if name.is_none() && uri.is_none() {
            return Err(BackendError::invalid_input(
                "an asset needs a name, a uri, or both",
            ));
        }
        if let Some(name) = &name {
            check_text("asset name", name, MAX_ASSET_BYTES)?;
        }
        if let Some(uri) = &uri {
            check_text("asset uri", uri, MAX_ASSET_BYTES)?;
        }
        Ok(AssetScope { name, uri })
    }

    /// An asset known by its name.
    pub fn by_name(name: impl Into<String>) -> Result<Self, BackendError> {
        AssetScope::new(Some(name.into()), None)
    }

    /// An asset known by its uri.
    pub fn by_uri(uri: impl Into<String>) -> Result<Self, BackendError> {
        AssetScope::new(None, Some(uri.into()))
    }

    /// The asset's name, if known.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The asset's uri, if known.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// The attribute that names this asset's storage namespace: the name when
    /// there is one, else the uri.
    pub fn identity(&self) -> AssetIdentity<'_> {
        match (&self.name, &self.uri) {
            (Some(name), _) => AssetIdentity::Name(name),
            (None, Some(uri)) => AssetIdentity::Uri(uri),
            (None, None) => unreachable!("AssetScope::new requires a name or a uri"),
        }
    }
}

impl fmt::Display for AssetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.uri) {
            (Some(name), Some(uri)) => write!(f, "asset {name} ({uri})"),
            (Some(name), None) => write!(f, "asset {name}"),
            (None, Some(uri)) => write!(f, "asset {uri}"),
            (None, None) => f.write_str("asset ?"),
        }
    }
}

/// Either scope, for operations that apply to both (delete, clear, list).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Task state.
    Task(TaskScope),
    /// Asset state.
    Asset(AssetScope),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Task(t) => t.fmt(f),
            Scope::Asset(a) => a.fmt(f),
        }
    }
}

impl From<TaskScope> for Scope {
    fn from(scope: TaskScope) -> Self {
        Scope::Task(scope)
    }
}

impl From<AssetScope> for Scope {
    fn from(scope: AssetScope) -> Self {
        Scope::Asset(scope)
    }
}

/// A task scope, borrowed: what a backend receives. Obtained from a
/// validated [`TaskScope`] (see [`TaskScope::as_ref`]), so its ids are
/// within the limits and free of control characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef<'a> {
    dag_id: &'a str,
    run_id: &'a str,
    task_id: &'a str,
    map_index: i64,
}

impl<'a> TaskRef<'a> {
    /// Ids the host has already validated (the plugin side of the
    /// boundary rebuilds scopes with this, without copying).
    pub(crate) fn trusted(
        dag_id: &'a str,
        run_id: &'a str,
        task_id: &'a str,
        map_index: i64,
    ) -> Self {
        TaskRef {
            dag_id,
            run_id,
            task_id,
            map_index,
        }
    }

    /// The dag id.
    pub fn dag_id(&self) -> &'a str {
        self.dag_id
    }

    /// The run id.
    pub fn run_id(&self) -> &'a str {
        self.run_id
    }

    /// The task id.
    pub fn task_id(&self) -> &'a str {
        self.task_id
    }

    /// The map index; `-1` when the task is not mapped.
    pub fn map_index(&self) -> i64 {
        self.map_index
    }

    /// An owned copy.
    pub fn to_owned(&self) -> TaskScope {
        let mut ids =
            String::with_capacity(self.dag_id.len() + self.run_id.len() + self.task_id.len());
        ids.push_str(self.dag_id);
        ids.push_str(self.run_id);
        ids.push_str(self.task_id);
        TaskScope {
            ids,
            run_start: self.dag_id.len(),
            task_start: self.dag_id.len() + self.run_id.len(),
            map_index: self.map_index,
        }
    }
}

impl fmt::Display for TaskRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {}/{}/{}[{}]",
            self.dag_id, self.run_id, self.task_id, self.map_index
        )
    }
}

impl TaskScope {
    /// The scope, borrowed, as backends receive it.
    pub fn as_ref(&self) -> TaskRef<'_> {
        TaskRef::trusted(self.dag_id(), self.run_id(), self.task_id(), self.map_index)
    }
}

impl fmt::Display for AssetIdentity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssetIdentity::Name(name) => write!(f, "asset {name}"),
            AssetIdentity::Uri(uri) => write!(f, "asset {uri}"),
        }
    }
}

impl AssetIdentity<'_> {
    /// An owned asset scope with just this identity.
    pub fn to_owned(&self) -> AssetScope {
        match *self {
            AssetIdentity::Name(name) => AssetScope {
                name: Some(name.to_string()),
                uri: None,
            },
            AssetIdentity::Uri(uri) => AssetScope {
                name: None,
                uri: Some(uri.to_string()),
            },
        }
    }
}

/// Either scope, borrowed: what a backend receives. An asset is passed by
/// its [identity](AssetScope::identity) only, which is all a backend may
/// derive a storage location from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeRef<'a> {
    /// Task state.
    Task(TaskRef<'a>),
    /// Asset state.
    Asset(AssetIdentity<'a>),
}

impl ScopeRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Scope {
        match self {
            ScopeRef::Task(t) => Scope::Task(t.to_owned()),
            ScopeRef::Asset(a) => Scope::Asset(a.to_owned()),
        }
    }
}

impl fmt::Display for ScopeRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeRef::Task(t) => t.fmt(f),
            ScopeRef::Asset(a) => a.fmt(f),
        }
    }
}

impl Scope {
    /// The scope, borrowed, as backends receive it.
    pub fn as_ref(&self) -> ScopeRef<'_> {
        match self {
            Scope::Task(t) => ScopeRef::Task(t.as_ref()),
            Scope::Asset(a) => ScopeRef::Asset(a.identity()),
        }
    }
}

/// Where one value lives: a scope and a key in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateKey<'a> {
    /// The scope.
    pub scope: ScopeRef<'a>,
    /// The key (validated: see [`validate_key`]).
    pub key: &'a str,
}

impl<'a> StateKey<'a> {
    /// A key of a task's state.
    pub fn task(scope: &'a TaskScope, key: &'a str) -> Self {
        StateKey {
            scope: ScopeRef::Task(scope.as_ref()),
            key,
        }
    }

    /// A key of an asset's state (in the asset's canonical namespace).
    pub fn asset(scope: &'a AssetScope, key: &'a str) -> Self {
        StateKey {
            scope: ScopeRef::Asset(scope.identity()),
            key,
        }
    }
}

impl fmt::Display for StateKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {:?}", self.scope, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn keys_are_checked_for_length_and_control_characters() {
        assert!(validate_key("a/b/../c d é").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        for bad in ["", "a\nb", "\u{7f}", &"k".repeat(MAX_KEY_BYTES + 1)] {
            let err = validate_key(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        // Multi-byte characters count in bytes, not chars.
        assert!(validate_key(&"é".repeat(257)).is_err());
    }

    #[test]
    fn scopes_reject_empty_ids_and_bad_map_index() {
        assert!(TaskScope::new("d", "r", "t", -1).is_ok());
        assert!(TaskScope::new("", "r", "t", 0).is_err());
        assert!(TaskScope::new("d", "r", "t", -2).is_err());
        assert!(AssetScope::new(None, None).is_err());
        assert!(AssetScope::new(Some(String::new()), None).is_err());
        let scope = TaskScope::new("dag", "run", "task", 4).unwrap();
        assert_eq!(
            (
                scope.dag_id(),
                scope.run_id(),
                scope.task_id(),
                scope.map_index()
            ),
            ("dag", "run", "task", 4)
        );
        // The ids are kept apart: moving a character between them is another scope.
        assert_ne!(scope, TaskScope::new("da", "grun", "task", 4).unwrap());
        let both = AssetScope::new(Some("n".into()), Some("s3://b/k".into())).unwrap();
        assert_eq!(both.identity(), AssetIdentity::Name("n"));
        assert_eq!(
            AssetScope::by_uri("s3://b/k").unwrap().identity(),
            AssetIdentity::Uri("s3://b/k")
        );
    }
}
