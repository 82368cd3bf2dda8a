//! What Apache Airflow's common-io backend (`StateStoreObjectStorageBackend`
//! of `apache-airflow-providers-common-io`) wrote, for deployments that
//! switch from it (`common_io_paths = true`).
//!
//! common-io stores a value at `<base>/<dag_id>/<run_id>/<task_id>/<map
//! index>/<key>` (tasks) or `<base>/assets/<asset name or uri>/<key>`
//! (assets), every component percent-encoded as Python's
//! `urllib.parse.quote(s, safe="")` does, with `.gz` appended when it
//! compresses with gzip; the row's reference is the object's full URL. Below
//! its threshold the reference is the value's JSON text, which the host
//! reads as an inline value without asking the backend. With the plugin's
//! `url` on the same base, such references read back, and `delete` and
//! `clear` also remove the objects at common-io's paths; new writes use the
//! shared layout (under `v2/`, which no common-io path shares unless a DAG
//! is called `v2` and its run `task` or `asset`).

use std::io::Read;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use statehost_plugin_api::{AssetIdentity, BackendError, ScopeRef, StateKey};

/// What `quote(s, safe="")` leaves alone: letters, digits and `_.-~`.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// The suffixes of the compressions fsspec knows; only gzip is read.
const OTHER_COMPRESSIONS: &[&str] = &[".bz2", ".xz", ".lzma", ".zst", ".zip", ".lz4", ".sz"];

fn quote(s: &str) -> String {
    utf8_percent_encode(s, QUOTE).to_string()
}

/// The base URL common-io wrote under, as a prefix of its references.
#[derive(Debug, Clone)]
pub(crate) struct CommonIoPaths {
    base: url::Url,
}

impl CommonIoPaths {
    pub(crate) fn new(base: &url::Url) -> Self {
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        CommonIoPaths { base }
    }

    /// The path under the base of a reference common-io wrote (its object's
    /// URL; a user name in it, Airflow's connection id, is ignored), or
    /// `None` for any other reference.
    pub(crate) fn relative(&self, reference: &str) -> Option<String> {
        if !reference.contains("://") {
            return None;
        }
        let url = url::Url::parse(reference).ok()?;
        if url.scheme() != self.base.scheme() || url.host_str() != self.base.host_str() {
            return None;
        }
        let relative = url.path().strip_prefix(self.base.path())?;
        let safe = !relative.is_empty()
            && relative
                .split('/')
                .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
        safe.then(|| relative.to_string())
    }

    /// Where common-io keeps a key's value: the path, and the path with
    /// `.gz`.
    pub(crate) fn key_paths(&self, at: StateKey<'_>) -> [String; 2] {
        let path = format!("{}/{}", scope_prefix(at.scope, false), quote(at.key));
        [format!("{path}.gz"), path]
    }

    /// The prefix of a scope's values (every map index of the task with
    /// `all_map_indices`).
    pub(crate) fn scope_prefix(&self, scope: ScopeRef<'_>, all_map_indices: bool) -> String {
        scope_prefix(scope, all_map_indices)
    }
}

fn scope_prefix(scope: ScopeRef<'_>, all_map_indices: bool) -> String {
    match scope {
        ScopeRef::Task(t) => {
            let task = format!(
                "{}/{}/{}",
                quote(t.dag_id()),
                quote(t.run_id()),
                quote(t.task_id())
            );
            if all_map_indices {
                task
            } else {
                format!("{task}/{}", t.map_index())
            }
        }
        ScopeRef::Asset(AssetIdentity::Name(id) | AssetIdentity::Uri(id)) => {
            format!("assets/{}", quote(id))
        }
    }
}

/// A common-io object's bytes as the value's JSON text (gunzipped when its
/// name ends in `.gz`).
pub(crate) fn decode(relative: &str, bytes: &[u8]) -> Result<String, BackendError> {
    let text = if relative.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| {
                BackendError::invalid_input(format!(
                    "common-io's object {relative} is not gzip ({e})"
                ))
            })?;
        out
    } else if let Some(suffix) = OTHER_COMPRESSIONS.iter().find(|s| relative.ends_with(*s)) {
        return Err(BackendError::unsupported(format!(
            "common-io's object {relative} is compressed as {suffix}, which this plugin cannot read; only gzip (or none) is"
        )));
    } else {
        bytes.to_vec()
    };
    String::from_utf8(text).map_err(|_| {
        BackendError::invalid_input(format!("common-io's object {relative} is not UTF-8 text"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use statehost_plugin_api::{AssetScope, TaskScope};

    #[test]
    fn references_under_the_base_are_recognised() {
        let paths = CommonIoPaths::new(&url::Url::parse("s3://bucket/state").unwrap());
        assert_eq!(
            paths.relative("s3://aws_default@bucket/state/etl/r/t/-1/k.gz"),
            Some("etl/r/t/-1/k.gz".to_string())
        );
        assert_eq!(paths.relative("s3://other/state/etl/r/t/-1/k"), None);
        assert_eq!(paths.relative("s3://bucket/elsewhere/k"), None);
        assert_eq!(paths.relative("s3://bucket/state/../x"), None);
        assert_eq!(paths.relative("v2/task/etl/r/t/-1/k/0"), None);
        assert_eq!(paths.relative("\"json\""), None);
    }

    #[test]
    fn paths_are_quoted_as_python_quotes_them() {
        let paths = CommonIoPaths::new(&url::Url::parse("file:///base").unwrap());
        let task = TaskScope::new("my dag", "manual__2026-01-01T00:00:00+00:00", "t.1", 3).unwrap();
        assert_eq!(
            paths.key_paths(StateKey::task(&task, "a/b~c")),
            [
                "my%20dag/manual__2026-01-01T00%3A00%3A00%2B00%3A00/t.1/3/a%2Fb~c.gz".to_string(),
                "my%20dag/manual__2026-01-01T00%3A00%3A00%2B00%3A00/t.1/3/a%2Fb~c".to_string()
            ]
        );
        let asset = AssetScope::by_uri("s3://b/o").unwrap();
        assert_eq!(
            paths.scope_prefix(StateKey::asset(&asset, "k").scope, false),
            "assets/s3%3A%2F%2Fb%2Fo"
        );
        assert_eq!(
            paths.scope_prefix(StateKey::task(&task, "k").scope, true),
            "my%20dag/manual__2026-01-01T00%3A00%3A00%2B00%3A00/t.1"
        );
    }
}
