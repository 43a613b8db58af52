"""The gateway while PostgreSQL is unreachable: predictions still served (spooled), /readyz degraded, replay after."""

import time

import httpx
import psycopg
import pytest

from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from serving.inference_log import verify_chain_from_settings
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    api_records,
    install_trained_model,
    salary_band_features,
    salary_band_spec,
)
from tests.serving.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.slow


def test_outage_spools_keeps_serving_and_replays_every_row_once(tmp_path) -> None:
    name, direct_dsn = create_database()
    proxy = CuttableProxy()
    proxy.up()
    settings = RiverbedSettings(home=tmp_path, inference_log_dsn=proxy.dsn(direct_dsn))
    install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=tmp_path / "trained")
    records = api_records(salary_band_features(50), salary_band_spec())
    stack = ServingStack(settings, ["salary_band"], ephemeral_ports=True).start()
    try:
        key = create_api_key(direct_dsn, ["predict"], "app").key
        ids: list[str] = []
        with httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for record in records[:5]:
                response = http.post("/v1/salary_band/predict", json=record)
                assert response.status_code == 200, response.text
                ids.append(response.headers["X-Request-ID"])
            proxy.down()
            for record in records[5:25]:
                response = http.post("/v1/salary_band/predict", json=record)
                assert response.status_code == 200, response.text
                ids.append(response.headers["X-Request-ID"])
            ready = http.get("/readyz")
            body = ready.json()
            assert ready.status_code == 503 and body["status"] == "degraded", body
            assert body["audit"] == "unavailable" and body["database"] == "unreachable", body
            assert body["audit_spool_depth"] >= 1 and "unreachable" in body["detail"]
            metrics = http.get("/metrics").text
            assert "riverbed_audit_degraded 1.0" in metrics and "riverbed_audit_unavailable 1.0" in metrics
            proxy.up()
            deadline = time.monotonic() + 30
            while (ready := http.get("/readyz")).status_code != 200:  # the spool is replayed in the background
                assert time.monotonic() < deadline, ready.text
                body = ready.json()
                if body["audit"] == "replaying":  # catching up: degraded, but never called unreachable
                    assert body["status"] == "degraded" and body["audit_replaying"] is True, body
                    assert "unreachable" not in body["detail"], body
                time.sleep(0.3)
            body = ready.json()
            assert (body["audit"], body["audit_replaying"], body["audit_spool_depth"]) == ("ok", False, 0), body
            for record in records[25:30]:
                ids.append(http.post("/v1/salary_band/predict", json=record).headers["X-Request-ID"])
        with psycopg.connect(direct_dsn) as conn:
            query = "SELECT request_id::text FROM inference_log WHERE status = 'ok' ORDER BY seq"
            rows = conn.execute(query).fetchall()
        logged = [row[0] for row in rows]
        assert sorted(logged) == sorted(ids)  # every 2xx exactly once: no loss, no duplicate
        assert logged == ids  # and in the order they were served
        report = verify_chain_from_settings(direct_dsn, settings)  # keyed with the gateway's key file
        assert report.ok and report.keyed_rows == len(ids), report.problems
    finally:
        stack.stop()
        proxy.down()
        drop_database(name)
