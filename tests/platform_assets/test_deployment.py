"""Promotion gate, deployment and rollback on the real asset graph (real MLflow on SQLite, local store).

The hot swap against a real ``mlserver start`` is the slow test at the end.
"""

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.deployment import RollbackError, rollback_deployment
from platform_assets.model_registry import list_model_versions
from platform_assets.promotion_gate import decide_promotion, largest_disparity
from platform_assets.runner import local_instance, run_pipeline, train_run_config
from resources.mlserver_admin import MLServerAdmin
from riverbed import names
from riverbed.cli.mlserver_process import MLServerProcess, free_port
from riverbed.model_repository import DeployedModel, ModelRepository
from riverbed.names import CHAMPION_ALIAS, PREVIOUS_ALIAS, GateVerdict, MlflowTag
from riverbed.settings import RiverbedSettings
from riverbed.specs import PromotionGateSpec
from tests.platform_assets.loan_dataset import LOAN_DATASET, LOAN_PARTITIONS, write_loan_dataset

DATASET = LOAN_DATASET
PARTITIONS = LOAN_PARTITIONS
GATE_SPEC = "promotion: {metric: roc_auc, min_improvement: 0.0, max_fairness_disparity: 0.3}\n"
FAST_TRAINING = {"optuna_trials": 1, "max_estimators": 20}
LENIENT_GATE = {"min_improvement": -1.0, "max_fairness_disparity": 1.0}


@pytest.fixture
def settings(tmp_path: Path) -> RiverbedSettings:
    specs = tmp_path / "specs"
    specs.mkdir()
    write_loan_dataset(specs, GATE_SPEC)
    # A port nobody listens on: these tests deploy with MLServer down unless they start one.
    return RiverbedSettings(home=tmp_path / "home", specs_dirs=[specs], mlserver_url=f"http://127.0.0.1:{free_port()}")


def _train(
    settings: RiverbedSettings, instance, gate: dict | None = None, seed: int = 1, require_mlserver: bool | None = None
):
    run_config = train_run_config(DATASET, {**FAST_TRAINING, "seed": seed}, gate)
    if require_mlserver is not None:
        ops = run_config.setdefault("ops", {})
        assert isinstance(ops, dict)
        ops[f"deployment_{DATASET}"] = {"config": {"require_mlserver": require_mlserver}}
    return (
        build_definitions(settings)
        .resolve_job_def(names.train_job(DATASET))
        .execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    )


def _client(settings: RiverbedSettings):
    import mlflow

    uri = settings.resolved_mlflow_tracking_uri
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliases(settings: RiverbedSettings) -> dict[str, str]:
    aliases = _client(settings).get_registered_model(f"riverbed-{DATASET}").aliases
    return {alias: str(version) for alias, version in aliases.items()}


def _materialized(result) -> set[str]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }


def test_decide_promotion_rules() -> None:
    gate = PromotionGateSpec(metric="log_loss", min_improvement=0.01, max_fairness_disparity=0.2)
    fair = {"sex": {"demographic_parity_difference": 0.1}, "race": {"demographic_parity_difference": 0.15}}
    first = decide_promotion(gate, {"log_loss": 0.5}, fair, None)
    assert first.passed and "no champion" in first.reason and first.disparity_attribute == "race"
    better = decide_promotion(gate, {"log_loss": 0.40}, fair, {"log_loss": 0.45}, champion_version=3)
    assert better.passed and better.margin == pytest.approx(0.05)
    slightly = decide_promotion(gate, {"log_loss": 0.445}, fair, {"log_loss": 0.45}, champion_version=3)
    assert not slightly.passed and "does not beat the champion" in slightly.reason
    unfair = decide_promotion(gate, {"log_loss": 0.1}, {"sex": {"demographic_parity_difference": 0.3}}, None)
    assert not unfair.passed and "'sex'" in unfair.reason and "exceeds" in unfair.reason
    # Groups too small to estimate a selection rate do not count (fairlearn's figure would be 1.0 here).
    groups = {
        "demographic_parity_difference": 1.0,
        **{"selection_rate[a]": 0.30, "count[a]": 500.0, "selection_rate[b]": 0.20, "count[b]": 200.0},
        **{"selection_rate[c]": 1.0, "count[c]": 2.0},
    }
    assert largest_disparity({"race": groups}) == ("race", pytest.approx(0.10))
    assert decide_promotion(gate, {"log_loss": 0.1}, {"race": groups}, None).passed


