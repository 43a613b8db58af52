"""Fixtures for graph tests: settings pointing every embedded part at a temporary RIVERBED_HOME.

MLServer's address is a port nothing listens on, not the default 8080: a ``riverbed serve`` or ``up`` running on
the same machine must not receive the tests' deployments (they install for the next start instead, as they do
when no MLServer runs)."""

import os
from pathlib import Path

import pytest

from riverbed.cli.mlserver_process import free_port
from riverbed.settings import PROJECT_ROOT, RiverbedSettings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def local_settings(tmp_path: Path) -> RiverbedSettings:
    return isolated_settings(home=tmp_path / "riverbed-home", specs_dirs=[PROJECT_ROOT / "datasets"])


def isolated_settings(home: Path, specs_dirs: list[Path]) -> RiverbedSettings:
    """Settings on ``home`` whose MLServer address is a free port (no stack of this machine answers there)."""
    return RiverbedSettings(home=home, specs_dirs=specs_dirs, mlserver_url=f"http://127.0.0.1:{free_port()}")
