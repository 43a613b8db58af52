"""Retraining triggers: the pure decision for each ordering of events, then the sensor on a real instance + DB."""

import datetime as dt
import json

import dagster as dg
import psycopg
import pytest

from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.records import TrainingReason
from riverbed.specs import RetrainingSpec, parse_spec
from sensors.retraining import (
    DaySignals,
    RetrainingSignals,
    RetrainingState,
    build_retraining_schedule,
    build_retraining_sensor,
    decide_retraining,
    monitoring_days,
)
from tests.sensors.tiny_spec import tiny_spec

FEATURES = ["age", "hours", "sector"]
NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 10)


def _days(*drifted: tuple[str, ...], start: dt.date = DAY, estimated: float | None = None) -> tuple[DaySignals, ...]:
    return tuple(
        DaySignals(start + dt.timedelta(days=i), features, estimated_performance=estimated)
        for i, features in enumerate(drifted)
    )


def _decide(config: RetrainingSpec, days=(), new_records=0, state=None, now=NOW):
    state = state or RetrainingState()
    return decide_retraining(config, RetrainingSignals(tuple(days), new_records, now), state, FEATURES)


def test_drift_must_persist_for_k_consecutive_days() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=3)
    assert _decide(config, _days(("age",), ("age",))).reason is None  # only two days
    assert _decide(config, _days(("age",), (), ("age",))).reason is None  # a quiet day in between
    fired = _decide(config, _days((), ("age",), ("age", "hours"), ("age",)))
    assert fired.reason is TrainingReason.DRIFT
    assert fired.values["drifted_features"] == ["age"] and fired.evidence == "drift:2026-11-13"
    gap = (
        DaySignals(DAY, ("age",)),
        DaySignals(DAY + dt.timedelta(days=2), ("age",)),
        DaySignals(DAY + dt.timedelta(days=3), ("age",)),
    )
    assert _decide(config, gap).reason is None  # days not consecutive
    shuffled = tuple(reversed(_days(("age",), ("age",), ("age",))))
    assert _decide(config, shuffled).reason is TrainingReason.DRIFT  # order of arrival does not matter


def test_drift_counts_consecutive_chunks_within_and_across_days() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=3)
    same_day = tuple(DaySignals(DAY, ("age",), chunk=i) for i in range(3))
    fired = _decide(config, same_day)
    assert fired.reason is TrainingReason.DRIFT and fired.evidence == "drift:2026-11-10#2"
    skipped = (
        DaySignals(DAY, ("age",), chunk=0),
        DaySignals(DAY, ("age",), chunk=2),
        DaySignals(DAY, ("age",), chunk=3),
    )
    assert _decide(config, skipped).reason is None  # chunk 1 missing
    across = (
        DaySignals(DAY, ("age",), chunk=4),
        DaySignals(DAY + dt.timedelta(days=1), ("age",), chunk=0),
        DaySignals(DAY + dt.timedelta(days=1), ("age",), chunk=1),
    )
    assert _decide(config, across).reason is TrainingReason.DRIFT
    quiet_last = (*same_day, DaySignals(DAY, (), chunk=3))
    assert _decide(config, quiet_last).reason is None  # the latest chunk is quiet


def test_only_configured_features_count() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=2, drift_features=["hours"])
    assert _decide(config, _days(("age",), ("age",))).reason is None
    assert _decide(config, _days(("hours",), ("hours", "age"))).reason is TrainingReason.DRIFT


def test_performance_below_threshold_fires_realised_first() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=None, min_performance=0.8)
    assert _decide(config, _days((), estimated=0.85)).reason is None
    low = _decide(config, _days((), estimated=0.7))
    assert low.reason is TrainingReason.PERFORMANCE and low.evidence.endswith(":estimated")
    realised = (DaySignals(DAY, (), estimated_performance=0.9, realised_performance=0.6),)
    assert _decide(config, realised).evidence.endswith(":realised")


def test_new_data_threshold() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=None, new_records=1000)
    assert _decide(config, new_records=999).reason is None
    assert _decide(config, new_records=1000).reason is TrainingReason.NEW_DATA


def test_cooldown_and_same_evidence_prevent_storms() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=2, cooldown_minutes=30)
    days = _days(("age",), ("age",))
    first = _decide(config, days)
    assert first.reason is TrainingReason.DRIFT
    state = RetrainingState((NOW - dt.timedelta(minutes=10)).isoformat(), first.evidence)
    cooling = _decide(config, days, state=state)
    assert cooling.reason is None and "cooling down" in cooling.explanation
    later = RetrainingState((NOW - dt.timedelta(hours=2)).isoformat(), first.evidence)
    assert _decide(config, days, state=later).reason is None  # same evidence never fires twice
    more = _days(("age",), ("age",), ("age",))
    assert _decide(config, more, state=later).evidence == "drift:2026-11-12"  # new evidence fires


