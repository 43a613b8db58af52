"""The loop runs by itself under `riverbed up`, and is watched: alerts reach a webhook, every dashboard panel has data.

One `riverbed up machine_failure` (a subprocess, fresh home, free ports) serves the whole module. The test acts
only from outside, as users do (:class:`benchmarks.loop_benchmark.LoopScenario`): clean records produced to the
stack's Kafka; a training run launched through the Dagster webserver's GraphQL API (the UI's "Launch run") for the
first champion; predictions over HTTP; labels on Kafka; drifted records produced. The Dagster daemon does the rest:
the ingestion sensor lands records and launches ingestion runs, the monitoring sensor analyses the log every 20 s
(``RIVERBED_MONITORING_INTERVAL_SECONDS``), the retraining sensor (every 15 s) asks for a run with reason
``drift``, and that run trains, passes the gate and deploys v2, while a client keeps predicting and must never get
a non-2xx. No test code ticks a sensor or executes a job.

Prometheus and Alertmanager are the ones `up` starts, on its generated configuration: scrapes and evaluations
every 2 s (``RIVERBED_PROMETHEUS_SCRAPE_INTERVAL``) and every rule's ``for:`` at 5 s in a generated copy of the
committed rules (``RIVERBED_ALERT_RULES_FOR``); Alertmanager posts to a webhook this module serves
(``RIVERBED_ALERT_WEBHOOK_URL``). Every panel of the committed dashboards (deploy/grafana/dashboards/*.json) is
queried against that Prometheus. For the panels that show what went wrong to have something to show, one thing does
go wrong, as an operator would meet it: a registry entry whose digests were changed, refused by `riverbed rollback`
and counted in ``pipeline_failures``. The stack serves the committed ``machine_failure`` spec with one addition,
``retraining.min_performance: 0.1`` (a floor these models never reach), so the threshold panel has its series.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.loop_benchmark import (
    DATASET,
    INTERVALS,
    BackgroundClient,
    LoopScenario,
    free_port,
    running_loop,
)
from riverbed import names
from riverbed.settings import PROJECT_ROOT
from tests.deploy.system_tools import require_tool

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DASHBOARDS = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"
DRIFT_ALERT = "RiverbedFeatureDriftPersisting"
DRIFTED_FEATURES = {"torque_nm", "rotational_speed_rpm"}  # the drift demo's shifts
MIN_PERFORMANCE = 0.1
ALERT_SECONDS = 240.0  # from v2 serving: the drift alert fired long before; Alertmanager waits 30 s to group
PANEL_SECONDS = 120.0  # for every panel to have data (rates need two scrapes in their window)


class AlertWebhook:
    """Alertmanager's webhook receiver: every notification POSTed goes to :attr:`received`."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # http.server's name
                received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/riverbed"

    def __enter__(self) -> AlertWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def first(self, alertname: str, dataset: str, seconds: float) -> dict[str, Any]:
        """The first notification about ``alertname`` for ``dataset`` (received already or within ``seconds``)."""
        for notification in self.seen:
            if notification.get("groupLabels") == {"alertname": alertname, "dataset": dataset}:
                return notification
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                notification = self.received.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(notification)
            if notification.get("groupLabels") == {"alertname": alertname, "dataset": dataset}:
                return notification
        got = [n.get("groupLabels") for n in self.seen]
        raise AssertionError(f"no {alertname} notification for {dataset} within {seconds:.0f} s; got {got}")


@dataclass
class Loop:
    scenario: LoopScenario
    background: BackgroundClient
    webhook: AlertWebhook
    refused_rollback: subprocess.CompletedProcess[str] | None = None

    @property
    def record(self) -> dict[str, Any]:
        return self.scenario.record

    def refuse_a_tampered_rollback(self) -> subprocess.CompletedProcess[str]:
        """Change v1's recorded digests in the registry (MLflow's REST API), then `riverbed rollback` to it (once)."""
        if self.refused_rollback is None:
            mlflow, name = self.record["mlflow"], f"riverbed-{DATASET}"
            version = httpx.get(
                f"{mlflow}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": "1"}, timeout=10
            ).json()["model_version"]
            tags = {tag["key"]: tag["value"] for tag in version.get("tags", [])}
            digests = json.loads(tags["riverbed.artifact_sha256"])
            first = sorted(digests)[0]
            digests[first] = ("0" if digests[first][0] != "0" else "1") + digests[first][1:]
            changed = httpx.post(
                f"{mlflow}/api/2.0/mlflow/model-versions/set-tag",
                json={"name": name, "version": "1", "key": "riverbed.artifact_sha256", "value": json.dumps(digests)},
                timeout=10,
            )
            assert changed.status_code == 200, changed.text
            # The CLI does not read MLflow's address from stack.json (it defaults to the demo's SQLite store): told.
            self.refused_rollback = self.scenario.up.cli(
                "rollback", DATASET, extra_env={"RIVERBED_MLFLOW_TRACKING_URI": mlflow}
            )
        return self.refused_rollback


