"""StatehostBackend under Airflow's real accessors (task SDK 1.3.2)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import statehost
from statehost.errors import BackendError, ConfigError, InvalidInputError, StateNotFoundError

VALUES = [
    "job-42",
    "",
    "naïve ☃ \u0000 \"quoted\" \\ /",
    0,
    -17,
    2**62,
    -(2**63),
    3.25,
    -1.5e-300,
    1e300,
    True,
    False,
    [],
    {},
    [1, "two", 3.0, None, True, [], {}],
    {"nested": {"list": [{"a": None}], "empty": ""}, "n": 1},
    "x" * (1 << 20),
]


def objects(root: Path, kind: str = "task") -> list[Path]:
    """The value files the fs plugin holds for ``kind`` (the ownership marker aside)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and f"/{kind}/" in str(p) and "statehost_owner" not in str(p))


def test_the_row_is_exactly_the_envelope_and_the_value_is_a_file(airflow, fs_config):
    af = airflow(fs_config)
    af.task().set("job_id", "job-42")
    row = af.task_row("job_id")
    assert list(row) == ["__airflow_state_ref__"]
    ref = row["__airflow_state_ref__"]
    assert isinstance(ref, str) and ref.startswith("v2/task/etl/")
    assert json.dumps(row) == json.dumps({"__airflow_state_ref__": ref})
    [path] = objects(fs_config.parent / "objects")
    assert path.read_text() == '"job-42"'
    assert af.task().get("job_id") == "job-42"


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (b'{"a": ', "returned text that is not JSON"),
        (b'"unterminated', "returned text that is not JSON"),
        (b'"tab\tinside"', "returned text that is not JSON"),
        (b'"\xff\xfe"', "UTF-8"),
        (b"\xff{}", "UTF-8"),
    ],
)
def test_an_object_that_is_not_a_json_value_is_a_backend_error(airflow, fs_config, stored, problem):
    af = airflow(fs_config)
    af.task().set("job_id", "job-42")
    ref = af.task_row("job_id")["__airflow_state_ref__"]
    [path] = objects(fs_config.parent / "objects")
    path.write_bytes(stored)
    with pytest.raises(BackendError, match=problem) as caught:
        af.task().get("job_id")
    assert ref in str(caught.value)


@pytest.mark.parametrize("config", ["fs_config", "memory_config"])
def test_every_json_type_round_trips(airflow, config, request):
    af = airflow(request.getfixturevalue(config))
    task, asset = af.task(), af.asset(name="orders")
    for i, value in enumerate(VALUES):
        task.set(f"k{i}", value)
        asset.set(f"k{i}", value)
    for i, value in enumerate(VALUES):
        assert task.get(f"k{i}") == value
        assert asset.get(f"k{i}") == value
    assert task.get("missing", "default") == "default"


def test_nan_and_infinity_are_refused_before_the_backend(airflow, fs_config):
    af = airflow(fs_config)
    for bad in (math.nan, math.inf, [-math.inf], {"a": object()}):
        with pytest.raises(InvalidInputError, match="not JSON"):
            af.task().set("k", bad)
    assert objects(fs_config.parent / "objects") == []
    assert af.comms.task_rows == {}


def test_delete_and_clear_reach_the_backend(airflow, fs_config):
    af = airflow(fs_config)
    root = fs_config.parent / "objects"
    task = af.task()
    for key in ("a", "b", "c"):
        task.set(key, {"key": key})
    assert len(objects(root)) == 3
    task.delete("a")
    assert task.get("a") is None
    assert len(objects(root)) == 2
    task.clear()
    assert objects(root) == [] and af.comms.task_rows == {}

    orders = af.asset(uri="s3://bucket/orders")
    orders.set("watermark", 1024)
    assert len(objects(root, "asset")) == 1
    orders.delete("watermark")
    assert objects(root, "asset") == []
    orders.set("watermark", 2048)
    orders.clear()
    assert objects(root, "asset") == []


