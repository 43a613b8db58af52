"""``riverbed up`` / ``status`` / ``down``: the whole platform as one supervised stack on embedded defaults.

``up`` starts, in order (each part waits for the one before to answer):

1. the embedded PostgreSQL of :class:`~riverbed.cli.stack.ServingStack` (the inference log), which also holds
   the ``dagster`` database (Dagster's instance storage, dagster-postgres) and the ``mlflow`` database (MLflow's
   tracking and registry store);
2. the Kafka dev broker (``riverbed kafka dev-broker``: librdkafka's mock cluster, data in memory);
3. an MLflow tracking server (``mlflow server``): every child gets ``RIVERBED_MLFLOW_TRACKING_URI`` set to it,
   so runs talk to it over HTTP;
4. MLServer and the gateway (:class:`ServingStack`; datasets without a champion are not served yet);
5. Dagster: ``dagster dev`` runs the code server, the webserver and the daemon, on an instance kept in
   ``<home>/dagster-up`` whose storage is the ``dagster`` database; runs execute their steps in the run's own
   process (``RIVERBED_DAGSTER_EXECUTOR=in_process`` unless set: a process per step would start the code location
   again for every step);
6. the pipeline exporter (``riverbed pipeline-exporter``: Dagster runs and ticks, Kafka lag and dead letters) on
   that instance;
7. Prometheus and Alertmanager when their binaries (Debian packages ``prometheus``,
   ``prometheus-alertmanager``) are installed, with configuration generated under ``<home>/monitoring`` from
   deploy/prometheus and deploy/alertmanager for the local ports (gateway, MLServer, exporter, Prometheus).
   ``RIVERBED_PROMETHEUS_SCRAPE_INTERVAL`` shortens scrapes and rule evaluations, and ``RIVERBED_ALERT_RULES_FOR``
   every rule's ``for:`` in a generated copy of the rules (tests and demos; the committed rules are unchanged).

Then every sensor and schedule is started through the webserver's GraphQL API (``--no-automation`` or
``RIVERBED_AUTOMATION=false`` marks each stopped in the instance before the daemon starts, undoing an earlier
``up``). ``<home>/stack.json`` (0600, no passwords) names every part; a part that is not installed is absent.
The MLflow store is the ``mlflow`` database, not the SQLite file ``riverbed demo`` writes: runs made before are not
in it (served models still are: MLServer reads the deployment pointers of the model repository).

Every child is started by :func:`riverbed.cli.processes.spawn` (own process group, SIGTERM when ``up`` dies) and
registered with a :class:`~riverbed.cli.processes.GroupReaper`, which kills the children's whole process groups
(``dagster dev``'s webserver, daemon and code server; ``mlflow server``'s uvicorn) once ``up`` is gone, even
SIGKILLed. Ctrl-C or SIGTERM stops the parts in reverse order. The embedded PostgreSQL is the exception, as under
``riverbed serve``: after a SIGKILL it keeps running and the next start attaches to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import httpx
import psycopg
import typer
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from riverbed.cli import processes
from riverbed.cli.stack import ServingStack, StackError, sigterm_interrupts, wait_for_signal
from riverbed.cli.stack_state import read_stack_file, why_not_live, write_private_json
from riverbed.settings import PROJECT_ROOT, RiverbedSettings, get_settings
from riverbed.stack_file import process_identity

logger = logging.getLogger(__name__)
console = Console()

LOCAL_HOST = "127.0.0.1"
DAGSTER_DATABASE = "dagster"
MLFLOW_DATABASE = "mlflow"
STARTUP_SECONDS = 120.0  # for each part to answer
STOP_SECONDS = 10.0  # for each part to stop before its process group is killed
DOWN_SECONDS = 60.0  # `riverbed down` waits this long for the stack to exit
PARTS = (
    "gateway",
    "console",
    "mlserver",
    "database",
    "dagster",
    "exporter",
    "mlflow",
    "kafka",
    "prometheus",
    "alertmanager",
)
CHILD_ENV = {
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NML_DISABLE_USAGE_LOGGING": "1",
    "OMP_NUM_THREADS": "1",
}
# Dagster instance of `riverbed up`: storage in the embedded server's `dagster` database (the URL, which names
# the server's socket directory, comes from the environment), runs queued and drained by the daemon, one run per
# dataset at a time.
DAGSTER_YAML = """\
# Written by `riverbed up`: the instance of the local platform stack.
telemetry:
  enabled: false
