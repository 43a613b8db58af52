"""The asset graph end to end on embedded parts: real local versioned store, real MLflow (SQLite)."""

import io
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.environments import build_resources
from platform_assets.runner import demo_partitions, local_instance, run_pipeline
from platform_assets.stages import asset_key
from resources.versioned_io_manager import materialized_commit, table_path
from riverbed.names import CommitMetadata, Stage
from riverbed.records import TrainingReason
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from tests.platform_assets.conftest import isolated_settings
from tests.platform_assets.loan_dataset import LOAN_DATASET, LOAN_PARTITIONS, write_loan_dataset

pytestmark = pytest.mark.slow


def _store(settings: RiverbedSettings):
    return build_resources(settings)["data_store"].get_store()


def test_salary_band_runs_from_raw_to_registered_model(local_settings: RiverbedSettings) -> None:
    import mlflow

    spec = load_specs(local_settings.specs_dirs)["salary_band"]
    partitions = demo_partitions(spec, 3)
    instance = local_instance(local_settings)
    run = run_pipeline(
        local_settings,
        "salary_band",
        partitions,
        reason=TrainingReason.INITIAL,
        train_config={"optuna_trials": 2, "max_estimators": 40},
        instance=instance,
    )
    model = run.model
    assert model.version == 1
    assert model.model_uri == f"models:/{model.registered_model_name}/1"
    assert set(model.data_commit_ids) == set(partitions)
    assert model.reason is TrainingReason.INITIAL
    assert 0.5 < model.metrics["roc_auc"] <= 1.0
    assert set(model.fairness) == {"sex", "race"}

    # Every partition write is a commit with Dagster lineage in its metadata, merged into main.
    store = _store(local_settings)
    commits = store.log(store.main_branch, limit=1000)
    partition_commits = [c for c in commits if c.metadata.get("dagster.asset_key") == "raw_salary_band"]
    assert sorted(c.metadata["dagster.partition_key"] for c in partition_commits) == sorted(partitions)
    assert {c.metadata["dagster.run_id"] for c in partition_commits} == {run.ingest_run_id}
    assert all(c.metadata["dagster.code_version"] not in ("", "unversioned") for c in partition_commits)
    # The model record's commit carries the artifact digests MLflow recorded for the version.
    model_commits = [c for c in commits if c.metadata.get("dagster.asset_key") == "model_salary_band"]
    assert len(model_commits) == 1
    assert json.loads(model_commits[0].metadata[CommitMetadata.MODEL_ARTIFACT_SHA256]) == dict(model.artifact_sha256)
    assert set(model.artifact_sha256) == {"model.pkl", "feature_groups.json"}

    # The training set records the commit the features of each partition were read at.
    for key in partitions:
        commit, uri = materialized_commit(instance, asset_key(Stage.FEATURES, "salary_band"), key)
        assert model.data_commit_ids[key] == commit
        assert uri.startswith(f"lakefs://{store.repository}/{commit}/")

    # The MLflow run carries the Dagster run id and dataset inputs pinned to the training set commit.
    client = mlflow.MlflowClient(tracking_uri=local_settings.resolved_mlflow_tracking_uri)
    mlflow_run = client.get_run(model.mlflow_run_id)
    assert mlflow_run.data.tags["dagster.run_id"] == run.train_run_id
    sources = [inp.dataset.source for inp in mlflow_run.inputs.dataset_inputs]
    assert sources and all(model.training_set_commit_id in source for source in sources)
    artifacts = {a.path for a in client.list_artifacts(model.mlflow_run_id)}
    assert {"model_card.md", "model_card.json"} <= artifacts

    # The registered version loads back by its pinned URI and predicts.
    mlflow.set_tracking_uri(local_settings.resolved_mlflow_tracking_uri)
    loaded = mlflow.sklearn.load_model(model.model_uri)
    from riverbed.ml.training import model_inputs

    sample = model_inputs(
        spec,
        pd.read_parquet(
            io.BytesIO(store.get_object(model.training_set_commit_id, "tables/training_set_salary_band/all.parquet"))
        ).head(5),
    )
    assert loaded.predict_proba(sample).shape == (5, 2)
    assert "feature_groups.json" in artifacts

    # Rejected records are kept with reasons, not dropped (Adult has none by default; the table exists).
    rejected = store.get_object(
        materialized_commit(instance, asset_key(Stage.RAW, "salary_band"), partitions[0])[0],
        table_path(asset_key(Stage.RAW, "salary_band"), partitions[0], companion="rejected"),
    )
    assert "rejection_reasons" in pd.read_parquet(io.BytesIO(rejected)).columns

    # Running again works and registers the next version (kept out by the gate here: with a champion deployed, a
    # deployment needs a running MLServer, which test_model_integrity.py covers).
    again = run_pipeline(
        local_settings,
        "salary_band",
        partitions,
        train_config={"optuna_trials": 1, "max_estimators": 20},
        instance=instance,
        gate_config={"min_improvement": 1.0},
    )
    assert again.model.version == 2 and again.deployment is None and again.gate_passed is False


