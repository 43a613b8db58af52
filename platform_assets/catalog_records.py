"""What the platform writes to the model catalog (:mod:`riverbed.model_catalog`) at each lifecycle step, and what
happens when it cannot.

The model asset records a trained version (:func:`record_training`), the ``beats_champion`` gate its decision
(:func:`record_gate`), every deployment and rollback the new champion (:func:`record_champion`). The catalog lives
in the inference-log database (the DSN the code location already uses for ``pipeline_failures``).

**A write that fails** (database unreachable, a migration missing, a value refused) is never silent: it is logged
at WARNING and counted in ``pipeline_failures`` (component ``model_catalog_<dataset>``, reason
``<step>_not_recorded``). Whether it also fails the run depends on what depends on it:

- a dataset with ``promotion.approval: manual``: the training and gate records are what a reviewer approves, so a
  failure there fails the step (:class:`CatalogNotRecordedError`; the gate check fails, nothing is deployed)
  rather than leaving a candidate nobody can ever approve. With no inference-log database configured at all, a
  manual dataset fails the same way.
- an automatic dataset: the run goes on (MLflow's tags stay the gate's record and the deployment pointer what
  serves); the catalog misses that version and the failure count says so.
- the deployment record is written after the champion moved; failing then would misreport a deployment that
  happened, so it is always WARNING + count.

Versions trained while no inference-log database was configured (``riverbed demo`` trains before its serving stack
starts) are catalogued afterwards from what MLflow recorded (:func:`catalogue_registry`).
"""

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from platform_assets.model_registry import ModelVersionSummary, list_model_versions
from resources.inference_log_resource import InferenceLogResource
from resources.mlflow_resource import quiet_mlflow
from riverbed.model_catalog import (
    CatalogError,
    ModelVersionRecord,
    get_model_version,
    record_deployment,
    record_gate_decision,
    record_trained,
)
from riverbed.names import CHAMPION_ALIAS, PREVIOUS_ALIAS, GateVerdict
from riverbed.pipeline_failures import report_failure
from riverbed.records import ModelRecord, TrainingReason
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs
from riverbed.stack_file import InferenceLogNotAvailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")
GATE_REASON_SEPARATOR = "; "  # GateDecision.reason joins its findings with it


class CatalogNotRecordedError(RuntimeError):
    """A catalog write a manual-approval dataset depends on failed (the message says which and why)."""


def catalog_component(dataset: str) -> str:
    """The ``component`` label of catalog write failures in ``pipeline_failures``."""
    return f"model_catalog_{dataset}"


def requires_approval(spec: DatasetSpec) -> bool:
    return spec.promotion.approval == "manual"


def catalog_dsn(inference_log: InferenceLogResource) -> str | None:
    """The migrated inference-log DSN, or None when none is configured or running (psycopg errors propagate)."""
    try:
        return inference_log.get_dsn()
    except InferenceLogNotAvailableError:
        return None


def _not_recorded(spec: DatasetSpec, step: str, error: BaseException, dsn: str | None, *, required: bool) -> None:
    message = f"{spec.name}: the model catalog could not record the {step}: {type(error).__name__}: {error}"
    report_failure(catalog_component(spec.name), f"{step}_not_recorded", message, dsn=dsn, log=logger)
    if required:
        raise CatalogNotRecordedError(message) from error


def write_catalog(
    spec: DatasetSpec,
    step: str,
    write: Callable[[str], T],
    *,
    dsn: Callable[[], str | None] | str | None,
    required: bool,
) -> T | None:
    """Run ``write(dsn)``; on failure WARNING + ``pipeline_failures``, then raise
    :class:`CatalogNotRecordedError` if ``required`` else return None (see the module docstring)."""
    try:
        resolved = dsn() if callable(dsn) else dsn
    except (psycopg.Error, OSError) as error:  # unreachable, or the migrations could not be applied
        _not_recorded(spec, step, error, None, required=required)
        return None
    if resolved is None:
        if required:
            message = (
                f"{spec.name} needs a reviewer's approval (promotion.approval: manual) but no inference-log database "
                "is configured for the model catalog: set RIVERBED_INFERENCE_LOG_DSN or start the local stack "
                "(riverbed serve / up)"
            )
            report_failure(catalog_component(spec.name), f"{step}_not_recorded", message, dsn=None, log=logger)
            raise CatalogNotRecordedError(message)
        logger.info("%s: no inference-log database configured: the model catalog's %s is not recorded", spec.name, step)
        return None
    try:
        return write(resolved)
    except (psycopg.Error, OSError, CatalogError) as error:
        _not_recorded(spec, step, error, resolved, required=required)
        return None


def record_training(
    spec: DatasetSpec,
    model: ModelRecord,
    model_card_markdown: str,
    *,
    dsn: Callable[[], str | None] | str | None,
) -> ModelVersionRecord | None:
    """Catalogue a trained version: reason, MLflow and Dagster run ids, data commits, holdout metrics and fairness,
    model card."""

    def write(resolved: str) -> ModelVersionRecord:
        return record_trained(
            resolved,
            dataset=spec.name,
            registered_model=model.registered_model_name,
            version=model.version,
            trained_reason=model.reason.value,
            mlflow_run_id=model.mlflow_run_id or None,
            dagster_run_id=model.dagster_run_id or None,
            data_commit_ids=model.data_commit_ids,
            metrics=model.metrics,
            fairness=model.fairness,
            model_card_markdown=model_card_markdown,
            manual_approval=requires_approval(spec),
        )

    return write_catalog(spec, "training", write, dsn=dsn, required=requires_approval(spec))


