"""Apache Airflow's worker-side state backend, served by a statehost plugin.

In ``airflow.cfg`` (or the environment) of every worker::

    [workers]
    state_store_backend = statehost.airflow.StatehostBackend

    [statehost]
    config_file = /etc/statehost/statehost.toml   # AIRFLOW__STATEHOST__CONFIG_FILE

Airflow's database keeps the rows (``{"__airflow_state_ref__": "<reference>"}``)
and the plugin named by the statehost config's ``[workers] state_backend``
keeps the values. The class takes no arguments: it reads Airflow's
``[statehost] config_file``, else ``$STATEHOST_CONFIG``, else the
``STATEHOST__SECTION__KEY`` variables, and ``[core] plugins_dir`` defaults to
the plugins shipped in this package.

Airflow 3.3 (task SDK 1.3.2) wraps whatever the hook returns in the envelope,
so it cannot store a value "inline" when a plugin declines to store it (a
value below the object-store plugin's ``inline_threshold_bytes``). This
backend then returns the value's own JSON text as the reference, as Airflow's
default hook and common-io's backend do, and reads any reference that is JSON
text back as that value. Plugin references are never JSON text (a plugin
answer that is would be refused at write time), so the two cannot be confused.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any

from airflow.sdk._shared.state import AssetScope, BaseStoreBackend, TaskScope

from . import _json
from ._config import PLUGINS_DIR, discover
from ._native import BridgeHandle, gc_airflow

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["StatehostBackend", "gc"]

_SERVER_SIDE = (
    "StatehostBackend is a worker-side backend for [workers] state_store_backend: Airflow calls "
    "its {method}() only on the API server, whose [state_store] backend must stay Airflow's "
    "database backend (the rows hold the references)"
)


#: How many times this process was forked into (counted in the child): a
#: handle opened under another count belongs to a parent. Cheaper than
#: asking for the pid on every call.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class StatehostBackend(BaseStoreBackend):
    """Airflow's ``[workers] state_store_backend``, routed through the configured
    statehost plugin.

    The constructor loads and checks the plugin (and claims its storage for
    Airflow's database, so ``statehost gc`` with a statehost store refuses it):
    a broken setup fails at the first accessor call with one
    :class:`statehost.ConfigError` line. Every plugin call releases the GIL,
    except those of a plugin that never blocks (the memory plugin), whose
    calls end sooner than the GIL could change hands.
    """

    def __init__(self) -> None:
        self._config = discover()
        self._lock = threading.Lock()
        self._forks = _forks
        self._bridge = BridgeHandle(self._config, os.fspath(PLUGINS_DIR))

    @property
    def backend_name(self) -> str:
        """The plugin's name."""
        return self._bridge.backend_name

    def _native(self) -> BridgeHandle:
        # A forked child (a Celery prefork worker, a task process) gets the
        # loaded plugin but not the threads that run its calls: it starts
        # its own.
        if self._forks != _forks:
            with self._lock:
                if self._forks != _forks:
                    self._bridge = BridgeHandle(self._config, os.fspath(PLUGINS_DIR))
                    self._forks = _forks
        return self._bridge

    # -- the hooks Airflow calls on a worker ---------------------------------

    def serialize_task_state_store_to_ref(self, *, value: Any, key: str, scope: TaskScope) -> str:
        """Stores ``value`` as a new object; the reference Airflow's row keeps."""
        return self._native().serialize_task(scope.dag_id, scope.run_id, scope.task_id, scope.map_index, key, value)

    def deserialize_task_state_store_from_ref(self, stored: str) -> Any:
        """The value a reference names."""
        return self._read(stored)

    def serialize_asset_state_store_to_ref(self, *, value: Any, key: str, scope: AssetScope) -> str:
        """Stores ``value`` as a new object; the reference Airflow's row keeps."""
        return self._native().serialize_asset(scope.name, scope.uri, key, value)

    def deserialize_asset_state_store_from_ref(self, stored: str) -> Any:
        """The value a reference names."""
        return self._read(stored)

    def delete(self, scope: TaskScope | AssetScope, key: str, *, session: Any = None) -> None:
        """Removes every object of ``key`` (Airflow has deleted the row already)."""
        match scope:
            case TaskScope():
                self._native().delete_task(scope.dag_id, scope.run_id, scope.task_id, scope.map_index, key)
            case AssetScope():
                self._native().delete_asset(scope.name, scope.uri, key)
            case _:
                raise TypeError(f"unknown scope {type(scope).__name__}")

    def clear(
        self, scope: TaskScope | AssetScope, *, all_map_indices: bool = False, session: Any = None
    ) -> None:
        """Removes every object of ``scope`` (of every map index with ``all_map_indices``)."""
        match scope:
            case TaskScope():
                self._native().clear_task(
                    scope.dag_id, scope.run_id, scope.task_id, scope.map_index, all_map_indices
                )
            case AssetScope():
                self._native().clear_asset(scope.name, scope.uri)
            case _:
                raise TypeError(f"unknown scope {type(scope).__name__}")

    async def adelete(self, scope: TaskScope | AssetScope, key: str, *, session: Any = None) -> None:
        """:meth:`delete` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.delete, scope, key)

    async def aclear(
        self, scope: TaskScope | AssetScope, *, all_map_indices: bool = False, session: Any = None
    ) -> None:
        """:meth:`clear` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.clear, scope, all_map_indices=all_map_indices)

    def _read(self, stored: str) -> Any:
        # A string value is made in Rust; other JSON goes to _json.decode,
        # whose ValueError comes back as a BackendError naming the reference.
        return self._native().load(stored, _json.decode)

    # -- the API server's methods: never called on a worker ------------------

    def get(self, scope: Any, key: str, *, session: Any = None) -> str | None:
        """Not a worker-side hook: raises NotImplementedError."""
        raise NotImplementedError(_SERVER_SIDE.format(method="get"))

    def set(
        self, scope: Any, key: str, value: str, *, expires_at: datetime | None = None, session: Any = None
    ) -> None:
        """Not a worker-side hook: raises NotImplementedError."""
        raise NotImplementedError(_SERVER_SIDE.format(method="set"))

    async def aget(self, scope: Any, key: str, *, session: Any = None) -> str | None:
        """Not a worker-side hook: raises NotImplementedError."""
        raise NotImplementedError(_SERVER_SIDE.format(method="aget"))

    async def aset(
        self, scope: Any, key: str, value: str, *, expires_at: datetime | None = None, session: Any = None
    ) -> None:
        """Not a worker-side hook: raises NotImplementedError."""
        raise NotImplementedError(_SERVER_SIDE.format(method="aset"))

    def __repr__(self) -> str:
        return f"<StatehostBackend config={self._config!r} backend={self._bridge.backend_name!r}>"


def gc(airflow_db: str, dry_run: bool = False, config: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Removes the objects of the plugin's storage that no row of Airflow's
    database references (``statehost gc --airflow-db URL``).

    ``airflow_db`` is Airflow's ``sql_alchemy_conn`` (``sqlite:////path`` or
    ``postgresql://...``), read only. Objects younger than ``[state_store]
    orphan_grace`` are kept. Returns the report: ``dry_run``, ``objects``,
    ``referenced``, ``orphans`` (deleted, or that would be), ``young``,
    ``unknown_age``. Refused unless an Airflow worker claimed the storage."""
    report = gc_airflow(discover(config), os.fspath(PLUGINS_DIR), airflow_db, dry_run)
    return _json.decode(report)
