"""The model repository folder: atomic installs, deployment pointers, and what MLServer's own scan sees."""

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from mlserver.repository import SchemalessModelRepository

from riverbed.model_repository import (
    ADAPTIVE_BATCHING,
    DEPLOYMENTS_DIR,
    MODEL_SETTINGS_FILE,
    RUNTIME_IMPLEMENTATION,
    STAGING_PREFIX,
    DeployedModel,
    ModelRepository,
    ModelRepositoryError,
    integrity_parameters,
)
from riverbed.names import served_model_name
from serving.runtime import read_model_directory


def _info(version: int, previous: int | None = None) -> DeployedModel:
    return DeployedModel(
        dataset="loans",
        served_model_name=served_model_name("loans", version),
        registered_model_name="riverbed-loans",
        version=version,
        mlflow_run_id=f"run{version}",
        model_uri=f"models:/riverbed-loans/{version}",
        training_set_commit_id="c0ffee",
        data_commit_ids={"2026-09-01": "aaa", "2026-09-02": "bbb"},
        dagster_run_id="dagster-run",
        classes=["no", "yes"],
        features=["amount", "term"],
        deployed_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        previous_version=previous,
    )


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[Path, Path]:
    import cloudpickle

    model = tmp_path / "src" / "model.pkl"
    model.parent.mkdir()
    model.write_bytes(cloudpickle.dumps({"a": "pipeline"}))
    groups = tmp_path / "src" / "feature_groups.json"
    groups.write_text(json.dumps({"amount": [0], "term": [1, 2]}))
    return model, groups


def _mlserver_sees(root: Path) -> list[str]:
    return sorted(settings.name for settings in asyncio.run(SchemalessModelRepository(str(root)).list()))


def test_install_writes_what_mlserver_and_the_runtime_read(tmp_path: Path, model_files) -> None:
    repository = ModelRepository(tmp_path / "repo")
    folder = repository.install(*model_files, _info(1), numeric_features=["amount"])
    assert folder == repository.root / "loans-v1"
    settings = json.loads((folder / MODEL_SETTINGS_FILE).read_text())
    assert settings == {
        "name": "loans-v1",
        "implementation": RUNTIME_IMPLEMENTATION,
        "parameters": {"uri": str(folder), "version": "1", "extra": integrity_parameters(folder)},
        "max_batch_size": ADAPTIVE_BATCHING["max_batch_size"],
        "max_batch_time": ADAPTIVE_BATCHING["max_batch_time"],
    }
    pipeline, groups, info = read_model_directory(folder)
    assert pipeline == {"a": "pipeline"} and groups == {"amount": [0], "term": [1, 2]}
    assert info["dataset"] == "loans" and info["classes"] == ["no", "yes"] and info["numeric_features"] == ["amount"]
    assert info["mlflow_run_id"] == "run1" and info["data_commit_ids"] == {"2026-09-01": "aaa", "2026-09-02": "bbb"}
    assert repository.is_installed("loans-v1") and repository.installed_models() == ["loans-v1"]
    assert not [p for p in repository.root.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_a_failed_install_leaves_nothing_half_written(tmp_path: Path, model_files) -> None:
    repository = ModelRepository(tmp_path / "repo")
    model, _ = model_files
    with pytest.raises(ModelRepositoryError, match="not a file"):
        repository.install(model, tmp_path / "missing.json", _info(1))
    (repository.root).mkdir(parents=True, exist_ok=True)

    class Boom(RuntimeError):
        pass

    original = json.dumps

    def failing_dumps(value, *args, **kwargs):
        if isinstance(value, dict) and value.get("implementation") == RUNTIME_IMPLEMENTATION:
            raise Boom("disk full")
        return original(value, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("riverbed.model_repository.json.dumps", failing_dumps)
        with pytest.raises(Boom):
            repository.install(*model_files, _info(1))
    assert list(repository.root.iterdir()) == []


def test_reinstall_replaces_and_remove_deletes(tmp_path: Path, model_files) -> None:
    repository = ModelRepository(tmp_path / "repo")
    repository.install(*model_files, _info(1))
    repository.install(*model_files, _info(1).model_copy(update={"mlflow_run_id": "again"}))
    assert json.loads((repository.root / "loans-v1" / "model.json").read_text())["mlflow_run_id"] == "again"
    assert repository.remove_version("loans-v1") is True
    assert repository.remove_version("loans-v1") is False
    assert repository.installed_models() == [] and list(repository.root.iterdir()) == []


def test_pointer_round_trip_is_atomic_and_listed(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repo")
    assert repository.read_deployment("loans") is None and repository.list_deployments() == []
    path = repository.set_deployment(_info(1))
    assert path == repository.root / DEPLOYMENTS_DIR / "loans.json"
    assert repository.read_deployment("loans") == _info(1)
    repository.set_deployment(_info(2, previous=1))
    assert repository.read_deployment("loans") == _info(2, previous=1)
    assert repository.list_deployments() == [_info(2, previous=1)]
    assert [p.name for p in path.parent.iterdir()] == ["loans.json"]  # no temp files left behind
    assert repository.read_deployment("other") is None
    path.write_text("{not json")
    with pytest.raises(ModelRepositoryError, match="not a valid deployment record"):
        repository.read_deployment("loans")


def test_mlserver_scan_sees_models_only_not_pointers_or_staging(tmp_path: Path, model_files) -> None:
    repository = ModelRepository(tmp_path / "repo")
    repository.install(*model_files, _info(1))
    repository.install(*model_files, _info(2))
    repository.set_deployment(_info(2, previous=1))
    # A crash mid-install leaves a hidden staging folder, even one holding a model-settings.json.
    leftover = repository.root / f"{STAGING_PREFIX}loans-v3-deadbeef"
    leftover.mkdir()
    (leftover / MODEL_SETTINGS_FILE).write_text(json.dumps({"name": "loans-v3", "implementation": "x.Y"}))
    (repository.root / "settings.json").write_text("{}")  # MLServer's own settings live in the root too
    assert _mlserver_sees(repository.root) == ["loans-v1", "loans-v2"]
    assert repository.installed_models() == ["loans-v1", "loans-v2"]


def test_names_that_escape_the_repository_are_refused(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repo")
    for bad in ("../x", ".hidden", DEPLOYMENTS_DIR, ""):
        with pytest.raises(ValueError):
            repository.model_dir(bad)
    with pytest.raises(ValueError):
        repository.pointer_path("../x")
