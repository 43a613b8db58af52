"""Alerting end to end: drift stored by monitoring reaches a webhook through Prometheus and Alertmanager.

A real gateway (in-process uvicorn over a fresh PostgreSQL database) exports the stored ``monitoring_results``; a
real Prometheus process scrapes it every second and evaluates ``deploy/prometheus/rules/riverbed.rules.yml``; a real
Alertmanager, configured from ``deploy/alertmanager/alertmanager.yml``, posts the drift alert to a webhook served
by this test. Only the timings are shortened (scrape and evaluation every second, the drift rule's ``for`` and the
route's ``group_wait``); the rule expressions, labels and routing are the committed ones. Every process is stopped
in ``finally`` blocks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitoring.analysis import ResultRow, store_results
from riverbed.cli.mlserver_process import free_port
from riverbed.inference_log_schema import apply_migrations
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from tests.deploy.system_tools import require_tool
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    ScriptedMLServer,
    in_process_gateway,
    point_at_scripted_model,
    salary_band_spec,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "riverbed.rules.yml"
ALERTMANAGER_YAML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
WEBHOOK_PLACEHOLDER = "http://alert-webhook:8080/riverbed"
DRIFT_ALERT = "RiverbedFeatureDriftPersisting"
DRIFT_FOR = "3s"  # the drift rule's 30m, shortened: still several evaluations in a row
ALERT_DEADLINE = 60.0  # seconds from the processes' start to the webhook's first drift notification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def migrated_dsn() -> Iterator[str]:
    name, dsn = create_database()
    try:
        apply_migrations(dsn)
        yield dsn
    finally:
        drop_database(name)


def store_drift(dsn: str, day: dt.date) -> None:
    """Two monitored chunks of ``day`` as the monitoring asset stores them: ``age`` drifts in both, ``education``
    in neither; the CBPE estimate is unremarkable."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    rows: list[ResultRow] = []
    for chunk in (0, 1):
        chunk_start, chunk_end = start + dt.timedelta(hours=chunk), start + dt.timedelta(hours=chunk + 1)
        for kind, name, value, alert in [
            ("univariate_drift", "age", 0.31 + chunk / 100, True),
            ("univariate_drift", "education", 0.02, False),
            ("cbpe", "roc_auc", 0.88, False),
        ]:
            rows.append(ResultRow(day, chunk, chunk_start, chunk_end, 500, kind, name, value, None, 0.1, alert, "1"))
    store_results(dsn, "salary_band", day, rows)


class Webhook:
    """Alertmanager's webhook receiver: every POSTed notification (JSON) goes to :attr:`received`."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/riverbed"

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running(command: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` (output to ``log``), wait until ``ready_url`` answers 200, stop it on exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{command[0]} not ready in 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The committed routing with the webhook's URL in place of the placeholder, and notifications sent at once."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_YAML.read_text())
    [receiver] = config["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == WEBHOOK_PLACEHOLDER
    webhook["url"] = webhook_url
    config["route"]["group_wait"] = "1s"
    return config


def rules_with_short_drift_wait() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    [drift] = [rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == DRIFT_ALERT]
    assert drift["for"] == "30m"
    drift["for"] = DRIFT_FOR
    return rules


def prometheus_config(gateway: str, alertmanager: str, rules: Path) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "gateway", "metrics_path": "/metrics", "static_configs": [{"targets": [gateway]}]}
        ],
    }


def drift_notification(webhook: Webhook, deadline: float) -> dict[str, Any]:
    """The first notification about the drift alert (others, e.g. of other rules, are skipped)."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            notification = webhook.received.get(timeout=left)
        except queue.Empty:
            break
        if notification.get("groupLabels", {}).get("alertname") == DRIFT_ALERT:
            return notification
    raise AssertionError(f"no {DRIFT_ALERT} notification reached the webhook in {ALERT_DEADLINE:.0f} s")


def test_persisting_drift_reaches_the_webhook(tmp_path: Path, migrated_dsn: str) -> None:
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    store_drift(migrated_dsn, dt.date.today())
    rules = tmp_path / "riverbed.rules.yml"
    rules.write_text(yaml.safe_dump(rules_with_short_drift_wait(), sort_keys=False))
    with ScriptedMLServer() as mlserver, Webhook() as webhook:
        settings = RiverbedSettings(
            home=tmp_path / "home",
            inference_log_dsn=migrated_dsn,
            mlserver_url=mlserver.url,
            model_repository=tmp_path / "models",
        )
        point_at_scripted_model(ModelRepository(settings.model_repository_dir), salary_band_spec())
        with in_process_gateway(settings) as gateway_url:
            am_port, prom_port = free_port(), free_port()
            am_config = tmp_path / "alertmanager.yml"
            am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url)))
            am_command = [
                str(alertmanager),
                f"--config.file={am_config}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
            ]
            prom_config = tmp_path / "prometheus.yml"
            gateway_target = gateway_url.removeprefix("http://")
            prom_config.write_text(yaml.safe_dump(prometheus_config(gateway_target, f"127.0.0.1:{am_port}", rules)))
            prom_command = [
                str(prometheus),
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ]
            started = time.monotonic()
            with (
                running(am_command, tmp_path / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready"),
                running(prom_command, tmp_path / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready"),
            ):
                notification = drift_notification(webhook, started + ALERT_DEADLINE)
                elapsed = time.monotonic() - started
                logger.info("the drift alert reached the webhook %.1f s after Alertmanager was started", elapsed)
                query = httpx.get(
                    f"http://127.0.0.1:{prom_port}/api/v1/query",
                    params={"query": "riverbed_monitoring_drift_alert"},
                    timeout=5,
                ).json()
    assert notification["status"] == "firing"
    assert notification["receiver"] == "riverbed-webhook"
    assert notification["groupLabels"] == {"alertname": DRIFT_ALERT, "dataset": "salary_band"}
    [alert] = notification["alerts"]  # age only: education did not drift
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": DRIFT_ALERT,
        "dataset": "salary_band",
        "feature": "age",
        "severity": "warning",
    }
    assert alert["annotations"]["summary"] == "Feature age of salary_band keeps drifting"
    scraped = {r["metric"]["feature"]: r["value"][1] for r in query["data"]["result"]}
    assert scraped == {"age": "1", "education": "0"}  # what Prometheus scraped from the gateway
    assert elapsed < ALERT_DEADLINE