def test_delete_reaches_the_memory_backend(airflow, memory_config):
    af = airflow(memory_config)
    af.task().set("k", [1, 2])
    ref = af.task_row("k")["__airflow_state_ref__"]
    backend = af.backend()
    assert backend.deserialize_task_state_store_from_ref(ref) == [1, 2]
    af.task().delete("k")
    with pytest.raises(StateNotFoundError) as caught:
        backend.deserialize_task_state_store_from_ref(ref)
    assert isinstance(caught.value, KeyError)
    assert ref in str(caught.value) and "\n" not in str(caught.value)


def test_an_overwrite_keeps_the_new_value(airflow, fs_config):
    af = airflow(fs_config)
    af.task().set("k", 1)
    af.task().set("k", 2)
    assert af.task().get("k") == 2


def test_clear_on_success_clears_the_backend(airflow, fs_config):
    from types import SimpleNamespace

    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.context import OutletEventAccessors

    af = airflow(fs_config, AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS="True")
    root = fs_config.parent / "objects"
    task = af.task()
    task.set("checkpoint", {"offset": 7})
    assert len(objects(root)) == 1
    ti = SimpleNamespace(
        task=SimpleNamespace(outlets=[]),
        stats_tags={},
        rendered_map_index=None,
        end_date=None,
    )
    context = {"task_state_store": task, "outlet_events": OutletEventAccessors()}
    msg, state = task_runner._handle_current_task_success(context, ti)
    assert state == "success"
    assert objects(root) == []


def test_async_asset_methods(airflow, fs_config):
    af = airflow(fs_config)
    root = fs_config.parent / "objects"

    async def main():
        orders = af.asset(name="orders")
        await orders.aset("watermark", {"offset": 1})
        assert await orders.aget("watermark") == {"offset": 1}
        assert len(objects(root, "asset")) == 1
        await orders.adelete("watermark")
        assert await orders.aget("watermark", "gone") == "gone"
        assert objects(root, "asset") == []
        await orders.aset("a", 1)
        await orders.aset("b", 2)
        await orders.aclear()
        assert objects(root, "asset") == []

        # The event loop keeps running while the backend works.
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.gather(*(orders.adelete(f"k{i}") for i in range(20)))
        ticker.cancel()
        assert ticks > 0

    asyncio.run(main())


def test_an_inline_answer_is_stored_as_json_text(airflow, write_config):
    # The object-store plugin keeps values shorter than its threshold inline;
    # Airflow wraps every answer, so the reference is the value's JSON text.
    config = write_config(
        '[workers]\nstate_backend = "object_store"\n'
        '[backends.object_store]\nurl = "memory://"\ninline_threshold_bytes = 100\n'
    )
    af = airflow(config)
    af.task().set("small", {"a": [1, "b"]})
    af.task().set("large", "y" * 200)
    assert af.task_row("small") == {"__airflow_state_ref__": '{"a":[1,"b"]}'}
    assert af.task_row("large")["__airflow_state_ref__"].startswith("v2/")
    assert af.task().get("small") == {"a": [1, "b"]}
    assert af.task().get("large") == "y" * 200
    af.asset(name="o").set("s", 5)
    assert af.asset(name="o").get("s") == 5


def test_server_side_methods_say_they_are_not_for_workers(airflow, memory_config):
    af = airflow(memory_config)
    backend = af.backend()
    scope = af.task()._scope
    for call in (lambda: backend.get(scope, "k"), lambda: backend.set(scope, "k", "1")):
        with pytest.raises(NotImplementedError, match="worker-side"):
            call()
    with pytest.raises(NotImplementedError, match="worker-side"):
        asyncio.run(backend.aget(scope, "k"))


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def test_a_missing_config_file_fails_at_the_first_accessor_call(airflow, tmp_path):
    af = airflow(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError) as caught:
        af.task().set("k", 1)
    assert "nowhere.toml" in one_line(caught.value)
    assert af.comms.task_rows == {}


