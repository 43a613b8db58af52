"""Faults under load on real processes: MLServer killed, the gateway SIGKILLed, the database cut.

Each test keeps several clients firing single-row predictions while the fault happens, then checks the log
itself (not the answers): every answered request id has exactly one committed row whose status is the answer's,
no 2xx was lost, nothing was logged twice, and the keyed chain verifies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from serving.inference_log import verify_chain_from_settings
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import api_records, install_trained_model, salary_band_features, salary_band_spec
from tests.serving.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.slow

RECORDS = api_records(salary_band_features(60), salary_band_spec())


@dataclass
class Load:
    """Clients firing predictions until stopped; what each got back."""

    url: str
    key: str
    clients: int = 4
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, X-Request-ID)
    transport_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._fire, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _fire(self, offset: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            index = offset
            while not self._stop.is_set():
                try:
                    response = http.post("/v1/salary_band/predict", json=RECORDS[index % len(RECORDS)])
                except httpx.HTTPError:
                    with self._lock:
                        self.transport_errors += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.answers.append((response.status_code, response.headers["X-Request-ID"]))
                index += self.clients


@pytest.fixture
def database() -> Iterator[str]:
    name, dsn = create_database()
    try:
        yield dsn
    finally:
        drop_database(name)


def _stack(home: Path, dsn: str) -> ServingStack:
    settings = RiverbedSettings(home=home, inference_log_dsn=dsn, audit_checkpoint_interval_seconds=1.0)
    if not (settings.model_repository_dir / "deployments").exists():
        install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=home / "trained")
    return ServingStack(settings, ["salary_band"], ephemeral_ports=True).start()


def _logged(dsn: str) -> dict[str, list[int]]:
    """request id -> the http_status of each of its rows."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select request_id, http_status from inference_log").fetchall()
    found: dict[str, list[int]] = {}
    for request_id, status in rows:
        found.setdefault(request_id, []).append(status)
    return found


def _assert_every_answer_logged_once(dsn: str, answers: list[tuple[int, str]]) -> dict[str, list[int]]:
    logged = _logged(dsn)
    assert all(len(statuses) == 1 for statuses in logged.values())  # the primary key makes this structural
    missing = [(status, rid) for status, rid in answers if rid not in logged]
    assert missing == []
    wrong = [(status, rid, logged[rid]) for status, rid in answers if logged[rid] != [status]]
    assert wrong == []
    return logged


def test_mlserver_killed_under_load_answers_503_with_rows_and_loses_nothing(tmp_path: Path, database: str) -> None:
    stack = _stack(tmp_path, database)
    try:
        key = create_api_key(database, ["predict"], "load").key
        with Load(stack.gateway_url, key) as load:
            time.sleep(1.5)
            assert stack.mlserver_pid is not None
            os.kill(stack.mlserver_pid, signal.SIGKILL)
            time.sleep(2.0)
        statuses = {status for status, _ in load.answers}
        assert statuses <= {200, 503}, statuses  # never a 500, never a hang
        assert 200 in statuses and 503 in statuses
        assert load.transport_errors == 0
        _assert_every_answer_logged_once(database, load.answers)
        report = verify_chain_from_settings(database, stack.settings)
        assert report.ok, report.problems
    finally:
        stack.stop()


def test_gateway_sigkilled_under_load_keeps_every_2xx_and_restarts(tmp_path: Path, database: str) -> None:
    stack = _stack(tmp_path, database)
    key = create_api_key(database, ["predict"], "load").key
    try:
        with Load(stack.gateway_url, key) as load:
            time.sleep(1.5)
            assert stack.gateway_pid is not None
            os.kill(stack.gateway_pid, signal.SIGKILL)
            time.sleep(0.5)
    finally:
        stack.stop()
    served = [rid for status, rid in load.answers if status == 200]
    assert len(served) >= 10
    _assert_every_answer_logged_once(database, load.answers)  # a 2xx left only after its row committed

    again = _stack(tmp_path, database)  # restarts at once on the same home and database
    try:
        with httpx.Client(base_url=again.gateway_url, headers={"Authorization": f"Bearer {key}"}) as http:
            response = http.post("/v1/salary_band/predict", json=RECORDS[0])
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] in _logged(database)
        report = verify_chain_from_settings(database, again.settings)
        assert report.ok, report.problems
    finally:
        again.stop()


def test_database_outage_under_load_replays_with_no_loss_and_no_duplicate(tmp_path: Path, database: str) -> None:
    proxy = CuttableProxy()
    proxy.up()
    stack = _stack(tmp_path, proxy.dsn(database))
    try:
        key = create_api_key(database, ["predict"], "load").key
        with Load(stack.gateway_url, key) as load:
            time.sleep(1.0)
            proxy.down()
            time.sleep(2.5)
            proxy.up()
            time.sleep(1.0)
        deadline = time.monotonic() + 60
        while httpx.get(f"{stack.gateway_url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the spool was not replayed within 60 s"
            time.sleep(0.3)
        served = [rid for status, rid in load.answers if status == 200]
        assert len(served) >= 20 and load.transport_errors == 0
        _assert_every_answer_logged_once(database, load.answers)
        with psycopg.connect(database) as conn:
            ordered = [row[0] for row in conn.execute("select request_id from inference_log order by seq")]
        assert len(ordered) == len(set(ordered))
        report = verify_chain_from_settings(database, stack.settings)
        assert report.ok, report.problems
    finally:
        stack.stop()
        proxy.down()
