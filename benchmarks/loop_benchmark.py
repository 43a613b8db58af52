"""The loop under ``riverbed up``: from the first drifted record produced until the gateway serves v2, intervals included.

``riverbed up machine_failure`` runs as a subprocess in a fresh home on free ports, and everything else acts from
outside, as users do (:class:`LoopScenario`): records produced to the stack's Kafka, a training run launched
through the Dagster webserver's GraphQL API (the UI's "Launch run") for the initial champion, predictions over
HTTP to the gateway, true labels published on the labels topic. Nothing is ticked or executed in-process: the
Dagster daemon's sensors land the records and launch the ingestion runs, the monitoring sensor analyses the
log every ``RIVERBED_MONITORING_INTERVAL_SECONDS``, the retraining sensor (every
``RIVERBED_RETRAINING_INTERVAL_SECONDS``) asks for a run with reason ``drift``, and that run trains, passes the
gate and deploys. A client keeps predicting meanwhile; every answer it gets is counted by status.

The clock starts when the first drifted record is produced and stops when a prediction comes back from v2
(polled every :data:`SERVED_POLL_SECONDS`); the Dagster runs' own times (from the webserver) place each stage
on that clock. ``tests/riverbed/test_up_loop.py`` drives the same scenario and asserts on it.

Usage: ``uv run python -m benchmarks.loop_benchmark``; ``--quick`` (smoke tests) is the same loop (it has no
smaller scale that still closes) and only marks the figures as a smoke run. Writes ``<results-dir>/loop.json``
(default ``benchmarks/results``) and re-renders ``RESULTS.md`` beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note

logger = logging.getLogger(__name__)

COMMAND = "uv run python -m benchmarks.loop_benchmark"
DATASET = "machine_failure"
CLEAN_RECORDS = 5000  # the reference (v1's test split) must hold 2 monitoring chunks of 500
CLEAN_DAYS = 2
DRIFTED_RECORDS = 3000
PREDICTED_CLEAN_CHUNKS = 2
PREDICTED_DRIFTED_CHUNKS = 3
BATCH = 100
SERVED_POLL_SECONDS = 0.2
BACKGROUND_PAUSE_SECONDS = 0.2  # between two predictions of the background client
# The automation's intervals under test (settings of the code location `up` runs; production defaults: 900 s and
# 60 s); the ingestion sensor's 10 s and the labels sensor's 30 s are the code's.
INTERVALS = {
    "RIVERBED_MONITORING_INTERVAL_SECONDS": "20",
    "RIVERBED_RETRAINING_INTERVAL_SECONDS": "15",
    "RIVERBED_PROMETHEUS_SCRAPE_INTERVAL": "2s",
    "RIVERBED_ALERT_RULES_FOR": "5s",
}
START_SECONDS = 300.0
STOP_SECONDS = 60.0
CHILD_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NML_DISABLE_USAGE_LOGGING": "1",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "200",
}
_RUNS_QUERY = """
query($filter: RunsFilter) { runsOrError(filter: $filter, limit: 200) { __typename
  ... on Runs { results { runId jobName status creationTime startTime endTime tags { key value } } }
  ... on PythonError { message } } }
"""
_REPOSITORY_QUERY = """
query { repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }
"""
_LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on UnauthorizedError { message } } }
"""


def free_port() -> int:
    from riverbed.cli.mlserver_process import free_port as pick

    return pick()


def wait_for(condition: Callable[[], Any], seconds: float, what: str, pause: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:g} s")
        time.sleep(pause)