def test_gate_deploys_the_first_model_blocks_a_worse_one_and_rollback_repoints(settings: RiverbedSettings) -> None:
    instance = local_instance(settings)
    repository = ModelRepository(settings.model_repository_dir)
    client = _client(settings)
    name = f"riverbed-{DATASET}"

    # 1. No champion yet: the gate passes, v1 becomes champion and is installed with its pointer.
    first = run_pipeline(settings, DATASET, PARTITIONS, train_config=FAST_TRAINING, instance=instance)
    assert first.gate_passed is True and first.deployment is not None
    assert first.deployment.version == 1 and first.deployment.mlserver_loaded is False
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}
    pointer = repository.read_deployment(DATASET)
    assert pointer is not None and pointer.served_model_name == f"{DATASET}-v1"
    assert pointer.mlflow_run_id == first.model.mlflow_run_id
    assert pointer.data_commit_ids == first.model.data_commit_ids
    assert pointer.training_set_commit_id == first.model.training_set_commit_id
    assert pointer.classes == ["no", "yes"] and pointer.features == ["amount", "term", "region"]
    assert repository.installed_models() == [f"{DATASET}-v1"]
    assert client.get_model_version(name, "1").tags[MlflowTag.GATE] == GateVerdict.PASSED

    # 2. A candidate that must beat the champion by 0.5 ROC AUC fails the blocking check: no deployment.
    blocked = _train(settings, instance, gate={"min_improvement": 0.5, "max_fairness_disparity": 0.0}, seed=2)
    assert not blocked.success
    assert _materialized(blocked) == {f"training_set_{DATASET}", f"model_{DATASET}"}
    evaluation = next(
        e.asset_check_evaluation_data for e in blocked.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    assert not evaluation.passed and "does not beat the champion" in (evaluation.description or "")
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    assert {"candidate_score", "champion_score", "margin", "disparity", "reason"} <= set(metadata)
    assert metadata["champion_version"] == 1 and metadata["candidate_version"] == 2
    tags = client.get_model_version(name, "2").tags
    assert tags[MlflowTag.GATE] == GateVerdict.FAILED and "does not beat the champion" in tags[MlflowTag.GATE_REASON]
    if metadata["disparity"] > 0.0:  # the 0.0 fairness bound fails too, unless the model's selection rates are equal
        assert "demographic parity difference" in tags[MlflowTag.GATE_REASON]
    assert _aliases(settings) == {CHAMPION_ALIAS: "1"}
    assert repository.read_deployment(DATASET).version == 1

    # 3. A candidate that passes replaces the champion; the old one becomes 'previous' and leaves the repository.
    # MLServer is down here: installing for the next start is asked for explicitly (a champion exists).
    promoted = _train(settings, instance, gate=LENIENT_GATE, seed=3, require_mlserver=False)
    assert promoted.success, [e.message for e in promoted.all_events if e.is_failure]
    record = promoted.asset_value(f"deployment_{DATASET}")
    assert record.version == 3 and record.previous_version == 1
    assert _aliases(settings) == {CHAMPION_ALIAS: "3", PREVIOUS_ALIAS: "1"}
    assert repository.read_deployment(DATASET).version == 3
    assert repository.installed_models() == [f"{DATASET}-v3"]

    # 4. Rollback re-points the aliases, reinstalls v1 and moves the pointer back.
    rolled = rollback_deployment(DATASET, None, settings=settings, require_mlserver=False)
    assert rolled.version == 1 and rolled.previous_version == 3
    assert _aliases(settings) == {CHAMPION_ALIAS: "1", PREVIOUS_ALIAS: "3"}
    assert repository.read_deployment(DATASET) == rolled
    assert rolled.data_commit_ids == first.model.data_commit_ids  # lineage read back from the model card
    assert rolled.dagster_run_id == first.model.dagster_run_id
    assert repository.installed_models() == [f"{DATASET}-v1"]
    again = rollback_deployment(DATASET, 3, settings=settings, require_mlserver=False)
    assert again.version == 3 and _aliases(settings) == {CHAMPION_ALIAS: "3", PREVIOUS_ALIAS: "1"}

    # 5. The registry listing behind `riverbed models`: aliases, reasons and the gate's verdict per version.
    listed = {v.version: v for v in list_model_versions(settings, [DATASET])}
    assert sorted(listed) == [1, 2, 3]
    assert listed[3].aliases == [CHAMPION_ALIAS] and listed[1].aliases == [PREVIOUS_ALIAS] and listed[2].aliases == []
    assert (listed[1].gate, listed[2].gate, listed[3].gate) == ("passed", "failed", "passed")
    assert "does not beat the champion" in listed[2].gate_reason
    assert listed[1].reason == "manual" and "roc_auc" in listed[1].metrics

    with pytest.raises(RollbackError, match="no version 99"):
        rollback_deployment(DATASET, 99, settings=settings)
    with pytest.raises(RollbackError, match="unknown dataset"):
        rollback_deployment("nope", None, settings=settings)

    # 6. v2 failed the gate: rollback refuses it, and --force needs a reason; nothing moves meanwhile.
    with pytest.raises(RollbackError, match=r"version 2 did not pass the promotion gate .*riverbed.gate=failed"):
        rollback_deployment(DATASET, 2, settings=settings, require_mlserver=False)
    with pytest.raises(RollbackError, match="needs a reason"):
        rollback_deployment(DATASET, 2, settings=settings, force=True, reason="  ", require_mlserver=False)
    assert _aliases(settings) == {CHAMPION_ALIAS: "3", PREVIOUS_ALIAS: "1"}
    assert MlflowTag.FORCED_ROLLBACK not in client.get_model_version(name, "2").tags
    forced = rollback_deployment(
        DATASET, 2, settings=settings, force=True, reason="v3 misroutes region east", actor="cli:ops",
        require_mlserver=False,
    )  # fmt: skip
    assert forced.version == 2 and _aliases(settings) == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "3"}
    record = json.loads(client.get_model_version(name, "2").tags[MlflowTag.FORCED_ROLLBACK])
    assert record["by"] == "cli:ops" and record["reason"] == "v3 misroutes region east"
    assert record["from_version"] == 3 and record["outcome"] == "deployed" and "failed" in record["gate"]
    assert dt.datetime.fromisoformat(record["at"]) <= dt.datetime.now(dt.UTC)


