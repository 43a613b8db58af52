"""The gateway exports the ``pipeline_failures`` counts as ``riverbed_pipeline_failures_total{component, reason}``;
a refresh that cannot read the database keeps the last values, counts
``riverbed_gateway_metrics_refresh_failures_total{table}`` and logs one WARNING per change of state."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from riverbed.model_repository import ModelRepository
from riverbed.pipeline_failures import report_failure
from riverbed.settings import RiverbedSettings
from serving.database_roles import provision_login_roles
from serving.gateway.metrics import MonitoringGauges
from serving.gateway.routes.health import _fetch_rows  # what /metrics runs the queries with
from tests.serving.gateway_fixtures import (
    ScriptedMLServer,
    in_process_gateway,
    point_at_scripted_model,
    salary_band_spec,
)

pytestmark = pytest.mark.timeout(120)

PERMISSION = ("retrain_salary_band", "monitoring_permission_denied")
UNREADABLE = ("serving_startup", "registry_unreadable")
METRICS_LOGGER = "serving.gateway.metrics"


def failures_total(registry: CollectorRegistry, key: tuple[str, str]) -> float | None:
    component, reason = key
    return registry.get_sample_value("riverbed_pipeline_failures_total", {"component": component, "reason": reason})


def refresh_failures(registry: CollectorRegistry, table: str) -> float | None:
    return registry.get_sample_value("riverbed_gateway_metrics_refresh_failures_total", {"table": table})


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == METRICS_LOGGER and r.levelno >= logging.WARNING]


@asynccontextmanager
async def pool_on(dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()


def test_metrics_show_the_stored_pipeline_failures(tmp_path: Path, migrated_dsn: str) -> None:
    for _ in range(3):
        assert report_failure(*PERMISSION, "permission denied for table monitoring_results", dsn=migrated_dsn)
    assert report_failure(*UNREADABLE, "MLflow at http://mlflow:5000 refused", dsn=migrated_dsn)
    with ScriptedMLServer() as mlserver:
        settings = RiverbedSettings(
            home=tmp_path, inference_log_dsn=migrated_dsn, mlserver_url=mlserver.url, model_repository=tmp_path / "r"
        )
        point_at_scripted_model(ModelRepository(settings.model_repository_dir), salary_band_spec())
        with in_process_gateway(settings) as url:
            text = httpx.get(f"{url}/metrics", timeout=30).text
    assert "# TYPE riverbed_pipeline_failures_total counter" in text
    stored = dict(re.findall(r"^(riverbed_pipeline_failures_total\{[^}]*\}) (\S+)$", text, re.MULTILINE))
    assert stored == {
        'riverbed_pipeline_failures_total{component="retrain_salary_band",reason="monitoring_permission_denied"}': (
            "3.0"
        ),
        'riverbed_pipeline_failures_total{component="serving_startup",reason="registry_unreadable"}': "1.0",
    }
    for table in ("monitoring_results", "pipeline_failures"):  # exported from the start, none yet
        assert f'riverbed_gateway_metrics_refresh_failures_total{{table="{table}"}} 0.0' in text


@pytest.mark.asyncio
async def test_a_dead_database_keeps_the_values_warns_once_and_counts_each_refresh(
    migrated_dsn: str, unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=METRICS_LOGGER)
    registry = CollectorRegistry()
    gauges = MonitoringGauges(registry, ttl=0)
    report_failure(*PERMISSION, "first", dsn=migrated_dsn)
    async with pool_on(migrated_dsn) as live, pool_on(unreachable_dsn) as dead:
        await gauges.refresh(partial(_fetch_rows, live))
        assert failures_total(registry, PERMISSION) == 1.0
        report_failure(*PERMISSION, "second", dsn=migrated_dsn)
        await gauges.refresh(partial(_fetch_rows, live))
        assert failures_total(registry, PERMISSION) == 2.0  # read again on the next refresh

        await gauges.refresh(partial(_fetch_rows, dead))
        await gauges.refresh(partial(_fetch_rows, dead))
        assert failures_total(registry, PERMISSION) == 2.0  # the last values are kept
        for table in ("monitoring_results", "pipeline_failures"):
            assert refresh_failures(registry, table) == 2.0  # every failed refresh counts; the second not tried
        warnings = gateway_warnings(caplog)
        assert len(warnings) == 1, warnings  # once for the change of state, not per scrape
        assert warnings[0].startswith(
            "database-backed metrics not refreshed, the last values are kept: monitoring_results: PoolTimeout: "
        )
        assert "pipeline_failures: PoolTimeout" in warnings[0]

        report_failure(*PERMISSION, "third", dsn=migrated_dsn)
        await gauges.refresh(partial(_fetch_rows, live))
    assert failures_total(registry, PERMISSION) == 3.0
    assert [r.getMessage() for r in caplog.records if r.name == METRICS_LOGGER and r.levelno == logging.INFO] == [
        "database-backed metrics refreshed again (monitoring_results, pipeline_failures)"
    ]
    assert refresh_failures(registry, "pipeline_failures") == 2.0


@pytest.mark.asyncio
async def test_a_refused_table_does_not_stop_the_other_and_a_new_failure_warns_again(
    migrated_dsn: str, unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_dsn = provision_login_roles(migrated_dsn, None, roles=["gateway"])["gateway"]
    with psycopg.connect(migrated_dsn, autocommit=True) as admin:
        admin.execute("revoke select on monitoring_results from riverbed_gateway")
    report_failure(*UNREADABLE, "x", dsn=migrated_dsn)
    registry = CollectorRegistry()
    gauges = MonitoringGauges(registry, ttl=0)
    async with pool_on(gateway_dsn) as refused, pool_on(unreachable_dsn) as dead:
        await gauges.refresh(partial(_fetch_rows, refused))
        await gauges.refresh(partial(_fetch_rows, refused))
        assert failures_total(registry, UNREADABLE) == 1.0  # the gateway role still reads pipeline_failures
        assert refresh_failures(registry, "monitoring_results") == 2.0
        assert refresh_failures(registry, "pipeline_failures") == 0.0
        await gauges.refresh(partial(_fetch_rows, dead))  # another failure: a new WARNING
    warnings = gateway_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(
        "database-backed metrics not refreshed, the last values are kept: monitoring_results: "
    )
    assert "InsufficientPrivilege: permission denied for table monitoring_results" in warnings[0]
    assert "PoolTimeout" in warnings[1]
    assert failures_total(registry, UNREADABLE) == 1.0
