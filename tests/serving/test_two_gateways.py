"""Two gateway processes behind HAProxy writing one inference log: no row lost or doubled, the chain intact.

Real processes throughout: PostgreSQL (127.0.0.1:5432, a fresh database), MLServer serving a small trained model,
two uvicorn gateways sharing the home (chain key, checkpoints) and the database, each with its own spool, and
HAProxy (Debian package; round robin, health checks on ``/readyz``) in front. A few thousand concurrent single-row
predictions go through HAProxy; then the log itself is checked: rows are counted per request id in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from benchmarks.scale_out_benchmark import ExtraGateway, HAProxy, fire, predictions_answered, rows_per_request_id
from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from serving.inference_log import verify_chain_from_settings
from tests.deploy.system_tools import require_tool
from tests.serving.gateway_fixtures import api_records, install_trained_model, salary_band_features, salary_band_spec

pytestmark = pytest.mark.slow

REQUESTS = 2000
CLIENTS = 16


def test_two_gateways_behind_haproxy_log_every_answer_once_in_one_intact_chain(
    tmp_path: Path, postgres_dsn: str
) -> None:
    haproxy = require_tool("haproxy")
    settings = RiverbedSettings(
        home=tmp_path / "home", inference_log_dsn=postgres_dsn, audit_checkpoint_interval_seconds=1.0
    )
    install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=tmp_path / "trained")
    records = api_records(salary_band_features(200), salary_band_spec())

    with contextlib.ExitStack() as running:
        stack = running.enter_context(ServingStack(settings, ["salary_band"], ephemeral_ports=True))
        second = running.enter_context(ExtraGateway(stack, "gw2"))
        proxy = running.enter_context(
            HAProxy(tmp_path / "haproxy", [("gw1", stack.gateway_port), ("gw2", second.port)], program=haproxy)
        )
        key = create_api_key(postgres_dsn, ["predict"], "two-gateways").key
        load = asyncio.run(fire(proxy.url, key, records, clients=CLIENTS, requests=REQUESTS))
        per_process = {"gw1": predictions_answered(stack.gateway_url), "gw2": predictions_answered(second.url)}
    # HAProxy and both gateways have stopped; each gateway flushed its writer and wrote a last checkpoint

    assert load.transport_errors == []
    assert sorted({answer.status for answer in load.answers}) == [200]
    assert len(load.answers) == REQUESTS
    served_by = load.served_by()
    assert set(served_by) == {"gw1", "gw2"}
    assert min(served_by.values()) >= REQUESTS // 4, served_by  # round robin spread the load over both
    assert served_by == per_process  # HAProxy's header agrees with what each process counted itself

    counts = rows_per_request_id(postgres_dsn)
    ids = [answer.request_id for answer in load.answers]
    assert None not in ids and len(set(ids)) == REQUESTS
    assert [rid for rid in ids if counts.get(str(rid)) != 1] == []  # exactly one committed row per answer
    assert sum(counts.values()) == REQUESTS  # and no row nobody was answered for

    report = verify_chain_from_settings(postgres_dsn, settings)
    assert report.ok, report.problems
    assert report.rows_checked == REQUESTS
    assert report.checkpoints_checked >= 2  # the checkpoints both gateways appended to the one shared file verify