# ------------------------------------------------------------------------------------------------ the stack
class UpProcess:
    """``riverbed up machine_failure`` in ``home`` on free ports; :meth:`stop` leaves nothing behind."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RIVERBED_")},
            **CHILD_ENV,
            "RIVERBED_HOME": str(home),
            "RIVERBED_GATEWAY_PORT": str(free_port()),
            "RIVERBED_MLSERVER_URL": f"http://127.0.0.1:{free_port()}",
            "RIVERBED_MLSERVER_GRPC_PORT": str(free_port()),
            "RIVERBED_MLSERVER_METRICS_PORT": str(free_port()),
            "RIVERBED_DAGSTER_PORT": str(free_port()),
            "RIVERBED_MLFLOW_PORT": str(free_port()),
            "RIVERBED_PROMETHEUS_PORT": str(free_port()),
            "RIVERBED_ALERTMANAGER_PORT": str(free_port()),
            "RIVERBED_EXPORTER_PORT": str(free_port()),
            **INTERVALS,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.record: dict[str, Any] = {}
        self.output = home / "up.out"

    def start(self) -> dict[str, Any]:
        """Start ``up`` and wait until it printed its table (stack.json written, automation started)."""
        with self.output.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "riverbed.cli", "up", DATASET], env=self.env, stdout=log, stderr=log
            )
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"riverbed up exited with {process.returncode}:\n{self.output.read_text()[-4000:]}")
            return "stops everything" in self.output.read_text(errors="replace")

        wait_for(started, START_SECONDS, f"riverbed up started (output: {self.output})")
        self.record = json.loads((self.home / "stack.json").read_text())
        return self.record

    def cli(
        self, *args: str, timeout: float = 120, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A ``riverbed`` command against this stack's home."""
        return subprocess.run(
            [sys.executable, "-m", "riverbed.cli", *args],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        """SIGTERM (what `riverbed down` sends), then SIGKILL if ``up`` does not stop; and the embedded PostgreSQL
        a killed stack would leave."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()  # the reaper then stops every child
                process.wait()
        pid_file = self.home / "postgres" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        from riverbed.cli import processes

        command = processes.process_cmdline(postmaster) or []
        if processes.pid_alive(postmaster) and command and Path(command[0]).name == "postgres":
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            wait_for(lambda: not processes.pid_alive(postmaster), 30, "embedded PostgreSQL stopped")


# ------------------------------------------------------------------------------------------------ Dagster (GraphQL)
@dataclass(frozen=True)
class DagsterRun:
    run_id: str
    job: str
    status: str
    created: float
    started: float | None
    ended: float | None
    tags: dict[str, str]


class Dagster:
    """The Dagster webserver of the stack, through its GraphQL API (what the UI does)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"Dagster GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    def runs(self, job: str) -> list[DagsterRun]:
        """Runs of ``job``, oldest first."""
        data = self._post(_RUNS_QUERY, {"filter": {"pipelineName": job}})["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"Dagster could not list runs: {data.get('message')}")
        found = [
            DagsterRun(
                run["runId"],
                run["jobName"],
                run["status"],
                run["creationTime"],
                run["startTime"],
                run["endTime"],
                {tag["key"]: tag["value"] for tag in run["tags"]},
            )
            for run in data["results"]
        ]
        return sorted(found, key=lambda run: run.created)

    def launch(self, job: str, tags: dict[str, str]) -> str:
        """Launch ``job`` as the UI's "Launch run" does; its run id."""
        [repository] = self._post(_REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
        params = {
            "selector": {
                "repositoryLocationName": repository["location"]["name"],
                "repositoryName": repository["name"],
                "jobName": job,
            },
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self._post(_LAUNCH, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"could not launch {job}: {result}")
        run_id: str = result["run"]["runId"]
        return run_id

    def wait_for_success(self, job: str, predicate: Callable[[DagsterRun], bool], seconds: float) -> DagsterRun:
        """The first run of ``job`` matching ``predicate`` once it succeeded; raises if it fails."""

        def done() -> DagsterRun | None:
            for run in self.runs(job):
                if not predicate(run):
                    continue
                if run.status in ("FAILURE", "CANCELED"):
                    raise RuntimeError(f"{job} run {run.run_id} ended {run.status} (tags {run.tags})")
                if run.status == "SUCCESS":
                    return run
            return None

        found: DagsterRun = wait_for(done, seconds, f"a successful {job} run", pause=1.0)
        return found


# ------------------------------------------------------------------------------------------------ data
@dataclass
class ScenarioRecords:
    clean: pd.DataFrame  # CLEAN_RECORDS over CLEAN_DAYS days
    drifted: pd.DataFrame  # DRIFTED_RECORDS on the day after, with the drift demo's shifts
    background: pd.DataFrame  # drifted records no model trains on, for the client that keeps predicting


def scenario_records() -> ScenarioRecords:
    """The drift demo's records (``riverbed.cli.drift_demo``), on fewer days: an ingestion run is a run per day."""
    from riverbed.cli.drift_demo import DRIFT_START, scenario_data, unseen_drifted_records
    from riverbed.settings import get_settings

    data = scenario_data(get_settings())
    spec = data.spec
    clean = data.clean.head(CLEAN_RECORDS).reset_index(drop=True)
    first = pd.Timestamp(dt.datetime.combine(spec.event_time.first_partition_day, dt.time(), dt.UTC))
    step = pd.Timedelta(days=CLEAN_DAYS) / CLEAN_RECORDS
    clean[spec.event_time.name] = [first + i * step for i in range(len(clean))]
    drifted = data.drifted.head(DRIFTED_RECORDS).reset_index(drop=True)
    step = pd.Timedelta(days=1) / DRIFTED_RECORDS
    drifted[spec.event_time.name] = [pd.Timestamp(DRIFT_START) + i * step for i in range(len(drifted))]
    return ScenarioRecords(clean, drifted, unseen_drifted_records(spec, rows=500))


# ------------------------------------------------------------------------------------------------ clients
class BackgroundClient:
    """Predicts one record at a time, with explanations, until stopped; every answer is counted by status."""

    def __init__(self, gateway: str, key: str, records: list[dict[str, Any]]) -> None:
        self.gateway, self.key, self.records = gateway, key, records
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-client", daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.gateway, headers=headers, timeout=60) as client:
            index = 0
            while not self._stop.is_set():
                record = self.records[index % len(self.records)]
                index += 1
                try:
                    response = client.post(f"/v1/{DATASET}/predict", json={**record, "top_k": 3})
                except httpx.HTTPError as error:
                    self.statuses[0] += 1
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.versions[str(response.json()["model"]["version"])] += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:300]}")
                self._stop.wait(BACKGROUND_PAUSE_SECONDS)

    def __enter__(self) -> BackgroundClient:
        return self  # started by :meth:`start`, once there is a model to predict with

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


@dataclass
class LoopOutcome:
    """What the scenario observed; times are seconds on the scenario's clock (0 = first drifted record produced)."""

    v1: int | None = None
    v2: int | None = None
    v1_run: DagsterRun | None = None
    retrain_run: DagsterRun | None = None
    drift_ingest_runs: list[DagsterRun] = field(default_factory=list)
    drift_monitor_run: DagsterRun | None = None
    marks: dict[str, float] = field(default_factory=dict)
    seconds_to_v2: float | None = None
    setup_seconds: dict[str, float] = field(default_factory=dict)
    background_statuses: dict[int, int] = field(default_factory=dict)
    background_versions: dict[str, int] = field(default_factory=dict)
    background_failures: list[str] = field(default_factory=list)
    predicted: dict[str, int] = field(default_factory=dict)
    labels_published: int = 0


class LoopScenario:
    """The loop, driven from outside a running ``riverbed up`` (see the module docstring)."""

    def __init__(self, up: UpProcess) -> None:
        from riverbed.settings import get_settings
        from riverbed.specs import load_specs

        self.up = up
        self.record = up.record
        self.spec = load_specs(get_settings().specs_dirs)[DATASET]
        self.dagster = Dagster(self.record["dagster"])
        self.gateway = self.record["gateway"]
        self.records = scenario_records()
        self.outcome = LoopOutcome()
        self.key = self._api_key()
        self._clock_zero: float | None = None

    # -------------------------------------------------------------------------------------------- helpers
    def _api_key(self) -> str:
        created = self.up.cli("apikey", "create", "--roles", "predict")
        if created.returncode != 0:
            raise RuntimeError(f"riverbed apikey create failed: {created.stdout}{created.stderr}")
        return created.stdout.strip().splitlines()[-1]

    def _gateway_records(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        from riverbed.cli.demo_serving import gateway_records

        return gateway_records(self.spec, frame, list(frame[self.spec.record_id.name]))

    def produce(self, frame: pd.DataFrame) -> int:
        """Records to the stack's raw topic, as `riverbed produce` sends them."""
        from riverbed.cli.producer import produce_records
        from riverbed.names import TopicKind, topic_name

        topic = topic_name(DATASET, TopicKind.RAW)
        report = produce_records(self.spec, frame, {"bootstrap.servers": self.record["kafka"]}, topic, rate=None)
        if report.failed:
            raise RuntimeError(f"{report.failed} record(s) not acknowledged by the stack's Kafka")
        return report.sent

    def publish_labels(self, frame: pd.DataFrame) -> int:
        """The true label of each record (by sample id) on the labels topic, as a labelling team would."""
        from confluent_kafka import Producer

        from riverbed.events import LabelEvent
        from riverbed.names import TopicKind, topic_name

        topic = topic_name(DATASET, TopicKind.LABELS)
        producer = Producer({"bootstrap.servers": self.record["kafka"], "enable.idempotence": True})
        now = dt.datetime.now(dt.UTC)
        target, record_id = self.spec.target.name, self.spec.record_id.name
        for sample_id, label in zip(frame[record_id], frame[target], strict=True):
            event = LabelEvent(
                dataset=DATASET,
                sample_id=str(sample_id),
                label=str(label),
                labelled_at=now,
                label_event_id=str(uuid.uuid4()),
            )
            producer.produce(topic, key=str(sample_id).encode(), value=event.model_dump_json().encode())
        if producer.flush(30):
            raise RuntimeError("labels not acknowledged by the stack's Kafka in 30 s")
        self.outcome.labels_published += len(frame)
        return len(frame)

    def predict_batches(self, frame: pd.DataFrame) -> int:
        records = self._gateway_records(frame)
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.gateway, headers=headers, timeout=120) as client:
            for start in range(0, len(records), BATCH):
                body = {"records": records[start : start + BATCH], "explain": False}
                response = client.post(f"/v1/{DATASET}/predict", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"batch prediction answered {response.status_code}: {response.text[:500]}")
        return len(records)

    def served_version(self) -> int | None:
        """The version that answers a prediction now (None: nothing served yet)."""
        probe = self._gateway_records(self.records.background.head(1))[0]
        response = httpx.post(
            f"{self.gateway}/v1/{DATASET}/predict",
            json={**probe, "explain": False},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=60,
        )
        if response.status_code == 503:
            return None
        response.raise_for_status()
        return int(response.json()["model"]["version"])

    def mark(self, name: str) -> None:
        assert self._clock_zero is not None
        self.outcome.marks[name] = round(time.monotonic() - self._clock_zero, 3)

    def wall_time(self, on_clock: float) -> float:
        """The wall-clock time (epoch seconds, as Dagster records runs) of ``on_clock`` on the scenario's clock."""
        assert self._clock_zero is not None
        return time.time() - (time.monotonic() - self._clock_zero) + on_clock

    def on_clock(self, wall: float | None) -> float | None:
        """A wall-clock time (a Dagster run's) on the scenario's clock."""
        if wall is None or self._clock_zero is None:
            return None
        return round(wall - (time.time() - (time.monotonic() - self._clock_zero)), 3)

    # -------------------------------------------------------------------------------------------- the loop
    def initial_champion(self, seconds: float = 600) -> int:
        """Clean records through Kafka, landed by the sensor; v1 trained by a run launched from the UI's API."""
        began = time.monotonic()
        self.produce(self.records.clean)
        days = sorted({str(t)[:10] for t in self.records.clean[self.spec.event_time.name]})
        from riverbed.names import ingest_job, train_job

        def landed() -> bool:
            done = {run.tags.get("dagster/partition") for run in self.dagster.runs(ingest_job(DATASET))}
            failed = [run for run in self.dagster.runs(ingest_job(DATASET)) if run.status == "FAILURE"]
            if failed:
                raise RuntimeError(f"ingestion run {failed[0].run_id} failed")
            succeeded = {
                run.tags.get("dagster/partition")
                for run in self.dagster.runs(ingest_job(DATASET))
                if run.status == "SUCCESS"
            }
            return set(days) <= done and set(days) <= succeeded

        wait_for(landed, seconds, f"ingestion runs of {days} launched by the sensor and successful", pause=1.0)
        self.outcome.setup_seconds["clean records landed"] = round(time.monotonic() - began, 1)
        run_id = self.dagster.launch(train_job(DATASET), {"riverbed/reason": "initial", "riverbed/dataset": DATASET})
        self.outcome.v1_run = self.dagster.wait_for_success(train_job(DATASET), lambda r: r.run_id == run_id, seconds)
        version = wait_for(self.served_version, 120, "the gateway serves the first champion")
        self.outcome.v1 = version
        self.outcome.setup_seconds["v1 trained and served"] = round(time.monotonic() - began, 1)
        return int(version)

    def drift_to_v2(self, background: BackgroundClient, seconds: float = 900) -> int:
        """Clean then drifted predictions, labels, drifted records: until the gateway answers from a new version."""
        from riverbed.names import ingest_job, monitor_job, train_job

        chunk = self.spec.monitoring.chunk_size
        clean = self.records.clean.tail(PREDICTED_CLEAN_CHUNKS * chunk)
        drifted = self.records.drifted.head(PREDICTED_DRIFTED_CHUNKS * chunk)
        self.outcome.predicted["clean"] = self.predict_batches(clean)
        self.publish_labels(clean)
        known_ingests = {run.run_id for run in self.dagster.runs(ingest_job(DATASET))}
        v1 = self.outcome.v1
        background.start()
        self._clock_zero = time.monotonic()  # the first drifted record is produced now
        self.produce(self.records.drifted)
        self.mark("drifted records produced")
        self.outcome.predicted["drifted"] = self.predict_batches(drifted)
        self.mark("drifted predictions answered")
        self.publish_labels(drifted)
        self.mark("labels published")
        deadline = time.monotonic() + seconds

        def polled_v2() -> int | None:
            version = self.served_version()
            return version if version is not None and version != v1 else None

        v2 = wait_for(polled_v2, max(deadline - time.monotonic(), 1), "the gateway serves a retrained model", 0.2)
        self.mark(f"v{v2} serving")
        self.outcome.v2 = int(v2)
        self.outcome.seconds_to_v2 = self.outcome.marks[f"v{v2} serving"]
        # The gateway answers from v2 as soon as the deployment step swapped it in; the run ends right after.
        self.outcome.retrain_run = self.dagster.wait_for_success(
            train_job(DATASET), lambda run: run.tags.get("riverbed/reason") == "drift", 120
        )
        self.outcome.drift_ingest_runs = [
            run for run in self.dagster.runs(ingest_job(DATASET)) if run.run_id not in known_ingests
        ]
        # The run that found the drift is the last monitoring run to end after the drifted predictions were logged
        # and before the retraining was requested; it may have started before the first drifted record (a run
        # already under way when they were produced reads the log later), so runs are chosen by when they ended.
        answered = self.wall_time(self.outcome.marks["drifted predictions answered"])
        retrain_created = self.outcome.retrain_run.created if self.outcome.retrain_run else float("inf")
        found = [
            run
            for run in self.dagster.runs(monitor_job(DATASET))
            if run.ended is not None and answered <= run.ended <= retrain_created
        ]
        self.outcome.drift_monitor_run = max(found, key=lambda run: run.ended or 0.0) if found else None
        return int(v2)

    def stages(self) -> dict[str, float | None]:
        """When each stage happened on the scenario's clock (Dagster's run times and the client's marks)."""
        o = self.outcome
        ingest_end = max((run.ended or 0.0 for run in o.drift_ingest_runs), default=None)
        found: dict[str, float | None] = {
            "drifted records produced": o.marks.get("drifted records produced"),
            "drifted records landed (ingestion runs ended)": self.on_clock(ingest_end),
            "drifted predictions answered": o.marks.get("drifted predictions answered"),
            "monitoring run that found the drift ended": self.on_clock(
                o.drift_monitor_run.ended if o.drift_monitor_run else None
            ),
            "retraining run requested by the sensor": self.on_clock(o.retrain_run.created if o.retrain_run else None),
            "retraining run started": self.on_clock(o.retrain_run.started if o.retrain_run else None),
            "retraining run ended (trained, gated, deployed)": self.on_clock(
                o.retrain_run.ended if o.retrain_run else None
            ),
        }
        found[f"v{o.v2} serving"] = o.seconds_to_v2
        return found


@contextmanager
def running_loop(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[LoopScenario]:
    """``up`` started in ``home``; the scenario ready to drive; everything stopped on exit."""
    up = UpProcess(home, extra_env)
    try:
        up.start()
        yield LoopScenario(up)
    finally:
        up.stop()


# ------------------------------------------------------------------------------------------------ benchmark
def run(quick: bool) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="riverbed-loop-bench-"))
    home.chmod(0o755)  # the embedded PostgreSQL runs as another user, who must traverse the home
    started = time.perf_counter()
    try:
        with running_loop(home) as scenario:
            up_seconds = time.perf_counter() - started
            scenario.initial_champion()
            with BackgroundClient(
                scenario.gateway, scenario.key, scenario._gateway_records(scenario.records.background)
            ) as background:
                scenario.drift_to_v2(background)
            outcome = scenario.outcome
            outcome.background_statuses = dict(background.statuses)
            outcome.background_versions = dict(background.versions)
            stages = scenario.stages()
            retrain = outcome.retrain_run
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "machine": machine(),
        "dataset": DATASET,
        "records": {"clean": CLEAN_RECORDS, "drifted": DRIFTED_RECORDS},
        "predicted": outcome.predicted,
        "labels_published": outcome.labels_published,
        "intervals": {
            "ingestion_sensor_seconds": 10,
            "labels_sensor_seconds": 30,
            "monitoring_sensor_seconds": int(INTERVALS["RIVERBED_MONITORING_INTERVAL_SECONDS"]),
            "retraining_sensor_seconds": int(INTERVALS["RIVERBED_RETRAINING_INTERVAL_SECONDS"]),
        },
        "v1": outcome.v1,
        "v2": outcome.v2,
        "retraining_reason": retrain.tags.get("riverbed/reason") if retrain else None,
        "retraining_trigger": retrain.tags.get("riverbed/trigger") if retrain else None,
        "seconds_to_v2": outcome.seconds_to_v2,
        "stages": stages,
        "up_start_seconds": round(up_seconds, 1),
        "setup_seconds": outcome.setup_seconds,
        "background_requests": sum(outcome.background_statuses.values()),
        "background_non_2xx": sum(n for s, n in outcome.background_statuses.items() if not 200 <= int(s) < 300),
        "background_versions": outcome.background_versions,
        "scenario_seconds": round(time.perf_counter() - started, 1),
    }


