"""Manual promotion on the real asset graph (real MLflow on SQLite, local store, PostgreSQL for the catalog).

A copy of the loan test dataset first promotes automatically (v1 becomes the champion), then is switched to
``promotion.approval: manual``: a candidate that passes the gate waits as ``pending_approval`` with the champion
serving; an approval reaches the platform through the approvals sensor, whose run request deploys exactly the
approved version; a rejected candidate is never deployed; a candidate that failed the gate cannot be approved.
The catalog rows are checked value by value against what training, the gate and MLflow recorded.
"""

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from platform_assets.catalog_records import catalogue_registry
from platform_assets.definitions import build_definitions
from platform_assets.deployment import approved_target, refuse_rollback_by_approval, rollback_deployment
from platform_assets.runner import local_instance, train_run_config
from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.cli.mlserver_process import free_port
from riverbed.model_catalog import (
    NotPendingApprovalError,
    get_model_version,
    list_model_versions,
    record_approval,
    record_deployment,
)
from riverbed.model_repository import ModelRepository
from riverbed.names import CHAMPION_ALIAS, PREVIOUS_ALIAS, RunTag
from riverbed.records import ModelRecord
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from tests.platform_assets.loan_dataset import LOAN_DATASET, LOAN_PARTITIONS, write_loan_dataset
from tests.riverbed.catalog_rows import catalogue_approved
from tests.serving.conftest import migrated_dsn, postgres_dsn  # noqa: F401 - the machine's PostgreSQL

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

DATASET = LOAN_DATASET
NAME = f"riverbed-{DATASET}"
FAST_TRAINING = {"optuna_trials": 1, "max_estimators": 20}
LENIENT_GATE = {"min_improvement": -1.0, "max_fairness_disparity": 1.0}
STRICT_GATE = {"min_improvement": 0.9, "max_fairness_disparity": 1.0}
AUTO = "promotion: {metric: roc_auc, min_improvement: 0.0, max_fairness_disparity: 1.0}\n"
MANUAL = "promotion: {metric: roc_auc, min_improvement: 0.0, max_fairness_disparity: 1.0, approval: manual}\n"


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    write_loan_dataset(folder, AUTO)
    return folder


@pytest.fixture
def settings(tmp_path: Path, specs: Path, migrated_dsn: str) -> RiverbedSettings:  # noqa: F811
    # MLServer is down (a port nobody listens on): deployments install for the next start and move the pointer.
    return RiverbedSettings(
        home=tmp_path / "home",
        specs_dirs=[specs],
        mlserver_url=f"http://127.0.0.1:{free_port()}",
        inference_log_dsn=migrated_dsn,
    )


def _aliases(settings: RiverbedSettings) -> dict[str, str]:
    import mlflow

    uri = settings.resolved_mlflow_tracking_uri
    aliases = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(NAME).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def _model_card(settings: RiverbedSettings, run_id: str, tmp_path: Path) -> str:
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="model_card.md",
        dst_path=str(tmp_path / run_id),
        tracking_uri=settings.resolved_mlflow_tracking_uri,
    )
    return Path(path).read_text()


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string()  # type: ignore[union-attr]
        for e in result.get_asset_materialization_events()
    }


def _train(
    settings: RiverbedSettings, instance: dg.DagsterInstance, *, seed: int, gate: dict[str, Any], reason: str
) -> dg.ExecuteInProcessResult:
    run_config = train_run_config(DATASET, {**FAST_TRAINING, "seed": seed}, gate)
    ops = run_config.setdefault("ops", {})
    assert isinstance(ops, dict)
    ops[f"deployment_{DATASET}"] = {"config": {"require_mlserver": False}}
    return (
        build_definitions(settings)
        .resolve_job_def(names.train_job(DATASET))
        .execute_in_process(
            instance=instance,
            run_config=run_config,
            tags={RunTag.REASON.value: reason, RunTag.DATASET.value: DATASET},
            raise_on_error=False,
        )
    )


def _ingest(settings: RiverbedSettings, instance: dg.DagsterInstance) -> None:
    result = (
        build_definitions(settings)
        .resolve_job_def(names.ingest_job(DATASET))
        .execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": LOAN_PARTITIONS[0],
                "dagster/asset_partition_range_end": LOAN_PARTITIONS[-1],
            },
            raise_on_error=False,
        )
    )
    assert result.success


