"""The approvals sensor: the decision for each ordering of reviewers' decisions, and the sensor against the real
catalog (cursor in and out, run requests, other datasets, a malformed cursor, an unreachable or absent database)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import dagster as dg
import pytest

from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.model_catalog import ModelReview, ReviewDecision, record_approval, record_gate_decision, record_trained
from sensors.approvals import build_approvals_sensor, cursor_position, decide_approvals
from tests.sensors.tiny_spec import tiny_spec

pytestmark = pytest.mark.timeout(60)

SPEC = tiny_spec()
DEPLOY_JOB = dg.define_asset_job(names.deploy_job("tiny"))
SENSOR = build_approvals_sensor(SPEC, DEPLOY_JOB)
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def review(review_id: int, version: int, decision: str) -> ModelReview:
    return ModelReview(
        review_id=review_id,
        dataset="tiny",
        version=version,
        mlflow_run_id=f"run{version}",
        decision=decision,  # type: ignore[arg-type]
        action_id=f"action{review_id}",
        key_id="rev",
        reason="r",
        decided_at=NOW,
    )


# ------------------------------------------------------------------------------------------- pure decision
def test_nothing_new_keeps_the_cursor() -> None:
    decision = decide_approvals([], 7)
    assert (decision.deploy, decision.cursor, decision.explanation) == (None, 7, "no new review decisions")
    old = decide_approvals([review(5, 1, "approve")], 7)  # at or below the cursor: already handled
    assert (old.deploy, old.cursor) == (None, 7)


def test_a_first_approval_is_deployed() -> None:
    decision = decide_approvals([review(1, 3, "approve")], 0)
    assert decision.deploy == review(1, 3, "approve") and decision.cursor == 1
    assert decision.explanation == "deploy v3, approved by key rev (review 1)"


def test_a_rejection_only_moves_the_cursor() -> None:
    decision = decide_approvals([review(4, 2, "reject")], 3)
    assert (decision.deploy, decision.cursor) == (None, 4)
    assert decision.explanation == "rejected (never deployed): v2"


def test_an_approval_and_a_rejection_deploy_only_the_approved_version() -> None:
    for ordering in (
        [review(1, 2, "approve"), review(2, 3, "reject")],
        [review(1, 3, "reject"), review(2, 2, "approve")],
    ):
        decision = decide_approvals(ordering, 0)
        assert decision.deploy is not None and decision.deploy.version == 2 and decision.cursor == 2


def test_of_several_new_approvals_only_the_newest_version_is_deployed() -> None:
    # Decided in any order, the newest approved version wins: deploying an older one would roll the newer back.
    for ordering in (
        [review(1, 4, "approve"), review(2, 3, "approve"), review(3, 2, "approve")],
        [review(1, 2, "approve"), review(2, 4, "approve"), review(3, 3, "approve")],
    ):
        decision = decide_approvals(ordering, 0)
        assert decision.deploy is not None and (decision.deploy.version, decision.cursor) == (4, 3)
        assert sorted(r.version for r in decision.superseded) == [2, 3]
    decision = decide_approvals([review(1, 4, "approve"), review(2, 3, "approve")], 0)
    assert decision.explanation == (
        "deploy v4, approved by key rev (review 1); approvals superseded by the approval of the newest version v4: "
        "v3 (review 2)"
    )


def test_cursor_parsing(caplog: pytest.LogCaptureFixture) -> None:
    assert [cursor_position(c) for c in (None, "", "0", "42")] == [0, 0, 0, 42]
    caplog.set_level(logging.WARNING)
    assert cursor_position("{bad") == 0 and cursor_position("-1") == 0
    assert "ignoring malformed cursor '{bad'" in caplog.text


# ---------------------------------------------------------------------------------------- sensor on the catalog
def pending(dsn: str, dataset: str, version: int) -> None:
    record_trained(
        dsn,
        dataset=dataset,
        registered_model=f"riverbed-{dataset}",
        version=version,
        trained_reason="drift",
        mlflow_run_id=f"run{version}",
        dagster_run_id="d",
        data_commit_ids={},
        metrics={},
        fairness={},
        model_card_markdown="",
        manual_approval=True,
    )
    record_gate_decision(dsn, dataset=dataset, version=version, passed=True, reasons=["ok"], manual_approval=True)


def decide(dsn: str, dataset: str, version: int, decision: ReviewDecision) -> ModelReview:
    return record_approval(
        dsn, dataset=dataset, version=version, decision=decision, action_id=f"a{version}", key_id="rev", reason="r"
    )


def tick(dsn: str, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    # The sensor reads only the catalog: an ephemeral instance is enough (and fast).
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={"inference_log": InferenceLogResource(dsn=dsn)},
    )
    result = SENSOR(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def test_sensor_requests_a_deploy_run_per_approval_and_moves_its_cursor(migrated_dsn: str) -> None:
    assert (SENSOR.name, SENSOR.job_name) == ("approvals_tiny", "deploy_tiny")
    first = tick(migrated_dsn, None)
    assert isinstance(first, dg.SkipReason) and first.skip_message == "no new review decisions"

    for version in (1, 2, 3):
        pending(migrated_dsn, "tiny", version)
    pending(migrated_dsn, "other", 1)
    approved = decide(migrated_dsn, "tiny", 1, "approve")
    decide(migrated_dsn, "other", 1, "approve")  # another dataset's decision: not this sensor's
    result = tick(migrated_dsn, None)
    assert isinstance(result, dg.SensorResult) and result.cursor == str(approved.review_id)
    [request] = result.run_requests or []
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"approval:tiny:{approved.review_id}"
    assert request.tags == {
        "riverbed/dataset": "tiny",
        "riverbed/approved_version": "1",
        "riverbed/review_id": str(approved.review_id),
    }
    idle = tick(migrated_dsn, result.cursor)
    assert isinstance(idle, dg.SkipReason)

    rejected = decide(migrated_dsn, "tiny", 2, "reject")
    after_rejection = tick(migrated_dsn, result.cursor)
    assert isinstance(after_rejection, dg.SensorResult)
    assert (after_rejection.run_requests, after_rejection.cursor) == ([], str(rejected.review_id))

    later = decide(migrated_dsn, "tiny", 3, "approve")
    both = tick(migrated_dsn, result.cursor)  # the rejection and the approval arrive in one tick
    assert isinstance(both, dg.SensorResult) and both.cursor == str(later.review_id)
    assert [r.tags["riverbed/approved_version"] for r in both.run_requests or []] == ["3"]

    # A malformed cursor starts over: the run keys are the same, so Dagster launches nothing twice.
    restarted = tick(migrated_dsn, "not-a-cursor")
    assert isinstance(restarted, dg.SensorResult) and restarted.cursor == str(later.review_id)
    assert [r.run_key for r in restarted.run_requests or []] == [f"approval:tiny:{later.review_id}"]


def test_approvals_arriving_in_one_tick_deploy_the_newest_and_warn_about_the_others(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    for version in (1, 2, 3):
        pending(migrated_dsn, "tiny", version)
    newest = decide(migrated_dsn, "tiny", 3, "approve")
    older = [decide(migrated_dsn, "tiny", version, "approve") for version in (2, 1)]  # decided after v3
    caplog.set_level(logging.WARNING, logger="sensors.approvals")
    result = tick(migrated_dsn, None)
    assert isinstance(result, dg.SensorResult) and result.cursor == str(older[-1].review_id)
    assert [r.tags["riverbed/approved_version"] for r in result.run_requests or []] == ["3"]
    assert [r.run_key for r in result.run_requests or []] == [f"approval:tiny:{newest.review_id}"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"approvals_tiny: the approval of v{review.version} (review {review.review_id}, key rev) is superseded by "
        "the approval of v3: not deployed"
        for review in older
    ]


def test_an_unreachable_catalog_is_reported_and_the_cursor_kept(
    unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    result = tick(unreachable_dsn, "5")
    assert isinstance(result, dg.SkipReason)
    assert "the reviewers' decisions could not be read from the model catalog" in (result.skip_message or "")
    assert "approvals_tiny: reviews_unreadable:" in caplog.text


def test_no_database_configured_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIVERBED_INFERENCE_LOG_DSN", raising=False)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"inference_log": InferenceLogResource(home=str(tmp_path))}
        )
        result = SENSOR(context)
    assert isinstance(result, dg.SkipReason)
    assert "no inference log configured, so no approvals to read" in (result.skip_message or "")
