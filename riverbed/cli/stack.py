"""The local serving stack behind ``riverbed serve``: inference-log database, MLServer and the gateway.

No Dagster needed: the current champions are read from the model repository's deployment pointers (and, for a
dataset without one, installed from MLflow's ``champion`` alias). ``stack.json`` under the home directory tells
other commands (``apikey``, ``audit``, the demo, benchmarks) where everything listens; a live stack owns its
home, a stale record is replaced (:mod:`riverbed.cli.stack_state`).

Champions: a dataset with no registered model (or no ``champion`` alias) in MLflow is not served, at INFO, and the
others are; a registry that cannot be read, or a champion that cannot be installed, fails the start-up with a
:class:`StackError` naming the dataset and the cause, counted in ``pipeline_failures`` (component
``serving_startup``). Serving the other datasets instead would hide which models are missing behind a stack that
looks healthy, so the stack refuses rather than guesses. An inference-log database that cannot be used fails the
start-up too (a WARNING line: there is nowhere to count it).

MLServer and the gateway die with the stack even when it is SIGKILLed (:func:`riverbed.cli.processes.spawn`);
ports are probed the way those servers bind them, so a restart right after a stop finds them free.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import httpx
import psycopg

from resources.mlserver_admin import MLServerAdmin
from riverbed.cli import processes
from riverbed.cli.mlserver_process import MLSERVER_HOST, MLServerProcess, free_port
from riverbed.cli.stack_state import (
    dsn_without_password,
    read_stack_file,
    recover_embedded_postgres,
    why_not_live,
    write_private_json,
)
from riverbed.errors import ModelIntegrityError
from riverbed.inference_log_schema import apply_migrations
from riverbed.model_repository import ModelRepository, ModelRepositoryError
from riverbed.names import CHAMPION_ALIAS, CONSOLE_PATH
from riverbed.pipeline_failures import report_failure
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs
from riverbed.stack_file import process_identity
from serving.embedded_postgres import EmbeddedPostgres, resolve_inference_log_dsn

logger = logging.getLogger(__name__)

GATEWAY_STOP_SECONDS = 30.0
STARTUP_COMPONENT = "serving_startup"  # the pipeline_failures component of start-up failures
# MLflow's HTTP client retries an unreachable server for ~4 minutes by default (7 retries, backoff factor 2): at
# start-up the registry read gets a few seconds instead, unless MLFLOW_HTTP_REQUEST_* say otherwise.
STARTUP_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class StackError(RuntimeError):
    """The serving stack could not start; the message says which part and why."""


def _port_of(url: str, default: int) -> int:
    return urlparse(url).port or default


def _check_port(owner: str, host: str, port: int, setting: str) -> None:
    problem = processes.port_problem(owner, host, port, setting)
    if problem is not None:
        raise StackError(problem)


class ServingStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager).

    ``riverbed up`` runs the two halves of :meth:`start` itself (:meth:`start_database`, then its own services,
    then :meth:`start_serving`), with ``require_champions=False`` (nothing to serve yet is not an error there),
    its MLflow server as ``mlflow_tracking_uri`` and ``record=False`` (it writes stack.json with every part).
    """

    def __init__(
        self,
        settings: RiverbedSettings,
        datasets: Sequence[str] = (),
        *,
        gateway_port: int | None = None,
        mlserver_port: int | None = None,
        ephemeral_ports: bool = False,
        gateway_env: dict[str, str] | None = None,
        require_champions: bool = True,
        mlflow_tracking_uri: str | None = None,
        record: bool = True,
    ) -> None:
        self.settings = settings
        self.requested = list(datasets)
        self.ephemeral_ports = ephemeral_ports
        self.gateway_port = gateway_port or (free_port() if ephemeral_ports else settings.gateway_port)
        self.mlserver_port = mlserver_port or (
            free_port() if ephemeral_ports else _port_of(settings.mlserver_url, 8080)
        )
        self.gateway_env = gateway_env or {}
        self.require_champions = require_champions  # False (``riverbed up``): serve nothing until one is deployed
        self.mlflow_tracking_uri = mlflow_tracking_uri or settings.resolved_mlflow_tracking_uri
        self.record = record  # write stack.json (``riverbed up`` writes its own, with every part)
        self.repository = ModelRepository(settings.model_repository_dir)
        self.dsn: str | None = None
        self.datasets: list[str] = []
        self._embedded: EmbeddedPostgres | None = None
        self._mlserver: MLServerProcess | None = None
        self._gateway: subprocess.Popen[bytes] | None = None
        self._gateway_log: IO[bytes] | None = None
        self._recorded = False  # this stack wrote stack.json (and so removes it on stop)

    # ------------------------------------------------------------------------------------------ URLs
    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.gateway_port}"

    @property
    def console_url(self) -> str:
        """The oversight console the gateway serves."""
        return f"{self.gateway_url}{CONSOLE_PATH}"

    @property
    def mlserver_url(self) -> str:
        return f"http://{MLSERVER_HOST}:{self.mlserver_port}"

    @property
    def public_dsn(self) -> str | None:
        """The DSN other local commands use (stack.json, the screen), without its password: on the embedded server
        the owner role's (manages keys, reads the log; never the superuser), else the configured one."""
        if self.dsn is None:
            return None
        return dsn_without_password(self._embedded.dsn_for("owner") if self._embedded is not None else self.dsn)

    @property
    def gateway_dsn(self) -> str | None:
        """What the gateway connects with: on the embedded server the gateway role (insert log rows, advance the
        chain head; never update or delete them), else the configured DSN."""
        if self.dsn is None:
            return None
        return self._embedded.dsn_for("gateway") if self._embedded is not None else self.dsn

    @property
    def logs_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def embedded(self) -> EmbeddedPostgres | None:
        """The embedded server's handle (None with a configured DSN or before :meth:`start_database`)."""
        return self._embedded

    @property
    def gateway_pid(self) -> int | None:
        return self._gateway.pid if self._gateway else None

    @property
    def mlserver_pid(self) -> int | None:
        return self._mlserver.pid if self._mlserver else None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> ServingStack:
        try:
            self.start_database()
            self.start_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def start_database(self) -> None:
        """Claim the home and start the inference-log database (first half of :meth:`start`; no clean-up)."""
        self._claim_home()
        self._start_database()

    def start_serving(self) -> None:
        """Install the champions, start MLServer and the gateway, write stack.json (second half; no clean-up)."""
        self._ensure_champions()
        self._start_mlserver()
        self._start_gateway()
        if self.record:
            self._write_stack_file()

    def __enter__(self) -> ServingStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _claim_home(self) -> None:
        """Refuse if a live stack serves this home; remove a stale stack.json (its stack did not stop cleanly).

        Removed before anything starts: the inference-log DSN resolver would otherwise take its database.
        """
        path = self.settings.stack_file
        try:
            record = read_stack_file(path)
        except ValueError as error:
            logger.warning("%s is not a stack record (%s); replacing it", path, error)
            path.unlink(missing_ok=True)
            return
        if record is None:
            return
        reason = why_not_live(record)
        if reason is None:
            pid = record.get("pid")
            raise StackError(
                f"a riverbed stack is already running on {self.settings.home} (pid {pid}; gateway "
                f"{record.get('gateway')}, MLServer {record.get('mlserver')}): stop it first (riverbed down, "
                f"Ctrl-C in its terminal, or kill {pid})"
            )
        logger.warning("stale %s replaced: %s (that stack did not stop cleanly)", path, reason)
        path.unlink(missing_ok=True)

    def _start_database(self) -> None:
        if self.settings.inference_log_dsn is None:  # the embedded server: clear what a killed stack left
            recover_embedded_postgres(self.settings.embedded_postgres_dir)
        # The superuser (embedded) or the configured DSN applies migrations; the gateway gets its own role.
        self.dsn, self._embedded = resolve_inference_log_dsn(self.settings, role="admin")
        try:
            applied = apply_migrations(self.dsn)
        except psycopg.Error as error:  # nowhere to count it: the WARNING line and the error say why
            message = (
                f"the inference-log database ({dsn_without_password(self.dsn)}) cannot be used: "
                f"{type(error).__name__}: {str(error).strip()}"
            )
            report_failure(STARTUP_COMPONENT, "inference_log_unusable", message, dsn=None, log=logger)
            raise StackError(message) from error
        if applied:
            logger.info("inference log migrations applied: %s", ", ".join(applied))

    def _ensure_champions(self) -> None:
        specs = load_specs(self.settings.specs_dirs)
        unknown = [name for name in self.requested if name not in specs]
        if unknown:
            raise StackError(f"unknown dataset(s) {unknown}; known: {sorted(specs)}")
        wanted = self.requested or sorted(specs)
        for dataset in wanted:
            try:
                deployment = self.repository.read_deployment(dataset)
            except ModelRepositoryError as error:
                raise self._failure(dataset, "deployment_pointer_invalid", str(error)) from error
            if deployment is None or not self.repository.is_installed(deployment.served_model_name):
                deployment = self._install_champion(specs[dataset])
            if deployment is not None:
                self.datasets.append(dataset)
        if not self.datasets and self.require_champions:
            raise StackError(
                f"no champion model for {', '.join(wanted)}: train and deploy one first (make demo, or the "
                "train job in the Dagster UI)"
            )

    def _install_champion(self, spec: DatasetSpec) -> Any:
        """Install the MLflow ``champion`` of a dataset that has no deployment pointer yet.

        None (logged at INFO) when the registered model does not exist or has no champion alias: nothing to
        serve yet. Raises :class:`StackError` (after :meth:`_failure`) when the registry cannot be read (reason
        ``registry_unreadable``), or when installing the champion fails for any reason: ``model_integrity`` for
        files that do not match their recorded digests, ``champion_install_failed`` otherwise.
        """
        # Dagster + pandas (~2 s to import): only for a dataset that has no deployment pointer yet
        from platform_assets.deployment import deploy_model_version
        from platform_assets.model_registry import registered_aliases
        from resources.mlflow_resource import MlflowTrackingResource, mlflow_client

        tracking_uri = self.mlflow_tracking_uri
        where = _without_password(tracking_uri, tracking_uri)  # for messages: a tracking URI may carry a password
        name = MlflowTrackingResource(tracking_uri=tracking_uri).registered_model_name(spec.name)
        try:  # a model that is not registered yet reads as {}: anything raised here is a registry failure
            with _environment_defaults(STARTUP_MLFLOW_ENV):
                aliases = registered_aliases(mlflow_client(tracking_uri), name)
        except Exception as error:  # MlflowException, or the HTTP client's own errors: all mean "cannot read"
            raise self._failure(
                spec.name,
                "registry_unreadable",
                f"the MLflow registry at {where} could not be read for {name}: "
                f"{type(error).__name__}: {_without_password(str(error), tracking_uri)}",
            ) from None  # the original error's text holds the password
        champion = aliases.get(CHAMPION_ALIAS)
        if champion is None:
            why = f"{name} has no '{CHAMPION_ALIAS}' alias" if aliases else f"no registered model {name}"
            logger.info("not serving %s: %s in MLflow at %s (train and deploy one first)", spec.name, why, where)
            return None
        try:
            with MLServerAdmin(self.mlserver_url) as admin:  # not running yet: installs and writes the pointer
                deployment, _ = deploy_model_version(
                    spec,
                    registered_model_name=name,
                    version=champion,
                    tracking_uri=tracking_uri,
                    repository=self.repository,
                    admin=admin,
                    require_mlserver=False,
                    failure_dsn=None,  # logged there; counted once, below, as this start-up's failure
                )
        except Exception as error:  # whatever the cause, this champion cannot be served: say which and why
            reason = "model_integrity" if isinstance(error, ModelIntegrityError) else "champion_install_failed"
            raise self._failure(
                spec.name,
                reason,
                f"the champion {name} v{champion} could not be installed: "
                f"{type(error).__name__}: {_without_password(str(error), tracking_uri)}",
            ) from error
        return deployment

    def _failure(self, dataset: str, reason: str, message: str) -> StackError:
        """Report a start-up failure (WARNING + ``pipeline_failures``) and return the error to raise."""
        text = f"cannot serve {dataset}: {message}"
        report_failure(STARTUP_COMPONENT, reason, text, dsn=self.dsn, log=logger)
        return StackError(text)

    def _start_mlserver(self) -> None:
        _check_port("MLServer's", MLSERVER_HOST, self.mlserver_port, "RIVERBED_MLSERVER_URL")
        if not self.ephemeral_ports:
            grpc, metrics = self.settings.mlserver_grpc_port, self.settings.mlserver_metrics_port
            _check_port("MLServer's gRPC", MLSERVER_HOST, grpc, "RIVERBED_MLSERVER_GRPC_PORT")
            _check_port("MLServer's metrics", MLSERVER_HOST, metrics, "RIVERBED_MLSERVER_METRICS_PORT")
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
        _check_port("the gateway's", self.settings.gateway_host, self.gateway_port, "RIVERBED_GATEWAY_PORT")
        assert self.gateway_dsn is not None
        env = {  # the DSN, password included, goes by environment only: stack.json never holds it
            **os.environ,
            "RIVERBED_HOME": str(self.settings.home),
            "RIVERBED_INFERENCE_LOG_DSN": self.gateway_dsn,
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
        self._gateway = processes.spawn(command, env=env, cwd=PROJECT_ROOT, stdout=self._gateway_log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._gateway.poll() is not None:
                raise StackError(f"the gateway exited at start-up (see {self.logs_dir / 'gateway.log'})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.gateway_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise StackError(f"the gateway did not become ready in 60 s (see {self.logs_dir / 'gateway.log'})")

    def record_fields(self) -> dict[str, Any]:
        """What stack.json says about this stack's serving half."""
        return {
            "gateway": self.gateway_url,
            "console": self.console_url,
            "mlserver": self.mlserver_url,
            "database": self.public_dsn,
            "datasets": self.datasets,
            "pid": os.getpid(),
            "process": process_identity(os.getpid()),  # tells this run from a later owner of the pid
            "gateway_pid": self.gateway_pid,
            "mlserver_pid": self.mlserver_pid,
            "model_repository": str(self.repository.root),
            "logs": str(self.logs_dir),
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def _write_stack_file(self) -> None:
        write_private_json(self.settings.stack_file, self.record_fields())
        self._recorded = True

    def stop(self) -> None:
        """Stop the gateway (it flushes its audit writer), MLServer, then the embedded database."""
        if self._gateway is not None:
            processes.stop(self._gateway, "the gateway", GATEWAY_STOP_SECONDS)
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
        if self._recorded:
            self._recorded = False
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, OSError):
                stack = json.loads(self.settings.stack_file.read_text())
                if stack.get("pid") == os.getpid():
                    self.settings.stack_file.unlink()


def _without_password(text: str, uri: str) -> str:
    """``text`` with the password of ``uri`` (if it has one) masked: client errors echo the URLs they called."""
    password = urlparse(uri).password
    return text.replace(f":{password}@", ":***@") if password else text


@contextlib.contextmanager
def _environment_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """Within the block, ``defaults`` apply to the variables the environment does not set."""
    added = [key for key in defaults if key not in os.environ]
    os.environ.update({key: defaults[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does: a stack being started stops cleanly."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
