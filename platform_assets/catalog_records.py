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
"""

import logging
from collections.abc import Callable
from typing import TypeVar

import psycopg

from resources.inference_log_resource import InferenceLogResource
from riverbed.model_catalog import (
    CatalogError,
    ModelVersionRecord,
    record_deployment,
    record_gate_decision,
    record_trained,
)
from riverbed.pipeline_failures import report_failure
from riverbed.records import ModelRecord
from riverbed.specs import DatasetSpec
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
