"""One name per concept: asset keys, job, sensor and schedule names, run tags, MLflow tags and topic names.

Plain strings (no Dagster import), so the gateway, the CLI and the code location all spell them the same way.
Dagster run tags use ``riverbed/<name>``; MLflow tags and versioned-store commit metadata use ``riverbed.<name>``
(MLflow and lakeFS metadata keys conventionally use dots). ``tests/riverbed/test_names.py`` keeps them distinct
and checks that what one side writes is what the other side reads.
"""

from __future__ import annotations

import enum

TOPIC_PREFIX = "riverbed"


class Stage(enum.StrEnum):
    """Lifecycle stages; an asset key is ``<stage>_<dataset>``."""

    RAW = "raw"
    FEATURES = "features"
    TRAINING_SET = "training_set"
    MODEL = "model"
    DEPLOYMENT = "deployment"
    MONITORING = "monitoring"


def asset_name(stage: Stage, dataset: str) -> str:
    """``raw_salary_band``, ``model_machine_failure``..."""
    return f"{Stage(stage).value}_{dataset}"


def ingest_job(dataset: str) -> str:
    return f"ingest_{dataset}"


def train_job(dataset: str) -> str:
    return f"train_{dataset}"


def full_job(dataset: str) -> str:
    return f"full_{dataset}"


def monitor_job(dataset: str) -> str:
    return f"monitor_{dataset}"


def monitor_sensor(dataset: str) -> str:
    return f"monitor_{dataset}_sensor"


def retrain_sensor(dataset: str) -> str:
    return f"retrain_{dataset}"


def retrain_schedule(dataset: str) -> str:
    return f"retrain_{dataset}_schedule"


def kafka_ingest_sensor(dataset: str) -> str:
    return f"kafka_ingest_{dataset}"


def kafka_labels_sensor(dataset: str) -> str:
    return f"kafka_labels_{dataset}"


def deploy_job(dataset: str) -> str:
    """Deploys one approved version of a manual-approval dataset (requested by the approvals sensor)."""
    return f"deploy_{dataset}"


def approvals_sensor(dataset: str) -> str:
    return f"approvals_{dataset}"


class RunTag(enum.StrEnum):
    """Tags on Dagster runs (set by sensors, schedules, the CLI; read by assets and the CLI)."""

    DATASET = "riverbed/dataset"
    REASON = "riverbed/reason"  # a TrainingReason value
    TRIGGER = "riverbed/trigger"  # JSON evidence for the reason (drift chunks, performance, record counts)
    RECORDS = "riverbed/records"
    DEAD_LETTERS = "riverbed/dead_letters"
    LANDING_COMMIT = "riverbed/landing_commit"
    APPROVED_VERSION = "riverbed/approved_version"  # the reviewer-approved model version a deploy run deploys
    REVIEW_ID = "riverbed/review_id"  # the model catalog's review that approved it


class MlflowTag(enum.StrEnum):
    """Tags on MLflow runs and registered model versions."""

    DATASET = "riverbed.dataset"
    DATA_COMMITS = "riverbed.data_commits"  # comma-separated commit ids of the training data
    REASON = "riverbed.reason"  # copied from the Dagster run's RunTag.REASON by the model asset
    TRAINING_SET_COMMIT = "riverbed.training_set_commit"
    GATE = "riverbed.gate"  # GateVerdict value on the model version
    GATE_REASON = "riverbed.gate_reason"
    # JSON {file name: SHA-256 hex} of the version's model artifacts (model.pkl, feature_groups.json), set when
    # the version is registered; every loader checks the files against it before unpickling.
    ARTIFACT_SHA256 = "riverbed.artifact_sha256"
    FORCED_ROLLBACK = (
        "riverbed.forced_rollback"  # JSON {by, at, reason, from_version, outcome}: a rollback past the gate
    )


class GateVerdict(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"


class CommitMetadata(enum.StrEnum):
    """Keys Riverbed adds to versioned-store commit metadata (besides ``dagster.run_id`` and the asset key)."""

    SOURCE = "riverbed.source"
    TOPIC = "riverbed.topic"
    OFFSETS = "riverbed.offsets"
    RECORDS = "riverbed.records"
    DEAD_LETTERS = "riverbed.dead_letters"
    DAYS = "riverbed.days"
    ROWS = "riverbed.rows"
    SOURCE_BRANCH = "riverbed.source_branch"
    MODEL_ARTIFACT_SHA256 = "riverbed.model_artifacts_sha256"  # on the model record's commit: MlflowTag.ARTIFACT_SHA256


class TopicKind(enum.StrEnum):
    RAW = "raw"
    LABELS = "labels"
    PREDICTIONS = "predictions"
    DLQ = "dlq"


def topic_name(dataset: str, kind: TopicKind | str, prefix: str = TOPIC_PREFIX) -> str:
    """``riverbed.<dataset>.<kind>``."""
    return f"{prefix}.{dataset}.{TopicKind(kind).value}"


CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
GATE_CHECK_NAME = "beats_champion"


CONSOLE_PATH = "/console"  # where the gateway serves the oversight console (stack.json: gateway URL + this)


def served_model_name(dataset: str, version: int) -> str:
    """The MLServer model name of one registered version (``salary_band-v3``)."""
    return f"{dataset}-v{version}"
