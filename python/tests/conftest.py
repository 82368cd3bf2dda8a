"""Shared fixtures: a statehost config per test, and Airflow's accessors
driven through an in-process stand-in for the Execution API.

Libraries are never unloaded and a process serves one backend, so every test
function runs in a forked child of its own; the pytest process never loads a
plugin.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The plugins the tests misbehave with (tests/fixtures/* of the workspace).
FIXTURES = os.environ.get("STATEHOST_TEST_FIXTURES")


# The exit status of a child whose test skipped itself.
SKIPPED = 77


def pytest_configure(config):
    config.addinivalue_line("markers", "no_fork: runs in the pytest process itself")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs the test function in a forked child (fixtures are set up in the
    parent, which never loads a plugin); its traceback comes back by pipe."""
    if "no_fork" in pyfuncitem.keywords:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code, report = 0, b""
        try:
            pyfuncitem.obj(**args)
        except pytest.skip.Exception as skipped:
            code, report = SKIPPED, str(skipped.msg).encode()
        except BaseException:
            code, report = 1, traceback.format_exc().encode()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(write_end, report)
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == SKIPPED:
        pytest.skip(b"".join(chunks).decode(errors="replace"))
    if code != 0:
        report = b"".join(chunks).decode(errors="replace")
        pytest.fail(f"the test's process ended with {code}:\n{report}", pytrace=False)
    return True


@pytest.fixture
def write_config(tmp_path):
    """Writes a statehost config into the test's directory; returns its path."""

    def write(text: str) -> Path:
        path = tmp_path / "statehost.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def postgres():
    """The PostgreSQL server's URL and the psql that makes schemas on it;
    skips the test without STATEHOST_TEST_POSTGRES_URL (.ci/run sets it)."""
    import shutil

    url = os.environ.get("STATEHOST_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("STATEHOST_TEST_POSTGRES_URL names a PostgreSQL server (.ci/run sets it)")
    psql = shutil.which("psql")
    assert psql, "psql is needed to make schemas on the test server"
    return url, psql


@pytest.fixture
def fs_config(write_config, tmp_path):
    return write_config(
        '[workers]\nstate_backend = "fs"\n[backends.fs]\nroot = "objects"\n'
        '[database]\nurl = "sqlite://state.db"\n'
    )


@pytest.fixture
def memory_config(write_config):
    return write_config('[workers]\nstate_backend = "memory"\n[database]\nurl = "sqlite://state.db"\n')


@pytest.fixture
def faulty_library():
    if not FIXTURES:
        pytest.skip("STATEHOST_TEST_FIXTURES names the directory of the fixture plugins (.ci/run sets it)")
    path = Path(FIXTURES) / "libfixture_faulty.so"
    assert path.exists(), f"{path} is missing: build the workspace first"
    return path


@pytest.fixture
def airflow(monkeypatch):
    """Airflow's worker-side setup with StatehostBackend; returns a function
    that points it at a statehost config and gives the harness."""
    from harness import Airflow

    def use(config: Path | None, **airflow_conf: str) -> Airflow:
        if config is not None:
            monkeypatch.setenv("AIRFLOW__STATEHOST__CONFIG_FILE", str(config))
        for name, value in airflow_conf.items():
            monkeypatch.setenv(name, value)
        return Airflow()

    return use
