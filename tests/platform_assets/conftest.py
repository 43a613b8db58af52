"""Fixtures for graph tests: settings pointing every embedded part at a temporary RIVERBED_HOME."""

import os
from pathlib import Path

import pytest

from riverbed.settings import PROJECT_ROOT, RiverbedSettings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def local_settings(tmp_path: Path) -> RiverbedSettings:
    return RiverbedSettings(home=tmp_path / "riverbed-home", specs_dirs=[PROJECT_ROOT / "datasets"])
