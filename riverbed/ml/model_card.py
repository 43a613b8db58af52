"""Model cards: what a model is for, what data it came from, how well and how fairly it performs, its limits."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from riverbed.records import DataLineage
from riverbed.specs import DatasetSpec, GeneratorSourceSpec

INTENDED_USE_NOTE = (
    "Decision support only: predictions come with per-feature explanations and must be reviewed by a person "
    "before they affect anyone. Not for automated decisions about individuals without human review."
)
DISPARITY_NOTE_THRESHOLD = 0.1
SMALL_GROUP = 30
SMALL_TEST_SET = 1000
_GROUP_KEY = re.compile(r"^(?P<metric>[a-z_]+)\[(?P<group>.*)\]$")


class ModelCard(BaseModel):
    """One registered model version, described for its users and for auditors."""

    model_config = ConfigDict(protected_namespaces=())

    dataset: str
    dataset_version: int
    model_name: str
    version: int | None = None
    mlflow_run_id: str
    intended_use: str
    lineage: DataLineage
    metrics: dict[str, float]
    fairness: dict[str, dict[str, float]]
    hyperparameters: dict[str, Any]
    limitations: list[str]
    artifact_sha256: dict[str, str] = Field(
        default_factory=dict, description="File name -> SHA-256 of the registered artifacts (model.pkl, ...)."
    )
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))


def build_model_card(
    spec: DatasetSpec,
    *,
    model_name: str,
    mlflow_run_id: str,
    lineage: DataLineage,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    hyperparameters: dict[str, Any],
    train_positive_rate: float,
    version: int | None = None,
    artifact_sha256: dict[str, str] | None = None,
) -> ModelCard:
    """A card whose intended use and limitations are written from the spec, the data and the results."""
    return ModelCard(
        dataset=spec.name,
        dataset_version=spec.version,
        model_name=model_name,
        version=version,
        mlflow_run_id=mlflow_run_id,
        intended_use=f"{spec.description} {INTENDED_USE_NOTE}",
        lineage=lineage,
        metrics=metrics,
        fairness=fairness,
        hyperparameters=hyperparameters,
        limitations=limitations(spec, lineage, metrics, fairness, train_positive_rate),
        artifact_sha256=dict(artifact_sha256 or {}),
    )


def limitations(
    spec: DatasetSpec,
    lineage: DataLineage,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    train_positive_rate: float,
) -> list[str]:
    """Plain-language limits: class balance, data window, data origin, protected inputs, disparities."""
    notes = []
    positive = spec.target.positive_class
    if 0.0 < train_positive_rate < 1.0:
        ratio = (1 - train_positive_rate) / train_positive_rate
        notes.append(
            f"Class balance: {train_positive_rate:.1%} of the {lineage.train_rows} training records are the "
            f"positive class '{positive}' ({ratio:.1f} negatives per positive); accuracy alone flatters the "
            "model, so read F1, ROC AUC and log loss too."
        )
    if lineage.partitions:
        window = sorted(lineage.partitions)
        notes.append(
            f"Data window: {len(window)} daily partition(s), {window[0]} to {window[-1]}; records from outside "
            "that window or with drifted inputs may be scored less well."
        )
    if spec.event_time.assign_start is not None:
        notes.append(
            f"Event times are assigned (records spread over {spec.event_time.assign_days} days from "
            f"{spec.event_time.assign_start}), not observed: partitions replay the data, they are not real time."
        )
    if isinstance(spec.source, GeneratorSourceSpec):
        notes.append(
            f"The records are generated ({spec.source.function}), not observed; the metrics say nothing about "
            "performance on real cases."
        )
    years = sorted(set(re.findall(r"\b(?:19|20)\d{2}\b", spec.description)))
    if years:
        notes.append(
            f"The data describe {', '.join(years)} ({spec.description.rstrip('.')}); the relationships the model "
            "learned may no longer hold, and categories may be outdated."
        )
    if spec.license:
        notes.append(f"Data source and licence: {spec.license}.")
    if spec.protected_attributes:
        notes.append(
            f"Protected attributes ({', '.join(spec.protected_attributes)}) are model inputs: predictions can "
            "differ by group for that reason alone. Check the fairness table before use and monitor group "
            "disparities in production."
        )
    for attribute, values in fairness.items():
        gap = values.get("demographic_parity_difference", 0.0)
        if gap > DISPARITY_NOTE_THRESHOLD:
            notes.append(
                f"Selection rates differ by {gap:.2f} between groups of '{attribute}' on the test split "
                "(demographic parity difference)."
            )
        small = sorted(
            match["group"]
            for key, value in values.items()
            if (match := _GROUP_KEY.match(key)) and match["metric"] == "count" and value < SMALL_GROUP
        )
        if small:
            notes.append(
                f"Fairness figures for '{attribute}' groups {small} rest on fewer than {SMALL_GROUP} test records "
                "each; treat them as indicative."
            )
    if lineage.test_rows < SMALL_TEST_SET:
        notes.append(f"Metrics come from {lineage.test_rows} test records; expect sizeable sampling noise.")
    if spec.categorical_features:
        notes.append(
            "Missing or unknown category values are encoded as 'none of the known categories'; inputs outside "
            "the spec's categories get no signal from that feature."
        )
    return notes


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _group_rows(values: dict[str, float]) -> list[list[object]]:
    groups: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        match = _GROUP_KEY.match(key)
        if match:
            groups.setdefault(match["group"], {})[match["metric"]] = value
    nan = float("nan")
    return [
        [
            group,
            int(figures["count"]) if "count" in figures else "n/a",
            figures.get("selection_rate", nan),
            figures.get("accuracy", nan),
        ]
        for group, figures in sorted(groups.items())
    ]


def render_markdown(card: ModelCard) -> str:
    """A readable card: summary, intended use, lineage, metrics, fairness, hyperparameters, limitations."""
    title = f"# Model card: {card.model_name}" + (f" v{card.version}" if card.version is not None else "")
    return "\n".join(
        [
            title,
            "",
            *_summary_section(card),
            *_section("Intended use", [card.intended_use, ""]),
            *_section("Data lineage", _lineage_table(card.lineage)),
            *_section("Artifact integrity (SHA-256)", _integrity_table(card.artifact_sha256)),
            *_section("Metrics (test split)", _metrics_table(card.metrics)),
            *_section("Fairness (test split)", _fairness_tables(card.fairness)),
            *_section("Hyperparameters", _hyperparameters_table(card.hyperparameters)),
            *_section("Limitations", [*(f"- {item}" for item in card.limitations), ""]),
        ]
    )


def _section(heading: str, body: list[str]) -> list[str]:
    return [f"## {heading}", "", *body]


def _summary_section(card: ModelCard) -> list[str]:
    rows: list[list[object]] = [
        ["Dataset", f"`{card.dataset}` (spec version {card.dataset_version})"],
        ["Registered model", f"`{card.model_name}` version {card.version}"],
        ["MLflow run", f"`{card.mlflow_run_id}`"],
        ["Dagster run", f"`{card.lineage.dagster_run_id}`"],
        ["Created", f"{card.created_at:%Y-%m-%d %H:%M:%S %Z}".strip()],
    ]
    return _table(["", ""], rows, numeric_from=2)


def _lineage_table(lineage: DataLineage) -> list[str]:
    rows: list[list[object]] = [
        ["Training data", f"`{lineage.training_data_uri}`"],
        ["Test data", f"`{lineage.test_data_uri}`"],
        ["Rows", f"{lineage.train_rows} train / {lineage.test_rows} test"],
        ["Partitions", ", ".join(lineage.partitions) or "none recorded"],
        ["Data commits", ", ".join(f"`{c}`" for c in lineage.data_commit_ids) or "none recorded"],
    ]
    return _table(["", ""], rows, numeric_from=2)


def _integrity_table(digests: dict[str, str]) -> list[str]:
    if not digests:
        return ["No artifact digests recorded: loaders refuse this version.", ""]
    rows: list[list[object]] = [[f"`{name}`", f"`{digest}`"] for name, digest in sorted(digests.items())]
    return [
        "Every loader (promotion gate, deployment, monitoring reference, MLServer runtime, rollback) checks the "
        "files against these digests before unpickling.",
        "",
        *_table(["file", "SHA-256"], rows, numeric_from=2),
    ]


def _metrics_table(metrics: dict[str, float]) -> list[str]:
    rows: list[list[object]] = [
        [name, int(value) if name.startswith("n_") and math.isfinite(value) else float(value)]
        for name, value in sorted(metrics.items())
    ]
    return _table(["metric", "value"], rows)


def _fairness_tables(fairness: dict[str, dict[str, float]]) -> list[str]:
    """The disparity table, then one table per protected attribute with per-group figures."""
    if not fairness:
        return ["The dataset declares no protected attributes.", ""]
    nan = float("nan")
    lines = _table(
        ["protected attribute", "demographic parity difference", "equalized odds difference"],
        [
            [
                attribute,
                float(values.get("demographic_parity_difference", nan)),
                float(values.get("equalized_odds_difference", nan)),
            ]
            for attribute, values in fairness.items()
        ],
    )
    for attribute, values in fairness.items():
        rows = _group_rows(values)
        if rows:
            lines += [f"### By group: {attribute}", ""]
            lines += _table(["group", "test records", "selection rate", "accuracy"], rows)
    return lines


def _hyperparameters_table(hyperparameters: dict[str, Any]) -> list[str]:
    rows: list[list[object]] = [
        [name, f"{value:.6g}" if isinstance(value, float) else value] for name, value in sorted(hyperparameters.items())
    ]
    return _table(["name", "value"], rows)
