"""Promotion gate, deployment and rollback of a dataset's model.

The gate (blocking check ``beats_champion`` on ``model_<dataset>``) scores the candidate and the current
champion (MLflow alias ``champion``) on the candidate's frozen holdout, the test split of the training set
it was trained on, read at its pinned commit. It passes when there is no champion yet, or the candidate
beats the champion by at least ``min_improvement`` on the gate metric, and in both cases only if the
candidate's largest demographic-parity difference stays within ``max_fairness_disparity``. The outcome is
recorded as tags on the candidate's MLflow model version.

``deployment_<dataset>`` (and :func:`rollback_deployment`) install the version in MLServer's model repository,
hot-load it when MLServer runs, move the ``champion``/``previous`` aliases, rewrite the deployment pointer,
wait a short drain and unload the old served model. ``mlflow`` is imported inside functions only.
"""

import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from platform_assets.groups import DEPLOYMENT_GROUP
from resources.data_store_resource import VersionedDataStoreResource
from resources.mlflow_resource import MlflowTrackingResource
from resources.mlserver_admin import MLServerAdmin
from resources.mlserver_resource import MLServerResource
from riverbed.errors import MLServerModelError, MLServerUnavailableError
from riverbed.model_repository import POINTER_POLL_SECONDS, DeployedModel, ModelRepository
from riverbed.names import served_model_name
from riverbed.records import DeploymentRecord, ModelRecord
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, PromotionGateSpec

logger = logging.getLogger(__name__)

GATE_CHECK_NAME = "beats_champion"
CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
GATE_TAG = "riverbed.gate"
GATE_REASON_TAG = "riverbed.gate_reason"
GATE_PASSED = "passed"
GATE_FAILED = "failed"
DRAIN_SECONDS = 2 * POINTER_POLL_SECONDS  # long enough for every gateway to have re-read the pointer
LOWER_IS_BETTER = frozenset({"log_loss"})
MIN_GROUP_RECORDS = 30  # smallest protected group (holdout records) whose selection rate the fairness bound uses
DEPLOYMENT_CODE_VERSION = "1"


class DeploymentError(RuntimeError):
    """A model version could not be promoted, installed or hot-loaded."""


class RollbackError(DeploymentError):
    """A rollback target does not exist or cannot be determined."""


def deployment_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"deployment_{dataset}")


# ------------------------------------------------------------------------------------------------ the gate
class PromotionGateConfig(dg.Config):
    """Overrides of the dataset spec's promotion gate for one run (blank: the spec's values)."""

    metric: str | None = Field(default=None, pattern="^(roc_auc|f1|accuracy|log_loss)$")
    min_improvement: float | None = Field(default=None, ge=-1.0, le=1.0)
    max_fairness_disparity: float | None = Field(default=None, ge=0.0, le=1.0)