def test_downstream_reads_the_pinned_commit_not_the_branch_head(local_settings: RiverbedSettings) -> None:
    spec = load_specs(local_settings.specs_dirs)["salary_band"]
    key = demo_partitions(spec, 1)[0]
    instance = local_instance(local_settings)
    defs = build_definitions(local_settings)
    assets = [
        defs.resolve_assets_def(asset_key(Stage.RAW, "salary_band")),
        defs.resolve_assets_def("features_salary_band"),
    ]
    resources = build_resources(local_settings)
    dg.materialize(assets[:1], instance=instance, resources=resources, partition_key=key)
    commit, _ = materialized_commit(instance, asset_key(Stage.RAW, "salary_band"), key)
    store = resources["data_store"].get_store()
    pinned_rows = len(
        pd.read_parquet(io.BytesIO(store.get_object(commit, table_path(asset_key(Stage.RAW, "salary_band"), key))))
    )

    # Someone overwrites the partition on main outside Dagster: the head moves, the recorded commit does not.
    with store.transaction("tamper") as tx:
        store.put_object(tx.branch, table_path(asset_key(Stage.RAW, "salary_band"), key), b"not parquet")
        store.commit_into(tx, "overwrite outside dagster")

    result = dg.materialize(
        assets,
        instance=instance,
        resources=resources,
        partition_key=key,
        selection=[asset_key(Stage.FEATURES, "salary_band")],
    )
    features = result.asset_value(asset_key(Stage.FEATURES, "salary_band"))
    assert len(features) == pinned_rows > 0


def test_a_partition_without_data_fails_its_blocking_check(local_settings: RiverbedSettings) -> None:
    instance = local_instance(local_settings)
    defs = build_definitions(local_settings)
    empty_day = "2026-11-15"  # after the 30-day window the Adult records are spread over
    result = defs.resolve_job_def("ingest_salary_band").execute_in_process(
        instance=instance, partition_key=empty_day, raise_on_error=False
    )
    assert not result.success
    evaluations = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    failed = {ev.check_name: ev for ev in evaluations if not ev.passed}
    assert "non_empty" in failed
    assert "no records" in (failed["non_empty"].description or "")


def test_a_third_dataset_needs_only_a_spec_and_its_data(tmp_path: Path) -> None:
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    write_loan_dataset(specs_dir)
    settings = isolated_settings(home=tmp_path / "home", specs_dirs=[specs_dir])
    run = run_pipeline(
        settings,
        LOAN_DATASET,
        LOAN_PARTITIONS,
        instance=local_instance(settings),
    )
    assert run.model.registered_model_name.endswith("loan_default")
    assert run.model.version == 1
    assert set(run.model.fairness) == {"region"}
    assert run.materializations["raw_loan_default"]["valid_records"] == 600


def test_the_full_job_runs_one_partition_through_to_a_model(local_settings: RiverbedSettings) -> None:
    defs = build_definitions(local_settings)
    result = defs.resolve_job_def("full_salary_band").execute_in_process(
        instance=local_instance(local_settings),
        partition_key="2026-10-02",
        run_config={
            "ops": {
                "model_salary_band": {"config": {"optuna_trials": 1, "max_estimators": 20}},
                # One day of data: the fairness bound is not what this test is about.
                "model_salary_band_beats_champion": {"config": {"max_fairness_disparity": 1.0}},
            }
        },
    )
    assert result.success
    materialized = {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    assert materialized == {
        "raw_salary_band",
        "features_salary_band",
        "training_set_salary_band",
        "model_salary_band",
        "deployment_salary_band",
    }
    assert result.asset_value("model_salary_band").data_commit_ids.keys() == {"2026-10-02"}