def _sensor_tick(
    settings: RiverbedSettings, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    sensor = build_definitions(settings).get_sensor_def(names.approvals_sensor(DATASET))
    resources = {"inference_log": InferenceLogResource(dsn=settings.inference_log_dsn.get_secret_value())}  # type: ignore[union-attr]
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def _deploy(
    settings: RiverbedSettings, instance: dg.DagsterInstance, tags: dict[str, str]
) -> dg.ExecuteInProcessResult:
    return (
        build_definitions(settings)
        .resolve_job_def(names.deploy_job(DATASET))
        .execute_in_process(
            instance=instance,
            run_config={"ops": {f"deployment_{DATASET}": {"config": {"require_mlserver": False}}}},
            tags=tags,
            raise_on_error=False,
        )
    )


def test_a_manual_candidate_waits_for_approval_and_only_the_approved_version_is_deployed(
    settings: RiverbedSettings, specs: Path, tmp_path: Path
) -> None:
    dsn = settings.inference_log_dsn.get_secret_value()  # type: ignore[union-attr]
    instance = local_instance(settings)
    repository = ModelRepository(settings.model_repository_dir)
    _ingest(settings, instance)

    # 1. Automatic promotion: v1 is trained (reason from the run tag), gated in and deployed; every link catalogued.
    first = _train(settings, instance, seed=1, gate=LENIENT_GATE, reason="initial")
    assert first.success
    model_v1 = first.asset_value(f"model_{DATASET}")
    gate_v1 = next(
        e.asset_check_evaluation_data for e in first.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    v1 = get_model_version(dsn, DATASET, 1)
    assert v1 is not None
    assert (v1.registered_model, v1.version, v1.trained_reason) == (NAME, 1, "initial")
    assert (v1.mlflow_run_id, v1.dagster_run_id) == (model_v1.mlflow_run_id, first.run_id)
    assert v1.data_commit_ids == model_v1.data_commit_ids and len(v1.data_commit_ids) == 3
    assert v1.metrics == model_v1.metrics and set(v1.metrics) >= {"roc_auc", "accuracy", "f1", "log_loss"}
    assert v1.fairness == model_v1.fairness and set(v1.fairness) == {"region"}
    assert v1.gate_passed is True and v1.gate_reasons == (gate_v1.description or "").split("; ")
    assert v1.gate_reasons[0] == "no champion yet"
    assert v1.model_card_markdown == _model_card(settings, model_v1.mlflow_run_id, tmp_path)
    assert f"{NAME}" in v1.model_card_markdown
    assert (v1.status, v1.aliases, v1.manual_approval, v1.review) == ("deployed", [CHAMPION_ALIAS], False, None)
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}

    # 2. The spec now asks for manual approval: v2 passes the gate but waits; v1 stays champion and served.
    (specs / f"{DATASET}.yaml").write_text((specs / f"{DATASET}.yaml").read_text().replace(AUTO, MANUAL))
    second = _train(settings, instance, seed=2, gate=LENIENT_GATE, reason="drift")
    assert second.success, [e.message for e in second.all_events if e.is_failure]
    assert _materialized(second) == {f"training_set_{DATASET}", f"model_{DATASET}"}  # no deployment
    v2 = get_model_version(dsn, DATASET, 2)
    assert v2 is not None
    assert (v2.status, v2.gate_passed, v2.manual_approval, v2.trained_reason) == (
        "pending_approval",
        True,
        True,
        "drift",
    )
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}
    pointer = repository.read_deployment(DATASET)
    assert pointer is not None and pointer.version == 1
    assert repository.installed_models() == [f"{DATASET}-v1"]
    # The deploy job without an approval (the sensor never asks for it, a person might): nothing is deployed.
    held = _deploy(settings, instance, {})
    assert held.success and _materialized(held) == set()
    assert repository.read_deployment(DATASET).version == 1  # type: ignore[union-attr]

    # Nothing decided yet: the sensor skips.
    idle = _sensor_tick(settings, instance, None)
    assert isinstance(idle, dg.SkipReason) and idle.skip_message == "no new review decisions"

    # 3. A reviewer approves v2: the sensor requests a deploy run for exactly v2; the run deploys it.
    review = record_approval(
        dsn, dataset=DATASET, version=2, decision="approve", action_id="req-approve-2", key_id="rev1", reason="ok"
    )
    assert get_model_version(dsn, DATASET, 2).status == "approved"  # type: ignore[union-attr]
    tick = _sensor_tick(settings, instance, None)
    assert isinstance(tick, dg.SensorResult)
    assert tick.cursor == str(review.review_id)
    [request] = tick.run_requests or []
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"approval:{DATASET}:{review.review_id}"
    assert request.tags == {
        RunTag.DATASET.value: DATASET,
        RunTag.APPROVED_VERSION.value: "2",
        RunTag.REVIEW_ID.value: str(review.review_id),
    }
    deployed = _deploy(settings, instance, request.tags)
    assert deployed.success, [e.message for e in deployed.all_events if e.is_failure]
    assert deployed.asset_value(f"deployment_{DATASET}").version == 2
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    assert repository.read_deployment(DATASET).version == 2  # type: ignore[union-attr]
    assert repository.installed_models() == [f"{DATASET}-v2"]
    rows = {r.version: r for r in list_model_versions(dsn, DATASET)}
    assert (rows[2].status, rows[2].aliases, rows[2].review) == ("deployed", [CHAMPION_ALIAS], review)
    assert (rows[1].status, rows[1].aliases) == ("retired", [PREVIOUS_ALIAS])
    again = _sensor_tick(settings, instance, tick.cursor)
    assert isinstance(again, dg.SkipReason)  # nothing new: no second deployment

    # 4. v3 passes the gate and is rejected: the sensor only moves its cursor, and v3 is never deployed.
    assert _train(settings, instance, seed=3, gate=LENIENT_GATE, reason="performance").success
    rejection = record_approval(
        dsn, dataset=DATASET, version=3, decision="reject", action_id="req-reject-3", key_id="rev1", reason="bias"
    )
    tick = _sensor_tick(settings, instance, str(review.review_id))
    assert isinstance(tick, dg.SensorResult)
    assert (tick.run_requests, tick.cursor) == ([], str(rejection.review_id))
    refused = _deploy(settings, instance, {RunTag.APPROVED_VERSION.value: "3"})
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert "version 3 has no reviewer approval" in str(failure.step_failure_data.user_failure_data.description)  # type: ignore[union-attr]
    assert _deploy(settings, instance, {}).success  # the upstream candidate is v3: held, not deployed
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    assert get_model_version(dsn, DATASET, 3).status == "rejected_by_reviewer"  # type: ignore[union-attr]

    # 5. v4 fails the gate: it is 'rejected' and cannot be approved.
    failed = _train(settings, instance, seed=4, gate=STRICT_GATE, reason="schedule")
    assert not failed.success
    v4 = get_model_version(dsn, DATASET, 4)
    assert v4 is not None and (v4.status, v4.gate_passed) == ("rejected", False)
    assert "does not beat the champion" in v4.gate_reasons[0]
    with pytest.raises(NotPendingApprovalError, match="version 4 is rejected, not pending_approval"):
        record_approval(dsn, dataset=DATASET, version=4, decision="approve", action_id="a4", key_id="rev1", reason="x")
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}

    # 6. A rollback (as `riverbed rollback` runs it) moves the catalog's aliases and statuses too.
    rollback_deployment(DATASET, None, settings=settings, require_mlserver=False)
    rows = {r.version: r for r in list_model_versions(dsn, DATASET)}
    assert [(v, rows[v].status, rows[v].aliases) for v in sorted(rows)] == [
        (1, "deployed", [CHAMPION_ALIAS]),
        (2, "retired", [PREVIOUS_ALIAS]),
        (3, "rejected_by_reviewer", []),
        (4, "rejected", []),
    ]