def render_results(results: dict[str, Any]) -> str:
    r = results["loop.json"]
    i = r["intervals"]
    stage_rows = [f"| {name} | {'-' if at is None else at} |" for name, at in r["stages"].items()]
    served = ", ".join(f"v{version}: {count}" for version, count in sorted(r["background_versions"].items()))
    return "\n".join(
        [
            "## The loop under `riverbed up` (end to end, intervals included)",
            "",
            machine_line(r["machine"], " ".join([COMMAND, *r.get("arguments", [])])),
            "",
            *scale_note(r, COMMAND),
            f"`riverbed up {r['dataset']}` in a fresh home, driven only from outside: {r['records']['clean']:,} clean "
            f"records produced to its Kafka and landed by the ingestion sensor's runs, v{r['v1']} trained by a run "
            "launched through the Dagster webserver's API; then predictions over HTTP in batches "
            f"({r['predicted']['clean']:,} clean records, then {r['predicted']['drifted']:,} drifted ones), their "
            "labels on Kafka, and "
            f"{r['records']['drifted']:,} drifted records (the drift demo's shifts) produced. The daemon's sensors did "
            f"the rest, on these intervals: ingestion {i['ingestion_sensor_seconds']} s, labels "
            f"{i['labels_sensor_seconds']} s, monitoring {i['monitoring_sensor_seconds']} s "
            f"(`RIVERBED_MONITORING_INTERVAL_SECONDS`; production default 900), retraining "
            f"{i['retraining_sensor_seconds']} s (`RIVERBED_RETRAINING_INTERVAL_SECONDS`; default 60). `up` started in "
            f"{r['up_start_seconds']} s; whole scenario {r['scenario_seconds']} s.",
            "",
            "| measure | measured |",
            "|---|---|",
            f"| first drifted record produced to v{r['v2']} serving | **{r['seconds_to_v2']} s** |",
            f"| retraining reason | `{r['retraining_reason']}` (evidence: {r['retraining_trigger']}) |",
            f"| a client predicting throughout | {r['background_requests']} requests, {r['background_non_2xx']} "
            f"non-2xx; answered by {served} |",
            "",
            "| stage (seconds after the first drifted record was produced) | s |",
            "|---|---:|",
            *stage_rows,
            "",
            "Raw figures: `benchmarks/results/loop.json`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same loop, marked as a smoke run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.quick)
    result.update(scale="quick" if args.quick else "full", arguments=arguments(sys.argv[1:]))
    print(publish("loop.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