def test_rollback_without_a_previous_version_is_a_clear_error(settings: RiverbedSettings) -> None:
    run_pipeline(settings, DATASET, PARTITIONS, train_config=FAST_TRAINING, instance=local_instance(settings))
    with pytest.raises(RollbackError, match="no 'previous' version"):
        rollback_deployment(DATASET, None, settings=settings)


_MODEL_GONE = re.compile(r"not found|not ready|unavailable|not loaded", re.IGNORECASE)


class PointerInferenceClient:
    """V2 inference on whatever the dataset's deployment pointer names; on a model-gone answer (the old model was
    unloaded between reading the pointer and the request), re-read the pointer and retry once."""

    def __init__(self, mlserver_url: str, repository: ModelRepository) -> None:
        self.repository = repository
        self._http = httpx.Client(base_url=mlserver_url.rstrip("/"), timeout=30.0)

    def __enter__(self) -> "PointerInferenceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _deployment(self, dataset: str) -> DeployedModel:
        deployment = self.repository.read_deployment(dataset)
        assert deployment is not None, f"no deployment pointer for {dataset}"
        return deployment

    def infer(self, dataset: str, payload: dict[str, Any]) -> tuple[DeployedModel, httpx.Response]:
        deployment = self._deployment(dataset)
        response = self._http.post(f"/v2/models/{deployment.served_model_name}/infer", json=payload)
        if response.status_code in (400, 404) and _MODEL_GONE.search(response.text):
            deployment = self._deployment(dataset)
            response = self._http.post(f"/v2/models/{deployment.served_model_name}/infer", json=payload)
        return deployment, response


def _infer_payload() -> dict:
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "amount", "datatype": "FP64", "shape": [2], "data": [4200.0, 300.0]},
            {"name": "term", "datatype": "BYTES", "shape": [2], "data": ["long", "short"]},
            {"name": "region", "datatype": "BYTES", "shape": [2], "data": ["north", "east"]},
        ],
    }


@pytest.mark.slow
def test_hot_swap_under_load_fails_no_request(settings: RiverbedSettings, tmp_path: Path) -> None:
    port = free_port()
    settings = settings.model_copy(update={"mlserver_url": f"http://127.0.0.1:{port}"})
    repository = ModelRepository(settings.model_repository_dir)
    repository.root.mkdir(parents=True)
    instance = local_instance(settings)
    with MLServerProcess(repository.root, http_port=port, log_file=tmp_path / "mlserver.log") as mlserver:
        first = run_pipeline(settings, DATASET, PARTITIONS, train_config=FAST_TRAINING, instance=instance)
        assert first.deployment is not None and first.deployment.mlserver_loaded

        served: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def fire() -> None:
            with PointerInferenceClient(mlserver.url, repository) as client:
                while not stop.is_set():
                    deployment, response = client.infer(DATASET, _infer_payload())
                    if response.status_code == 200:
                        served.append(response.json()["model_name"])
                    else:
                        failures.append(f"{deployment.served_model_name}: {response.status_code} {response.text}")

        worker = threading.Thread(target=fire, daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + 30
            while not served and time.monotonic() < deadline:
                time.sleep(0.05)
            swapped = _train(settings, instance, gate=LENIENT_GATE, seed=2)
            assert swapped.success
            record = swapped.asset_value(f"deployment_{DATASET}")
            assert record.mlserver_loaded and record.old_model_unloaded
            seen = len(served)
            deadline = time.monotonic() + 10
            while len(served) < seen + 20 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join(timeout=30)

        assert failures == []
        assert served[0] == f"{DATASET}-v1" and served[-1] == f"{DATASET}-v2"
        switch = served.index(f"{DATASET}-v2")
        assert set(served[:switch]) == {f"{DATASET}-v1"} and set(served[switch:]) == {f"{DATASET}-v2"}
        with MLServerAdmin(mlserver.url) as admin:
            assert admin.loaded_models() == [f"{DATASET}-v2"]
        assert repository.installed_models() == [f"{DATASET}-v2"]