def test_a_manual_dataset_without_a_catalog_fails_rather_than_hold_a_candidate_nobody_can_approve(
    tmp_path: Path, specs: Path
) -> None:
    (specs / f"{DATASET}.yaml").write_text((specs / f"{DATASET}.yaml").read_text().replace(AUTO, MANUAL))
    settings = RiverbedSettings(
        home=tmp_path / "home", specs_dirs=[specs], mlserver_url=f"http://127.0.0.1:{free_port()}"
    )
    instance = local_instance(settings)
    _ingest(settings, instance)
    result = _train(settings, instance, seed=1, gate=LENIENT_GATE, reason="manual")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no inference-log database is configured for the model catalog" in str(
        failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    )
    assert _materialized(result) == {f"training_set_{DATASET}"}
    assert ModelRepository(settings.model_repository_dir).read_deployment(DATASET) is None


def test_an_unreachable_catalog_is_counted_and_does_not_stop_an_automatic_dataset(
    settings: RiverbedSettings, tmp_path: Path
) -> None:
    dsn = settings.inference_log_dsn.get_secret_value()  # type: ignore[union-attr]
    instance = local_instance(settings)
    _ingest(settings, instance)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the catalog table refuses writes (a broken migration)
        conn.execute("alter table model_versions rename to model_versions_moved")
    result = _train(settings, instance, seed=1, gate=LENIENT_GATE, reason="manual")
    assert result.success  # auto: the model is still deployed (MLflow tags and the pointer are the record)
    assert ModelRepository(settings.model_repository_dir).read_deployment(DATASET).version == 1  # type: ignore[union-attr]
    with psycopg.connect(dsn) as conn:
        counted = dict(
            conn.execute(
                "select reason, failures from pipeline_failures where component = %s", (f"model_catalog_{DATASET}",)
            ).fetchall()
        )
    assert counted == {"training_not_recorded": 1, "gate_not_recorded": 1, "deployment_not_recorded": 1}


