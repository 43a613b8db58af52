"""`dagster dev -w workspace.yaml` loads the code location with no errors (real webserver, GraphQL)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from riverbed.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message }
    ... on RepositoryLocation { repositories { name jobs { name } } } } } } } }
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _graphql(port: int) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_dagster_dev_loads_the_code_location(tmp_path: Path) -> None:
    port = _free_port()
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RIVERBED_HOME": str(tmp_path / "riverbed")}
    log = (tmp_path / "dagster-dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        entries = None
        while time.monotonic() < deadline:
            try:
                data = _graphql(port)["data"]["workspaceOrError"]
                entries = data.get("locationEntries") or []
                if entries and all(e["locationOrLoadError"] for e in entries):
                    break
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(1)
        assert entries, f"dagster dev did not answer: {(tmp_path / 'dagster-dev.log').read_text()[-2000:]}"
        location = entries[0]["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location.get("message")
        jobs = {job["name"] for repo in location["repositories"] for job in repo["jobs"]}
        assert {"ingest_salary_band", "train_salary_band", "full_salary_band"} <= jobs
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()
