"""Switching from common-io's StateStoreObjectStorageBackend: rows it wrote
(apache-airflow-providers-common-io from PyPI, on a local base path) read back
through the bridge, and delete and clear reach its objects."""

from __future__ import annotations

import pytest

COMMON_IO = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"

VALUES = {
    "job_id": "job-42",
    "watermark": {"offset": 1024, "files": ["a", "b"]},
    "big": "z" * 5000,
    "n": 7,
    "two words/slash": "y" * 30,
}


def files(base):
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


@pytest.mark.parametrize("compression", ["", "gzip"])
def test_rows_common_io_wrote_read_back_through_the_bridge(airflow, monkeypatch, write_config, tmp_path, compression):
    from airflow.sdk.execution_time import context as ctx

    base = tmp_path / "state-base"
    base.mkdir()
    monkeypatch.setenv("AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH", f"file://{base}")
    monkeypatch.setenv("AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD", "20")
    monkeypatch.setenv("AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION", compression)

    # Before: common-io's backend writes the state.
    af = airflow(None, AIRFLOW__WORKERS__STATE_STORE_BACKEND=COMMON_IO)
    task, orders = af.task(), af.asset(name="orders")
    for key, value in VALUES.items():
        task.set(key, value)
        orders.set(key, value)
    old_refs = {key: af.task_row(key)["__airflow_state_ref__"] for key in VALUES}
    assert old_refs["n"] == "7"  # below common-io's threshold: the JSON itself
    assert old_refs["big"].startswith("file://") and old_refs["big"].endswith(".gz" if compression else "/big")
    written = files(base)
    assert len(written) == 6  # job_id and n stayed in the rows

    # After: the bridge with the object-store plugin on the same base.
    config = write_config(
        f'[workers]\nstate_backend = "object_store"\n'
        f'[backends.object_store]\nurl = "file://{base}"\ncommon_io_paths = true\n'
    )
    monkeypatch.setenv("AIRFLOW__WORKERS__STATE_STORE_BACKEND", "statehost.airflow.StatehostBackend")
    monkeypatch.setenv("AIRFLOW__STATEHOST__CONFIG_FILE", str(config))
    ctx._get_worker_state_store_backend.cache_clear()
    for key, value in VALUES.items():
        assert task.get(key) == value
        assert orders.get(key) == value

    # New writes use statehost's layout; the old object stays until deleted.
    task.set("watermark", {"offset": 2048})
    assert af.task_row("watermark")["__airflow_state_ref__"].startswith("v2/task/")
    assert task.get("watermark") == {"offset": 2048}

    # delete and clear reach common-io's objects.
    task.delete("big")
    assert not any(p.startswith("etl/") and "/big" in p for p in files(base))
    assert task.get("job_id") == "job-42"
    task.clear()
    assert not any(p.startswith("etl/") for p in files(base))
    assert [p for p in files(base) if p.startswith("v2/task/")] == []
    orders.delete("watermark")
    assert orders.get("job_id") == "job-42"
    orders.clear()
    assert not any(p.startswith("assets/") for p in files(base))
