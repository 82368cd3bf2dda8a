"""statehost.StateHost: the Python API over statehost's own metadata store."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import statehost
from statehost import (
    BackendError,
    ConfigError,
    CorruptStateError,
    InvalidInputError,
    StatehostError,
    StateHost,
)
from test_airflow import VALUES, objects


def test_task_state_round_trips_every_json_type(fs_config):
    host = StateHost(fs_config)
    assert host.backend_name == "fs" and host.config_file == str(fs_config)
    state = host.task_state("etl", "manual__1", "extract", map_index=3)
    for i, value in enumerate(VALUES):
        state.set(f"k{i}", value)
    for i, value in enumerate(VALUES):
        assert state.get(f"k{i}") == value
    assert state.get("missing") is None
    assert state.get("missing", {"d": 1}) == {"d": 1}


def test_delete_and_clear(fs_config):
    host = StateHost(fs_config)
    root = fs_config.parent / "objects"
    a = host.task_state("etl", "r", "t", 0)
    b = host.task_state("etl", "r", "t", 1)
    a.set("x", 1)
    a.set("y", 2)
    b.set("x", 3)
    a.delete("x")
    a.delete("never-set")
    assert a.get("x") is None and a.get("y") == 2
    a.clear()
    assert a.get("y") is None and b.get("x") == 3
    a.set("z", 4)
    a.clear(all_map_indices=True)
    assert b.get("x") is None and a.get("z") is None
    host.asset_state(name="orders").set("w", 1)
    host.asset_state(name="orders").clear()
    assert host.asset_state(name="orders").get("w") is None
    time.sleep(0)  # replaced objects go a call deadline later; deletes at once
    assert objects(root) == [] and objects(root, "asset") == []


def test_asset_state_by_name_and_uri(memory_config):
    host = StateHost(memory_config)
    both = host.asset_state(name="orders", uri="s3://b/orders")
    both.set("watermark", {"offset": 1})
    assert host.asset_state(uri="s3://b/orders").get("watermark") == {"offset": 1}
    assert host.asset_state(name="orders").get("watermark") == {"offset": 1}
    with pytest.raises(InvalidInputError):
        host.asset_state()


def test_async_methods_do_not_block_the_loop(fs_config):
    host = StateHost(fs_config)
    state = host.task_state("etl", "r", "t")
    orders = host.asset_state(name="orders")

    async def main():
        await state.aset("k", [1, 2])
        assert await state.aget("k") == [1, 2]
        await state.adelete("k")
        assert await state.aget("k", "gone") == "gone"
        await orders.aset("w", 5)
        assert await orders.aget("w") == 5
        await orders.aclear()
        assert await orders.aget("w") is None
        await state.aset("a", 1)
        await state.aclear()
        assert await state.aget("a") is None

        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.gather(*(state.aset(f"k{i}", i) for i in range(20)))
        ticker.cancel()
        assert ticks > 0
        assert await state.aget("k19") == 19

    asyncio.run(main())


def test_calls_release_the_gil(write_config, faulty_library):
    # A slow plugin call on one thread leaves the others running Python.
    config = write_config(
        f'[workers]\nstate_backend = "{faulty_library}"\n[backends.faulty.ops]\nserialize = "slow:500"\n'
        '[database]\nurl = "sqlite://state.db"\n'
    )
    host = StateHost(config)
    state = host.task_state("etl", "r", "t")
    counted = 0
    done = threading.Event()

    def count():
        nonlocal counted
        while not done.is_set():
            counted += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before = counted
        state.set("k", 1)
    finally:
        done.set()
        counter.join()
    assert counted - before > 1000


def test_bad_input_is_a_value_error(memory_config):
    host = StateHost(memory_config)
    state = host.task_state("etl", "r", "t")
    for key in ("", "a\nb", "k" * 513):
        with pytest.raises(InvalidInputError) as caught:
            state.set(key, 1)
        assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidInputError):
        state.set("k", None)
    with pytest.raises(InvalidInputError):
        state.set("k", float("nan"))
    with pytest.raises(InvalidInputError, match="reserved"):
        state.set("k", {"__airflow_state_ref__": "x"})
    with pytest.raises(InvalidInputError):
        host.task_state("", "r", "t")  # validated when used
        host.task_state("", "r", "t").get("k")


def test_config_errors_are_one_line(write_config, tmp_path):
    with pytest.raises(ConfigError) as caught:
        StateHost(tmp_path / "nowhere.toml")
    assert "nowhere.toml" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="bogus"):
        StateHost(write_config("[workers]\nbogus = 1\n"))
    with pytest.raises(ConfigError, match="nosuch"):
        StateHost(write_config('[workers]\nstate_backend = "nosuch"\n'))
    assert issubclass(ConfigError, StatehostError)


def test_a_backend_failure_is_a_backend_error(write_config, faulty_library):
    config = write_config(
        f'[workers]\nstate_backend = "{faulty_library}"\n[backends.faulty.ops]\nserialize = "fail:unavailable"\n'
        '[database]\nurl = "sqlite://state.db"\n'
    )
    host = StateHost(config)
    with pytest.raises(statehost.BackendUnavailableError) as caught:
        host.task_state("etl", "r", "t").set("k", 1)
    assert isinstance(caught.value, BackendError)


def test_an_object_deleted_behind_statehosts_back_is_corrupt_state(fs_config):
    host = StateHost(fs_config)
    state = host.task_state("etl", "r", "t")
    state.set("k", "v")
    for path in objects(fs_config.parent / "objects"):
        path.unlink()
    with pytest.raises(CorruptStateError, match="behind statehost's back"):
        state.get("k")


def test_without_a_backend_values_stay_inline(write_config):
    host = StateHost(write_config('[database]\nurl = "sqlite://state.db"\n'))
    assert host.backend_name is None
    host.task_state("d", "r", "t").set("k", {"v": 1})
    assert host.task_state("d", "r", "t").get("k") == {"v": 1}


def test_gc_reports(fs_config):
    host = StateHost(fs_config)
    host.task_state("etl", "r", "t").set("k", 1)
    report = host.gc(dry_run=True)
    assert report == {
        "dry_run": True,
        "expired_rows": 0,
        "objects": 0,
        "orphans": 0,
        "swept": None,
        "unreadable_rows": 0,
        "orphans_skipped": None,
    }
    report = host.gc()
    assert report["dry_run"] is False and report["orphans"] == 0
    assert host.task_state("etl", "r", "t").get("k") == 1


def test_gc_refuses_storage_that_airflow_owns(fs_config, monkeypatch):
    monkeypatch.setenv("AIRFLOW__STATEHOST__CONFIG_FILE", str(fs_config))
    from statehost.airflow import StatehostBackend

    backend = StatehostBackend()  # claims the storage for Airflow's database
    from harness import SCOPE

    ref = backend.serialize_task_state_store_to_ref(value="airflow's", key="k", scope=SCOPE)
    host = StateHost(fs_config)
    with pytest.raises(ConfigError) as caught:
        host.gc()
    assert "owned by airflow" in str(caught.value) and "--airflow-db" in str(caught.value)
    assert backend.deserialize_task_state_store_from_ref(ref) == "airflow's"


def test_the_default_plugins_dir_is_the_packages():
    assert (statehost.PLUGINS_DIR / "libstatehost_fs.so").exists()
    assert (statehost.PLUGINS_DIR / "libstatehost_memory.so").exists()
    assert (statehost.PLUGINS_DIR / "libstatehost_object_store.so").exists()


def test_values_encode_as_pythons_json_module_does(memory_config):
    import json

    state = StateHost(memory_config).task_state("d", "r", "t")
    for value in [2**70, -(2**100), (1, "a"), {1: "int key", 2.5: "float", 1e-07: "small", 1e22: "big", True: "bool", None: "none"}, "\ud7ff€𝄞"]:
        state.set("k", value)
        assert state.get("k") == json.loads(json.dumps(value))
    with pytest.raises(InvalidInputError, match="keys must be"):
        state.set("k", {(1, 2): "tuple key"})
    nested: list = []
    nested.append(nested)
    with pytest.raises(InvalidInputError, match="nests deeper"):
        state.set("k", nested)


def test_numbers_keep_every_digit(memory_config):
    from decimal import Decimal

    state = StateHost(memory_config).task_state("d", "r", "t")
    # Integers of any size, and decimals beyond a float's precision or
    # range, read back as the same number; floats stay floats.
    for value in [
        2**64,
        -(2**200),
        Decimal("3.14159265358979323846264338327950288419716939937510"),
        Decimal("1E+400"),
        Decimal("-2.5E-400"),
        0.1,
        1e300,
        -0.0,
    ]:
        state.set("n", {"v": [value]})
        back = state.get("n")["v"][0]
        assert back == value and type(back) is type(value), (value, back)
    # A Decimal a float holds exactly comes back as that float.
    state.set("n", Decimal("1.5"))
    assert state.get("n") == 1.5 and isinstance(state.get("n"), float)
    with pytest.raises(InvalidInputError, match="out of range"):
        state.set("n", Decimal("NaN"))


def _exit_code(pid: int, seconds: float = 30) -> int:
    """The exit code of forked child `pid`; fails the test (and kills the
    child) if it has not ended within `seconds`."""
    import os
    import signal

    until = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > until:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child hung for {seconds} s")
        time.sleep(0.05)


def _write_in_a_forked_child(state, parents_k) -> None:
    """Forks; the child writes "child" = 1 and reads it and the parent's "k"
    back; fails the test unless it did."""
    import os

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            state.set("child", 1)
            code = 0 if state.get("child") == 1 and state.get("k") == parents_k else 2
        finally:
            os._exit(code)
    assert _exit_code(pid) == 0


def test_a_fork_after_load_opens_the_host_again(write_config, tmp_path):
    (tmp_path / "bucket").mkdir()
    config = write_config(
        '[workers]\nstate_backend = "object_store"\nstate_backend_timeout_ms = 3000\n'
        f'[backends.object_store]\nurl = "file://{tmp_path}/bucket"\n[database]\nurl = "sqlite://state.db"\n'
    )
    state = StateHost(config).task_state("d", "r", "t")
    state.set("k", "parent")
    _write_in_a_forked_child(state, "parent")
    assert state.get("child") == 1


def test_a_fork_after_a_value_was_replaced_does_not_hang(fs_config):
    """The parent replaced a value, so its reaper's thread runs; the forked
    child, which has no such thread, drops the parent's host and opens its
    own."""
    import os

    state = StateHost(fs_config).task_state("d", "r", "t")
    state.set("k", "first")
    state.set("k", "second")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            state.set("child", 1)
            state.set("child", 2)
            code = 0 if state.get("child") == 2 and state.get("k") == "second" else 2
        finally:
            os._exit(code)
    assert _exit_code(pid) == 0
    assert state.get("child") == 2


def test_a_fork_leaves_the_parents_postgresql_sessions_alone(write_config, postgres):
    """The child opens a host of its own and drops the parent's, which must
    neither talk over nor end the parent's PostgreSQL sessions
    (STATEHOST_TEST_POSTGRES_URL names a server; .ci/run sets it)."""
    import os
    import subprocess

    url, psql = postgres
    schema = f"statehost_pyfork_{os.getpid()}"
    subprocess.run([psql, url, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"], check=True)
    try:
        sep = "&" if "?" in url else "?"
        config = write_config(f'[database]\nurl = "{url}{sep}options=-csearch_path%3D{schema}"\n')
        state = StateHost(config).task_state("d", "r", "t")
        state.set("k", "parent")
        _write_in_a_forked_child(state, "parent")
        # The first read after the child: not a reset connection.
        assert state.get("k") == "parent"
        assert state.get("child") == 1
    finally:
        subprocess.run([psql, url, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], check=True)


def test_the_ownership_marker_is_reserved(fs_config):
    host = StateHost(fs_config)
    with pytest.raises(InvalidInputError, match="reserved"):
        host.asset_state(name="__statehost_owner__").set("owner", 1)
