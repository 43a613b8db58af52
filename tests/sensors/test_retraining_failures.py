"""The retraining sensor when monitoring results cannot be read: the tick says why, a real failure is a WARNING
and a ``pipeline_failures`` count, "not set up yet" is INFO only, and the new-data trigger still fires."""

import logging
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.pipeline_failures import read_failures
from sensors.retraining import build_retraining_sensor
from serving.database_roles import provision_login_roles
from tests.sensors.tiny_spec import tiny_spec

SPEC = tiny_spec(drift_consecutive_chunks=2, min_performance=0.7, new_records=100)
SENSOR = build_retraining_sensor(
    SPEC,
    dg.define_asset_job(names.train_job("tiny")),
    model_key=dg.AssetKey("model_tiny"),
    raw_key=dg.AssetKey("raw_tiny"),
)
COMPONENT = "retrain_tiny"


def tick(instance: dg.DagsterInstance, dsn: str) -> Any:
    resources = {"inference_log": InferenceLogResource(dsn=dsn)}
    return SENSOR(dg.build_sensor_context(instance=instance, resources=resources))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def pipeline_dsn(migrated_dsn: str) -> str:
    """The pipeline's least-privilege login on a migrated database (what the code location uses in production)."""
    return provision_login_roles(migrated_dsn, None, roles=["pipeline"])["pipeline"]


def test_database_down_skips_naming_the_failure_and_warns(
    unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with dg.instance_for_test() as instance:
        result = tick(instance, unreachable_dsn)
    assert isinstance(result, dg.SkipReason)
    message = result.skip_message or ""
    assert message.startswith("drift and performance not evaluated: monitoring results could not be read, the database")
    assert "is unreachable" in message and "Connection refused" in message
    assert message.endswith("new data: 0/100 records")  # the other trigger was still evaluated
    warnings = warnings_of(caplog)
    assert warnings[0].startswith(f"{COMPONENT}: monitoring_database_unreachable: drift and performance not")
    # the failure could not be counted in the database that is down: the second WARNING says so
    assert warnings[1].startswith(f"{COMPONENT}: monitoring_database_unreachable: the failure could not be counted")
    assert len(warnings) == 2


def test_new_data_still_triggers_while_monitoring_is_down(
    unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("raw_tiny", metadata={"rows": 150}))
        result = tick(instance, unreachable_dsn)
    assert isinstance(result, dg.SensorResult)
    assert result.run_requests is not None
    (request,) = result.run_requests
    assert request.tags["riverbed/reason"] == "new_data" and request.run_key == "tiny:new_data:150"
    assert [r.levelno for r in caplog.records if r.name == "sensors.retraining"] == [logging.WARNING]


def test_a_malformed_row_count_is_reported_and_drift_still_triggers(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        for day in ("2026-11-10", "2026-11-11"):
            conn.execute(
                "insert into monitoring_results (dataset, day, kind, name, value, alert) "
                "values ('tiny', %s, 'univariate_drift', 'age', 0.4, true)",
                (day,),
            )
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("raw_tiny", metadata={"rows": "many"}))
        fired = tick(instance, migrated_dsn)
        with psycopg.connect(migrated_dsn, autocommit=True) as conn:
            conn.execute("delete from monitoring_results")
        quiet = tick(instance, migrated_dsn)
    assert isinstance(fired, dg.SensorResult) and fired.run_requests is not None
    assert [r.tags["riverbed/reason"] for r in fired.run_requests] == ["drift"]
    assert isinstance(quiet, dg.SkipReason)
    assert quiet.skip_message == (
        "no monitoring results for tiny yet (the monitoring job has not analysed a chunk); new data not evaluated: "
        "raw materialisations could not be counted (ValueError: invalid literal for int() with base 10: 'many'); "
        "drift: 0 analysed chunk(s), 2 needed"
    )
    assert read_failures(migrated_dsn) == {(COMPONENT, "new_data_count"): 2}
    assert len(warnings_of(caplog)) == 2


def test_select_revoked_is_counted_on_every_tick(
    migrated_dsn: str, pipeline_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as admin:
        admin.execute("revoke select on monitoring_results from riverbed_pipeline")
    with dg.instance_for_test() as instance:
        first = tick(instance, pipeline_dsn)
        assert read_failures(migrated_dsn) == {(COMPONENT, "monitoring_permission_denied"): 1}
        second = tick(instance, pipeline_dsn)
        assert read_failures(migrated_dsn) == {(COMPONENT, "monitoring_permission_denied"): 2}
    for result in (first, second):
        assert isinstance(result, dg.SkipReason)
        assert "could not be read, permission denied (permission denied for table monitoring_results)" in (
            result.skip_message or ""
        )
    assert len(warnings_of(caplog)) == 2  # one per tick; both counts were stored
    with psycopg.connect(migrated_dsn) as conn:
        stored = conn.execute("select last_message from pipeline_failures").fetchall()
    assert len(stored) == 1 and "permission denied for table monitoring_results" in stored[0][0]


def test_a_dropped_table_is_a_failure_not_monitoring_not_set_up(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as admin:
        admin.execute("drop table monitoring_results")
    with dg.instance_for_test() as instance:
        result = tick(instance, migrated_dsn)
    assert isinstance(result, dg.SkipReason)
    assert "a table is missing although the migrations were applied" in (result.skip_message or "")
    assert read_failures(migrated_dsn) == {(COMPONENT, "monitoring_table_missing"): 1}
    assert len(warnings_of(caplog)) == 1


def test_no_results_yet_is_info_and_says_so(migrated_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with dg.instance_for_test() as instance:
        result = tick(instance, migrated_dsn)
    assert isinstance(result, dg.SkipReason)
    assert (result.skip_message or "").startswith("no monitoring results for tiny yet")
    assert warnings_of(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.name == "sensors.retraining"] == [
        f"{COMPONENT}: no monitoring results for tiny yet (the monitoring job has not analysed a chunk)"
    ]
    assert read_failures(migrated_dsn) == {}


def test_no_inference_log_configured_is_info_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("RIVERBED_INFERENCE_LOG_DSN", raising=False)
    no_stack = InferenceLogResource(home=str(tmp_path))  # no DSN configured and no local stack running
    with dg.instance_for_test() as instance:
        result = SENSOR(dg.build_sensor_context(instance=instance, resources={"inference_log": no_stack}))
    assert isinstance(result, dg.SkipReason)
    assert (result.skip_message or "").startswith(
        "drift and performance not evaluated: monitoring is not set up "
        "(no inference log: set RIVERBED_INFERENCE_LOG_DSN or start the local stack with `riverbed serve`)"
    )
    assert warnings_of(caplog) == []
