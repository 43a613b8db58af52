"""The promotion gate: blocking check ``beats_champion`` on ``model_<dataset>``.

It scores the candidate and the current champion (MLflow alias ``champion``) on the candidate's frozen holdout,
the test split of the training set it was trained on, read at its pinned commit. It passes when there is no
champion yet, or the candidate beats the champion by at least ``min_improvement`` on the gate metric, and in
both cases only if the candidate's largest demographic-parity difference stays within
``max_fairness_disparity``. The verdict is recorded as tags on the candidate's MLflow model version
(:func:`gate_version_tags`), which the deployment asset reads before it deploys, and in the model catalog
(:mod:`platform_assets.catalog_records`): a passed candidate of a ``promotion.approval: manual`` dataset is recorded
``pending_approval`` there and deployed only once a reviewer approves it.

Both models are unpickled only after their files matched the SHA-256 recorded at training
(:func:`platform_assets.deployment.load_registered_pipeline`). A candidate whose files do not match fails the gate
(tagged ``failed`` with the digests in the reason); a champion whose files do not match fails the check too,
untagged, so nothing is deployed and the serving champion stays.
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from platform_assets.catalog_records import CatalogNotRecordedError, catalog_dsn, record_gate, requires_approval
from platform_assets.deployment import DeploymentError, load_registered_pipeline
from platform_assets.model_registry import registered_aliases
from platform_assets.stages import asset_key
from platform_assets.training import holdout_of, read_training_set
from resources.data_store_resource import VersionedDataStoreResource
from resources.inference_log_resource import InferenceLogResource
from resources.mlflow_resource import MlflowTrackingResource, mlflow_client
from riverbed.errors import ModelIntegrityError
from riverbed.names import CHAMPION_ALIAS, GATE_CHECK_NAME, GateVerdict, MlflowTag, Stage
from riverbed.records import ModelRecord
from riverbed.specs import DatasetSpec, PromotionGateSpec

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"log_loss"})
MIN_GROUP_RECORDS = 30  # smallest protected group (holdout records) whose selection rate the fairness bound uses
GATE_REASON_LIMIT = 4900  # MLflow tag values are bounded (5000 characters)


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


def gate_version_tags(decision: GateDecision) -> dict[str, str]:
    """The tags the gate writes on the candidate's model version (read by ``model_registry.gate_verdict``)."""
    verdict = GateVerdict.PASSED if decision.passed else GateVerdict.FAILED
    return {MlflowTag.GATE.value: verdict.value, MlflowTag.GATE_REASON.value: decision.reason[:GATE_REASON_LIMIT]}


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


def run_promotion_gate(
    spec: DatasetSpec,
    gate: PromotionGateSpec,
    candidate: ModelRecord,
    holdout: pd.DataFrame,
    tracking_uri: str,
) -> GateDecision:
    """Score candidate and champion on the same holdout, decide, and tag the candidate's model version."""
    # xgboost + scikit-learn (~1.8 s): loaded when the gate runs, not with the code location.
    from riverbed.ml.training import evaluate, fairness_report

    client = mlflow_client(tracking_uri)
    name = candidate.registered_model_name
    champion_version = registered_aliases(client, name).get(CHAMPION_ALIAS)
    try:
        pipeline = load_registered_pipeline(tracking_uri, name, candidate.version)
    except ModelIntegrityError as error:
        tags = {
            MlflowTag.GATE.value: GateVerdict.FAILED.value,
            MlflowTag.GATE_REASON.value: str(error)[:GATE_REASON_LIMIT],
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, str(candidate.version), key, value)
        raise
    candidate_metrics = evaluate(spec, pipeline, holdout)
    candidate_fairness = fairness_report(spec, pipeline, holdout)
    champion_metrics: dict[str, float] | None = None
    if champion_version == candidate.version:
        champion_version = None  # re-checking the champion itself: judge it against the bounds alone
    elif champion_version is not None:
        try:
            champion_pipeline = load_registered_pipeline(tracking_uri, name, champion_version)
        except ModelIntegrityError as error:
            if error.expected is not None:
                raise
            # A champion registered before digests were recorded cannot be compared with; a person decides.
            raise ModelIntegrityError(
                f"{error} The champion cannot be compared with, so the candidate is not promoted automatically; "
                f"after reviewing version {candidate.version}, serve it with `riverbed rollback {spec.name} --to "
                f"{candidate.version} --force --reason ...` (recorded on the version)",
                model=error.model,
            ) from error
        try:
            champion_metrics = evaluate(spec, champion_pipeline, holdout)
        except (KeyError, ValueError) as error:
            raise DeploymentError(
                f"the champion {name} version {champion_version} cannot score the candidate's holdout: {error}"
            ) from error
    decision = decide_promotion(gate, candidate_metrics, candidate_fairness, champion_metrics, champion_version)
    for key, value in gate_version_tags(decision).items():
        client.set_model_version_tag(name, str(candidate.version), key, value)
    verdict = GateVerdict.PASSED if decision.passed else GateVerdict.FAILED
    logger.info("%s version %d: gate %s: %s", name, candidate.version, verdict.value, decision.reason)
    return decision


def build_gate_check(spec: DatasetSpec) -> dg.AssetChecksDefinition:
    """The blocking ``beats_champion`` check on ``model_<dataset>``."""
    name = spec.name

    @dg.asset_check(
        asset=asset_key(Stage.MODEL, name),
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
        inference_log: InferenceLogResource,
    ) -> dg.AssetCheckResult:
        training_set = read_training_set(data_store.get_store(), model.training_set_commit_id, name)
        holdout = holdout_of(training_set)

        def catalogue(passed: bool, reason: str) -> None:
            # A manual-approval dataset's candidate must reach the catalog to be approved: its failure fails the
            # check (nothing deployed); an automatic one's is counted and the verdict stands.
            try:
                record_gate(spec, model.version, passed, reason, dsn=lambda: catalog_dsn(inference_log))
            except CatalogNotRecordedError as error:
                raise dg.Failure(description=str(error)) from error

        try:
            decision = run_promotion_gate(spec, gate_thresholds(spec, config), model, holdout, mlflow.tracking_uri)
        except ModelIntegrityError as error:
            logger.warning("%s version %d: gate failed: %s", model.registered_model_name, model.version, error)
            catalogue(False, str(error))
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=str(error),
                metadata={
                    "candidate_version": model.version,
                    "integrity_model": error.model,
                    "integrity_artifact": error.artifact or "",
                    "expected_sha256": error.expected or "none recorded",
                    "actual_sha256": error.actual or "",
                },
            )
        catalogue(decision.passed, decision.reason)
        held = decision.passed and requires_approval(spec)
        return dg.AssetCheckResult(
            passed=decision.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=decision.reason
            + ("; waits for a reviewer's approval (promotion.approval: manual)" if held else ""),
            metadata={
                **decision.metadata(),
                "approval": spec.promotion.approval,
                "candidate_version": model.version,
                "holdout_rows": len(holdout),
                "holdout_commit_id": model.training_set_commit_id,
            },
        )

    return beats_champion
