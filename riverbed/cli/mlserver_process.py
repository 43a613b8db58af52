"""Run ``mlserver start`` on a model repository as a child process (local stack, demo and tests).

MLServer reads ``settings.json`` from the folder it is started on and always uses that same folder as its
model repository root, so the settings file is written into the repository root. Ports are set explicitly
(HTTP, gRPC and metrics), ``parallel_workers`` is 0 (one process: starts in seconds, no worker crash loops).
The process runs in its own process group and dies with its parent (:func:`riverbed.cli.processes.spawn`).
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from resources.mlserver_admin import MLServerAdmin
from riverbed.cli import processes
from riverbed.errors import MLServerUnavailableError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = "settings.json"
MLSERVER_HOST = "127.0.0.1"  # every MLServer port (HTTP, gRPC, metrics) listens here only


class MLServerStartError(RuntimeError):
    """``mlserver start`` exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mlserver_executable() -> str:
    beside = Path(sys.executable).with_name("mlserver")
    if beside.exists():
        return str(beside)
    found = shutil.which("mlserver")
    if found is None:
        raise MLServerStartError("the `mlserver` command is not installed in this environment")
    return found


def write_mlserver_settings(
    folder: Path, http_port: int, grpc_port: int, metrics_port: int, extra: dict[str, Any] | None = None
) -> Path:
    """Write MLServer's ``settings.json`` into ``folder`` (the folder ``mlserver start`` is given)."""
    settings: dict[str, Any] = {
        "host": MLSERVER_HOST,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "load_models_at_startup": True,
        "debug": False,
        # The gateway asks for uncompressed answers; without the middleware MLServer skips its per-request work.
        "gzip_enabled": False,
        **(extra or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=2))
    return path


class MLServerProcess:
    """``mlserver start <repository root>`` in a child process; a context manager that stops it on exit."""

    def __init__(
        self,
        repository_root: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        wait_for_models: Sequence[str] = (),
        startup_timeout: float = 90.0,
        log_file: Path | None = None,
        extra_settings: dict[str, Any] | None = None,
        project_root: Path = PROJECT_ROOT,
    ) -> None:
        self.repository_root = Path(repository_root).expanduser().resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.wait_for_models = list(wait_for_models)
        self.startup_timeout = startup_timeout
        self.log_file = Path(log_file) if log_file else self.repository_root.parent / "mlserver.log"
        self.extra_settings = extra_settings
        self.project_root = project_root
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{MLSERVER_HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "MLServerProcess":
        """Start MLServer and wait until it is live and the awaited models are ready."""
        if self._process is not None:
            raise MLServerStartError("this MLServer process was already started")
        write_mlserver_settings(
            self.repository_root, self.http_port, self.grpc_port, self.metrics_port, self.extra_settings
        )
        python_path = os.pathsep.join(p for p in (str(self.project_root), os.environ.get("PYTHONPATH", "")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": python_path,
            "OMP_NUM_THREADS": str(os.cpu_count() or 1),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self._process = processes.spawn(
            [mlserver_executable(), "start", str(self.repository_root)],
            env=env,
            cwd=self.project_root,
            stdout=self._log,
        )
        logger.info("started MLServer (pid %d) on %s, repository %s", self._process.pid, self.url, self.repository_root)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.wait_for_models)
        with MLServerAdmin(self.url, timeout=2.0) as admin:
            while True:
                if self._process.poll() is not None:
                    raise MLServerStartError(
                        f"mlserver exited with code {self._process.returncode}; log {self.log_file}:\n{self.log_tail()}"
                    )
                try:
                    if admin.is_live():
                        pending = [name for name in pending if not admin.is_ready(name)]
                        if not pending:
                            return
                except MLServerUnavailableError:
                    pass
                if time.monotonic() >= deadline:
                    waiting = f" (models not ready: {pending})" if pending else ""
                    raise MLServerStartError(
                        f"MLServer was not ready after {self.startup_timeout:.0f} s{waiting}; log {self.log_file}:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.3)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (its whole process group)."""
        process, self._process = self._process, None
        if process is not None:
            processes.stop(process, "MLServer", timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "MLServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
