"""Type stubs of the extension module (``statehost._native``).

Values cross as JSON text; :mod:`statehost` and :mod:`statehost.airflow`
encode and decode them. Every method releases the GIL while the host works
(except the bridge's calls into a plugin that never blocks)
and raises the exceptions of :mod:`statehost.errors`.
"""

from typing import Any, Callable, Optional

PLUGIN_API_VERSION: str

def encode_json(value: Any) -> str:
    """The JSON text of a value (str, int, float, bool, None, list, tuple, dict);
    ``None`` at the top, NaN, infinities and other types raise ``InvalidInputError``."""

def gc_airflow(config: Optional[str], plugins_dir: str, airflow_db: str, dry_run: bool) -> str:
    """Removes the objects no row of Airflow's database references; the report as JSON text."""

class BridgeHandle:
    """The configured plugin, for a runtime whose own database keeps the rows."""

    def __init__(self, config: Optional[str], plugins_dir: str) -> None:
        """Loads the plugin named by the config file (or the environment) and
        claims its storage for Airflow's database."""
    @property
    def backend_name(self) -> str: ...
    def serialize_task(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str, value: Any
    ) -> str:
        """Stores a value; the reference, or its JSON text when the plugin keeps it inline."""
    def serialize_asset(self, name: Optional[str], uri: Optional[str], key: str, value: Any) -> str:
        """Stores a value; the reference, or its JSON text when the plugin keeps it inline."""
    def deserialize(self, reference: str) -> str:
        """The JSON text a reference stands for (a reference that is JSON text is the value)."""
    def load(self, reference: str, decode: Callable[[str], Any]) -> Any:
        """The value a reference stands for: a JSON string without escapes as a ``str``,
        other text through ``decode``; its ``ValueError`` is raised as ``BackendError``."""
    def delete_task(self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> None: ...
    def delete_asset(self, name: Optional[str], uri: Optional[str], key: str) -> None: ...
    def clear_task(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, all_map_indices: bool
    ) -> None: ...
    def clear_asset(self, name: Optional[str], uri: Optional[str]) -> None: ...

class HostHandle:
    """A statehost host: the configured backend and statehost's metadata store."""

    def __init__(self, config: Optional[str], plugins_dir: str) -> None: ...
    @property
    def backend_name(self) -> Optional[str]: ...
    def task_get(self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> Optional[str]: ...
    def task_set(self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str, value: str) -> None: ...
    def task_delete(self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> None: ...
    def task_clear(self, dag_id: str, run_id: str, task_id: str, map_index: int, all_map_indices: bool) -> None: ...
    def asset_get(self, name: Optional[str], uri: Optional[str], key: str) -> Optional[str]: ...
    def asset_set(self, name: Optional[str], uri: Optional[str], key: str, value: str) -> None: ...
    def asset_delete(self, name: Optional[str], uri: Optional[str], key: str) -> None: ...
    def asset_clear(self, name: Optional[str], uri: Optional[str]) -> None: ...
    def gc(self, dry_run: bool) -> str:
        """The gc report as JSON text."""