def test_versions_trained_without_a_catalog_are_backfilled_from_the_registry(
    tmp_path: Path,
    specs: Path,
    migrated_dsn: str,  # noqa: F811
) -> None:
    # As `riverbed demo` does: it trains before its serving stack (and so the database) starts.
    settings = RiverbedSettings(
        home=tmp_path / "home", specs_dirs=[specs], mlserver_url=f"http://127.0.0.1:{free_port()}"
    )
    instance = local_instance(settings)
    _ingest(settings, instance)
    first = _train(settings, instance, seed=1, gate=LENIENT_GATE, reason="initial")
    assert first.success
    assert not _train(settings, instance, seed=2, gate=STRICT_GATE, reason="drift").success
    model_v1 = first.asset_value(f"model_{DATASET}")

    added = catalogue_registry(settings, migrated_dsn, [DATASET, "unknown"])
    assert [(r.version, r.status, r.aliases) for r in added] == [(1, "deployed", [CHAMPION_ALIAS]), (2, "rejected", [])]
    v1 = get_model_version(migrated_dsn, DATASET, 1)
    assert v1 is not None
    assert (v1.trained_reason, v1.mlflow_run_id, v1.dagster_run_id) == ("initial", model_v1.mlflow_run_id, first.run_id)
    assert v1.data_commit_ids == model_v1.data_commit_ids
    assert v1.metrics == model_v1.metrics and v1.fairness == model_v1.fairness
    assert v1.model_card_markdown == _model_card(settings, model_v1.mlflow_run_id, tmp_path)
    assert v1.gate_passed is True and v1.gate_reasons[0] == "no champion yet"
    v2 = get_model_version(migrated_dsn, DATASET, 2)
    assert v2 is not None and v2.trained_reason == "drift" and "does not beat the champion" in v2.gate_reasons[0]
    assert catalogue_registry(settings, migrated_dsn, [DATASET]) == []  # nothing left to add


def test_an_approval_never_moves_the_champion_to_an_older_version(
    specs: Path,
    migrated_dsn: str,  # noqa: F811
) -> None:
    # Defence in depth behind the gateway's 409: an approval of v1 taken while v2 was not yet deployed, then v2
    # approved and deployed. A deploy run for v1 (a late sensor tick, a person) must not roll v2 back.
    (specs / f"{DATASET}.yaml").write_text((specs / f"{DATASET}.yaml").read_text().replace(AUTO, MANUAL))
    spec = load_specs([specs])[DATASET]
    for version in (1, 2):
        catalogue_approved(migrated_dsn, DATASET, version)
    record_deployment(migrated_dsn, dataset=DATASET, version=2, previous_version=None)
    model = ModelRecord(
        dataset=DATASET,
        registered_model_name=NAME,
        version=1,
        mlflow_run_id="run1",
        model_uri=f"models:/{NAME}/1",
        training_set_commit_id="c1",
        dagster_run_id="dagster1",
        training_set_uri="local://c1/training",
        trained_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
    )
    inference_log = InferenceLogResource(dsn=migrated_dsn)
    with pytest.raises(dg.Failure, match=f"{DATASET} version 1 is superseded by v2, a newer version already deployed"):
        approved_target(spec, model, {RunTag.APPROVED_VERSION.value: "1"}, inference_log, "unused://")
    with pytest.raises(dg.Failure, match=f"{DATASET} version 1 is superseded by v2"):
        approved_target(spec, model, {}, inference_log, "unused://")  # the upstream candidate: the same rule
    # The second check, against the champion MLServer serves (whatever the catalog says).
    served = model.model_copy(update={"version": 2, "mlflow_run_id": "run2"})
    with pytest.raises(dg.Failure, match=f"{DATASET} version 1 is superseded by v2, the champion being served"):
        refuse_rollback_by_approval(spec, model, served, migrated_dsn)
    refuse_rollback_by_approval(spec, served, served, migrated_dsn)  # redeploying the champion itself is no rollback
    refuse_rollback_by_approval(spec, model, None, migrated_dsn)  # nothing served yet
    with psycopg.connect(migrated_dsn) as conn:
        counted = conn.execute(
            "select failures from pipeline_failures where component = %s and reason = 'approval_superseded'",
            (f"deployment_{DATASET}",),
        ).fetchone()
    assert counted == (3,)
