//! `statehost._native`: the extension module under the `statehost` Python
//! package.
//!
//! Two classes, both thin: `Bridge` serves Apache Airflow's worker-side
//! hooks from the configured plugin (Airflow's database keeps the rows),
//! and `Host` is a whole [`StateHost`] (statehost's own metadata store).
//! Values cross as JSON text; the Python side encodes and decodes them
//! (`statehost/_json.py`). Every call into the host releases the GIL, and
//! every host error becomes one exception of the hierarchy in
//! `statehost/errors.py`.

use std::path::{Path, PathBuf};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use statehost::api::{AssetScope, ErrorKind, Scope, TaskScope};
use statehost::bridge::{Bridge, Stored};
use statehost::config::Config;
use statehost::ownership::Owner;
use statehost::{Error, StateHost};

/// The Python exception class for a host error.
fn exception_name(error: &Error) -> &'static str {
    match error {
        Error::InvalidInput { .. } => "InvalidInputError",
        Error::Corrupt { .. } => "CorruptStateError",
        Error::OutcomeUnknown { .. } => "OutcomeUnknownError",
        Error::Store { .. } => "StoreError",
        Error::Backend { error, .. } | Error::Construct { error, .. } => match error.kind() {
            ErrorKind::NotFound => "StateNotFoundError",
            ErrorKind::Unavailable => "BackendUnavailableError",
            ErrorKind::InvalidInput => "InvalidInputError",
            ErrorKind::Config => "ConfigError",
            _ => "BackendError",
        },
        Error::Cleanup { .. } => "BackendError",
        _ => "ConfigError",
    }
}

/// A host error as the matching Python exception, its message one line.
fn to_py(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string().replace('\n', " ");
    let name = match &error {
        Error::Construct { .. } => "ConfigError",
        other => exception_name(other),
    };
    let class = py
        .import("statehost.errors")
        .and_then(|module| module.getattr(name));
    match class.and_then(|class| class.call1((message.clone(),))) {
        Ok(instance) => PyErr::from_value(instance),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// Whether the config file or the environment names `[core] plugins_dir`.
fn names_plugins_dir(file: Option<&Path>) -> bool {
    if std::env::var_os("STATEHOST__CORE__PLUGINS_DIR").is_some() {
        return true;
    }
    let Some(file) = file else {
        return false;
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("core")?.get("plugins_dir").cloned())
        .is_some()
}

/// The config at `path` (or, without one, from the `STATEHOST__*`
/// variables). A `plugins_dir` the config does not name is the package's
/// own plugin directory, not the interpreter's.
fn load_config(path: Option<&Path>, package_plugins: &Path) -> Result<Config, Error> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::from_env()?,
    };
    if !names_plugins_dir(path) {
        config.plugins_dir = package_plugins.to_path_buf();
    }
    Ok(config)
}

fn task_scope(
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> Result<TaskScope, Error> {
    TaskScope::new(dag_id, run_id, task_id, map_index).map_err(|e| Error::InvalidInput {
        message: e.message().to_string(),
    })
}

fn asset_scope(name: Option<&str>, uri: Option<&str>) -> Result<AssetScope, Error> {
    AssetScope::new(name.map(str::to_string), uri.map(str::to_string)).map_err(|e| {
        Error::InvalidInput {
            message: e.message().to_string(),
        }
    })
}

fn parse_value(text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidInput {
        message: format!("the value is not JSON ({e})"),
    })
}

/// The configured plugin, for a runtime whose own database keeps the rows
/// (Apache Airflow). Claims the plugin's storage for Airflow.
#[pyclass(frozen, module = "statehost._native")]
struct BridgeHandle {
    bridge: Bridge,
}

#[pymethods]
impl BridgeHandle {
    #[new]
    #[pyo3(signature = (config, plugins_dir))]
    fn new(py: Python<'_>, config: Option<PathBuf>, plugins_dir: PathBuf) -> PyResult<Self> {
        py.detach(|| {
            let config = load_config(config.as_deref(), &plugins_dir)?;
            Bridge::open(&config, Owner::Airflow)
        })
        .map(|bridge| BridgeHandle { bridge })
        .map_err(|e| to_py(py, e))
    }

    /// The backend's name.
    #[getter]
    fn backend_name(&self) -> String {
        self.bridge.backend_name().to_string()
    }

    /// Stores a task's value; the reference, or None to keep it inline.
    #[allow(clippy::too_many_arguments)]
    fn serialize_task(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
        value: &str,
    ) -> PyResult<Option<String>> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.bridge.serialize_task(&scope, key, value)
        })
        .map(stored)
        .map_err(|e| to_py(py, e))
    }

    /// Stores an asset's value; the reference, or None to keep it inline.
    fn serialize_asset(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
        value: &str,
    ) -> PyResult<Option<String>> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.bridge.serialize_asset(&scope, key, value)
        })
        .map(stored)
        .map_err(|e| to_py(py, e))
    }

    /// The JSON text of the object at `reference`.
    fn deserialize(&self, py: Python<'_>, reference: &str) -> PyResult<String> {
        py.detach(|| self.bridge.deserialize(reference))
            .map_err(|e| to_py(py, e))
    }

    /// Removes every object of a task's key.
    fn delete_task(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.bridge.delete(Scope::Task(scope), key)
        })
        .map_err(|e| to_py(py, e))
    }

    /// Removes every object of an asset's key.
    fn delete_asset(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.bridge.delete(Scope::Asset(scope), key)
        })
        .map_err(|e| to_py(py, e))
    }

    /// Removes every object of a task (of all its map indices if asked).
    fn clear_task(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        all_map_indices: bool,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.bridge.clear(Scope::Task(scope), all_map_indices)
        })
        .map_err(|e| to_py(py, e))
    }

    /// Removes every object of an asset.
    fn clear_asset(&self, py: Python<'_>, name: Option<&str>, uri: Option<&str>) -> PyResult<()> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.bridge.clear(Scope::Asset(scope), false)
        })
        .map_err(|e| to_py(py, e))
    }
}

