"""Airflow's task-state accessors (apache-airflow-task-sdk 1.3.2) with each
worker-side backend, one backend per process (a process loads one statehost
plugin for its lifetime).

The accessor pair is driven the way airflow_state_bench.py drives it: rows
in a dict behind an in-process stand-in for the Execution API (DictComms),
N keys set, then read, then set and read again. Backends:

  none               no backend: values go inline into the rows
  airflow-memory     Airflow-style Python backend, values in a dict
  airflow-fs         Airflow-style Python backend, one file per value
                     (temporary file, fsync, rename, fsync of the directory)
  common-io          apache-airflow-providers-common-io's object-storage
                     backend on a local base path (skipped if not installed)
  statehost-memory   statehost.airflow.StatehostBackend, memory plugin
  statehost-fs       statehost.airflow.StatehostBackend, fs plugin (fsync on)
  statehost-object-store   ... object-store plugin on file://

Prints {backend: {size: {"set": µs, "get": µs, "pair": µs}}}.
Usage: python airflow_backends_bench.py ROOT_DIR BACKEND [N]
STATEHOST_BENCH_SIZE=16 runs one value size (for a profiler).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

ROOT = sys.argv[1]
BACKEND = sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
SIZES = [16, 1024, 1 << 20]
if os.environ.get("STATEHOST_BENCH_SIZE"):
    SIZES = [int(os.environ["STATEHOST_BENCH_SIZE"])]
# Fewer keys for 1 MiB values: the same bytes as ~1 s of work.
N_FOR = {16: N, 1024: N, 1 << 20: max(50, N // 25)}

os.environ.setdefault("AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS", "30")
os.environ["AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES"] = "0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = [sys.argv[0], ROOT]  # airflow_state_bench reads its root from argv

import airflow_state_bench as base  # noqa: E402
from airflow.sdk._shared.state import TaskScope  # noqa: E402
from airflow.sdk.execution_time import context as ctx  # noqa: E402
from airflow.sdk.execution_time import task_runner  # noqa: E402


def configure() -> bool:
    """Points Airflow (and statehost) at BACKEND; False if it cannot run here."""
    classes = {
        "none": "",
        "airflow-memory": "airflow_state_bench.MemoryStateBackend",
        "airflow-fs": "airflow_state_bench.FileStateBackend",
        "common-io": "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend",
    }
    if BACKEND in classes:
        if BACKEND == "common-io":
            try:
                import airflow.providers.common.io.state_store.backend  # noqa: F401
            except ImportError:
                return False
            base_dir = os.path.join(ROOT, "common-io")
            os.makedirs(base_dir, exist_ok=True)
            os.environ["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"] = f"file://{base_dir}"
        os.environ["AIRFLOW__WORKERS__STATE_STORE_BACKEND"] = classes[BACKEND]
        return True
    plugin = BACKEND.removeprefix("statehost-")
    config = os.path.join(ROOT, f"{BACKEND}.toml")
    options = {
        "memory": "",
        "fs": f'[backends.fs]\nroot = "{ROOT}/statehost-fs"\n',
        "object-store": f'[backends.object_store]\nurl = "file://{ROOT}/statehost-object-store"\n',
    }[plugin]
    with open(config, "w") as f:
        f.write(f'[workers]\nstate_backend = "{plugin.replace("-", "_")}"\n{options}')
    os.environ["AIRFLOW__WORKERS__STATE_STORE_BACKEND"] = "statehost.airflow.StatehostBackend"
    os.environ["AIRFLOW__STATEHOST__CONFIG_FILE"] = config
    return True


def run(size: int) -> dict:
    n = N_FOR[size]
    ctx._get_worker_state_store_backend.cache_clear()
    task_runner.SUPERVISOR_COMMS = base.DictComms()
    scope = TaskScope(dag_id="bench_dag", run_id="scheduled__2026-11-21", task_id=f"extract_{size}")
    accessor = ctx.TaskStateStoreAccessor(ti_id=uuid.uuid4(), scope=scope)
    value = "x" * (size - 2)  # JSON text of exactly `size` bytes
    keys = [f"key-{i}" for i in range(n)]
    accessor.set("warm-up", value)

    start = time.perf_counter()
    for k in keys:
        accessor.set(k, value)
    set_us = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    for k in keys:
        if accessor.get(k) != value:
            raise AssertionError(f"{BACKEND}: {k} did not read back")
    get_us = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    for k in keys:
        accessor.set(k, value)
        accessor.get(k)
    pair_us = (time.perf_counter() - start) / n * 1e6
    return {"set": set_us, "get": get_us, "pair": pair_us, "n": n}


if __name__ == "__main__":
    if not configure():
        print(json.dumps({}))
        sys.exit(0)
    print(json.dumps({BACKEND: {str(size): run(size) for size in SIZES}}))