def gate_thresholds(spec: DatasetSpec, config: PromotionGateConfig | None = None) -> PromotionGateSpec:
    """The spec's promotion gate with the run's overrides applied."""
    if config is None:
        return spec.promotion
    overrides = {k: v for k, v in config.model_dump().items() if v is not None}
    return PromotionGateSpec.model_validate({**spec.promotion.model_dump(), **overrides})


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may replace the champion, and the figures behind the verdict."""

    passed: bool
    reason: str
    metric: str
    candidate_score: float
    champion_score: float | None
    champion_version: int | None
    margin: float | None  # candidate's improvement over the champion (positive = better, whatever the metric)
    min_improvement: float
    disparity: float
    disparity_attribute: str | None
    max_fairness_disparity: float

    def metadata(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if v is not None}
        return {k: (float(v) if isinstance(v, float) else v) for k, v in values.items()}


def attribute_disparity(values: dict[str, float], min_group_records: int = MIN_GROUP_RECORDS) -> float:
    """Demographic-parity difference of one attribute over its groups with at least ``min_group_records`` records.

    Groups of a handful of holdout records swing between selection rates 0 and 1 by chance and would make
    the bound meaningless; they are left out (fewer than two groups left: nothing to compare, 0). Without
    per-group figures, fairlearn's own difference over all groups is used.
    """
    rates = {
        key[len("selection_rate[") : -1]: value for key, value in values.items() if key.startswith("selection_rate[")
    }
    if not rates:
        return float(values.get("demographic_parity_difference", 0.0))
    kept = [rate for group, rate in rates.items() if values.get(f"count[{group}]", 0.0) >= min_group_records]
    return float(max(kept) - min(kept)) if len(kept) >= 2 else 0.0


def largest_disparity(
    fairness: dict[str, dict[str, float]], min_group_records: int = MIN_GROUP_RECORDS
) -> tuple[str | None, float]:
    """The protected attribute with the largest demographic-parity difference, and that difference."""
    worst: tuple[str | None, float] = (None, 0.0)
    for attribute, values in fairness.items():
        value = attribute_disparity(values, min_group_records)
        if math.isnan(value):
            return attribute, value
        if value > worst[1]:
            worst = (attribute, value)
    return worst


def decide_promotion(
    gate: PromotionGateSpec,
    candidate_metrics: dict[str, float],
    candidate_fairness: dict[str, dict[str, float]],
    champion_metrics: dict[str, float] | None,
    champion_version: int | None = None,
) -> GateDecision:
    """Apply the gate: beat the champion by ``min_improvement`` (if any) and stay within the fairness bound."""
    metric = gate.metric
    candidate = float(candidate_metrics[metric])
    champion = float(champion_metrics[metric]) if champion_metrics is not None else None
    attribute, disparity = largest_disparity(candidate_fairness)
    margin: float | None = None
    problems: list[str] = []
    if math.isnan(candidate):
        problems.append(f"the candidate's {metric} is undefined on the holdout (one class only?)")
    if champion is None:
        performance = "no champion yet"
    else:
        margin = (champion - candidate) if metric in LOWER_IS_BETTER else (candidate - champion)
        direction = "lower" if metric in LOWER_IS_BETTER else "higher"
        comparison = (
            f"{metric} {candidate:.4f} vs champion v{champion_version} {champion:.4f} "
            f"(improvement {margin:+.4f}, {direction} is better, required >= {gate.min_improvement:+.4f})"
        )
        if math.isnan(margin) or margin < gate.min_improvement:
            problems.append(f"does not beat the champion: {comparison}")
            performance = ""
        else:
            performance = f"beats the champion: {comparison}"
    if math.isnan(disparity) or disparity > gate.max_fairness_disparity:
        problems.append(
            f"demographic parity difference {disparity:.4f} on {attribute!r} (groups of >= {MIN_GROUP_RECORDS} "
            f"holdout records) exceeds the bound {gate.max_fairness_disparity:.4f}"
        )
    if problems:
        reason = "; ".join(problems)
    else:
        fairness = f"largest demographic parity difference {disparity:.4f}" + (f" ({attribute})" if attribute else "")
        reason = f"{performance}; {fairness} <= {gate.max_fairness_disparity:.4f}"
    return GateDecision(
        passed=not problems,
        reason=reason,
        metric=metric,
        candidate_score=candidate,
        champion_score=champion,
        champion_version=champion_version,
        margin=margin,
        min_improvement=gate.min_improvement,
        disparity=disparity,
        disparity_attribute=attribute,
        max_fairness_disparity=gate.max_fairness_disparity,
    )


# ----------------------------------------------------------------------------------------------- MLflow
def _mlflow_client(tracking_uri: str) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in Dagster logs
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


mlflow_client = _mlflow_client  # public name: an MlflowClient on one URI for tracking and registry


def registered_aliases(client: Any, registered_model_name: str) -> dict[str, int]:
    """Alias -> version of a registered model ({} if the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(registered_model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


@dataclass(frozen=True)
class ModelFiles:
    """A registered version's files as downloaded from MLflow."""

    model_file: Path
    feature_groups_file: Path


def download_model_files(tracking_uri: str, registered_model_name: str, version: int, destination: Path) -> ModelFiles:
    """Download a registered version's model directory (cloudpickled pipeline + feature groups)."""
    import mlflow

    client = _mlflow_client(tracking_uri)
    uri = client.get_model_version_download_uri(registered_model_name, str(version))
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination), tracking_uri=tracking_uri)
    )
    model_file = next(iter(sorted(local.rglob("model.pkl"))), None)
    groups_file = next(iter(sorted(local.rglob("feature_groups.json"))), None)
    if model_file is None or groups_file is None:
        raise DeploymentError(
            f"{registered_model_name} version {version} at {uri} lacks model.pkl or feature_groups.json; "
            "it was not logged by Riverbed's training step"
        )
    return ModelFiles(model_file=model_file, feature_groups_file=groups_file)


