"""The local serving stack behind ``riverbed serve``: inference-log database, MLServer and the gateway.

No Dagster needed: the current champions are read from the model repository's deployment pointers (and, for a
dataset without one, installed from MLflow's ``champion`` alias). ``stack.json`` under the home directory tells
other commands (``apikey``, ``audit``, the demo, benchmarks) where everything listens.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from riverbed.cli.mlserver_process import MLServerProcess, free_port
from riverbed.model_repository import ModelRepository
from riverbed.settings import PROJECT_ROOT, RiverbedSettings

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The serving stack could not start; the message says which part and why."""


def _port_of(url: str, default: int) -> int:
    return urlparse(url).port or default


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServingStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self,
        settings: RiverbedSettings,
        datasets: Sequence[str] = (),
        *,
        gateway_port: int | None = None,
        mlserver_port: int | None = None,
        ephemeral_ports: bool = False,
        gateway_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.requested = list(datasets)
        self.ephemeral_ports = ephemeral_ports
        self.gateway_port = gateway_port or (free_port() if ephemeral_ports else settings.gateway_port)
        self.mlserver_port = mlserver_port or (
            free_port() if ephemeral_ports else _port_of(settings.mlserver_url, 8080)
        )
        self.gateway_env = gateway_env or {}
        self.repository = ModelRepository(settings.model_repository_dir)
        self.dsn: str | None = None
        self.datasets: list[str] = []
        self._embedded: Any = None
        self._mlserver: MLServerProcess | None = None
        self._gateway: subprocess.Popen[bytes] | None = None
        self._gateway_log: Any = None

    # ------------------------------------------------------------------------------------------ URLs
    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.gateway_port}"

    @property
    def mlserver_url(self) -> str:
        return f"http://127.0.0.1:{self.mlserver_port}"

    @property
    def logs_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def gateway_pid(self) -> int | None:
        return self._gateway.pid if self._gateway else None

    @property
    def mlserver_pid(self) -> int | None:
        return self._mlserver.pid if self._mlserver else None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> ServingStack:
        try:
            self._start_database()
            self._ensure_champions()
            self._start_mlserver()
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        self._write_stack_file()
        return self

    def __enter__(self) -> ServingStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_database(self) -> None:
        from riverbed.inference_log_schema import apply_migrations
        from serving.embedded_postgres import resolve_inference_log_dsn

        self.dsn, self._embedded = resolve_inference_log_dsn(self.settings)
        applied = apply_migrations(self.dsn)
        if applied:
            logger.info("inference log migrations applied: %s", ", ".join(applied))

    def _ensure_champions(self) -> None:
        from riverbed.specs import load_specs

        specs = load_specs(self.settings.specs_dirs)
        unknown = [name for name in self.requested if name not in specs]
        if unknown:
            raise StackError(f"unknown dataset(s) {unknown}; known: {sorted(specs)}")
        wanted = self.requested or sorted(specs)
        for dataset in wanted:
            deployment = self.repository.read_deployment(dataset)
            if deployment is None or not self.repository.is_installed(deployment.served_model_name):
                deployment = self._install_champion(specs[dataset])
            if deployment is not None:
                self.datasets.append(dataset)
        if not self.datasets:
            raise StackError(
                f"no champion model for {', '.join(wanted)}: train and deploy one first (make demo, or the "
                "train job in the Dagster UI)"
            )

    def _install_champion(self, spec: Any) -> Any:
        """Install the MLflow ``champion`` of a dataset that has no deployment pointer yet (None if none)."""
        from platform_assets.deployment import deploy_model_version
        from platform_assets.model_registry import registered_aliases
        from resources.mlflow_resource import MlflowTrackingResource, mlflow_client
        from resources.mlserver_admin import MLServerAdmin
        from riverbed.names import CHAMPION_ALIAS

        tracking_uri = self.settings.resolved_mlflow_tracking_uri
        name = MlflowTrackingResource(tracking_uri=tracking_uri).registered_model_name(spec.name)
        try:
            champion = registered_aliases(mlflow_client(tracking_uri), name).get(CHAMPION_ALIAS)
        except Exception as error:  # no registered model yet
            logger.info("no registered model %s: %s", name, error)
            champion = None
        if champion is None:
            logger.warning("dataset %s has no champion model; not serving it", spec.name)
            return None
        with MLServerAdmin(self.mlserver_url) as admin:  # not running yet: installs and writes the pointer
            deployment, _ = deploy_model_version(
                spec,
                registered_model_name=name,
                version=champion,
                tracking_uri=tracking_uri,
                repository=self.repository,
                admin=admin,
            )
        return deployment

    def _start_mlserver(self) -> None:
        if not _port_free(self.mlserver_port):
            raise StackError(f"MLServer's port {self.mlserver_port} is in use (set RIVERBED_MLSERVER_URL)")
        served = []
        for dataset in self.datasets:
            deployment = self.repository.read_deployment(dataset)
            if deployment is not None:
                self.repository.refresh_model_settings(deployment)
                served.append(deployment.served_model_name)
        self._mlserver = MLServerProcess(
            self.repository.root,
            http_port=self.mlserver_port,
            grpc_port=self.settings.mlserver_grpc_port if not self.ephemeral_ports else None,
            metrics_port=self.settings.mlserver_metrics_port if not self.ephemeral_ports else None,
            wait_for_models=served,
            log_file=self.logs_dir / "mlserver.log",
        )
        self._mlserver.start()

    def _start_gateway(self) -> None:
        if not _port_free(self.gateway_port):
            raise StackError(f"the gateway's port {self.gateway_port} is in use (set RIVERBED_GATEWAY_PORT)")
        assert self.dsn is not None
        env = {
            **os.environ,
            "RIVERBED_HOME": str(self.settings.home),
            "RIVERBED_INFERENCE_LOG_DSN": self.dsn,
            "RIVERBED_MLSERVER_URL": self.mlserver_url,
            "RIVERBED_MODEL_REPOSITORY": str(self.repository.root),
            "RIVERBED_AUDIT_SPOOL_DIR": str(self.settings.audit_spool_path),
            "RIVERBED_SPECS_DIRS": json.dumps([str(path) for path in self.settings.specs_dirs]),
            "RIVERBED_KAFKA_TOPIC_PREFIX": self.settings.kafka_topic_prefix,
            **(
                {"RIVERBED_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers}
                if self.settings.kafka_bootstrap_servers
                else {}
            ),
            "OMP_NUM_THREADS": "1",
            **self.gateway_env,
        }
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "serving.gateway.main:create_app",
            "--host", self.settings.gateway_host, "--port", str(self.gateway_port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._gateway_log = (self.logs_dir / "gateway.log").open("ab")
        self._gateway = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=self._gateway_log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._gateway.poll() is not None:
                raise StackError(f"the gateway exited at start-up (see {self.logs_dir / 'gateway.log'})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.gateway_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise StackError(f"the gateway did not become ready in 60 s (see {self.logs_dir / 'gateway.log'})")

    def _write_stack_file(self) -> None:
        stack = {
            "gateway": self.gateway_url,
            "mlserver": self.mlserver_url,
            "database": self.dsn,
            "datasets": self.datasets,
            "pid": os.getpid(),
            "gateway_pid": self.gateway_pid,
            "mlserver_pid": self.mlserver_pid,
            "model_repository": str(self.repository.root),
            "logs": str(self.logs_dir),
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.settings.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stack, indent=2))
        os.replace(tmp, self.settings.stack_file)

    def stop(self) -> None:
        """Stop the gateway (it flushes its audit writer), MLServer, then the embedded database."""
        if self._gateway is not None:
            if self._gateway.poll() is None:
                self._gateway.send_signal(signal.SIGTERM)
                try:
                    self._gateway.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._gateway.kill()
                    self._gateway.wait()
            self._gateway = None
        if self._gateway_log is not None:
            self._gateway_log.close()
            self._gateway_log = None
        if self._mlserver is not None:
            self._mlserver.stop()
            self._mlserver = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, OSError):
            stack = json.loads(self.settings.stack_file.read_text())
            if stack.get("pid") == os.getpid():
                self.settings.stack_file.unlink()


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C)."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not received:
            signal.pause()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