def test_an_unknown_plugin_lists_what_the_package_ships(airflow, write_config):
    af = airflow(write_config('[workers]\nstate_backend = "nosuch"\n'))
    with pytest.raises(ConfigError) as caught:
        af.task().set("k", 1)
    message = one_line(caught.value)
    assert "nosuch" in message and "fs" in message and "memory" in message
    assert str(statehost.PLUGINS_DIR) in message


def test_a_bad_backend_option_names_the_key(airflow, write_config):
    af = airflow(write_config('[workers]\nstate_backend = "fs"\n[backends.fs]\nroot = "o"\nroots = "typo"\n'))
    with pytest.raises(ConfigError) as caught:
        af.task().set("k", 1)
    assert "roots" in one_line(caught.value)


def test_no_backend_configured_is_a_config_error(airflow, write_config):
    af = airflow(write_config("[workers]\nstate_backend = \"\"\n"))
    with pytest.raises(ConfigError, match="no state backend"):
        af.task().set("k", 1)


def test_the_environment_alone_configures_it(airflow, monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW__STATEHOST__CONFIG_FILE", raising=False)
    monkeypatch.delenv("STATEHOST_CONFIG", raising=False)
    monkeypatch.setenv("STATEHOST__WORKERS__STATE_BACKEND", "fs")
    monkeypatch.setenv("STATEHOST__BACKENDS__FS__ROOT", str(tmp_path / "env-objects"))
    af = airflow(None)
    af.task().set("k", "v")
    assert af.task().get("k") == "v"
    assert len(objects(tmp_path / "env-objects")) == 1


def test_statehost_config_is_read_when_airflow_names_none(airflow, monkeypatch, fs_config):
    monkeypatch.delenv("AIRFLOW__STATEHOST__CONFIG_FILE", raising=False)
    monkeypatch.setenv("STATEHOST_CONFIG", str(fs_config))
    af = airflow(None)
    af.task().set("k", "v")
    assert af.backend().backend_name == "fs"


def test_a_plugin_panic_is_an_exception(airflow, write_config, faulty_library):
    config = write_config(
        f'[workers]\nstate_backend = "{faulty_library}"\n'
        '[backends.faulty.ops]\ndelete = "panic"\nclear = "panic"\n'
    )
    af = airflow(config)
    af.task().set("k", 1)
    with pytest.raises(BackendError) as caught:
        af.task().delete("k")
    assert "panic" in one_line(caught.value)
    with pytest.raises(BackendError, match="panic"):
        af.task().clear()
    # The process goes on.
    af.task().set("k2", 2)
    assert af.task().get("k2") == 2


def test_a_read_that_panics_is_an_exception(airflow, write_config, faulty_library):
    # The faulty plugin lists, so the constructor reads its storage's owner
    # marker: a panicking read fails there, as one line.
    config = write_config(
        f'[workers]\nstate_backend = "{faulty_library}"\n[backends.faulty.ops]\ndeserialize = "panic"\n'
    )
    af = airflow(config)
    with pytest.raises(BackendError) as caught:
        af.task().set("k", 1)
    assert "panicked" in one_line(caught.value)
    assert af.comms.task_rows == {}


def test_a_value_that_is_not_utf8_is_a_backend_error(airflow, write_config, faulty_library):
    # The faulty plugin hands back a JSON string of 104 bytes with two bytes
    # that are not UTF-8 just before its closing quote, past the first
    # 64-byte block of the vectorised check.
    config = write_config(
        f'[workers]\nstate_backend = "{faulty_library}"\n[backends.faulty.ops]\ndeserialize = "non_utf8"\n'
    )
    af = airflow(config)
    af.task().set("k", "v")
    ref = af.task_row("k")["__airflow_state_ref__"]
    with pytest.raises(BackendError, match="not UTF-8") as caught:
        af.task().get("k")
    assert ref in str(caught.value)
    with pytest.raises(BackendError, match="not UTF-8"):
        af.backend().deserialize_task_state_store_from_ref(ref)
    # The native handle's text read checks too.
    with pytest.raises(BackendError, match="not UTF-8"):
        af.backend()._native().deserialize(ref)


def test_a_constructor_panic_is_a_config_error(airflow, write_config, faulty_library):
    config = write_config(f'[workers]\nstate_backend = "{faulty_library}"\n[backends.faulty]\non_new = "panic"\n')
    af = airflow(config)
    with pytest.raises(ConfigError) as caught:
        af.task().set("k", 1)
    assert "panic" in one_line(caught.value)


@pytest.mark.parametrize("which", ["fs", "object_store"])
def test_a_fork_after_load_keeps_working(airflow, write_config, tmp_path, which):
    # The object-store plugin's I/O threads do not survive a fork: the
    # child needs an instance of its own.
    (tmp_path / "bucket").mkdir()
    options = {
        "fs": 'root = "objects"',
        "object_store": f'url = "file://{tmp_path}/bucket"',
    }[which]
    af = airflow(write_config(f'[workers]\nstate_backend = "{which}"\n[backends.{which}]\n{options}\n'))
    af.task().set("k", "parent")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            af.task().set("child", list(range(10)))
            code = 0 if af.task().get("child") == list(range(10)) and af.task().get("k") == "parent" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    af.task().set("k", "parent again")
    assert af.task().get("k") == "parent again"


def test_interpreter_exit_with_threads_inside_native_calls(faulty_library, tmp_path):
    config = tmp_path / "statehost.toml"
    config.write_text(
        f'[workers]\nstate_backend = "{faulty_library}"\nstate_backend_timeout_ms = 5000\n'
        '[backends.faulty.ops]\ndeserialize = "slow:2000"\n'
    )
    script = textwrap.dedent(
        f"""
        import threading, time, os
        os.environ["AIRFLOW__STATEHOST__CONFIG_FILE"] = {str(config)!r}
        from statehost.airflow import StatehostBackend
        backend = StatehostBackend()
        ref = backend.serialize_task_state_store_to_ref(value=1, key="k", scope=__import__("harness").SCOPE)
        for _ in range(4):
            threading.Thread(target=backend.deserialize_task_state_store_from_ref, args=(ref,), daemon=True).start()
        time.sleep(0.3)
        print("exiting", flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout


def test_the_ownership_marker_is_out_of_a_tasks_reach(airflow, fs_config):
    af = airflow(fs_config)
    af.task().set("k", 1)  # the worker claimed the storage
    root = fs_config.parent / "objects"
    marker = [p for p in root.rglob("*") if p.is_file() and "statehost_owner" in str(p)]
    assert marker
    reserved = af.asset(name="__statehost_owner__")
    for attempt in (lambda: reserved.set("owner", {"owner": "statehost"}), lambda: reserved.delete("owner"), reserved.clear):
        with pytest.raises(Exception, match="reserved"):
            attempt()
    assert [p for p in root.rglob("*") if p.is_file() and "statehost_owner" in str(p)] == marker
    # A new worker still starts.
    from airflow.sdk.execution_time import context as ctx

    ctx._get_worker_state_store_backend.cache_clear()
    af.task().set("k", 2)
    assert af.task().get("k") == 2


def test_a_backend_that_keeps_small_values_inline_still_claims_its_storage(airflow, write_config, tmp_path):
    (tmp_path / "bucket").mkdir()
    config = write_config(
        '[workers]\nstate_backend = "object_store"\n'
        f'[backends.object_store]\nurl = "file://{tmp_path}/bucket"\ninline_threshold_bytes = 1000\n'
    )
    af = airflow(config)
    af.task().set("small", 1)
    assert af.task().get("small") == 1
    marker = [p for p in (tmp_path / "bucket").rglob("*") if p.is_file() and "statehost_owner" in str(p)]
    assert marker, "the marker was kept inline, where no listing finds it"
