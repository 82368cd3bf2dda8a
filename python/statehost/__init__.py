"""statehost for Python: task and asset state kept by statehost's plugins.

Two ways in:

* :class:`statehost.airflow.StatehostBackend`, Apache Airflow's
  ``[workers] state_store_backend``: Airflow's database keeps the rows, the
  configured plugin keeps the values.
* :class:`StateHost`, for Python programs: statehost's own metadata store
  (``[database] url``) and the configured plugin::

      from statehost import StateHost

      host = StateHost("statehost.toml")
      state = host.task_state("etl", "manual__1", "extract")
      state.set("job_id", "job-42")
      assert state.get("job_id") == "job-42"

Errors are the exceptions of :mod:`statehost.errors`.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from typing import Any

from . import _json
from ._config import PLUGINS_DIR, discover
from ._native import HostHandle
from .errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    CorruptStateError,
    InvalidInputError,
    OutcomeUnknownError,
    StatehostError,
    StateNotFoundError,
    StoreError,
)

__all__ = [
    "StateHost",
    "TaskState",
    "AssetState",
    "PLUGINS_DIR",
    "StatehostError",
    "ConfigError",
    "InvalidInputError",
    "BackendError",
    "BackendUnavailableError",
    "StateNotFoundError",
    "StoreError",
    "OutcomeUnknownError",
    "CorruptStateError",
]


class StateHost:
    """The configured backend and metadata store of this process.

    ``config`` is the path of a statehost TOML file. Without it, the file is
    Airflow's ``[statehost] config_file`` (``AIRFLOW__STATEHOST__CONFIG_FILE``),
    else ``$STATEHOST_CONFIG``, else none: the defaults plus the
    ``STATEHOST__SECTION__KEY`` variables. ``[core] plugins_dir`` defaults to
    the plugins shipped in this package (:data:`PLUGINS_DIR`).

    The backend is loaded and the store opened here, so a broken setup fails
    now (:class:`ConfigError`, :class:`StoreError`). Thread-safe; every call
    releases the GIL while it runs.
    """

    def __init__(self, config: str | os.PathLike[str] | None = None) -> None:
        self._config = discover(config)
        self._handle = HostHandle(self._config, os.fspath(PLUGINS_DIR))

    @property
    def config_file(self) -> str | None:
        """The config file read, or ``None`` (defaults and environment)."""
        return self._config

    @property
    def backend_name(self) -> str | None:
        """The configured backend's name, or ``None`` (values kept inline)."""
        return self._handle.backend_name

    def task_state(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> TaskState:
        """The state of one task instance (``map_index`` -1 when not mapped)."""
        return TaskState(self._handle, dag_id, run_id, task_id, map_index)

    def asset_state(self, name: str | None = None, uri: str | None = None) -> AssetState:
        """The state of one asset, by name and/or uri (at least one)."""
        if name is None and uri is None:
            raise InvalidInputError("an asset needs a name, a uri, or both")
        return AssetState(self._handle, name, uri)

    def gc(self, dry_run: bool = False) -> dict[str, Any]:
        """Garbage collection: expired task rows and their objects, and objects
        no row references (backends that can list). Returns the report:
        ``dry_run``, ``expired_rows``, ``objects``, ``orphans``, ``swept``,
        ``unreadable_rows`` (rows skipped, each named in a warning) and
        ``orphans_skipped`` (why orphans were not collected, or ``None``).

        Refused (:class:`ConfigError`) when the backend's storage belongs to
        Airflow's database; use ``statehost gc --airflow-db URL`` there."""
        return _json.decode(self._handle.gc(dry_run))

    def __repr__(self) -> str:
        return f"<StateHost config={self._config!r} backend={self.backend_name!r}>"


class _State(ABC):
    """What task and asset state share: the async variants of every method."""

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set(self, key: str, value: Any) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...

    async def aget(self, key: str, default: Any = None) -> Any:
        """:meth:`get` on a worker thread: the event loop keeps running."""
        return await asyncio.to_thread(self.get, key, default)

    async def aset(self, key: str, value: Any) -> None:
        """:meth:`set` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.set, key, value)

    async def adelete(self, key: str) -> None:
        """:meth:`delete` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.delete, key)

    async def aclear(self) -> None:
        """:meth:`clear` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.clear)


class TaskState(_State):
    """The state of one task instance. Keys are 1 to 512 bytes of UTF-8
    without control characters; values are any JSON but ``None`` (NaN and
    infinities are refused)."""

    def __init__(self, handle: HostHandle, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        self._handle = handle
        self._scope = (dag_id, run_id, task_id, map_index)

    @property
    def scope(self) -> tuple[str, str, str, int]:
        """``(dag_id, run_id, task_id, map_index)``."""
        return self._scope

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it has none."""
        text = self._handle.task_get(*self._scope, key)
        return default if text is None else _json.decode(text)

    def set(self, key: str, value: Any) -> None:
        """Writes ``value`` (replacing any earlier one)."""
        self._handle.task_set(*self._scope, key, _json.encode(value))

    def delete(self, key: str) -> None:
        """Removes ``key`` (a missing key is fine)."""
        self._handle.task_delete(*self._scope, key)

    def clear(self, all_map_indices: bool = False) -> None:
        """Removes every key of this task instance (of every map index with
        ``all_map_indices``)."""
        self._handle.task_clear(*self._scope, all_map_indices)

    async def aclear(self, all_map_indices: bool = False) -> None:
        """:meth:`clear` on a worker thread: the event loop keeps running."""
        await asyncio.to_thread(self.clear, all_map_indices)

    def __repr__(self) -> str:
        return "<TaskState dag_id={!r} run_id={!r} task_id={!r} map_index={}>".format(*self._scope)


class AssetState(_State):
    """The state of one asset. Access by name and by uri of the same asset
    share keys once statehost has seen both together."""

    def __init__(self, handle: HostHandle, name: str | None, uri: str | None) -> None:
        self._handle = handle
        self._name = name
        self._uri = uri

    @property
    def name(self) -> str | None:
        """The asset's name, if given."""
        return self._name

    @property
    def uri(self) -> str | None:
        """The asset's uri, if given."""
        return self._uri

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it has none."""
        text = self._handle.asset_get(self._name, self._uri, key)
        return default if text is None else _json.decode(text)

    def set(self, key: str, value: Any) -> None:
        """Writes ``value`` (replacing any earlier one)."""
        self._handle.asset_set(self._name, self._uri, key, _json.encode(value))

    def delete(self, key: str) -> None:
        """Removes ``key`` (a missing key is fine)."""
        self._handle.asset_delete(self._name, self._uri, key)

    def clear(self) -> None:
        """Removes every key of this asset."""
        self._handle.asset_clear(self._name, self._uri)

    def __repr__(self) -> str:
        return f"<AssetState name={self._name!r} uri={self._uri!r}>"
