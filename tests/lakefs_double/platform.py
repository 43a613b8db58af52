"""The platform in its ``compose`` environment with lakeFS played by the double: the production resource wiring.

``platform_assets/environments.py`` builds the ``compose`` / ``production`` resources from ``RIVERBED_*``
environment variables (``dg.EnvVar``, resolved at launch). These helpers set them so that the versioned store is
the lakeFS backend (the official SDK over HTTP) talking to a running double, while MLflow stays on a SQLite store
under the test's directory and the other services point where the test says. Reads of the double's state give
the values the tests assert (commits, metadata, object keys, bytes), independently of the SDK.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from riverbed.settings import PROJECT_ROOT, Environment, RiverbedSettings
from tests.lakefs_double.server import LakeFSDouble
from tests.lakefs_double.state import Commit, Entry, Repository


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def compose_settings_on_lakefs(
    monkeypatch: pytest.MonkeyPatch,
    double: LakeFSDouble,
    work_dir: Path,
    kafka_bootstrap_servers: str | None = None,
    kafka_topic_prefix: str | None = None,
) -> RiverbedSettings:
    """``RIVERBED_ENV=compose`` settings on a fresh lakeFS repository of ``double``; the cwd moves to ``work_dir``.

    MLflow experiments created without an artifact location (as in ``compose``, where the server owns it) put
    their artifacts under the working directory, hence the ``chdir``. Unused services (MLServer, the inference
    log, and Kafka unless given) point at a closed local port.
    """
    repository = f"graph-{uuid.uuid4().hex[:10]}"
    dead_end = f"127.0.0.1:{closed_port()}"
    variables = {
        "RIVERBED_LAKEFS_ENDPOINT": double.url,
        "RIVERBED_LAKEFS_ACCESS_KEY_ID": double.access_key_id,
        "RIVERBED_LAKEFS_SECRET_ACCESS_KEY": double.secret_access_key,
        "RIVERBED_LAKEFS_STORAGE_NAMESPACE": f"local://riverbed-platform/{repository}",
        "RIVERBED_MLFLOW_TRACKING_URI": f"sqlite:///{work_dir / 'mlflow.db'}",
        "RIVERBED_MLSERVER_URL": f"http://{dead_end}",
        "RIVERBED_INFERENCE_LOG_DSN": f"postgresql://riverbed@{dead_end}/riverbed",
        "RIVERBED_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers or dead_end,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(work_dir)
    return RiverbedSettings(
        env=Environment.COMPOSE,
        home=work_dir / "home",
        specs_dirs=[PROJECT_ROOT / "datasets"],
        data_repository=repository,
        kafka_bootstrap_servers=kafka_bootstrap_servers or dead_end,
        kafka_topic_prefix=kafka_topic_prefix or f"t{uuid.uuid4().hex[:10]}",
    )


def repository_state(double: LakeFSDouble, settings: RiverbedSettings) -> Repository:
    return double.state.repositories[settings.data_repository]


def main_history(repo: Repository) -> list[Commit]:
    """Every commit reachable from main's head (all parents), newest generation first."""
    seen: dict[str, Commit] = {}
    pending = [repo.branches[repo.default_branch].commit_id]
    while pending:
        commit = repo.commits[pending.pop()]
        if commit.id not in seen:
            seen[commit.id] = commit
            pending.extend(commit.parents)
    return sorted(seen.values(), key=lambda c: (-c.generation, -c.creation_ns))


def object_bytes(repo: Repository, commit_id: str, path: str) -> bytes:
    entry: Entry = repo.commits[commit_id].tree[path]
    return repo.blobs[entry.physical_address]