fn stored(stored: Stored) -> Option<String> {
    match stored {
        Stored::Reference(reference) => Some(reference),
        Stored::Inline => None,
    }
}

/// A whole statehost host: the configured backend and metadata store.
#[pyclass(frozen, module = "statehost._native")]
struct HostHandle {
    host: StateHost,
}

#[pymethods]
impl HostHandle {
    #[new]
    #[pyo3(signature = (config, plugins_dir))]
    fn new(py: Python<'_>, config: Option<PathBuf>, plugins_dir: PathBuf) -> PyResult<Self> {
        py.detach(|| {
            let config = load_config(config.as_deref(), &plugins_dir)?;
            StateHost::open(&config)
        })
        .map(|host| HostHandle { host })
        .map_err(|e| to_py(py, e))
    }

    /// The backend's name, or None without one.
    #[getter]
    fn backend_name(&self) -> Option<String> {
        self.host.backend_name().map(str::to_string)
    }

    #[allow(clippy::too_many_arguments)]
    fn task_get(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
    ) -> PyResult<Option<String>> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            let value = self.host.task_state(scope).get(key)?;
            Ok(value.map(|v| v.to_string()))
        })
        .map_err(|e| to_py(py, e))
    }

    #[allow(clippy::too_many_arguments)]
    fn task_set(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
        value: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.host.task_state(scope).set(key, &parse_value(value)?)
        })
        .map_err(|e| to_py(py, e))
    }

    fn task_delete(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.host.task_state(scope).delete(key)
        })
        .map_err(|e| to_py(py, e))
    }

    fn task_clear(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        all_map_indices: bool,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.host.task_state(scope).clear(all_map_indices)
        })
        .map_err(|e| to_py(py, e))
    }

    fn asset_get(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
    ) -> PyResult<Option<String>> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            let value = self.host.asset_state(&scope)?.get(key)?;
            Ok(value.map(|v| v.to_string()))
        })
        .map_err(|e| to_py(py, e))
    }

    fn asset_set(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
        value: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.host
                .asset_state(&scope)?
                .set(key, &parse_value(value)?)
        })
        .map_err(|e| to_py(py, e))
    }

    fn asset_delete(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
    ) -> PyResult<()> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.host.asset_state(&scope)?.delete(key)
        })
        .map_err(|e| to_py(py, e))
    }

    fn asset_clear(&self, py: Python<'_>, name: Option<&str>, uri: Option<&str>) -> PyResult<()> {
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            self.host.asset_state(&scope)?.clear()
        })
        .map_err(|e| to_py(py, e))
    }

    /// Garbage collection; the report as JSON text.
    fn gc(&self, py: Python<'_>, dry_run: bool) -> PyResult<String> {
        py.detach(|| self.host.gc(dry_run, |_, _| {}))
            .map(|report| serde_json::to_string(&report).unwrap_or_default())
            .map_err(|e| to_py(py, e))
    }
}

/// `statehost gc --airflow-db`: the orphans of the storage Airflow's
/// database owns; the report as JSON text.
#[pyfunction]
#[pyo3(signature = (config, plugins_dir, airflow_db, dry_run))]
fn gc_airflow(
    py: Python<'_>,
    config: Option<PathBuf>,
    plugins_dir: PathBuf,
    airflow_db: &str,
    dry_run: bool,
) -> PyResult<String> {
    py.detach(|| {
        let config = load_config(config.as_deref(), &plugins_dir)?;
        statehost::airflow_db::gc(&config, airflow_db, dry_run)
    })
    .map(|report| serde_json::to_string(&report).unwrap_or_default())
    .map_err(|e| to_py(py, e))
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(gc_airflow, module)?)?;
    module.add_class::<BridgeHandle>()?;
    module.add_class::<HostHandle>()?;
    module.add("PLUGIN_API_VERSION", statehost::api::PLUGIN_API_VERSION)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_dir_defaults_to_the_packages_unless_the_config_names_one() {
        let dir = tempfile_dir();
        let file = dir.join("statehost.toml");
        std::fs::write(&file, "[workers]\nstate_backend = \"fs\"\n").unwrap();
        let package = Path::new("/opt/package/plugins");
        let config = load_config(Some(&file), package).unwrap();
        assert_eq!(config.plugins_dir, package);

        std::fs::write(&file, "[core]\nplugins_dir = \"mine\"\n").unwrap();
        let config = load_config(Some(&file), package).unwrap();
        assert_eq!(config.plugins_dir, dir.join("mine"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_map_to_the_documented_classes() {
        use statehost::api::BackendError;
        let backend = |error| Error::Backend {
            plugin: "fs".into(),
            operation: "read",
            scope: "s".into(),
            key: "k".into(),
            error,
        };
        assert_eq!(
            exception_name(&backend(BackendError::not_found("x"))),
            "StateNotFoundError"
        );
        assert_eq!(
            exception_name(&backend(BackendError::unavailable("x"))),
            "BackendUnavailableError"
        );
        assert_eq!(
            exception_name(&Error::InvalidInput {
                message: "m".into()
            }),
            "InvalidInputError"
        );
        assert_eq!(exception_name(&Error::NoBackend), "ConfigError");
        assert_eq!(
            exception_name(&Error::OutcomeUnknown {
                message: "m".into()
            }),
            "OutcomeUnknownError"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("statehost-python-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