def _specs_with_a_performance_floor(directory: Path) -> Path:
    spec = yaml.safe_load((PROJECT_ROOT / "datasets" / f"{DATASET}.yaml").read_text())
    spec.setdefault("retraining", {})["min_performance"] = MIN_PERFORMANCE
    directory.mkdir(parents=True)
    (directory / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    # Not under pytest's temporary root: the embedded PostgreSQL runs as another user, who must traverse the path.
    home = Path(tempfile.mkdtemp(prefix="riverbed-loop-"))
    home.chmod(0o755)
    try:
        with (
            AlertWebhook() as webhook,
            running_loop(
                home,
                {
                    "RIVERBED_ALERT_WEBHOOK_URL": webhook.url,
                    "RIVERBED_SPECS_DIRS": json.dumps([str(_specs_with_a_performance_floor(home / "specs"))]),
                },
            ) as scenario,
        ):
            began = time.monotonic()
            v1 = scenario.initial_champion()
            logger.info("v%d trained and served %.0f s after `up` answered", v1, time.monotonic() - began)
            records = scenario._gateway_records(scenario.records.background)
            with BackgroundClient(scenario.gateway, scenario.key, records) as background:
                scenario.drift_to_v2(background)
            logger.info(
                "first drifted record to v2 serving: %.1f s; stages %s",
                scenario.outcome.seconds_to_v2,
                scenario.stages(),
            )
            yield Loop(scenario, background, webhook)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_loop_closes_by_itself_and_v2_replaces_v1_without_a_failed_request(loop: Loop) -> None:
    outcome = loop.scenario.outcome
    assert (outcome.v1, outcome.v2) == (1, 2)
    # v1: the run launched from outside; every record it trained on landed by the sensor's runs.
    assert outcome.v1_run is not None and outcome.v1_run.tags["riverbed/reason"] == "initial"
    # The drifted records: landed by the ingestion sensor, ingested by the runs it launched.
    assert outcome.drift_ingest_runs, "no ingestion run after the drifted records were produced"
    for run in outcome.drift_ingest_runs:
        assert run.status == "SUCCESS", run
        assert run.tags["dagster/sensor_name"] == names.kafka_ingest_sensor(DATASET)
    assert {run.tags["dagster/partition"] for run in outcome.drift_ingest_runs} == {"2026-10-21"}
    # The drift: found by a monitoring run the monitoring sensor launched.
    monitor = outcome.drift_monitor_run
    assert monitor is not None and monitor.status == "SUCCESS"
    assert monitor.tags["dagster/sensor_name"] == names.monitor_sensor(DATASET)
    # The retraining: asked for by the retraining sensor, for drift, on the drifted features.
    retrain = outcome.retrain_run
    assert retrain is not None and retrain.status == "SUCCESS", retrain
    assert retrain.tags["dagster/sensor_name"] == names.retrain_sensor(DATASET)
    assert retrain.tags["riverbed/reason"] == "drift"
    trigger = json.loads(retrain.tags["riverbed/trigger"])
    assert set(trigger["drifted_features"]) & DRIFTED_FEATURES, trigger
    assert len(trigger["chunks"]) == 2  # the spec's drift_consecutive_chunks
    # It passed the gate: v2 is MLflow's champion and what the gateway serves.
    mlflow = loop.record["mlflow"]
    alias = httpx.get(
        f"{mlflow}/api/2.0/mlflow/registered-models/alias",
        params={"name": f"riverbed-{DATASET}", "alias": "champion"},
        timeout=10,
    ).json()
    assert alias["model_version"]["version"] == "2", alias
    tags = {tag["key"]: tag["value"] for tag in alias["model_version"].get("tags", [])}
    assert tags.get("riverbed.gate") == "passed", tags
    run = httpx.get(
        f"{mlflow}/api/2.0/mlflow/runs/get", params={"run_id": alias["model_version"]["run_id"]}, timeout=10
    ).json()["run"]
    run_tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
    assert run_tags["riverbed.reason"] == "drift", run_tags
    readyz = httpx.get(f"{loop.record['gateway']}/readyz", timeout=10).json()
    assert readyz["models"][DATASET]["served_model"] == names.served_model_name(DATASET, 2), readyz
    # A client predicted throughout: answered by v1, then by v2, never anything but 2xx.
    background = loop.background
    assert background.non_2xx == 0, (dict(background.statuses), background.failures[:5])
    assert background.statuses[200] >= 20, dict(background.statuses)
    assert background.versions["1"] > 0 and background.versions["2"] > 0, dict(background.versions)
    assert outcome.seconds_to_v2 is not None and outcome.seconds_to_v2 > 0


def test_the_drift_alert_reaches_the_webhook(loop: Loop) -> None:
    notification = loop.webhook.first(DRIFT_ALERT, DATASET, ALERT_SECONDS)
    assert notification["receiver"] == "riverbed-webhook"
    firing = [alert for alert in notification["alerts"] if alert["status"] == "firing"]
    assert firing, notification
    features = {alert["labels"]["feature"] for alert in firing}
    assert features & DRIFTED_FEATURES, features
    for alert in firing:
        assert alert["labels"]["alertname"] == DRIFT_ALERT and alert["labels"]["severity"] == "warning"
        assert alert["labels"]["dataset"] == DATASET
        feature = alert["labels"]["feature"]
        assert alert["annotations"]["summary"] == f"Feature {feature} of {DATASET} keeps drifting"
    # What fired it: Prometheus scraped the gateway's drift gauges for the dataset.
    prometheus = loop.record["prometheus"]
    scraped = httpx.get(
        f"{prometheus}/api/v1/query",
        params={"query": f'max_over_time(riverbed_monitoring_drift_alert{{job="gateway",dataset="{DATASET}"}}[1h])'},
        timeout=10,
    ).json()["data"]["result"]
    drifted = {series["metric"]["feature"] for series in scraped if series["value"][1] == "1"}
    assert features <= drifted, (features, drifted)


def test_a_rollback_to_a_tampered_version_is_refused_counted_and_v2_keeps_serving(loop: Loop) -> None:
    refused = loop.refuse_a_tampered_rollback()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refusing to deploy" in refused.stdout and "digests" in refused.stdout, refused.stdout
    assert loop.scenario.served_version() == 2
    # Counted where the pipeline's failures are: the gateway exports the stored count, Prometheus scrapes it.
    series = f'riverbed_pipeline_failures_total{{component="deployment_{DATASET}",reason="model_integrity"}}'

    def scraped() -> list[dict[str, Any]]:
        return _query(loop.record["prometheus"], series)

    deadline = time.monotonic() + PANEL_SECONDS
    while not (found := scraped()) and time.monotonic() < deadline:
        time.sleep(2)
    assert [point["value"][1] for point in found] == ["1"], found


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every committed dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = list(dashboard.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))  # rows hold their panels
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((path.name, panel.get("title", "?"), target["expr"]))
    return found


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=15).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_every_dashboard_panel_returns_data_from_the_running_stack(loop: Loop) -> None:
    queries = _panel_queries()
    assert len(queries) >= 20, queries  # the three committed dashboards
    loop.refuse_a_tampered_rollback()  # what the failure panels show (done by the test before, when it ran)
    prometheus = loop.record["prometheus"]
    deadline = time.monotonic() + PANEL_SECONDS
    while True:
        empty = [(name, title, expr) for name, title, expr in queries if not _query(prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not empty, "panels without data:\n" + "\n".join(f"{n} / {t}: {e}" for n, t, e in empty)


def test_the_stack_file_names_the_exporter_and_the_console_and_prometheus_scrapes_every_part(loop: Loop) -> None:
    record = loop.record
    assert record["console"] == f"{record['gateway']}/console"
    # The console links lineage to the UIs of this stack: the gateway is told the Dagster UI and the MLflow server.
    environ = Path(f"/proc/{record['pids']['gateway']}/environ").read_bytes().split(b"\0")
    told = dict(item.decode().split("=", 1) for item in environ if item.startswith(b"RIVERBED_"))
    assert told["RIVERBED_CONSOLE_DAGSTER_URL"] == record["dagster"]
    assert told["RIVERBED_MLFLOW_TRACKING_URI"] == record["mlflow"]
    exporter = record["exporter"]
    health = httpx.get(f"{exporter}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    targets = httpx.get(f"{record['prometheus']}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    health_by_job = {target["labels"]["job"]: target["health"] for target in targets}
    assert health_by_job == {job: "up" for job in ("gateway", "mlserver", "exporter", "prometheus")}, health_by_job
    config = httpx.get(f"{record['prometheus']}/api/v1/status/config", timeout=10).json()["data"]["yaml"]
    assert f"scrape_interval: {INTERVALS['RIVERBED_PROMETHEUS_SCRAPE_INTERVAL']}" in config
    status = loop.scenario.up.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert any(" exporter " in line and "ok" in line for line in status.stdout.splitlines()), status.stdout