storage:
  postgres:
    postgres_url:
      env: RIVERBED_DAGSTER_POSTGRES_URL
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: riverbed/dataset
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""
_REPOSITORIES_QUERY = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name location { name }
        sensors { name sensorState { status } } schedules { name scheduleState { status } }
      }
    }
    ... on PythonError { message }
  }
  workspaceOrError {
    ... on Workspace { locationEntries { name locationOrLoadError { __typename ... on PythonError { message } } } }
  }
}
"""
_START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on PythonError { message } ... on SensorNotFoundError { message }
  }
}
"""
_START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename ... on PythonError { message } ... on ScheduleNotFoundError { message }
  }
}
"""


# ------------------------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def _http_probe(url: str, path: str, expect: Callable[[httpx.Response], str | None] | None = None) -> Health:
    try:
        response = httpx.get(f"{url}{path}", timeout=3)
    except httpx.HTTPError as error:
        return Health(False, f"{path}: {type(error).__name__}")
    if response.status_code != 200:
        return Health(False, f"{path}: HTTP {response.status_code}")
    problem = expect(response) if expect else None
    return Health(problem is None, problem or f"{path}: 200")


def _dagster_version(response: httpx.Response) -> str | None:
    try:
        version = response.json().get("dagster_version")
    except ValueError:
        return "/server_info: not JSON"
    return None if version else "/server_info: no dagster_version"


def _probe_database(dsn: str) -> Health:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("select 1").fetchone()
    except psycopg.Error as error:
        return Health(False, f"{type(error).__name__}: {str(error).strip()[:80]}")
    return Health(row == (1,), "select 1")


def _probe_kafka(bootstrap: str) -> Health:
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
    except Exception as error:  # KafkaException: the broker did not answer
        return Health(False, f"metadata: {error}")
    return Health(bool(metadata.brokers), f"metadata: {len(metadata.brokers)} broker(s), {len(metadata.topics)} topics")


def probe(part: str, address: str) -> Health:
    """Whether ``part`` (a key of stack.json) answers at ``address``, and what it said."""
    if part == "gateway":
        return _http_probe(address, "/readyz")
    if part == "console":
        return _http_probe(address, "/login")  # the login form: answers without a session
    if part == "mlserver":
        return _http_probe(address, "/v2/health/live")
    if part == "database":
        return _probe_database(address)
    if part == "dagster":
        return _http_probe(address, "/server_info", _dagster_version)
    if part == "mlflow":
        return _http_probe(address, "/health")
    if part == "kafka":
        return _probe_kafka(address)
    if part in ("prometheus", "alertmanager"):
        return _http_probe(address, "/-/ready")
    if part == "exporter":
        return _http_probe(address, "/healthz")
    raise ValueError(f"unknown part {part!r}: use one of {', '.join(PARTS)}")


def health_table(record: dict[str, Any]) -> tuple[Table, bool]:
    """A table of every part in ``record`` with its health; True when every recorded part answers."""
    table = Table("part", "address", "health")
    healthy = True
    for part in PARTS:
        address = record.get(part)
        if not address:
            table.add_row(part, "-", "[dim]not installed[/dim]")
            continue
        health = probe(part, str(address))
        healthy &= health.ok
        mark = "[green]ok[/green]" if health.ok else "[red]down[/red]"
        table.add_row(part, str(address), f"{mark} {health.detail}")
    return table, healthy


# ------------------------------------------------------------------------------------------------ the stack
@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = None
    stop_seconds: float = STOP_SECONDS


@dataclass
class PlatformStack:
    """The parts of ``riverbed up``; :meth:`start`, then :meth:`stop` (also on a failed start)."""

    settings: RiverbedSettings
    datasets: Sequence[str] = ()
    automation: bool = True
    urls: dict[str, str] = field(default_factory=dict)
    sensors_started: list[str] = field(default_factory=list)
    schedules_started: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.serving = ServingStack(
            self.settings,
            self.datasets,
            require_champions=False,
            mlflow_tracking_uri=self.mlflow_url,
            record=False,
        )
        self.reaper = processes.GroupReaper(grace=STOP_SECONDS)
        self._children: list[_Child] = []  # in start order
        self._recorded = False

    # ------------------------------------------------------------------------------------------ addresses
    @property
    def mlflow_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.settings.mlflow_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.settings.dagster_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.settings.exporter_port}"

    @property
    def logs_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def dagster_home(self) -> Path:
        return self.settings.home / "dagster-up"

    @property
    def pids(self) -> dict[str, int]:
        found = {child.name: child.process.pid for child in self._children}
        if self.serving.gateway_pid:
            found["gateway"] = self.serving.gateway_pid
        if self.serving.mlserver_pid:
            found["mlserver"] = self.serving.mlserver_pid
        return found

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> PlatformStack:
        try:
            self.reaper.start()
            self.serving.start_database()
            database_urls = self._create_databases()
            self._start_kafka()
            self._start_mlflow(database_urls[MLFLOW_DATABASE])
            # The gateway keeps its own least-privileged DSN (ServingStack sets it); it gets the other addresses.
            gateway_env = {k: v for k, v in self._riverbed_env().items() if k != "RIVERBED_INFERENCE_LOG_DSN"}
            # The console links run ids to the Dagster UI this stack starts (MLflow: the tracking URI above).
            gateway_env.setdefault(
                "RIVERBED_CONSOLE_DAGSTER_URL", self.settings.console_dagster_url or self.dagster_url
            )
            self.serving.gateway_env.update(gateway_env)
            self.serving.start_serving()
            for pid in (self.serving.mlserver_pid, self.serving.gateway_pid):
                if pid:
                    self.reaper.watch(pid)
            self._start_dagster(database_urls[DAGSTER_DATABASE])
            self._start_exporter(database_urls[DAGSTER_DATABASE])
            self._start_prometheus_and_alertmanager()
            self._write_stack_file()  # from here `riverbed down` finds the stack
            self._set_automation()
            self._write_stack_file()  # with the sensors and schedules started
        except BaseException:
            self.stop()
            raise
        return self

    def _riverbed_env(self) -> dict[str, str]:
        """What every child of the stack is told (passwords only ever by environment)."""
        env = {
            **CHILD_ENV,
            "RIVERBED_HOME": str(self.settings.home),
            "RIVERBED_MLFLOW_TRACKING_URI": self.mlflow_url,
            "RIVERBED_MLSERVER_URL": self.serving.mlserver_url,
            "RIVERBED_MODEL_REPOSITORY": str(self.serving.repository.root),
            "RIVERBED_KAFKA_BOOTSTRAP_SERVERS": self.urls["kafka"],
        }
        if self.serving.public_dsn:
            env["RIVERBED_INFERENCE_LOG_DSN"] = self._owner_dsn()
        return env

    def _owner_dsn(self) -> str:
        embedded = self.serving.embedded
        if embedded is not None:
            return embedded.dsn_for("owner")
        assert self.serving.dsn is not None
        return self.serving.dsn

    def _create_databases(self) -> dict[str, str]:
        """Create the ``dagster`` and ``mlflow`` databases on the stack's server; their SQLAlchemy URLs."""
        assert self.serving.dsn is not None
        params = conninfo_to_dict(self.serving.dsn)
        urls = {}
        try:
            with psycopg.connect(self.serving.dsn, autocommit=True) as conn:
                for name in (DAGSTER_DATABASE, MLFLOW_DATABASE):
                    if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
                        logger.info("created database %s", name)
        except psycopg.Error as error:
            raise StackError(f"cannot create the dagster and mlflow databases: {error}") from error
        user = quote(str(params.get("user") or "postgres"), safe="")
        password = params.get("password")
        credentials = f"{user}:{quote(str(password), safe='')}" if password else user
        query = [f"host={quote(str(params.get('host') or 'localhost'), safe='')}"]
        if params.get("port"):
            query.append(f"port={params['port']}")
        for name in (DAGSTER_DATABASE, MLFLOW_DATABASE):
            # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
            urls[name] = f"postgresql+psycopg2://{credentials}@/{name}?{'&'.join(query)}"
        return urls

    def _spawn(self, name: str, command: Sequence[str], env: dict[str, str], stdout: int | None = None) -> _Child:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = (self.logs_dir / f"{name}.log").open("ab")
        process = processes.spawn(
            command,
            env={**os.environ, **env},
            cwd=PROJECT_ROOT,
            stdout=stdout if stdout is not None else log,
            stderr=log,
        )
        self.reaper.watch(process.pid)
        child = _Child(name, process, log)
        self._children.append(child)
        return child

    def _wait_ready(self, child: _Child, part: str, address: str, timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        log = self.logs_dir / f"{child.name}.log"
        while True:
            if child.process.poll() is not None:
                raise StackError(f"{child.name} exited at start-up with code {child.process.returncode} (see {log})")
            health = probe(part, address)
            if health.ok:
                return
            if time.monotonic() >= deadline:
                raise StackError(f"{child.name} did not answer in {timeout:.0f} s ({health.detail}; see {log})")
            time.sleep(0.3)

    def _check_port(self, owner: str, port: int, setting: str) -> None:
        problem = processes.port_problem(owner, LOCAL_HOST, port, setting)
        if problem is not None:
            raise StackError(problem)

    def _start_kafka(self) -> None:
        if self.settings.kafka_bootstrap_servers:  # a real cluster is configured: use it
            self.urls["kafka"] = self.settings.kafka_bootstrap_servers
            return
        command = [sys.executable, "-m", "riverbed.cli", "kafka", "dev-broker"]
        child = self._spawn("kafka", command, {**CHILD_ENV, "RIVERBED_HOME": str(self.settings.home)}, subprocess.PIPE)
        assert child.process.stdout is not None
        ready, _, _ = select.select([child.process.stdout], [], [], 60)
        line = child.process.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise StackError(f"the Kafka dev broker printed no address in 60 s (see {self.logs_dir / 'kafka.log'})")
        self.urls["kafka"] = line

    def _start_mlflow(self, backend_store: str) -> None:
        self._check_port("MLflow's", self.settings.mlflow_port, "RIVERBED_MLFLOW_PORT")
        artifacts = self.settings.home / "mlflow" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend_store,
            "--artifacts-destination", artifacts.as_uri(),
            "--host", LOCAL_HOST, "--port", str(self.settings.mlflow_port), "--workers", "1",
        ]  # fmt: skip
        # No MLflow server jobs (GenAI scoring, trace archival): a pool of huey consumers Riverbed does not use.
        child = self._spawn("mlflow", command, {**CHILD_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self._wait_ready(child, "mlflow", self.mlflow_url)
        self.urls["mlflow"] = self.mlflow_url

    def _start_dagster(self, storage_url: str) -> None:
        self._check_port("Dagster's", self.settings.dagster_port, "RIVERBED_DAGSTER_PORT")
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
        if not self.automation:
            self._stop_recorded_automation(storage_url)
        command = [
            sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
            "-h", LOCAL_HOST, "-p", str(self.settings.dagster_port), "--log-level", "warning",
        ]  # fmt: skip
        env = {
            **self._riverbed_env(),
            "DAGSTER_HOME": str(self.dagster_home),
            "RIVERBED_DAGSTER_POSTGRES_URL": storage_url,
            "RIVERBED_DAGSTER_EXECUTOR": os.environ.get("RIVERBED_DAGSTER_EXECUTOR", "in_process"),
        }
        child = self._spawn("dagster", command, env)
        child.stop_seconds = 20.0  # dagster dev stops its webserver, daemon and code server in turn
        self._wait_ready(child, "dagster", self.dagster_url)
        self.urls["dagster"] = self.dagster_url

    def _start_exporter(self, storage_url: str) -> None:
        """The pipeline exporter on the stack's Dagster instance and Kafka (Prometheus scrapes it as ``exporter``)."""
        self._check_port("The pipeline exporter's", self.settings.exporter_port, "RIVERBED_EXPORTER_PORT")
        command = [
            sys.executable, "-m", "riverbed.cli", "pipeline-exporter", "--host", LOCAL_HOST,
            "--port", str(self.settings.exporter_port), "--dagster-home", str(self.dagster_home),
        ]  # fmt: skip
        env = {**self._riverbed_env(), "RIVERBED_DAGSTER_POSTGRES_URL": storage_url}
        self._wait_ready(self._spawn("exporter", command, env), "exporter", self.exporter_url)
        self.urls["exporter"] = self.exporter_url

    def _start_prometheus_and_alertmanager(self) -> None:
        prometheus = shutil.which("prometheus")
        alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        config_dir = self.settings.home / "monitoring"
        config_dir.mkdir(parents=True, exist_ok=True)
        if alertmanager is None:
            logger.warning("Alertmanager is not installed (Debian package prometheus-alertmanager): not started")
        else:
            port = self.settings.alertmanager_port
            self._check_port("Alertmanager's", port, "RIVERBED_ALERTMANAGER_PORT")
            config = config_dir / "alertmanager.yml"
            config.write_text(yaml.safe_dump(alertmanager_config(self.settings.alert_webhook_url)))
            url = f"http://{LOCAL_HOST}:{port}"
            command = [
                alertmanager, f"--config.file={config}", f"--storage.path={self.settings.home / 'alertmanager'}",
                f"--web.listen-address={LOCAL_HOST}:{port}", "--cluster.listen-address=",
            ]  # fmt: skip
            self._wait_ready(self._spawn("alertmanager", command, {}), "alertmanager", url)
            self.urls["alertmanager"] = url
        if prometheus is None:
            logger.warning("Prometheus is not installed (Debian package prometheus): not started")
            return
        port = self.settings.prometheus_port
        self._check_port("Prometheus's", port, "RIVERBED_PROMETHEUS_PORT")
        config = config_dir / "prometheus.yml"
        targets = {
            "gateway": f"{LOCAL_HOST}:{self.serving.gateway_port}",
            "mlserver": f"{LOCAL_HOST}:{self.settings.mlserver_metrics_port}",
            "prometheus": f"{LOCAL_HOST}:{port}",
        }
        if "exporter" in self.urls:
            targets["exporter"] = self.urls["exporter"].removeprefix("http://")
        rules = None
        if self.settings.alert_rules_for:
            rules = config_dir / "rules"
            write_rules_with_for(rules, self.settings.alert_rules_for)
        generated = prometheus_config(
            targets, self.urls.get("alertmanager"), rules_dir=rules, interval=self.settings.prometheus_scrape_interval
        )
        config.write_text(yaml.safe_dump(generated))
        url = f"http://{LOCAL_HOST}:{port}"
        command = [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.settings.home / 'prometheus'}",
            f"--web.listen-address={LOCAL_HOST}:{port}",
        ]  # fmt: skip
        self._wait_ready(self._spawn("prometheus", command, {}), "prometheus", url)
        self.urls["prometheus"] = url

    def _stop_recorded_automation(self, storage_url: str) -> None:
        """Without automation: mark every sensor and schedule an earlier ``up`` left running as stopped.

        Done in the instance's storage before the daemon starts: a reset through the webserver would race with a
        tick the daemon is already evaluating, which writes the running state back when it finishes.
        """
        from dagster import DagsterInstance  # ~2 s to import: only here
        from dagster._core.scheduler.instigation import InstigatorStatus

        os.environ["RIVERBED_DAGSTER_POSTGRES_URL"] = storage_url  # dagster.yaml reads it from the environment
        with DagsterInstance.from_config(str(self.dagster_home)) as instance:
            running = instance.all_instigator_state(instigator_statuses={InstigatorStatus.RUNNING})
            for state in running:
                instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
        if running:
            logger.info("automation off: stopped %s", ", ".join(sorted(state.instigator_name for state in running)))

    def _set_automation(self) -> None:
        """Start every sensor and schedule of the code location through the webserver's GraphQL API (without
        automation: check that none runs)."""
        endpoint = f"{self.dagster_url}/graphql"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:  # the code location may still be loading after the webserver answers
            data = httpx.post(endpoint, json={"query": _REPOSITORIES_QUERY}, timeout=30).json()["data"]
            errors = [
                f"{entry['name']}: {entry['locationOrLoadError'].get('message', '')[:300]}"
                for entry in data["workspaceOrError"].get("locationEntries", [])
                if (entry.get("locationOrLoadError") or {}).get("__typename") == "PythonError"
            ]
            if errors:
                raise StackError(f"the Dagster code location did not load: {'; '.join(errors)}")
            nodes = data["repositoriesOrError"].get("nodes") or []
            if nodes:
                break
            if time.monotonic() >= deadline:
                raise StackError(f"the Dagster code location was not loaded in {STARTUP_SECONDS:.0f} s")
            time.sleep(0.5)
        for repository in nodes:
            base = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"]}
            for sensor in repository["sensors"]:
                if self.automation:
                    self._mutate(endpoint, _START_SENSOR, {**base, "sensorName": sensor["name"]}, "startSensor")
                    self.sensors_started.append(sensor["name"])
                elif sensor["sensorState"]["status"] == "RUNNING":
                    logger.warning("sensor %s runs although automation is off (its default in code)", sensor["name"])
            for schedule in repository["schedules"]:
                if self.automation:
                    selector = {**base, "scheduleName": schedule["name"]}
                    self._mutate(endpoint, _START_SCHEDULE, selector, "startSchedule")
                    self.schedules_started.append(schedule["name"])
                elif schedule["scheduleState"]["status"] == "RUNNING":
                    logger.warning("schedule %s runs although automation is off (its default)", schedule["name"])

    @staticmethod
    def _mutate(endpoint: str, mutation: str, selector: dict[str, str], field_name: str) -> None:
        answer = httpx.post(endpoint, json={"query": mutation, "variables": {"selector": selector}}, timeout=30).json()
        result = (answer.get("data") or {}).get(field_name) or {}
        if result.get("__typename") in ("Sensor", "ScheduleStateResult", "InstigationState"):
            return
        message = result.get("message") or answer.get("errors") or result.get("__typename")
        if "already running" in str(message):
            return
        raise StackError(f"could not start {selector.get('sensorName') or selector.get('scheduleName')}: {message}")

    def record(self) -> dict[str, Any]:
        return {
            **self.serving.record_fields(),
            **self.urls,
            "pid": os.getpid(),
            "process": process_identity(os.getpid()),
            "pids": self.pids,
            "reaper_pid": self.reaper.pid,
            "dagster_home": str(self.dagster_home),
            "automation": self.automation,
            "sensors_started": self.sensors_started,
            "schedules_started": self.schedules_started,
            "logs": str(self.logs_dir),
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def _write_stack_file(self) -> None:
        write_private_json(self.settings.stack_file, self.record())
        self._recorded = True

    def stop(self) -> None:
        """Stop the parts in reverse start order, then the serving half (gateway, MLServer, database)."""
        for child in reversed(self._children):
            processes.stop(child.process, child.name, child.stop_seconds)
            self.reaper.forget(child.process.pid)
            if child.process.stdout is not None:
                child.process.stdout.close()
            if child.log is not None:
                child.log.close()
        self._children = []
        gateway, mlserver = self.serving.gateway_pid, self.serving.mlserver_pid
        self.serving.stop()
        for pid in (gateway, mlserver):
            if pid:
                self.reaper.forget(pid)
        self.reaper.close()
        if self._recorded:
            self._recorded = False
            with contextlib.suppress(ValueError, OSError):
                record = read_stack_file(self.settings.stack_file)
                if record is not None and record.get("pid") == os.getpid():
                    self.settings.stack_file.unlink()


RULES_DIR = PROJECT_ROOT / "deploy" / "prometheus" / "rules"


def prometheus_config(
    targets: dict[str, str],
    alertmanager_url: str | None,
    *,
    rules_dir: Path | None = None,
    interval: str | None = None,
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml for the local ports: the same jobs and rules, the compose hosts replaced.

    A target whose job deploy/ does not list is scraped as a job of that name at ``/metrics``. ``rules_dir``: where
    the rule files are (default: deploy/prometheus/rules); ``interval``: the scrape and evaluation interval
    (default: deploy/'s).
    """
    config: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str((rules_dir or RULES_DIR) / "*.rules.yml")]
    if interval:
        config.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval)
    if alertmanager_url:
        address = alertmanager_url.removeprefix("http://")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [address]}]}]}
    else:
        config.pop("alerting", None)
    jobs = config.get("scrape_configs", [])
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in jobs
        if job["job_name"] in targets  # lakeFS does not run locally
    ]
    listed = {job["job_name"] for job in jobs}
    config["scrape_configs"] += [
        {"job_name": name, "metrics_path": "/metrics", "static_configs": [{"targets": [address]}]}
        for name, address in targets.items()
        if name not in listed
    ]
    if interval:  # a job's own interval may not be longer than the new global one's timeout
        for job in config["scrape_configs"]:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
    return config


def write_rules_with_for(directory: Path, duration: str) -> list[Path]:
    """A copy of every deploy/prometheus/rules/*.rules.yml in ``directory`` with each rule's ``for:`` set to
    ``duration`` (rules without one stay without); the expressions, labels and annotations are the committed ones.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(RULES_DIR.glob("*.rules.yml")):
        rules: dict[str, Any] = yaml.safe_load(source.read_text())
        for group in rules.get("groups", []):
            for rule in group.get("rules", []):
                if "for" in rule:
                    rule["for"] = duration
        target = directory / source.name
        target.write_text(
            f"# Generated by `riverbed up` from {source} with every `for:` = {duration}.\n"
            + yaml.safe_dump(rules, sort_keys=False)
        )
        written.append(target)
    return written


def alertmanager_config(webhook_url: str | None) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with the webhook set (none: alerts are kept, not sent)."""
    config: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config.get("receivers", []):
        if webhook_url:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = webhook_url
        else:
            receiver.pop("webhook_configs", None)
    return config


# ------------------------------------------------------------------------------------------------ commands
def up(
    datasets: Annotated[list[str] | None, typer.Argument(help="Datasets to serve (default: every champion).")] = None,
    automation: Annotated[
        bool | None,
        typer.Option(
            "--automation/--no-automation",
            help="Start every sensor and schedule; off: stop them all (default: RIVERBED_AUTOMATION, true).",
        ),
    ] = None,
) -> None:
    """Run the whole platform: database, Kafka, MLflow, MLServer, the gateway, Dagster (daemon included),
    Prometheus and Alertmanager when installed; Ctrl-C or `riverbed down` stops everything."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    stack = PlatformStack(
        settings, datasets or [], automation=settings.automation if automation is None else automation
    )
    try:
        with sigterm_interrupts(), console.status("starting the platform..."):
            stack.start()  # SIGTERM meanwhile stops what already runs, as Ctrl-C does
    except StackError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    try:
        table, _ = health_table(stack.record())
        console.print(table)
        served = ", ".join(stack.serving.datasets) or "nothing yet (no champion deployed)"
        console.print(f"serving {served}   (stack file: {settings.stack_file})")
        if stack.automation:
            console.print(
                f"automation on: {len(stack.sensors_started)} sensors, {len(stack.schedules_started)} schedules"
            )
        else:
            console.print("automation off: every sensor and schedule is stopped")
        console.print("Ctrl-C or `riverbed down` stops everything")
        wait_for_signal()
    finally:
        with console.status("stopping..."):
            stack.stop()
    console.print("stopped")


def _live_record(settings: RiverbedSettings) -> dict[str, Any]:
    try:
        record = read_stack_file(settings.stack_file)
    except ValueError as error:
        console.print(f"[red]{settings.stack_file} is not a stack record ({error})[/red]")
        raise typer.Exit(1) from None
    if record is None:
        console.print(f"[red]no riverbed stack is running on {settings.home} (no {settings.stack_file})[/red]")
        raise typer.Exit(1)
    reason = why_not_live(record)
    if reason is not None:
        console.print(
            f"[red]no riverbed stack is running on {settings.home}: {settings.stack_file} is stale ({reason})[/red]"
        )
        raise typer.Exit(1)
    return record


def status() -> None:
    """Report each part of the running stack (from stack.json, each address probed); exits 1 if one is down."""
    settings = get_settings()
    record = _live_record(settings)
    table, healthy = health_table(record)
    console.print(f"stack pid {record['pid']} on {settings.home}, started {record.get('started_at', '?')}")
    console.print(table)
    if not healthy:
        raise typer.Exit(1)


def down(
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the stack to stop.")] = DOWN_SECONDS,
) -> None:
    """Stop the running stack (`riverbed up` or `riverbed serve`): SIGTERM, then wait for it to exit."""
    settings = get_settings()
    record = _live_record(settings)
    pid = int(record["pid"])
    began = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        console.print(f"the stack (pid {pid}) had already exited")
        return
    while processes.pid_alive(pid):
        if time.monotonic() - began > timeout:
            console.print(f"[red]the stack (pid {pid}) did not stop in {timeout:.0f} s (kill -9 {pid})[/red]")
            raise typer.Exit(1)
        time.sleep(0.2)
    console.print(f"stopped the stack (pid {pid}) in {time.monotonic() - began:.1f} s")


def register(app: typer.Typer) -> None:
    """Add ``up``, ``status`` and ``down`` to the ``riverbed`` command."""
    app.command()(up)
    app.command()(status)
    app.command()(down)
