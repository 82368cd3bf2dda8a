"""statehost gc --airflow-db: the objects no Airflow row references."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

import statehost
import statehost.airflow
from test_airflow import objects

SCHEMA = """
CREATE TABLE task_state_store (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_run_id INTEGER NOT NULL,
    task_id VARCHAR(250) NOT NULL,
    map_index INTEGER NOT NULL DEFAULT -1,
    key VARCHAR(512) NOT NULL,
    dag_id VARCHAR(250) NOT NULL,
    run_id VARCHAR(250) NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP
);
CREATE TABLE asset_state_store (
    asset_id INTEGER NOT NULL,
    key VARCHAR(512) NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    last_updated_by_kind VARCHAR(16),
    last_updated_by_dag_id VARCHAR(250),
    last_updated_by_run_id VARCHAR(250),
    last_updated_by_task_id VARCHAR(250),
    last_updated_by_map_index INTEGER,
    PRIMARY KEY (asset_id, key)
);
"""


def airflow_db(path, comms) -> str:
    """An Airflow-shaped SQLite database holding the stand-in's rows, as the
    API server writes them (the JSON text of the stored value)."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for (_, key), value in comms.task_rows.items():
        db.execute(
            "INSERT INTO task_state_store (dag_run_id, task_id, key, dag_id, run_id, value, updated_at)"
            " VALUES (1, 'extract', ?, 'etl', 'manual__2026-11-30', ?, CURRENT_TIMESTAMP)",
            (key, json.dumps(value)),
        )
    for i, ((_, key), value) in enumerate(comms.asset_rows.items()):
        db.execute(
            "INSERT INTO asset_state_store (asset_id, key, value, updated_at) VALUES (?, ?, ?, CURRENT_TIMESTAMP)",
            (i + 1, key, json.dumps(value)),
        )
    db.commit()
    db.close()
    return f"sqlite:///{path}"


@pytest.fixture
def short_grace_config(write_config):
    return write_config(
        '[workers]\nstate_backend = "fs"\nstate_backend_timeout_ms = 200\n'
        '[backends.fs]\nroot = "objects"\n[state_store]\norphan_grace = "1s"\n'
    )


def test_objects_no_airflow_row_references_are_collected_after_the_grace(airflow, short_grace_config, tmp_path):
    af = airflow(short_grace_config)
    root = short_grace_config.parent / "objects"
    task = af.task()
    task.set("a", 1)
    task.set("a", 2)  # Airflow leaves the replaced object behind
    task.set("b", 3)
    af.asset(name="orders").set("watermark", 10)
    cleaned = af.task_row("b")
    del af.comms.task_rows[(af.ti_id, "b")]  # as `airflow state-store clean` does
    assert cleaned
    url = airflow_db(tmp_path / "airflow.db", af.comms)
    assert len(objects(root)) == 3 and len(objects(root, "asset")) == 1

    report = statehost.airflow.gc(url, dry_run=True)
    assert report == {"dry_run": True, "objects": 4, "referenced": 2, "orphans": 0, "young": 2, "unknown_age": 0}
    time.sleep(1.2)
    assert statehost.airflow.gc(url, dry_run=True)["orphans"] == 2
    assert len(objects(root)) == 3

    cli = os.environ.get("STATEHOST_TEST_CLI")
    if cli:
        done = subprocess.run(
            [cli, "--config", str(short_grace_config), "gc", "--airflow-db", url, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, STATEHOST__CORE__PLUGINS_DIR=str(statehost.PLUGINS_DIR)),
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
    else:
        report = statehost.airflow.gc(url)
    assert report["orphans"] == 2 and report["dry_run"] is False
    assert len(objects(root)) == 1 and len(objects(root, "asset")) == 1
    assert task.get("a") == 2
    assert af.asset(name="orders").get("watermark") == 10
    assert statehost.airflow.gc(url)["orphans"] == 0


def test_unclaimed_storage_is_not_collected(write_config, tmp_path):
    config = write_config('[workers]\nstate_backend = "fs"\n[backends.fs]\nroot = "objects"\n')
    db = tmp_path / "airflow.db"
    sqlite3.connect(db).executescript(SCHEMA)
    with pytest.raises(statehost.ConfigError, match="no Airflow worker has claimed"):
        statehost.airflow.gc(f"sqlite:///{db}", config=config)


def test_storage_a_statehost_store_uses_is_not_collected(fs_config, tmp_path):
    host = statehost.StateHost(fs_config)
    host.task_state("d", "r", "t").set("k", 1)
    host.gc()
    db = tmp_path / "airflow.db"
    sqlite3.connect(db).executescript(SCHEMA)
    with pytest.raises(statehost.ConfigError, match="no Airflow worker has claimed"):
        statehost.airflow.gc(f"sqlite:///{db}", config=fs_config)
    assert host.task_state("d", "r", "t").get("k") == 1


def test_a_bad_airflow_url_is_one_line(airflow, fs_config):
    af = airflow(fs_config)
    af.task().set("k", 1)  # claims the storage
    with pytest.raises(statehost.ConfigError) as caught:
        statehost.airflow.gc("mysql://airflow@db/airflow", config=fs_config)
    assert "not an Airflow database URL" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(statehost.ConfigError, match="no Airflow database"):
        statehost.airflow.gc("sqlite:////nowhere/airflow.db", config=fs_config)


def test_airflows_postgresql_rows_are_read(airflow, short_grace_config, tmp_path, postgres):
    """The same against PostgreSQL (STATEHOST_TEST_POSTGRES_URL names a server;
    .ci/run sets it): Airflow's tables in a schema of the test's own."""
    url, psql = postgres
    schema = f"airflow_gc_{os.getpid()}"

    af = airflow(short_grace_config)
    task = af.task()
    task.set("kept", 1)
    task.set("replaced", 1)
    task.set("replaced", 2)
    sql = [f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema};",
           SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "SERIAL PRIMARY KEY")]
    for (_, key), value in af.comms.task_rows.items():
        text = json.dumps(value).replace("'", "''")
        sql.append(
            "INSERT INTO task_state_store (dag_run_id, task_id, key, dag_id, run_id, value, updated_at)"
            f" VALUES (1, 'extract', '{key}', 'etl', 'r', '{text}', now());"
        )
    subprocess.run([psql, url, "-v", "ON_ERROR_STOP=1", "-q", "-c", "\n".join(sql)], check=True, timeout=60)
    try:
        airflow_url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
        time.sleep(1.2)
        report = statehost.airflow.gc(airflow_url)
        assert (report["objects"], report["referenced"], report["orphans"]) == (3, 2, 1)
        assert task.get("replaced") == 2 and task.get("kept") == 1
    finally:
        subprocess.run([psql, url, "-q", "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], timeout=60)


def test_a_row_read_in_an_unexpected_shape_keeps_its_object(airflow, short_grace_config, tmp_path):
    af = airflow(short_grace_config)
    root = short_grace_config.parent / "objects"
    af.task().set("a", 1)
    envelope = af.task_row("a")
    url = airflow_db(tmp_path / "airflow.db", af.comms)
    # The same envelope, encoded twice (a JSON string holding it).
    db = sqlite3.connect(tmp_path / "airflow.db")
    db.execute("UPDATE task_state_store SET value = ? WHERE key = 'a'", (json.dumps(json.dumps(envelope)),))
    db.commit()
    db.close()
    time.sleep(1.2)
    assert statehost.airflow.gc(url)["orphans"] == 0
    assert len(objects(root)) == 1