def load_registered_pipeline(tracking_uri: str, registered_model_name: str, version: int) -> Any:
    """The cloudpickled scikit-learn pipeline of a registered version."""
    import cloudpickle

    with tempfile.TemporaryDirectory(prefix="riverbed-model-") as scratch:
        files = download_model_files(tracking_uri, registered_model_name, version, Path(scratch))
        with files.model_file.open("rb") as handle:
            return cloudpickle.load(handle)


def holdout_of(training_set: pd.DataFrame, split_column: str) -> pd.DataFrame:
    test = training_set[training_set[split_column] == "test"].drop(columns=[split_column])
    return test.reset_index(drop=True)


def run_promotion_gate(
    spec: DatasetSpec,
    gate: PromotionGateSpec,
    candidate: ModelRecord,
    holdout: pd.DataFrame,
    tracking_uri: str,
) -> GateDecision:
    """Score candidate and champion on the same holdout, decide, and tag the candidate's model version."""
    from riverbed.ml.training import evaluate, fairness_report

    client = _mlflow_client(tracking_uri)
    name = candidate.registered_model_name
    champion_version = registered_aliases(client, name).get(CHAMPION_ALIAS)
    pipeline = load_registered_pipeline(tracking_uri, name, candidate.version)
    candidate_metrics = evaluate(spec, pipeline, holdout)
    candidate_fairness = fairness_report(spec, pipeline, holdout)
    champion_metrics: dict[str, float] | None = None
    if champion_version == candidate.version:
        champion_version = None  # re-checking the champion itself: judge it against the bounds alone
    elif champion_version is not None:
        champion_pipeline = load_registered_pipeline(tracking_uri, name, champion_version)
        try:
            champion_metrics = evaluate(spec, champion_pipeline, holdout)
        except (KeyError, ValueError) as error:
            raise DeploymentError(
                f"the champion {name} version {champion_version} cannot score the candidate's holdout: {error}"
            ) from error
    decision = decide_promotion(gate, candidate_metrics, candidate_fairness, champion_metrics, champion_version)
    client.set_model_version_tag(
        name, str(candidate.version), GATE_TAG, GATE_PASSED if decision.passed else GATE_FAILED
    )
    client.set_model_version_tag(name, str(candidate.version), GATE_REASON_TAG, decision.reason[:4900])
    logger.info(
        "%s version %d: gate %s: %s",
        name,
        candidate.version,
        "passed" if decision.passed else "failed",
        decision.reason,
    )
    return decision


# ------------------------------------------------------------------------------------------- deployment
@dataclass(frozen=True)
class ModelLineage:
    """What a deployment pointer records about where the model came from."""

    mlflow_run_id: str
    training_set_commit_id: str
    data_commit_ids: dict[str, str]
    dagster_run_id: str


