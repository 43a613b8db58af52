"""The asset graph (ingest, train, deploy) on the lakeFS backend: the ``compose`` resource wiring, with lakeFS
played by the API double (every request and response validated against lakeFS's published API).

Values are read back from the double's own state, not through the store under test: which commits exist on
``main``, their parents and metadata, the object keys at the head, and the bytes of each committed object.
"""

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from platform_assets.runner import demo_partitions, local_instance, run_pipeline
from riverbed.records import TrainingReason
from riverbed.specs import load_specs
from tests.lakefs_double import LakeFSDouble, run_lakefs_double
from tests.lakefs_double.platform import compose_settings_on_lakefs, main_history, object_bytes, repository_state

pytestmark = pytest.mark.slow

DATASET = "salary_band"


@pytest.fixture(scope="module")
def double() -> Iterator[LakeFSDouble]:
    with run_lakefs_double() as running:
        yield running


def test_ingest_train_and_deploy_commit_every_write_to_lakefs(
    double: LakeFSDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = compose_settings_on_lakefs(monkeypatch, double, tmp_path)
    spec = load_specs(settings.specs_dirs)[DATASET]
    partitions = demo_partitions(spec, 2)
    run = run_pipeline(
        settings,
        DATASET,
        partitions,
        reason=TrainingReason.INITIAL,
        train_config={"optuna_trials": 1, "max_estimators": 20},
        gate_config={"max_fairness_disparity": 1.0},  # two days of data: fairness is not what this test is about
        instance=local_instance(settings),
    )
    double.assert_no_violations()
    repo = repository_state(double, settings)
    assert repo.storage_namespace == f"local://riverbed-platform/{settings.data_repository}"
    assert set(repo.branches) == {"main"}  # every transaction branch was merged and deleted

    head = repo.commits[repo.branches["main"].commit_id]
    assert sorted(head.tree) == sorted(
        [f"tables/raw_{DATASET}/{day}.parquet" for day in partitions]
        + [f"tables/raw_{DATASET}/_rejected/{day}.parquet" for day in partitions]
        + [f"tables/features_{DATASET}/{day}.parquet" for day in partitions]
        + [f"tables/training_set_{DATASET}/all.parquet", f"records/model_{DATASET}/all.json"]
        + [f"records/deployment_{DATASET}/all.json"]
    )

    # One commit per (asset, partition) write with Dagster lineage, each merged into main by its own merge commit.
    history = main_history(repo)
    writes = [c for c in history if "dagster.asset_key" in c.metadata]
    merges = [c for c in history if len(c.parents) == 2]
    assert len(history) == 1 + len(writes) + len(merges)
    assert sorted((c.metadata["dagster.asset_key"], c.metadata["dagster.partition_key"]) for c in writes) == sorted(
        [(f"raw_{DATASET}", day) for day in partitions]
        + [(f"features_{DATASET}", day) for day in partitions]
        + [(f"training_set_{DATASET}", ""), (f"model_{DATASET}", ""), (f"deployment_{DATASET}", "")]
    )
    assert len(merges) == 5  # raw, features (one transaction each over both days), training set, model, deployment
    for merge in merges:
        source_branch = merge.metadata["riverbed.source_branch"]
        assert source_branch.startswith("dagster-") and merge.message == f"merge {source_branch}"
        assert repo.commits[merge.parents[1]].metadata["dagster.asset_key"] in source_branch
    ingest_assets = {f"raw_{DATASET}", f"features_{DATASET}"}
    for commit in writes:
        expected_run = run.ingest_run_id if commit.metadata["dagster.asset_key"] in ingest_assets else run.train_run_id
        assert commit.metadata["dagster.run_id"] == expected_run
        assert commit.metadata["dagster.code_version"] == "1"

    # The row counts in the commit metadata are the rows of the committed Parquet objects.
    raw_rows = 0
    for commit in writes:
        asset, day = commit.metadata["dagster.asset_key"], commit.metadata["dagster.partition_key"]
        if asset.startswith(("model_", "deployment_")):
            continue
        frame = pd.read_parquet(io.BytesIO(object_bytes(repo, commit.id, f"tables/{asset}/{day or 'all'}.parquet")))
        assert len(frame) == int(commit.metadata["riverbed.rows"]) > 0
        raw_rows += len(frame) if asset == f"raw_{DATASET}" else 0
    assert raw_rows == run.materializations[f"raw_{DATASET}"]["valid_records"]

    # The model is pinned to lakeFS commits of its inputs, and the records on main point back at it.
    model = run.model
    training_set = repo.commits[model.training_set_commit_id]
    assert training_set.metadata["dagster.asset_key"] == f"training_set_{DATASET}"
    assert model.training_set_uri == (
        f"lakefs://{settings.data_repository}/{training_set.id}/tables/training_set_{DATASET}/all.parquet"
    )
    assert set(model.data_commit_ids) == set(partitions)
    for commit_id in model.data_commit_ids.values():
        assert repo.commits[commit_id].metadata["dagster.asset_key"] == f"features_{DATASET}"
    stored_model = json.loads(object_bytes(repo, head.id, f"records/model_{DATASET}/all.json"))["value"]
    assert (stored_model["version"], stored_model["mlflow_run_id"]) == (1, model.mlflow_run_id)
    assert stored_model["training_set_commit_id"] == training_set.id
    assert run.deployment is not None and run.gate_passed
    stored_deployment = json.loads(object_bytes(repo, head.id, f"records/deployment_{DATASET}/all.json"))["value"]
    assert stored_deployment["served_model_name"] == run.deployment.served_model_name == f"{DATASET}-v1"