def test_drift_wins_over_performance_and_new_data() -> None:
    config = RetrainingSpec(drift_consecutive_chunks=1, min_performance=0.9, new_records=1)
    assert _decide(config, _days(("age",), estimated=0.5), new_records=10).reason is TrainingReason.DRIFT


def test_bad_thresholds_are_refused_at_load() -> None:
    from riverbed.specs import SpecError

    base = {
        "name": "tiny",
        "description": "t",
        "source": {"kind": "generator", "function": "x.y:z"},
        "record_id": {"assign_prefix": "t-"},
        "event_time": {"assign_start": "2026-01-01", "assign_days": 1},
        "target": {"name": "y", "classes": ["n", "p"], "positive_class": "p"},
        "features": [{"name": "age", "type": "numeric"}],
    }
    for retraining, field in (
        ({"drift_features": ["nope"]}, "retraining.drift_features"),
        ({"min_performance": 1.5}, "retraining.min_performance"),
        ({"drift_consecutive_chunks": 0}, "retraining.drift_consecutive_chunks"),
        ({"schedule_cron": "every day"}, "retraining.schedule_cron"),
    ):
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_spec({**base, "retraining": retraining})


SPEC = tiny_spec(drift_consecutive_chunks=2, min_performance=0.7, cooldown_minutes=60)


TRAIN_JOB = dg.define_asset_job(names.train_job("tiny"))


def _sensor() -> dg.SensorDefinition:
    return build_retraining_sensor(
        SPEC, TRAIN_JOB, model_key=dg.AssetKey("model_tiny"), raw_key=dg.AssetKey("raw_tiny")
    )


@pytest.fixture
def results_dsn(postgres_dsn: str) -> str:
    from riverbed.inference_log_schema import apply_migrations

    apply_migrations(postgres_dsn)
    return postgres_dsn


def _insert(dsn: str, rows: list[tuple]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'monitoring_results'"
            ).fetchall()
        ]
        for day, kind, name, value, alert in rows:
            values = {"dataset": "tiny", "day": day, "kind": kind, "name": name, "value": value, "alert": alert}
            if "model_version" in columns:
                values["model_version"] = "1"
            keys = ", ".join(values)
            marks = ", ".join(["%s"] * len(values))
            conn.execute(f"INSERT INTO monitoring_results ({keys}) VALUES ({marks})", list(values.values()))


def test_sensor_requests_a_tagged_run_then_cools_down(results_dsn: str) -> None:
    _insert(
        results_dsn,
        [
            (DAY, "univariate_drift", "age", 0.4, True),
            (DAY + dt.timedelta(days=1), "univariate_drift", "age", 0.5, True),
            (DAY + dt.timedelta(days=1), "univariate_drift", "hours", 0.01, False),
            (DAY + dt.timedelta(days=1), "cbpe", "roc_auc", 0.9, False),
        ],
    )
    days = monitoring_days(results_dsn, "tiny", "roc_auc")
    assert [d.drifted_features for d in days] == [("age",), ("age",)] and days[-1].estimated_performance == 0.9
    sensor = _sensor()
    assert sensor.name == "retrain_tiny" and sensor.job_name == "train_tiny"
    resources = {"inference_log": InferenceLogResource(dsn=results_dsn)}
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        (request,) = result.run_requests
        assert request.run_key == "tiny:drift:2026-11-11"
        assert request.tags["riverbed/reason"] == "drift" and request.tags["riverbed/dataset"] == "tiny"
        assert json.loads(request.tags["riverbed/trigger"])["drifted_features"] == ["age"]
        again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert isinstance(again, dg.SkipReason) and "cooling down" in again.skip_message


def test_sensor_without_a_database_skips_with_a_reason(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIVERBED_INFERENCE_LOG_DSN", raising=False)
    no_stack = InferenceLogResource(home=str(tmp_path))  # no DSN configured and no local stack running
    with dg.instance_for_test() as instance:
        result = _sensor()(dg.build_sensor_context(instance=instance, resources={"inference_log": no_stack}))
    assert isinstance(result, dg.SkipReason)


def test_schedule_requests_the_train_job_with_reason_schedule() -> None:
    schedule = build_retraining_schedule(SPEC, TRAIN_JOB)
    assert schedule is not None and schedule.name == "retrain_tiny_schedule" and schedule.job_name == "train_tiny"
    assert dict(schedule.tags) == {"riverbed/reason": "schedule", "riverbed/dataset": "tiny"}
    unscheduled = SPEC.model_copy(update={"retraining": SPEC.retraining.model_copy(update={"schedule_cron": None})})
    assert build_retraining_schedule(unscheduled, TRAIN_JOB) is None