def lineage_from_record(record: ModelRecord) -> ModelLineage:
    return ModelLineage(
        mlflow_run_id=record.mlflow_run_id,
        training_set_commit_id=record.training_set_commit_id,
        data_commit_ids=dict(record.data_commit_ids),
        dagster_run_id=record.dagster_run_id,
    )


def lineage_from_mlflow(tracking_uri: str, registered_model_name: str, version: int) -> ModelLineage:
    """Lineage of a registered version, read from its run's model card (written at training time)."""
    import mlflow

    client = _mlflow_client(tracking_uri)
    model_version = client.get_model_version(registered_model_name, str(version))
    run_id = str(model_version.run_id)
    with tempfile.TemporaryDirectory(prefix="riverbed-card-") as scratch:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model_card.json", dst_path=scratch, tracking_uri=tracking_uri
        )
        card = json.loads(Path(path).read_text())
    lineage = card["lineage"]
    commits = list(lineage["data_commit_ids"])
    partitions = list(lineage["partitions"])
    # The training step records [training set commit, one commit per partition in window order].
    return ModelLineage(
        mlflow_run_id=run_id,
        training_set_commit_id=commits[0] if commits else "",
        data_commit_ids=dict(zip(partitions, commits[1:], strict=False)),
        dagster_run_id=str(lineage.get("dagster_run_id", "")),
    )


def _version_exists(client: Any, registered_model_name: str, version: int) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(registered_model_name, str(version))
    except MlflowException:
        return False
    return True


def deploy_model_version(
    spec: DatasetSpec,
    *,
    registered_model_name: str,
    version: int,
    tracking_uri: str,
    repository: ModelRepository,
    admin: MLServerAdmin,
    lineage: ModelLineage | None = None,
    drain_seconds: float = DRAIN_SECONDS,
) -> tuple[DeployedModel, DeploymentRecord]:
    """Make ``version`` the dataset's champion and the model that serves it.

    Order: install the files, hot-load in MLServer (if it runs) and wait until ready, move the aliases,
    rewrite the pointer, drain, unload and remove the old served model. A failed load leaves the aliases
    and the pointer as they were.
    """
    dataset = spec.name
    client = _mlflow_client(tracking_uri)
    if not _version_exists(client, registered_model_name, version):
        raise DeploymentError(f"{registered_model_name} has no version {version} in MLflow at {tracking_uri}")
    lineage = lineage or lineage_from_mlflow(tracking_uri, registered_model_name, version)
    old_champion = registered_aliases(client, registered_model_name).get(CHAMPION_ALIAS)
    current = repository.read_deployment(dataset)
    served = served_model_name(dataset, version)
    previous_version = (
        old_champion
        if old_champion not in (None, version)
        else (current.previous_version if current is not None and current.version == version else None)
    )
    info = DeployedModel(
        dataset=dataset,
        served_model_name=served,
        registered_model_name=registered_model_name,
        version=version,
        mlflow_run_id=lineage.mlflow_run_id,
        model_uri=f"models:/{registered_model_name}/{version}",
        training_set_commit_id=lineage.training_set_commit_id,
        data_commit_ids=lineage.data_commit_ids,
        dagster_run_id=lineage.dagster_run_id,
        classes=list(spec.target.classes),
        features=list(spec.feature_names),
        deployed_at=dt.datetime.now(dt.UTC),
        previous_version=previous_version,
    )

    installed_now = False
    if not repository.is_installed(served):
        with tempfile.TemporaryDirectory(prefix="riverbed-deploy-") as scratch:
            files = download_model_files(tracking_uri, registered_model_name, version, Path(scratch))
            repository.install(
                files.model_file, files.feature_groups_file, info, numeric_features=list(spec.numeric_features)
            )
        installed_now = True

    live = admin.is_live()
    if live:
        try:
            admin.load(served)
            admin.wait_ready(served)
        except (MLServerModelError, MLServerUnavailableError) as error:
            if installed_now and (current is None or current.served_model_name != served):
                repository.remove_version(served)
            raise DeploymentError(f"{served} was not deployed: {error}") from error
    else:
        logger.info(
            "MLServer is not reachable at %s: %s is installed in %s; the next `mlserver start` (riverbed serve) "
            "loads it",
            admin.url,
            served,
            repository.root,
        )

    client.set_registered_model_alias(registered_model_name, CHAMPION_ALIAS, str(version))
    if old_champion is not None and old_champion != version:
        client.set_registered_model_alias(registered_model_name, PREVIOUS_ALIAS, str(old_champion))
    repository.set_deployment(info)

    unloaded = False
    old_served = current.served_model_name if current is not None and current.served_model_name != served else None
    if old_served is not None:
        if live:
            time.sleep(drain_seconds)  # requests already routed to the old model finish; new ones see the pointer
            try:
                admin.unload(old_served)
                unloaded = True
            except (MLServerModelError, MLServerUnavailableError) as error:
                logger.warning("could not unload %s after the swap: %s", old_served, error)
        # Keep only what is deployed, so a restarted MLServer does not load stale versions (rollback reinstalls).
        repository.remove_version(old_served)
    record = DeploymentRecord(
        dataset=dataset,
        registered_model_name=registered_model_name,
        version=version,
        served_model_name=served,
        model_uri=info.model_uri,
        previous_version=previous_version,
        previous_served_model_name=old_served,
        mlserver_loaded=live,
        old_model_unloaded=unloaded,
        deployed_at=info.deployed_at,
    )
    logger.info("%s: version %d is the champion, served as %s", dataset, version, served)
    return info, record


