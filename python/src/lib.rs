//! `statehost._native`: the extension module under the `statehost` Python
//! package.
//!
//! Two classes, both thin: `Bridge` serves Apache Airflow's worker-side
//! hooks from the configured plugin (Airflow's database keeps the rows),
//! and `Host` is a whole [`StateHost`] (statehost's own metadata store).
//! Values cross as JSON text; the Python side encodes and decodes them
//! (`statehost/_json.py`). Every call into the host releases the GIL (but
//! the bridge's calls into a plugin that never blocks, shorter than a GIL
//! hand-over), and
//! every host error becomes one exception of the hierarchy in
//! `statehost/errors.py`.

use std::path::{Path, PathBuf};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use statehost::api::{AssetScope, ErrorKind, Scope, TaskScope};
use statehost::bridge::{Bridge, JsonText, Stored};
use statehost::config::Config;
use statehost::ownership::Owner;
use statehost::process::ProcessOwned;
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
    let name = match &error {
        Error::Construct { .. } => "ConfigError",
        other => exception_name(other),
    };
    python_error(py, name, error.to_string())
}

/// An exception of `statehost.errors` by class name.
fn python_error(py: Python<'_>, name: &str, message: String) -> PyErr {
    let message = message.replace('\n', " ");
    let class = py
        .import("statehost.errors")
        .and_then(|module| module.getattr(name));
    match class.and_then(|class| class.call1((message.clone(),))) {
        Ok(instance) => PyErr::from_value(instance),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// How deep a value may nest (deeper is taken for a value that contains
/// itself).
const MAX_DEPTH: usize = 512;

/// The JSON text of a Python value, as `json.dumps(value, allow_nan=False)`
/// accepts values (dict keys may be str, int, float, bool or None), in
/// Rust: escaping a long string here takes a fraction of the time Python's
/// encoder takes. NaN, infinities, `None` at the top and other types are
/// an `InvalidInputError`.
fn encode(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_none() {
        return Err(python_error(
            value.py(),
            "InvalidInputError",
            "a value cannot be None; delete the key instead".to_string(),
        ));
    }
    let mut out = Vec::new();
    write_json(value, &mut out, 0).map_err(|message| {
        python_error(
            value.py(),
            "InvalidInputError",
            format!("the value is not JSON: {message}"),
        )
    })?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

fn write_json(value: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyTuple};
    if depth > MAX_DEPTH {
        return Err(format!(
            "it nests deeper than {MAX_DEPTH} levels (or contains itself)"
        ));
    }
    let text_error = |e: PyErr| e.to_string();
    if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(s) = value.cast::<PyString>() {
        let s = s.to_str().map_err(text_error)?;
        serde_json::to_writer(&mut *out, s).map_err(|e| e.to_string())?;
    } else if let Ok(b) = value.cast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
    } else if value.cast::<PyInt>().is_ok() {
        write_int(value, out)?;
    } else if let Ok(f) = value.cast::<PyFloat>() {
        write_float(f.value(), out)?;
    } else if let Ok(list) = value.cast::<PyList>() {
        out.push(b'[');
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&item, out, depth + 1)?;
        }
        out.push(b']');
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        out.push(b'[');
        for (i, item) in tuple.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&item, out, depth + 1)?;
        }
        out.push(b']');
    } else if let Ok(dict) = value.cast::<PyDict>() {
        out.push(b'{');
        for (i, (k, v)) in dict.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let key = if let Ok(s) = k.cast::<PyString>() {
                s.to_str().map_err(text_error)?.to_string()
            } else if let Ok(b) = k.cast::<PyBool>() {
                if b.is_true() { "true" } else { "false" }.to_string()
            } else if k.is_none() {
                "null".to_string()
            } else if let Ok(f) = k.cast::<PyFloat>() {
                // As json.dumps writes a float key: float.__repr__ ("1e-07").
                let mut checked = Vec::new();
                write_float(f.value(), &mut checked)?;
                f.repr().map_err(text_error)?.to_string()
            } else if k.cast::<PyInt>().is_ok() {
                let mut text = Vec::new();
                write_int(&k, &mut text)?;
                String::from_utf8(text).expect("digits")
            } else {
                return Err(format!(
                    "keys must be str, int, float, bool or None, not {}",
                    type_name(&k)
                ));
            };
            serde_json::to_writer(&mut *out, &key).map_err(|e| e.to_string())?;
            out.push(b':');
            write_json(&v, out, depth + 1)?;
        }
        out.push(b'}');
    } else if is_decimal(value) {
        write_decimal(value, out)?;
    } else {
        return Err(format!(
            "an object of type {} is not JSON serializable",
            type_name(value)
        ));
    }
    Ok(())
}

