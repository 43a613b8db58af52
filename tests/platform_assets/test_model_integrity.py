"""Model integrity, rollback gating and the deployment preflight on the real asset graph.

Real MLflow (SQLite + local artifacts), the local versioned store, the machine's PostgreSQL for the
``pipeline_failures`` counts and, where MLServer itself is the loader, a real ``mlserver start``. A tampered file is
replaced by a pickle that creates a marker file when it is unpickled: every loader must refuse it before that.
"""

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dagster as dg
import httpx
import pytest

from platform_assets.deployment import (
    MLServerUnreachableError,
    build_deployment_asset,
    deploy_model_version,
    load_registered_pipeline,
    rollback_deployment,
)
from platform_assets.environments import build_resources
from platform_assets.promotion_gate import gate_thresholds, run_promotion_gate
from platform_assets.runner import local_instance, run_pipeline
from platform_assets.stages import asset_key
from platform_assets.training import build_model_asset, holdout_of, read_training_set
from resources.mlserver_admin import MLServerAdmin
from resources.versioned_io_manager import materialized_commit, record_path
from riverbed.cli.mlserver_process import MLServerProcess, free_port
from riverbed.errors import MLServerModelError, ModelIntegrityError
from riverbed.inference_log_schema import apply_migrations
from riverbed.model_repository import INTEGRITY_PARAMETER, MODEL_SETTINGS_FILE, ModelRepository
from riverbed.names import CHAMPION_ALIAS, PREVIOUS_ALIAS, GateVerdict, MlflowTag, Stage
from riverbed.pipeline_failures import read_failures
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from riverbed.stack_file import process_identity
from tests.platform_assets.loan_dataset import LOAN_DATASET, LOAN_PARTITIONS, write_loan_dataset
from tests.platform_assets.test_deployment import FAST_TRAINING, GATE_SPEC, LENIENT_GATE, _infer_payload, _train
from tests.scratch_postgres import create_database, drop_database

DATASET = LOAN_DATASET
NAME = f"riverbed-{DATASET}"
COMPONENT = f"deployment_{DATASET}"