def rollback_deployment(dataset: str, to_version: int | None = None, *, settings: RiverbedSettings) -> DeployedModel:
    """Re-point ``champion`` to ``to_version`` (default: the ``previous`` alias) and serve it, hot-swapping MLServer.

    ``previous`` then names the version that was champion. Raises :class:`RollbackError` for an unknown
    dataset or version, or when there is no ``previous`` alias to roll back to.
    """
    from riverbed.specs import load_specs

    specs = load_specs(settings.specs_dirs)
    if dataset not in specs:
        raise RollbackError(f"unknown dataset {dataset!r}; known: {sorted(specs)}")
    tracking_uri = settings.resolved_mlflow_tracking_uri
    registered_model_name = MlflowTrackingResource(tracking_uri=tracking_uri).registered_model_name(dataset)
    client = _mlflow_client(tracking_uri)
    aliases = registered_aliases(client, registered_model_name)
    if to_version is None:
        if PREVIOUS_ALIAS not in aliases:
            raise RollbackError(
                f"{registered_model_name} has no '{PREVIOUS_ALIAS}' version to roll back to "
                f"(champion: {aliases.get(CHAMPION_ALIAS, 'none')}); pass a version explicitly"
            )
        to_version = aliases[PREVIOUS_ALIAS]
    if not _version_exists(client, registered_model_name, to_version):
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{registered_model_name}'"))
        raise RollbackError(
            f"{registered_model_name} has no version {to_version}; registered versions: {versions or 'none'}"
        )
    with MLServerAdmin(settings.mlserver_url) as admin:
        info, _ = deploy_model_version(
            specs[dataset],
            registered_model_name=registered_model_name,
            version=to_version,
            tracking_uri=tracking_uri,
            repository=ModelRepository(settings.model_repository_dir),
            admin=admin,
        )
    return info


