"""One name per concept: the names are distinct and non-empty, and what one side writes is what the other reads.

The Dagster run tag ``riverbed/reason`` (sensors, schedules, CLI -> model asset) and the MLflow run tag
``riverbed.reason`` (model asset -> ``riverbed models``) are two different tags on purpose; these tests go
through the functions that write and read them, so a renamed or mistyped tag on either side fails here.
"""

import itertools
from pathlib import Path

import dagster as dg
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.model_registry import gate_passed, gate_verdict, reason_from_mlflow_tags
from platform_assets.promotion_gate import decide_promotion, gate_version_tags
from platform_assets.stages import asset_key
from platform_assets.training import mlflow_run_tags, reason_from_run_tags
from riverbed import names
from riverbed.names import (
    CHAMPION_ALIAS,
    GATE_CHECK_NAME,
    PREVIOUS_ALIAS,
    CommitMetadata,
    GateVerdict,
    MlflowTag,
    RunTag,
    Stage,
    TopicKind,
    topic_name,
)
from riverbed.records import TrainingReason
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.specs import PromotionGateSpec
from sensors.kafka_ingestion import ingest_run_tags
from sensors.retraining import retraining_run_tags

DATASET = "salary_band"
NAME_FUNCTIONS = (
    names.ingest_job,
    names.train_job,
    names.full_job,
    names.monitor_job,
    names.monitor_sensor,
    names.retrain_sensor,
    names.retrain_schedule,
    names.kafka_ingest_sensor,
    names.kafka_labels_sensor,
    names.deploy_job,
    names.approvals_sensor,
)


def test_names_are_distinct_and_non_empty() -> None:
    for family in (RunTag, MlflowTag, CommitMetadata, GateVerdict, Stage, TopicKind):
        values = [member.value for member in family]
        assert all(values) and len(set(values)) == len(values), family
    assert all(tag.value.startswith("riverbed/") for tag in RunTag)
    assert all(tag.value.startswith("riverbed.") for tag in (*MlflowTag, *CommitMetadata))
    # No name means two things: tags of different families never collide.
    tags = [tag.value for tag in (*RunTag, *MlflowTag, *CommitMetadata)]
    assert len(set(tags)) == len(tags)
    assert RunTag.REASON.value != MlflowTag.REASON.value  # two tags, on purpose
    assert len({CHAMPION_ALIAS, PREVIOUS_ALIAS, GATE_CHECK_NAME}) == 3 and all((CHAMPION_ALIAS, PREVIOUS_ALIAS))

    per_dataset = [function(DATASET) for function in NAME_FUNCTIONS]
    per_dataset += [names.asset_name(stage, DATASET) for stage in Stage]
    per_dataset += [topic_name(DATASET, kind) for kind in TopicKind]
    assert all(per_dataset) and len(set(per_dataset)) == len(per_dataset)


def test_the_code_location_uses_these_names(tmp_path: Path) -> None:
    defs = build_definitions(RiverbedSettings(home=tmp_path / "home", specs_dirs=[PROJECT_ROOT / "datasets"]))
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    assert {asset_key(stage, DATASET) for stage in Stage} <= keys
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {names.ingest_job(DATASET), names.train_job(DATASET), names.full_job(DATASET)} <= jobs
    assert names.monitor_job(DATASET) in jobs
    for sensor in (names.retrain_sensor, names.kafka_ingest_sensor, names.kafka_labels_sensor):
        assert defs.resolve_sensor_def(sensor(DATASET)) is not None
    assert defs.resolve_sensor_def(names.retrain_sensor(DATASET)).job_name == names.train_job(DATASET)
    assert defs.resolve_sensor_def(names.kafka_ingest_sensor(DATASET)).job_name == names.ingest_job(DATASET)
    gate = dg.AssetCheckKey(asset_key(Stage.MODEL, DATASET), GATE_CHECK_NAME)
    assert gate in graph.asset_check_keys


def test_the_run_tag_the_sensors_and_schedule_set_is_the_one_the_model_asset_reads(tmp_path: Path) -> None:
    for reason in (TrainingReason.DRIFT, TrainingReason.PERFORMANCE, TrainingReason.NEW_DATA):
        assert reason_from_run_tags(retraining_run_tags(DATASET, reason, {"chunks": ["2026-11-10"]})) is reason
    assert reason_from_run_tags(ingest_run_tags(DATASET, 40, 0, "abc123")) is TrainingReason.NEW_DATA

    defs = build_definitions(RiverbedSettings(home=tmp_path / "home", specs_dirs=[PROJECT_ROOT / "datasets"]))
    schedule = defs.resolve_schedule_def(names.retrain_schedule(DATASET))
    assert schedule.job_name == names.train_job(DATASET)
    assert reason_from_run_tags(schedule.tags) is TrainingReason.SCHEDULE

    assert reason_from_run_tags({}) is TrainingReason.MANUAL  # a run started by hand
    # The MLflow spelling is not the Dagster one: a run tagged the MLflow way reads as untagged.
    assert reason_from_run_tags({MlflowTag.REASON.value: "drift"}) is TrainingReason.MANUAL


@pytest.mark.parametrize("reason", list(TrainingReason))
def test_the_mlflow_reason_the_model_asset_writes_is_the_one_the_registry_reads(reason: TrainingReason) -> None:
    tags = mlflow_run_tags(reason, training_set_commit="c0ffee")
    assert reason_from_mlflow_tags(tags) == reason.value
    # The Dagster spelling is not the MLflow one.
    assert reason_from_mlflow_tags({RunTag.REASON.value: reason.value}) is None


def test_the_gate_verdict_the_gate_writes_is_the_one_deployment_and_the_registry_read() -> None:
    gate = PromotionGateSpec(metric="roc_auc", min_improvement=0.01, max_fairness_disparity=0.2)
    fair = {"sex": {"demographic_parity_difference": 0.1}}
    passed = decide_promotion(gate, {"roc_auc": 0.9}, fair, None)
    failed = decide_promotion(gate, {"roc_auc": 0.8}, fair, {"roc_auc": 0.85}, champion_version=1)
    for decision, verdict in ((passed, GateVerdict.PASSED), (failed, GateVerdict.FAILED)):
        tags = gate_version_tags(decision)
        assert gate_verdict(tags) == verdict and gate_passed(tags) is decision.passed
    assert gate_verdict({}) == "pending" and not gate_passed({})


def test_every_name_function_spells_each_dataset_once() -> None:
    datasets = ["salary_band", "machine_failure", "x"]
    produced = [function(d) for function, d in itertools.product(NAME_FUNCTIONS, datasets)]
    assert len(set(produced)) == len(produced)
