"""Airflow's own task-state accessors (apache-airflow-task-sdk), timed the way
statehost's side_by_side bench times ours.

Airflow's accessor (``TaskStateStoreAccessor``) talks to the Execution API
through ``task_runner.SUPERVISOR_COMMS.send(msg)``. Here that is replaced by
``DictComms``: an in-process stand-in that keeps rows in a Python dict keyed
by (ti_id, key) and answers Get/Set/Delete/Clear messages the way the API
server does (a missing key is a TASK_STORE_NOT_FOUND error response). No
socket, no HTTP, no database: the same work as statehost's in-memory map
store.

Worker-side backends, equivalent to statehost's plugins:
  none    no backend: values go inline into the rows
  memory  values in a dict under a deterministic percent-encoded path
  fs      each value a file under a root: temporary file, write, fsync,
          rename, fsync of the directory (what the fs plugin does)

Prints one JSON object: {backend: {size: {"set": µs, "get": µs, "pair": µs}}},
each figure the median of STATEHOST_BENCH_ROUNDS rounds (3 by default), as
statehost's side_by_side bench reports its own.
Usage: python airflow_state_bench.py ROOT_DIR [N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

ROOT = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
SIZES = [16, 1024]
ROUNDS = max(1, int(os.environ.get("STATEHOST_BENCH_ROUNDS", "3")))

os.environ.setdefault("AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS", "30")

from airflow.sdk._shared.state import BaseStoreBackend, TaskScope  # noqa: E402
from airflow.sdk.exceptions import ErrorType  # noqa: E402
from airflow.sdk.execution_time import context as ctx  # noqa: E402
from airflow.sdk.execution_time import task_runner  # noqa: E402
from airflow.sdk.execution_time.comms import (  # noqa: E402
    ClearTaskStateStore,
    DeleteTaskStateStore,
    ErrorResponse,
    GetTaskStateStore,
    SetTaskStateStore,
    TaskStateStoreResult,
)


class DictComms:
    """Stand-in for the Execution API: rows in a dict."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def send(self, msg):
        if isinstance(msg, SetTaskStateStore):
            self.rows[(msg.ti_id, msg.key)] = (msg.value, msg.expires_at)
            return None
        if isinstance(msg, GetTaskStateStore):
            row = self.rows.get((msg.ti_id, msg.key))
            if row is None:
                return ErrorResponse(error=ErrorType.TASK_STORE_NOT_FOUND)
            return TaskStateStoreResult(value=row[0])
        if isinstance(msg, DeleteTaskStateStore):
            self.rows.pop((msg.ti_id, msg.key), None)
            return None
        if isinstance(msg, ClearTaskStateStore):
            for k in [k for k in self.rows if k[0] == msg.ti_id]:
                del self.rows[k]
            return None
        raise TypeError(f"unexpected message {type(msg).__name__}")


def _path(scope: TaskScope, key: str) -> str:
    enc = lambda s: quote(s, safe="")  # noqa: E731
    return f"task/{enc(scope.dag_id)}/{enc(scope.run_id)}/{enc(scope.task_id)}/{scope.map_index}/{enc(key)}"


class _WorkerOnly(BaseStoreBackend):
    """Worker-side backends implement only the ref hooks; the server-side
    methods are not used on a worker."""

    def get(self, scope, key, *, session=None):
        raise NotImplementedError

    def set(self, scope, key, value, *, expires_at=None, session=None):
        raise NotImplementedError

    def delete(self, scope, key, *, session=None):
        raise NotImplementedError

    def clear(self, scope, *, all_map_indices=False, session=None):
        raise NotImplementedError

    async def aget(self, scope, key, *, session=None):
        raise NotImplementedError

    async def aset(self, scope, key, value, *, expires_at=None, session=None):
        raise NotImplementedError

    async def adelete(self, scope, key, *, session=None):
        raise NotImplementedError

    async def aclear(self, scope, *, all_map_indices=False, session=None):
        raise NotImplementedError


class MemoryStateBackend(_WorkerOnly):
    values: dict = {}

    def serialize_task_state_store_to_ref(self, *, value, key, scope):
        ref = _path(scope, key)
        self.values[ref] = json.dumps(value)
        return ref

    def deserialize_task_state_store_from_ref(self, stored):
        return json.loads(self.values[stored])


class FileStateBackend(_WorkerOnly):
    root = os.path.join(ROOT, "airflow-fs")

    def serialize_task_state_store_to_ref(self, *, value, key, scope):
        ref = _path(scope, key)
        path = os.path.join(self.root, ref)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return ref

    def deserialize_task_state_store_from_ref(self, stored):
        with open(os.path.join(self.root, stored)) as f:
            return json.loads(f.read())


BACKENDS = {
    "none": "",
    "memory": f"{__name__}.MemoryStateBackend",
    "fs": f"{__name__}.FileStateBackend",
}


def run(backend: str, size: int) -> dict:
    # Each round starts empty, as statehost's rounds do (a fresh host).
    MemoryStateBackend.values.clear()
    shutil.rmtree(FileStateBackend.root, ignore_errors=True)
    os.environ["AIRFLOW__WORKERS__STATE_STORE_BACKEND"] = BACKENDS[backend]
    os.environ["AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES"] = "0"
    ctx._get_worker_state_store_backend.cache_clear()
    task_runner.SUPERVISOR_COMMS = DictComms()
    scope = TaskScope(dag_id="bench_dag", run_id="scheduled__2026-11-21", task_id="extract")
    accessor = ctx.TaskStateStoreAccessor(ti_id=uuid.uuid4(), scope=scope)
    value = "x" * (size - 2)  # JSON text of exactly `size` bytes
    keys = [f"key-{i}" for i in range(N)]

    start = time.perf_counter()
    for k in keys:
        accessor.set(k, value)
    set_us = (time.perf_counter() - start) / N * 1e6

    start = time.perf_counter()
    for k in keys:
        if accessor.get(k) != value:
            raise AssertionError(f"{backend}: {k} did not read back")
    get_us = (time.perf_counter() - start) / N * 1e6

    start = time.perf_counter()
    for k in keys:
        accessor.set(k, value)
        accessor.get(k)
    pair_us = (time.perf_counter() - start) / N * 1e6
    return {"set": set_us, "get": get_us, "pair": pair_us}


if __name__ == "__main__":
    sys.modules.setdefault(__name__, sys.modules["__main__"])
    def median_of_rounds(backend: str, size: int) -> dict:
        runs = [run(backend, size) for _ in range(ROUNDS)]
        return {op: statistics.median(r[op] for r in runs) for op in ("set", "get", "pair")}

    results = {b: {str(size): median_of_rounds(b, size) for size in SIZES} for b in BACKENDS}
    print(json.dumps(results))