class _Detonator:
    """Unpickling this creates ``marker``: proof that something unpickled a tampered file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.marker),))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tamper(path: Path, marker: Path) -> str:
    """Replace a model file by a booby-trapped pickle; returns the new SHA-256."""
    path.write_bytes(cloudpickle.dumps(_Detonator(marker)))
    return _sha256(path)


@pytest.fixture
def failures_dsn() -> Iterator[str]:
    name, dsn = create_database("riverbed_integrity")
    apply_migrations(dsn)
    try:
        yield dsn
    finally:
        drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, failures_dsn: str) -> RiverbedSettings:
    specs = tmp_path / "specs"
    specs.mkdir()
    write_loan_dataset(specs, GATE_SPEC)
    return RiverbedSettings(
        home=tmp_path / "home",
        specs_dirs=[specs],
        mlserver_url=f"http://127.0.0.1:{free_port()}",  # nobody listens: MLServer is down unless a test starts one
        inference_log_dsn=failures_dsn,
    )


def _client(settings: RiverbedSettings):
    import mlflow

    uri = settings.resolved_mlflow_tracking_uri
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliases(settings: RiverbedSettings) -> dict[str, str]:
    return {alias: str(v) for alias, v in _client(settings).get_registered_model(NAME).aliases.items()}


def _stored_file(settings: RiverbedSettings, version: int, filename: str) -> Path:
    """The file as the MLflow artifact store holds it (local artifacts)."""
    uri = _client(settings).get_model_version_download_uri(NAME, str(version))
    return next(Path(uri.removeprefix("file://")).rglob(filename))


def _recorded(settings: RiverbedSettings, version: int) -> dict[str, str]:
    return json.loads(_client(settings).get_model_version(NAME, str(version)).tags[MlflowTag.ARTIFACT_SHA256])


def _snapshot(repository: ModelRepository) -> dict[str, str]:
    """Every file under the model repository with its SHA-256."""
    return {str(p.relative_to(repository.root)): _sha256(p) for p in sorted(repository.root.rglob("*")) if p.is_file()}


def _failures(dsn: str) -> dict[str, int]:
    return {reason: count for (component, reason), count in read_failures(dsn).items() if component == COMPONENT}


def _two_versions(settings: RiverbedSettings):
    """v1 (first deployment, installed while MLServer is down), then v2 as champion with v1 as previous."""
    instance = local_instance(settings)
    first = run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    second = _train(settings, instance, gate=LENIENT_GATE, seed=2, require_mlserver=False)
    assert second.success
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    return instance, first.model, second.asset_value(f"model_{DATASET}")


def _assert_names_digests(error: ModelIntegrityError, version: int, expected: str, actual: str) -> None:
    assert error.model == f"{NAME} version {version}" or error.model.startswith(f"{DATASET}-v{version}")
    assert (error.expected, error.actual) == (expected, actual)
    assert expected in str(error) and actual in str(error) and "model.pkl" in str(error)


# ------------------------------------------------------------------------------------------------ recording
def test_training_records_the_digests_in_mlflow_the_store_the_card_and_the_install(settings: RiverbedSettings) -> None:
    instance = local_instance(settings)
    run = run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    stored = {name: _sha256(_stored_file(settings, 1, name)) for name in ("model.pkl", "feature_groups.json")}
    assert _recorded(settings, 1) == stored
    assert run.model.artifact_sha256 == stored

    # The model record committed to the versioned store carries them.
    store = build_resources(settings)["data_store"].get_store()
    commit, _ = materialized_commit(instance, asset_key(Stage.MODEL, DATASET), None)
    record = json.loads(store.get_object(commit, record_path(asset_key(Stage.MODEL, DATASET), None)))
    assert record["value"]["artifact_sha256"] == stored

    # The model card (JSON and Markdown).
    import mlflow

    card_path = mlflow.artifacts.download_artifacts(
        run_id=run.model.mlflow_run_id,
        artifact_path="model_card.json",
        dst_path=str(settings.home / "card"),
        tracking_uri=settings.resolved_mlflow_tracking_uri,
    )
    assert json.loads(Path(card_path).read_text())["artifact_sha256"] == stored
    markdown = mlflow.artifacts.download_artifacts(
        run_id=run.model.mlflow_run_id,
        artifact_path="model_card.md",
        dst_path=str(settings.home / "card"),
        tracking_uri=settings.resolved_mlflow_tracking_uri,
    )
    assert f"`{stored['model.pkl']}`" in Path(markdown).read_text()

    # The deployment wrote them (and model.json's) into model-settings.json, and into the pointer.
    repository = ModelRepository(settings.model_repository_dir)
    folder = repository.model_dir(f"{DATASET}-v1")
    extra = json.loads((folder / MODEL_SETTINGS_FILE).read_text())["parameters"]["extra"][INTEGRITY_PARAMETER]
    assert extra == {**stored, "model.json": _sha256(folder / "model.json")}
    assert {name: _sha256(folder / name) for name in stored} == stored
    assert repository.read_deployment(DATASET).artifact_sha256 == stored


# ------------------------------------------------------------------------------------- the registry's copy
def test_a_tampered_registry_artifact_is_refused_by_every_loader(settings: RiverbedSettings, tmp_path: Path) -> None:
    instance, v1, _ = _two_versions(settings)
    repository = ModelRepository(settings.model_repository_dir)
    before = _snapshot(repository)
    pointer = repository.read_deployment(DATASET)
    marker = tmp_path / "unpickled"
    expected_v1 = _recorded(settings, 1)["model.pkl"]
    actual_v1 = _tamper(_stored_file(settings, 1, "model.pkl"), marker)
    uri = settings.resolved_mlflow_tracking_uri

    # The loader the gate and the reference build use.
    with pytest.raises(ModelIntegrityError) as caught:
        load_registered_pipeline(uri, NAME, 1)
    _assert_names_digests(caught.value, 1, expected_v1, actual_v1)

    # Rollback (the deployment path): refused, counted, nothing moved or deleted.
    with pytest.raises(ModelIntegrityError) as caught:
        rollback_deployment(DATASET, 1, settings=settings, require_mlserver=False)
    _assert_names_digests(caught.value, 1, expected_v1, actual_v1)
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    assert repository.read_deployment(DATASET) == pointer and _snapshot(repository) == before
    assert _failures(settings.inference_log_dsn.get_secret_value()) == {"model_integrity": 1}

    # The gate judging the tampered version as a candidate fails it and says why on the version.
    spec = load_specs(settings.specs_dirs)[DATASET]
    store = build_resources(settings)["data_store"].get_store()
    holdout = holdout_of(read_training_set(store, v1.training_set_commit_id, DATASET))
    with pytest.raises(ModelIntegrityError):
        run_promotion_gate(spec, gate_thresholds(spec), v1, holdout, uri)
    tags = _client(settings).get_model_version(NAME, "1").tags
    assert tags[MlflowTag.GATE] == GateVerdict.FAILED and actual_v1 in tags[MlflowTag.GATE_REASON]

    # The champion's own copy in MLflow is tampered with: the deployment asset (its reference build) refuses it.
    expected_v2 = _recorded(settings, 2)["model.pkl"]
    actual_v2 = _tamper(_stored_file(settings, 2, "model.pkl"), marker)
    redeploy = dg.materialize(
        [build_model_asset(spec).to_source_asset(), build_deployment_asset(spec)],
        instance=instance,
        resources=build_resources(settings),
        run_config={"ops": {f"deployment_{DATASET}": {"config": {"require_mlserver": False}}}},
        raise_on_error=False,
    )
    assert not redeploy.success
    failure = next(e for e in redeploy.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.step_failure_data.user_failure_data.description)
    assert expected_v2 in text and actual_v2 in text and f"{NAME} version 2" in text
    assert _failures(settings.inference_log_dsn.get_secret_value()) == {"model_integrity": 2}

    # A new candidate cannot be compared with a tampered champion: the blocking gate fails, nothing is deployed.
    blocked = _train(settings, instance, gate=LENIENT_GATE, seed=3, require_mlserver=False)
    assert not blocked.success
    evaluation = next(
        e.asset_check_evaluation_data for e in blocked.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    assert not evaluation.passed and expected_v2 in evaluation.description and actual_v2 in evaluation.description
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    assert repository.read_deployment(DATASET) == pointer and _snapshot(repository) == before
    assert not marker.exists()


def test_a_version_without_recorded_digests_is_refused_with_how_to_reregister(settings: RiverbedSettings) -> None:
    _two_versions(settings)
    repository = ModelRepository(settings.model_repository_dir)
    before = _snapshot(repository)
    _client(settings).delete_model_version_tag(NAME, "1", MlflowTag.ARTIFACT_SHA256)
    with pytest.raises(ModelIntegrityError, match=r"no recorded SHA-256 .*re-register it by training a new version"):
        rollback_deployment(DATASET, 1, settings=settings, require_mlserver=False)
    with pytest.raises(ModelIntegrityError, match="no recorded SHA-256"):
        load_registered_pipeline(settings.resolved_mlflow_tracking_uri, NAME, 1)
    assert _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"} and _snapshot(repository) == before


# --------------------------------------------------------------------------------------- the shared volume
def test_a_tampered_model_on_the_shared_volume_is_refused_by_deployment_and_mlserver(
    settings: RiverbedSettings, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings.model_copy(update={"mlserver_url": f"http://127.0.0.1:{port}"})
    instance = local_instance(settings)
    run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    repository = ModelRepository(settings.model_repository_dir)
    served = f"{DATASET}-v1"
    folder = repository.model_dir(served)
    expected = _recorded(settings, 1)["model.pkl"]
    good = (folder / "model.pkl").read_bytes()
    marker = tmp_path / "unpickled"
    spec = load_specs(settings.specs_dirs)[DATASET]

    with MLServerProcess(
        repository.root, http_port=port, wait_for_models=[served], log_file=tmp_path / "mlserver.log"
    ) as mlserver, MLServerAdmin(mlserver.url) as admin:  # fmt: skip
        # Someone who can write model.pkl on the volume swaps it while v1 serves.
        actual = _tamper(folder / "model.pkl", marker)
        before = _snapshot(repository)

        # The deployment (re-deploying the champion) checks the installed folder instead of trusting it.
        with pytest.raises(ModelIntegrityError) as caught:
            deploy_model_version(
                spec, registered_model_name=NAME, version=1, tracking_uri=settings.resolved_mlflow_tracking_uri,
                repository=repository, admin=admin, failure_dsn=settings.inference_log_dsn.get_secret_value(),
            )  # fmt: skip
        _assert_names_digests(caught.value, 1, expected, actual)
        assert _snapshot(repository) == before and _aliases(settings) == {CHAMPION_ALIAS: "1"}

        # MLServer asked to reload it refuses (the runtime checks before unpickling) and keeps serving the old one.
        with pytest.raises(MLServerModelError, match=actual):
            admin.load(served)
        response = httpx.post(f"{mlserver.url}/v2/models/{served}/infer", json=_infer_payload(), timeout=30)
        assert response.status_code == 200 and response.json()["model_name"] == served
        assert f"{served} (version 1)" in (tmp_path / "mlserver.log").read_text()

    # The runtime class itself, loaded directly from the settings the deployment wrote.
    from mlserver.settings import ModelSettings

    from serving.runtime import RiverbedModelRuntime

    model_settings = ModelSettings.model_validate(
        {**json.loads((folder / MODEL_SETTINGS_FILE).read_text()), "implementation": RiverbedModelRuntime}
    )
    with pytest.raises(ModelIntegrityError) as caught:
        asyncio.run(RiverbedModelRuntime(model_settings).load())
    assert (caught.value.expected, caught.value.actual) == (expected, actual) and expected in str(caught.value)

    # Settings without digests (a folder installed before they were written, or by hand) are refused too.
    (folder / "model.pkl").write_bytes(good)
    bare = model_settings.model_copy(deep=True)
    assert bare.parameters is not None
    bare.parameters.extra = {}
    with pytest.raises(ModelIntegrityError, match="carries no artifact digests"):
        asyncio.run(RiverbedModelRuntime(bare).load())
    assert asyncio.run(RiverbedModelRuntime(model_settings).load()) is True  # the untouched file loads
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ preflight
def test_a_deployment_that_cannot_reach_mlserver_changes_nothing(
    settings: RiverbedSettings, caplog: pytest.LogCaptureFixture
) -> None:
    instance = local_instance(settings)
    run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    repository = ModelRepository(settings.model_repository_dir)
    before, pointer = _snapshot(repository), repository.read_deployment(DATASET)
    # A local `riverbed serve` stack runs (this process stands in for its supervisor) but its MLServer is down:
    # with no stack running, a local deployment would install for the stack's next start instead.
    settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
    settings.stack_file.write_text(json.dumps({"pid": os.getpid(), "process": process_identity(os.getpid())}))

    with caplog.at_level("WARNING"):
        result = _train(settings, instance, gate=LENIENT_GATE, seed=2)  # MLServer down, a champion deployed
    assert not result.success
    evaluation = next(
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    assert evaluation.passed  # the candidate was good: only the deployment refused
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == f"deployment_{DATASET}"
    description = str(failure.step_failure_data.user_failure_data.description)
    assert "MLServer is not reachable" in description and settings.mlserver_url in description
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}
    assert repository.read_deployment(DATASET) == pointer and _snapshot(repository) == before
    assert _failures(settings.inference_log_dsn.get_secret_value()) == {"mlserver_unreachable": 1}
    assert any(r.levelname == "WARNING" and "mlserver_unreachable" in r.getMessage() for r in caplog.records)

    # Rollback meets the same preflight.
    with pytest.raises(MLServerUnreachableError):
        rollback_deployment(DATASET, 1, settings=settings)
    assert _failures(settings.inference_log_dsn.get_secret_value()) == {"mlserver_unreachable": 2}
    assert _snapshot(repository) == before and _aliases(settings) == {CHAMPION_ALIAS: "1"}


def test_a_copied_model_folder_is_not_a_way_around_the_check(settings: RiverbedSettings, tmp_path: Path) -> None:
    """Installing copies and checks the copies: a source file changed after download is refused before rename."""
    run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=local_instance(settings))
    repository = ModelRepository(settings.model_repository_dir)
    info = repository.read_deployment(DATASET)
    assert info is not None
    source = tmp_path / "copy"
    shutil.copytree(repository.model_dir(info.served_model_name), source)
    _tamper(source / "model.pkl", tmp_path / "unpickled")
    other = ModelRepository(tmp_path / "other-repo")
    with pytest.raises(ModelIntegrityError, match=r"model\.pkl"):
        other.install(
            source / "model.pkl", source / "feature_groups.json", info, expected_sha256=dict(info.artifact_sha256)
        )
    assert other.installed_models() == [] and not any(other.root.iterdir())


# ------------------------------------------------------------------------------------------- rollback (CLI)
def _riverbed(settings: RiverbedSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RIVERBED_")},
        "RIVERBED_HOME": str(settings.home),
        "RIVERBED_SPECS_DIRS": json.dumps([str(p) for p in settings.specs_dirs]),
        "RIVERBED_MLSERVER_URL": settings.mlserver_url,
        "RIVERBED_INFERENCE_LOG_DSN": settings.inference_log_dsn.get_secret_value(),
        "COLUMNS": "300",  # rich wraps at the terminal width; keep each message on one line
    }
    return subprocess.run(
        [sys.executable, "-m", "riverbed.cli", "rollback", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_rollback_command_refuses_ungated_versions_and_records_a_forced_one(settings: RiverbedSettings) -> None:
    instance = local_instance(settings)
    run_pipeline(settings, DATASET, LOAN_PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    assert not _train(settings, instance, gate={"min_improvement": 1.0}, seed=2).success  # v2 fails the gate
    client = _client(settings)

    refused = _riverbed(settings, DATASET, "--to", "2")
    assert refused.returncode == 1, refused.stderr
    assert "version 2 did not pass the promotion gate" in refused.stdout and "--force" in refused.stdout
    unknown = _riverbed(settings, DATASET, "--to", "9")
    assert unknown.returncode == 1 and "has no version 9; registered versions: [1, 2]" in unknown.stdout
    no_reason = _riverbed(settings, DATASET, "--to", "2", "--force")
    assert no_reason.returncode == 2 and "--force needs --reason" in no_reason.stderr
    assert MlflowTag.FORCED_ROLLBACK not in client.get_model_version(NAME, "2").tags

    # Forced, but MLServer is down while v1 serves: refused before anything moves, and the attempt is recorded.
    forced = _riverbed(settings, DATASET, "--to", "2", "--force", "--reason", "v1 rejects every loan")
    assert forced.returncode == 1 and "MLServer is not reachable" in forced.stdout, forced.stdout + forced.stderr
    record = json.loads(client.get_model_version(NAME, "2").tags[MlflowTag.FORCED_ROLLBACK])
    assert record["reason"] == "v1 rejects every loan" and record["by"].startswith("cli:")
    assert record["from_version"] == 1 and record["outcome"].startswith("failed: ")
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}
    assert _failures(settings.inference_log_dsn.get_secret_value()) == {"mlserver_unreachable": 1}