# ---------------------------------------------------------------------------------------------- Dagster
def build_deployment_definitions(
    spec: DatasetSpec, model_key: dg.AssetKey, training_set_key: dg.AssetKey, split_column: str
) -> tuple[dg.AssetChecksDefinition, dg.AssetsDefinition]:
    """The blocking gate on ``model_<dataset>`` and the ``deployment_<dataset>`` asset behind it."""
    from resources.versioned_io_manager import parquet_to_dataframe, table_path

    name = spec.name

    @dg.asset_check(
        asset=model_key,
        name=GATE_CHECK_NAME,
        blocking=True,
        description=f"The {name} candidate beats the champion on its frozen holdout by the spec's margin and "
        "stays within the fairness bound; blocks deployment otherwise.",
    )
    def beats_champion(
        context: dg.AssetCheckExecutionContext,
        config: PromotionGateConfig,
        model: ModelRecord,
        data_store: VersionedDataStoreResource,
        mlflow: MlflowTrackingResource,
    ) -> dg.AssetCheckResult:
        store = data_store.get_store()
        training_set = parquet_to_dataframe(
            store.get_object(model.training_set_commit_id, table_path(training_set_key, None))
        )
        holdout = holdout_of(training_set, split_column)
        gate = gate_thresholds(spec, config)
        decision = run_promotion_gate(spec, gate, model, holdout, mlflow.tracking_uri)
        return dg.AssetCheckResult(
            passed=decision.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=decision.reason,
            metadata={
                **decision.metadata(),
                "candidate_version": model.version,
                "holdout_rows": len(holdout),
                "holdout_commit_id": model.training_set_commit_id,
            },
        )

    @dg.asset(
        key=deployment_asset_key(name),
        group_name=DEPLOYMENT_GROUP,
        code_version=DEPLOYMENT_CODE_VERSION,
        kinds={"mlserver"},
        ins={"model": dg.AssetIn(model_key)},
        description=f"The {name} champion: MLflow alias moved to the gated candidate, installed in MLServer's "
        "model repository and hot-swapped with no failed request.",
        metadata={"dataset": name},
    )
    def deployment(
        context: dg.AssetExecutionContext,
        model: ModelRecord,
        mlflow: MlflowTrackingResource,
        mlserver: MLServerResource,
        data_store: VersionedDataStoreResource,
    ) -> DeploymentRecord:
        client = _mlflow_client(mlflow.tracking_uri)
        tags = client.get_model_version(model.registered_model_name, str(model.version)).tags or {}
        if tags.get(GATE_TAG) != GATE_PASSED:
            raise dg.Failure(
                description=f"{model.registered_model_name} version {model.version} has not passed the promotion "
                f"gate (tag {GATE_TAG}={tags.get(GATE_TAG, 'missing')}: {tags.get(GATE_REASON_TAG, 'not checked')}); "
                f"run the {GATE_CHECK_NAME} check on {model_key.to_user_string()} first"
            )
        with mlserver.admin() as admin:
            _, record = deploy_model_version(
                spec,
                registered_model_name=model.registered_model_name,
                version=model.version,
                tracking_uri=mlflow.tracking_uri,
                repository=mlserver.repository(),
                admin=admin,
                lineage=lineage_from_record(model),
            )
        # Monitoring's reference: the champion's predictions on its own frozen holdout.
        from monitoring.reference import build_reference, write_reference

        training_set = parquet_to_dataframe(
            data_store.get_store().get_object(model.training_set_commit_id, table_path(training_set_key, None))
        )
        pipeline = load_registered_pipeline(mlflow.tracking_uri, model.registered_model_name, model.version)
        reference = build_reference(spec, pipeline, holdout_of(training_set, split_column))
        reference_file = write_reference(mlserver.repository().root, name, model.version, reference)
        context.add_output_metadata(
            {
                "monitoring_reference": dg.MetadataValue.path(str(reference_file)),
                "reference_rows": len(reference),
                "version": record.version,
                "served_model_name": record.served_model_name,
                "model_uri": record.model_uri,
                "previous_version": record.previous_version if record.previous_version is not None else "none",
                "mlserver_loaded": "yes" if record.mlserver_loaded else "no (loads at the next start)",
                "old_model_unloaded": record.old_model_unloaded,
            }
        )
        return record

    return beats_champion, deployment
