"""Airflow's real accessors (apache-airflow-task-sdk) over an in-process
stand-in for the Execution API: rows in a dict, answered the way the API
server answers (a missing key is a *_STORE_NOT_FOUND error response). No
socket, no HTTP, no database."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS", "30")
os.environ["AIRFLOW__WORKERS__STATE_STORE_BACKEND"] = "statehost.airflow.StatehostBackend"

from airflow.sdk._shared.state import AssetScope, TaskScope  # noqa: E402
from airflow.sdk.exceptions import ErrorType  # noqa: E402
from airflow.sdk.execution_time import comms  # noqa: E402
from airflow.sdk.execution_time import context as ctx  # noqa: E402
from airflow.sdk.execution_time import task_runner  # noqa: E402

SCOPE = TaskScope(dag_id="etl", run_id="manual__2026-11-30", task_id="extract")


class DictComms:
    """The Execution API's state endpoints, over a dict."""

    def __init__(self) -> None:
        self.task_rows: dict = {}  # (ti_id, key) -> value
        self.asset_rows: dict = {}  # (("name"|"uri", id), key) -> value

    def send(self, msg):
        match msg:
            case comms.SetTaskStateStore():
                self.task_rows[(msg.ti_id, msg.key)] = msg.value
            case comms.GetTaskStateStore():
                if (msg.ti_id, msg.key) not in self.task_rows:
                    return comms.ErrorResponse(error=ErrorType.TASK_STORE_NOT_FOUND)
                return comms.TaskStateStoreResult(value=self.task_rows[(msg.ti_id, msg.key)])
            case comms.DeleteTaskStateStore():
                self.task_rows.pop((msg.ti_id, msg.key), None)
            case comms.ClearTaskStateStore():
                for k in [k for k in self.task_rows if k[0] == msg.ti_id]:
                    del self.task_rows[k]
            case comms.SetAssetStateStoreByName() | comms.SetAssetStateStoreByUri():
                self.asset_rows[(_asset(msg), msg.key)] = msg.value
            case comms.GetAssetStateStoreByName() | comms.GetAssetStateStoreByUri():
                if (_asset(msg), msg.key) not in self.asset_rows:
                    return comms.ErrorResponse(error=ErrorType.ASSET_STORE_NOT_FOUND)
                return comms.AssetStateStoreResult(value=self.asset_rows[(_asset(msg), msg.key)])
            case comms.DeleteAssetStateStoreByName() | comms.DeleteAssetStateStoreByUri():
                self.asset_rows.pop((_asset(msg), msg.key), None)
            case comms.ClearAssetStateStoreByName() | comms.ClearAssetStateStoreByUri():
                for k in [k for k in self.asset_rows if k[0] == _asset(msg)]:
                    del self.asset_rows[k]
            case _:
                raise TypeError(f"unexpected message {type(msg).__name__}")
        return None

    async def asend(self, msg):
        return self.send(msg)


def _asset(msg):
    name = getattr(msg, "name", None)
    return ("name", name) if name is not None else ("uri", msg.uri)


class Airflow:
    """A worker's view: the accessors, the rows behind them, the backend."""

    def __init__(self) -> None:
        ctx._get_worker_state_store_backend.cache_clear()
        self.comms = DictComms()
        task_runner.SUPERVISOR_COMMS = self.comms
        self.ti_id = uuid.uuid4()

    def task(self, scope: TaskScope = SCOPE) -> ctx.TaskStateStoreAccessor:
        return ctx.TaskStateStoreAccessor(ti_id=self.ti_id, scope=scope)

    def asset(self, name: str | None = None, uri: str | None = None) -> ctx.AssetStateStoreAccessor:
        return ctx.AssetStateStoreAccessor(name=name, uri=uri)

    def backend(self):
        return ctx._get_worker_state_store_backend()

    def task_row(self, key: str):
        return self.comms.task_rows[(self.ti_id, key)]


__all__ = ["Airflow", "AssetScope", "DictComms", "SCOPE", "TaskScope"]