def record_gate(
    spec: DatasetSpec,
    version: int,
    passed: bool,
    reason: str,
    *,
    dsn: Callable[[], str | None] | str | None,
) -> ModelVersionRecord | None:
    """Record the gate's verdict; a passed candidate of a manual-approval dataset becomes ``pending_approval``."""
    reasons = [part for part in reason.split(GATE_REASON_SEPARATOR) if part.strip()]

    def write(resolved: str) -> ModelVersionRecord:
        return record_gate_decision(
            resolved,
            dataset=spec.name,
            version=version,
            passed=passed,
            reasons=reasons,
            manual_approval=requires_approval(spec),
        )

    return write_catalog(spec, "gate", write, dsn=dsn, required=requires_approval(spec))


def record_champion(
    spec: DatasetSpec, version: int, previous_version: int | None, *, dsn: str | None
) -> list[ModelVersionRecord] | None:
    """Record a deployment or rollback (never fails the caller: the champion already moved)."""

    def write(resolved: str) -> list[ModelVersionRecord]:
        return record_deployment(resolved, dataset=spec.name, version=version, previous_version=previous_version)

    return write_catalog(spec, "deployment", write, dsn=dsn, required=False)


# ------------------------------------------------------------------------------------------------ backfill
def _model_card(tracking_uri: str, run_id: str) -> tuple[dict[str, Any], str]:
    """The run's model card as logged at training: (model_card.json, model_card.md)."""
    quiet_mlflow()
    import mlflow  # seconds to import: only when the catalog is backfilled

    with tempfile.TemporaryDirectory(prefix="riverbed-card-") as scratch:
        files = {
            name: Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=name, dst_path=scratch, tracking_uri=tracking_uri
                )
            ).read_text(encoding="utf-8")
            for name in ("model_card.json", "model_card.md")
        }
    return json.loads(files["model_card.json"]), files["model_card.md"]


def _catalogue_version(
    dsn: str, spec: DatasetSpec, summary: ModelVersionSummary, tracking_uri: str
) -> ModelVersionRecord:
    card, markdown = _model_card(tracking_uri, summary.mlflow_run_id)
    lineage = card.get("lineage", {})
    commits = [str(c) for c in lineage.get("data_commit_ids", [])]
    partitions = [str(p) for p in lineage.get("partitions", [])]
    # The training step records [training set commit, one commit per partition in window order].
    record_trained(
        dsn,
        dataset=spec.name,
        registered_model=summary.registered_model_name,
        version=summary.version,
        trained_reason=summary.reason if summary.reason != "unknown" else TrainingReason.MANUAL.value,
        mlflow_run_id=summary.mlflow_run_id or None,
        dagster_run_id=str(lineage.get("dagster_run_id") or "") or None,
        data_commit_ids=dict(zip(partitions, commits[1:], strict=False)),
        metrics={k: float(v) for k, v in card.get("metrics", {}).items()},
        fairness=card.get("fairness", {}),
        model_card_markdown=markdown,
        manual_approval=requires_approval(spec),
    )
    if summary.gate == GateVerdict.PASSED or summary.gate == GateVerdict.FAILED:
        reasons = [part for part in summary.gate_reason.split(GATE_REASON_SEPARATOR) if part.strip()]
        return record_gate_decision(
            dsn,
            dataset=spec.name,
            version=summary.version,
            passed=summary.gate == GateVerdict.PASSED,
            reasons=reasons,
            manual_approval=requires_approval(spec),
        )
    found = get_model_version(dsn, spec.name, summary.version)
    assert found is not None  # just recorded
    return found


def catalogue_registry(settings: RiverbedSettings, dsn: str, datasets: list[str]) -> list[ModelVersionRecord]:
    """Catalogue the registered versions of ``datasets`` the catalog lacks, from what MLflow recorded (the run's model
    card, the reason and gate tags, the aliases); returns the rows added. For versions trained while no inference-log
    database was configured, e.g. by ``riverbed demo`` before its serving stack starts. A version that cannot be read
    or written is skipped with a WARNING counted in ``pipeline_failures`` (reason ``backfill_not_recorded``)."""
    quiet_mlflow()
    from mlflow.exceptions import MlflowException  # imports mlflow (seconds): only when the catalog is backfilled

    specs = load_specs(settings.specs_dirs)
    tracking_uri = settings.resolved_mlflow_tracking_uri
    known = [d for d in datasets if d in specs]
    try:
        summaries = list_model_versions(settings, known)
    except (MlflowException, OSError) as error:
        for dataset in known:
            _not_recorded(specs[dataset], "backfill", error, dsn, required=False)
        return []
    added: list[ModelVersionRecord] = []
    for summary in sorted(summaries, key=lambda s: (s.dataset, s.version)):  # oldest first
        spec = specs[summary.dataset]
        try:
            if get_model_version(dsn, spec.name, summary.version) is None:
                added.append(_catalogue_version(dsn, spec, summary, tracking_uri))
        except (psycopg.Error, OSError, CatalogError, MlflowException, KeyError, ValueError) as error:
            _not_recorded(spec, "backfill", error, dsn, required=False)
    champions = {s.dataset: s for s in summaries if CHAMPION_ALIAS in s.aliases}
    previous = {s.dataset: s.version for s in summaries if PREVIOUS_ALIAS in s.aliases}
    for dataset, champion in champions.items():
        spec = specs[dataset]
        try:
            current = get_model_version(dsn, dataset, champion.version)
            if current is not None and current.aliases != [CHAMPION_ALIAS]:
                record_deployment(
                    dsn, dataset=dataset, version=champion.version, previous_version=previous.get(dataset)
                )
        except (psycopg.Error, OSError, CatalogError) as error:
            _not_recorded(spec, "backfill", error, dsn, required=False)
    if added:
        logger.info("model catalog: added %d versions from the MLflow registry", len(added))
    return [get_model_version(dsn, r.dataset, r.version) or r for r in added]