/// Whether `value` is a `decimal.Decimal`: a number kept digit for digit.
fn is_decimal(value: &Bound<'_, PyAny>) -> bool {
    let py = value.py();
    py.import("decimal")
        .and_then(|m| m.getattr("Decimal"))
        .and_then(|decimal| value.is_instance(&decimal))
        .unwrap_or(false)
}

/// A `Decimal` as its own digits (`str()` writes a valid JSON number for
/// every finite one), so a value beyond a float's precision keeps them.
fn write_decimal(value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Result<(), String> {
    let finite = value
        .call_method0("is_finite")
        .and_then(|f| f.extract::<bool>())
        .map_err(|e| e.to_string())?;
    if !finite {
        return Err(format!(
            "{} is out of range for JSON (NaN and infinities are refused)",
            value.str().map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    let text = value.str().map_err(|e| e.to_string())?.to_string();
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn write_int(value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Result<(), String> {
    if let Ok(i) = value.extract::<i64>() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Ok(u) = value.extract::<u64>() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else {
        // Beyond 64 bits: int's own digits (as Python's encoder writes them).
        let digits = value
            .py()
            .get_type::<pyo3::types::PyInt>()
            .call_method1("__repr__", (value,))
            .and_then(|r| r.extract::<String>())
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(digits.as_bytes());
    }
    Ok(())
}

fn write_float(f: f64, out: &mut Vec<u8>) -> Result<(), String> {
    if !f.is_finite() {
        return Err(format!(
            "{f} is out of range for JSON (NaN and infinities are refused)"
        ));
    }
    serde_json::to_writer(&mut *out, &f).map_err(|e| e.to_string())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// `json.dumps` for statehost: the value's JSON text (see [`encode`]).
#[pyfunction]
fn encode_json(value: &Bound<'_, PyAny>) -> PyResult<String> {
    encode(value)
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

/// The value's JSON text as the library parses user text: numbers keep
/// their digits, and what would not read back as written is refused.
fn parse_value(text: &str) -> Result<serde_json::Value, Error> {
    statehost::state::parse_value(text)
}

/// The configured plugin, for a runtime whose own database keeps the rows
/// (Apache Airflow). Claims the plugin's storage for Airflow.
#[pyclass(frozen, module = "statehost._native")]
struct BridgeHandle {
    /// Left alone when a forked child drops it (the Python side opens a
    /// handle of its own there and lets go of the parent's).
    bridge: ProcessOwned<Bridge>,
}

impl BridgeHandle {
    /// Runs a call into the plugin: without the GIL, unless the plugin
    /// never blocks (its calls run on this thread and end without waiting
    /// on I/O), where releasing and taking the GIL back would cost more
    /// than the call.
    fn call<T: Send>(&self, py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
        if self.bridge.calls().on_callers_thread() {
            f()
        } else {
            py.detach(f)
        }
    }

    /// The text a reference stands for, in the plugin's buffer.
    fn read(&self, py: Python<'_>, reference: &str) -> PyResult<statehost::backend::Text> {
        self.call(py, || self.bridge.deserialize(reference))
            .map_err(|e| to_py(py, e))
    }

    fn not_utf8(&self, py: Python<'_>, reference: &str) -> PyErr {
        python_error(
            py,
            "BackendError",
            format!(
                "backend `{}` returned bytes that are not UTF-8 for the reference {reference:?}",
                self.bridge.backend_name()
            ),
        )
    }
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
        .map(|bridge| BridgeHandle {
            bridge: ProcessOwned::new(bridge),
        })
        .map_err(|e| to_py(py, e))
    }

    /// The backend's name.
    #[getter]
    fn backend_name(&self) -> String {
        self.bridge.backend_name().to_string()
    }

    /// Stores a task's value (any JSON-encodable object): the reference
    /// for the row, or, when the plugin keeps the value inline, its JSON
    /// text (which reads back as the value).
    #[allow(clippy::too_many_arguments)]
    fn serialize_task(
        &self,
        py: Python<'_>,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        key: &str,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let text = encode(value)?;
        self.call(py, || {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.bridge
                .serialize_task(&scope, key, JsonText::encoded(&text)?)
        })
        .map(|stored| reference_or_text(stored, &text))
        .map_err(|e| to_py(py, e))
    }

    /// Stores an asset's value, as [`serialize_task`](Self::serialize_task).
    fn serialize_asset(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        uri: Option<&str>,
        key: &str,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let text = encode(value)?;
        self.call(py, || {
            let scope = asset_scope(name, uri)?;
            self.bridge
                .serialize_asset(&scope, key, JsonText::encoded(&text)?)
        })
        .map(|stored| reference_or_text(stored, &text))
        .map_err(|e| to_py(py, e))
    }

    /// The JSON text a reference stands for.
    fn deserialize<'py>(&self, py: Python<'py>, reference: &str) -> PyResult<Bound<'py, PyString>> {
        let text = self.read(py, reference)?;
        let text =
            statehost::backend::utf8(text.as_bytes()).map_err(|_| self.not_utf8(py, reference))?;
        Ok(PyString::new(py, text))
    }

    /// The value a reference stands for: a JSON string without escapes is
    /// made a `str` here; any other text is decoded by `decode` (the
    /// package's JSON decoder), whose `ValueError` becomes a
    /// `BackendError` naming the reference.
    fn load<'py>(
        &self,
        py: Python<'py>,
        reference: &str,
        decode: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let text = self.read(py, reference)?;
        let bytes = text.as_bytes();
        if let [b'"', inner @ .., b'"'] = bytes
            && statehost::state::needs_no_escape(inner)
        {
            let inner =
                statehost::backend::utf8(inner).map_err(|_| self.not_utf8(py, reference))?;
            return Ok(PyString::new(py, inner).into_any());
        }
        let text = statehost::backend::utf8(bytes).map_err(|_| self.not_utf8(py, reference))?;
        decode.call1((text,)).map_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) {
                python_error(
                    py,
                    "BackendError",
                    format!(
                        "backend `{}` returned text that is not JSON for the reference {reference:?} ({})",
                        self.bridge.backend_name(),
                        e.value(py)
                    ),
                )
            } else {
                e
            }
        })
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
        self.call(py, || {
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
        self.call(py, || {
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
        self.call(py, || {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            self.bridge.clear(Scope::Task(scope), all_map_indices)
        })
        .map_err(|e| to_py(py, e))
    }

    /// Removes every object of an asset.
    fn clear_asset(&self, py: Python<'_>, name: Option<&str>, uri: Option<&str>) -> PyResult<()> {
        self.call(py, || {
            let scope = asset_scope(name, uri)?;
            self.bridge.clear(Scope::Asset(scope), false)
        })
        .map_err(|e| to_py(py, e))
    }
}

fn reference_or_text(stored: Stored, text: &str) -> String {
    match stored {
        Stored::Reference(reference) => reference,
        Stored::Inline => text.to_string(),
    }
}

/// A whole statehost host: the configured backend and metadata store.
#[pyclass(frozen, module = "statehost._native")]
struct HostHandle {
    config: statehost::config::Config,
    /// The host, and the process that opened it: a forked child opens its
    /// own (the parent's backend may need threads a fork does not copy),
    /// and the parent's, replaced there, is left as it is (a `StateHost`
    /// is only ever dropped in the process that opened it).
    host: std::sync::Mutex<(u32, StateHost)>,
}

impl HostHandle {
    /// This process's host. Taken with the GIL held (`_py`), never inside
    /// a call that released it: a fork happens with the GIL held, so no
    /// thread then holds this lock for a child to inherit locked.
    fn host(&self, _py: Python<'_>) -> Result<StateHost, Error> {
        let mut host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if host.0 != pid {
            *host = (pid, StateHost::open(&self.config)?);
        }
        Ok(host.1.clone())
    }
}

#[pymethods]
impl HostHandle {
    #[new]
    #[pyo3(signature = (config, plugins_dir))]
    fn new(py: Python<'_>, config: Option<PathBuf>, plugins_dir: PathBuf) -> PyResult<Self> {
        py.detach(|| {
            let config = load_config(config.as_deref(), &plugins_dir)?;
            let host = StateHost::open(&config)?;
            Ok(HostHandle {
                config,
                host: std::sync::Mutex::new((std::process::id(), host)),
            })
        })
        .map_err(|e| to_py(py, e))
    }

    /// The backend's name, or None without one.
    #[getter]
    fn backend_name(&self) -> Option<String> {
        let host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        host.1.backend_name().map(str::to_string)
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            let value = host.task_state(scope).get(key)?;
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            host.task_state(scope).set(key, &parse_value(value)?)
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            host.task_state(scope).delete(key)
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = task_scope(dag_id, run_id, task_id, map_index)?;
            host.task_state(scope).clear(all_map_indices)
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            let value = host.asset_state(&scope)?.get(key)?;
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            host.asset_state(&scope)?.set(key, &parse_value(value)?)
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
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            host.asset_state(&scope)?.delete(key)
        })
        .map_err(|e| to_py(py, e))
    }

    fn asset_clear(&self, py: Python<'_>, name: Option<&str>, uri: Option<&str>) -> PyResult<()> {
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let scope = asset_scope(name, uri)?;
            host.asset_state(&scope)?.clear()
        })
        .map_err(|e| to_py(py, e))
    }

    /// Garbage collection; the report as JSON text.
    fn gc(&self, py: Python<'_>, dry_run: bool) -> PyResult<String> {
        let host = self.host(py).map_err(|e| to_py(py, e))?;
        py.detach(|| host.gc(dry_run, |_, _| {}))
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
    module.add_function(wrap_pyfunction!(encode_json, module)?)?;
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
