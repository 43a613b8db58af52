"""Session-wide test setup: quiet telemetry, and a real S3 server (moto) over HTTP on 127.0.0.1."""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

MOTO_ACCESS_KEY = "moto-test-access-key"
MOTO_SECRET_KEY = "moto-test-secret-key"  # moto accepts any credentials; these are not real ones


@pytest.fixture(scope="session")
def moto_s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in its own process; yields its endpoint URL."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto_server = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", "0"], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        endpoint = None
        while time.monotonic() < deadline and endpoint is None:
            match = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", log.read_bytes())
            if match:
                endpoint = match.group(1).decode()
            elif process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {log.read_text()}")
            else:
                time.sleep(0.1)
        if endpoint is None:
            raise RuntimeError(f"moto_server did not report its port: {log.read_text()}")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
