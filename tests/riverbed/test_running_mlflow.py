"""CLI commands beside a running ``riverbed up`` read its MLflow server, not the embedded SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from riverbed.cli.stack_state import with_running_mlflow, write_private_json
from riverbed.settings import RiverbedSettings
from riverbed.stack_file import process_identity


def _stack(home: Path, pid: int, mlflow: str | None) -> RiverbedSettings:
    settings = RiverbedSettings(home=home)
    record = {"pid": pid, "process": process_identity(pid), "gateway": "http://127.0.0.1:8000"}
    if mlflow is not None:
        record["mlflow"] = mlflow
    settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
    write_private_json(settings.stack_file, record)
    return settings


def test_a_live_up_stack_names_the_tracking_server(tmp_path: Path) -> None:
    settings = _stack(tmp_path, os.getpid(), "http://127.0.0.1:5055")
    assert settings.resolved_mlflow_tracking_uri.startswith("sqlite:///")
    assert with_running_mlflow(settings).resolved_mlflow_tracking_uri == "http://127.0.0.1:5055"


def test_an_explicit_tracking_uri_wins(tmp_path: Path) -> None:
    settings = _stack(tmp_path, os.getpid(), "http://127.0.0.1:5055")
    explicit = settings.model_copy(update={"mlflow_tracking_uri": "http://mlflow.internal:5000"})
    assert with_running_mlflow(explicit).resolved_mlflow_tracking_uri == "http://mlflow.internal:5000"


def test_serve_stacks_stale_records_and_odd_values_keep_the_default(tmp_path: Path) -> None:
    default = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    serve_only = _stack(tmp_path, os.getpid(), None)  # riverbed serve runs no MLflow server
    assert with_running_mlflow(serve_only).resolved_mlflow_tracking_uri == default
    not_a_url = _stack(tmp_path, os.getpid(), "file:///etc/passwd")
    assert with_running_mlflow(not_a_url).resolved_mlflow_tracking_uri == default
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = _stack(tmp_path, int(finished.stdout), "http://127.0.0.1:5055")  # that process has exited
    assert with_running_mlflow(stale).resolved_mlflow_tracking_uri == default
    settings = RiverbedSettings(home=tmp_path)
    settings.stack_file.write_text("{not json")
    assert with_running_mlflow(settings).resolved_mlflow_tracking_uri == default
