"""Model-catalog rows as the platform writes them, for the tests of the catalog and of manual promotion: a trained
version (``record_trained``) and a candidate that passed the gate of a manual-approval dataset and was approved."""

from __future__ import annotations

from riverbed.model_catalog import ModelReview, record_approval, record_gate_decision, record_trained

FAIRNESS = {"sex": {"selection_rate[F]": 0.25, "selection_rate[M]": 0.5, "demographic_parity_difference": 0.25}}


def catalogue_trained(
    dsn: str, dataset: str, version: int, *, run: str | None = None, manual: bool = False, reason: str = "drift"
) -> None:
    """Version ``version`` of ``dataset`` as training records it (MLflow run ``run<version>`` unless ``run``)."""
    record_trained(
        dsn,
        dataset=dataset,
        registered_model=f"riverbed-{dataset}",
        version=version,
        trained_reason=reason,
        mlflow_run_id=run or f"run{version}",
        dagster_run_id=f"dag{version}",
        data_commit_ids={"2026-11-01": f"c{version}"},
        metrics={"roc_auc": 0.75 + version / 100, "f1": 0.5},
        fairness={**FAIRNESS, "age": {"selection_rate[young]": float("nan")}},
        model_card_markdown=f"# {dataset} v{version}\n<script>x</script>",
        manual_approval=manual,
    )


def catalogue_approved(dsn: str, dataset: str, version: int, *, key_id: str = "k") -> ModelReview:
    """A manual-approval candidate that passed the gate (reason "ok") and was approved (action ``a<version>``)."""
    catalogue_trained(dsn, dataset, version, manual=True)
    record_gate_decision(dsn, dataset=dataset, version=version, passed=True, reasons=["ok"], manual_approval=True)
    return record_approval(
        dsn, dataset=dataset, version=version, decision="approve", action_id=f"a{version}", key_id=key_id, reason="ok"
    )
