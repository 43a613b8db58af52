"""Model cards: what a model is for, what data it came from, how well and how fairly it performs."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from riverbed.specs import DatasetSpec

INTENDED_USE_NOTE = (
    "Decision support only: predictions come with per-feature explanations and must be reviewed by a person "
    "before they affect anyone. Not for fully automated decisions about individuals."
)


class ModelCard(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    dataset: str
    model_name: str
    version: int | None = None
    mlflow_run_id: str
    intended_use: str
    training_data_uri: str
    data_commit_ids: list[str]
    partitions: list[str]
    train_rows: int
    test_rows: int
    metrics: dict[str, float]
    fairness: dict[str, dict[str, float]]
    hyperparameters: dict[str, object]
    limitations: list[str]
    dagster_run_id: str
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))


def build_model_card(
    spec: DatasetSpec,
    *,
    model_name: str,
    mlflow_run_id: str,
    training_data_uri: str,
    data_commit_ids: list[str],
    partitions: list[str],
    train_rows: int,
    test_rows: int,
    positive_rate: float,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    hyperparameters: dict[str, object],
    dagster_run_id: str,
    version: int | None = None,
) -> ModelCard:
    limitations = [
        f"Class balance: {positive_rate:.1%} of training records are the positive class "
        f"'{spec.target.positive_class}'; thresholded metrics depend on that prevalence.",
        f"Trained on {len(partitions)} daily partition(s) ({partitions[0]} .. {partitions[-1]}); data outside "
        "that window or with drifted inputs may behave differently."
        if partitions
        else "No partitions recorded.",
    ]
    if spec.protected_attributes:
        limitations.append(
            f"Protected attributes ({', '.join(spec.protected_attributes)}) are model inputs; see the fairness "
            "table before use, and monitor group disparities in production."
        )
    if spec.license:
        limitations.append(f"Data source and licence: {spec.license}. {spec.description}")
    return ModelCard(
        dataset=spec.name,
        model_name=model_name,
        version=version,
        mlflow_run_id=mlflow_run_id,
        intended_use=f"{spec.description} {INTENDED_USE_NOTE}",
        training_data_uri=training_data_uri,
        data_commit_ids=data_commit_ids,
        partitions=partitions,
        train_rows=train_rows,
        test_rows=test_rows,
        metrics=metrics,
        fairness=fairness,
        hyperparameters=hyperparameters,
        limitations=limitations,
        dagster_run_id=dagster_run_id,
    )


def render_markdown(card: ModelCard) -> str:
    lines = [
        f"# Model card: {card.model_name}" + (f" v{card.version}" if card.version else ""),
        "",
        f"Dataset `{card.dataset}`; MLflow run `{card.mlflow_run_id}`; Dagster run `{card.dagster_run_id}`; "
        f"created {card.created_at:%Y-%m-%d %H:%M} UTC.",
        "",
        "## Intended use",
        "",
        card.intended_use,
        "",
        "## Data lineage",
        "",
        f"- Training set: `{card.training_data_uri}` ({card.train_rows} train / {card.test_rows} test rows)",
        f"- Partitions: {', '.join(card.partitions)}",
        "- Data commits:",
        *[f"  - `{commit}`" for commit in card.data_commit_ids],
        "",
        "## Metrics (test split)",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| {name} | {value:.4f} |" for name, value in sorted(card.metrics.items())],
        "",
        "## Fairness",
        "",
        "| protected attribute | demographic parity difference | equalized odds difference |",
        "|---|---:|---:|",
        *[
            f"| {attr} | {v.get('demographic_parity_difference', float('nan')):.4f} | "
            f"{v.get('equalized_odds_difference', float('nan')):.4f} |"
            for attr, v in card.fairness.items()
        ],
        "",
        "## Hyperparameters",
        "",
        *[f"- {name}: {value}" for name, value in sorted(card.hyperparameters.items())],
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card.limitations],
        "",
    ]
    return "\n".join(lines)
