"""Where the config comes from, when none is passed."""

from __future__ import annotations

import os
from pathlib import Path

#: The plugins shipped in the package: the default ``[core] plugins_dir``.
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


def _airflow_config_file() -> str | None:
    """Airflow's ``[statehost] config_file`` (so ``AIRFLOW__STATEHOST__CONFIG_FILE``
    works), when Airflow's configuration can be read."""
    try:
        from airflow.sdk.configuration import conf
    except Exception:
        try:
            from airflow.configuration import conf  # type: ignore[no-redef]
        except Exception:
            return os.environ.get("AIRFLOW__STATEHOST__CONFIG_FILE") or None
    value = conf.get("statehost", "config_file", fallback=None)
    return value or None


def discover(config: str | os.PathLike[str] | None = None, *, airflow: bool = True) -> str | None:
    """The config file to read: ``config``; else Airflow's ``[statehost]
    config_file``; else ``$STATEHOST_CONFIG``; else ``None`` (the defaults plus
    the ``STATEHOST__SECTION__KEY`` variables)."""
    if config is not None:
        return os.fspath(config)
    if airflow and (found := _airflow_config_file()):
        return found
    return os.environ.get("STATEHOST_CONFIG") or None
