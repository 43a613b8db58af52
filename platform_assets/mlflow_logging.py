"""Log one training as one MLflow run and register its model as a new version.

The run holds params, metrics (fairness included), the Dagster run id, dataset inputs whose source is the
commit-pinned ``lakefs://`` URI, the model (cloudpickle: the format the serving runtime loads, not MLflow
3's skops default), a signature and input example, the model card and the encoded-feature groups used for
explanations. The SHA-256 of the stored model.pkl and feature_groups.json (read back from the artifact store right
after the upload) is recorded as the version tag :attr:`MlflowTag.ARTIFACT_SHA256`, in the model card and in the
returned record; every loader checks the files against it before unpickling (:mod:`riverbed.ml.integrity`).

``mlflow`` is imported inside functions only: it costs seconds to import (~1.3 s warm, ~6 s cold); this module
itself imports ``riverbed.ml.training`` (xgboost + scikit-learn, ~1.8 s), so the model asset imports it when it
runs, not when the code location loads.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd

from resources.mlflow_resource import mlflow_client, quiet_mlflow
from riverbed.ml.integrity import ARTIFACT_FILES, FEATURE_GROUPS_FILE, format_digests, sha256_file
from riverbed.ml.model_card import build_model_card, render_markdown
from riverbed.ml.training import TrainingOutcome, encoded_feature_groups, model_inputs
from riverbed.names import MlflowTag
from riverbed.records import DataLineage
from riverbed.specs import DatasetSpec

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.data.dataset_source import DatasetSource

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
FEATURE_GROUPS_ARTIFACT = FEATURE_GROUPS_FILE
MODEL_CARD_MARKDOWN = "model_card.md"
MODEL_CARD_JSON = "model_card.json"
OPTUNA_TRIALS_ARTIFACT = "optuna_trials.json"
FAIRNESS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
SERVING_PACKAGES = ("xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle")
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# Run tags besides the caller's (riverbed.names.MlflowTag); version tags name the same lineage for the registry UI.
DAGSTER_RUN_ID_TAG = "dagster.run_id"


class ModelRegistryError(RuntimeError):
    """MLflow could not record the run or register the model."""


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and where its run and files live."""

    name: str
    version: int
    run_id: str
    model_uri: str  # models:/<name>/<version>
    artifact_uri: str  # the run's artifacts: model card, feature groups, trials
    model_storage_uri: str  # where the model files themselves are stored (model.pkl, MLmodel, extra_files/)
    artifact_sha256: dict[str, str]  # file name -> SHA-256 of model.pkl and feature_groups.json as stored
    model_card_markdown: str = ""  # the model card as logged (model_card.md), for the model catalog


def log_and_register(
    spec: DatasetSpec,
    outcome: TrainingOutcome,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    lineage: DataLineage,
    tracking_uri: str,
    registry_model_name: str,
    experiment_name: str,
    tags: dict[str, str] | None = None,
    artifact_location: str | None = None,
) -> RegisteredModel:
    """Record the training as one MLflow run and register the pipeline as the next model version.

    ``artifact_location`` applies only if the experiment does not exist yet. Set it with a SQLite store:
    MLflow otherwise puts artifacts in ``./mlruns`` under the current working directory.
    """
    quiet_mlflow()
    import mlflow  # seconds to import: only when a training is logged
    from mlflow.exceptions import MlflowException

    try:
        with _tracking_scope(tracking_uri):
            client = mlflow_client(tracking_uri)
            experiment_id = _experiment_id(client, experiment_name, artifact_location)
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-train") as run:
                run_id = run.info.run_id
                version, digests, card_markdown = _log_run(
                    spec, outcome, metrics, fairness, train, test, lineage, registry_model_name, run_id, tags or {}
                )
                artifact_uri = run.info.artifact_uri
            version_tags = {
                "dataset": spec.name,
                "mlflow_run_id": run_id,
                "data_commit_ids": ",".join(lineage.data_commit_ids),
                DAGSTER_RUN_ID_TAG: lineage.dagster_run_id,
                MlflowTag.ARTIFACT_SHA256.value: format_digests(digests),
            }
            for key, value in version_tags.items():
                client.set_model_version_tag(registry_model_name, str(version), key, value)
            model_storage_uri = client.get_model_version_download_uri(registry_model_name, str(version))
    except (MlflowException, OSError) as error:
        raise ModelRegistryError(
            f"could not record the {spec.name} training in MLflow at {tracking_uri}: {_first_line(error)}"
        ) from error
    logger.info("%s: registered %s version %d (run %s)", spec.name, registry_model_name, version, run_id)
    return RegisteredModel(
        name=registry_model_name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{registry_model_name}/{version}",
        artifact_uri=artifact_uri,
        model_storage_uri=model_storage_uri,
        artifact_sha256=digests,
        model_card_markdown=card_markdown,
    )


def _log_run(
    spec: DatasetSpec,
    outcome: TrainingOutcome,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    train: pd.DataFrame,
    test: pd.DataFrame,
    lineage: DataLineage,
    registry_model_name: str,
    run_id: str,
    tags: dict[str, str],
) -> tuple[int, dict[str, str], str]:
    """Everything inside the active run; returns the new model version, its artifacts' SHA-256 and the model card
    (Markdown)."""
    import mlflow  # seconds to import (see the module docstring)
    from mlflow.data.pandas_dataset import from_pandas

    training_params = outcome.params.model_dump() if outcome.params else {}
    mlflow.log_params(
        {**{f"hp.{k}": v for k, v in outcome.best_params.items()}, **training_params, "trials_run": outcome.trials}
    )
    numbers = {**metrics, "validation_score": outcome.best_validation_score}
    for attribute, values in fairness.items():
        numbers |= {f"fairness.{attribute}.{name}": values[name] for name in FAIRNESS_METRICS if name in values}
    mlflow.log_metrics({k: float(v) for k, v in numbers.items() if math.isfinite(v)})
    mlflow.set_tags(
        {
            DAGSTER_RUN_ID_TAG: lineage.dagster_run_id,
            MlflowTag.DATASET: spec.name,
            MlflowTag.DATA_COMMITS: ",".join(lineage.data_commit_ids),
            **tags,
        }
    )
    for frame, uri, context in (
        (train, lineage.training_data_uri, "training"),
        (test, lineage.test_data_uri, "testing"),
    ):
        dataset = from_pandas(
            _loggable(frame), source=lakefs_dataset_source(uri), name=f"{spec.name}-{context}", targets=spec.target.name
        )
        mlflow.log_input(dataset, context=context)

    version, digests = _log_model(spec, outcome, train, registry_model_name)
    card = build_model_card(
        spec,
        model_name=registry_model_name,
        version=version,
        mlflow_run_id=run_id,
        lineage=lineage,
        metrics=metrics,
        fairness=fairness,
        hyperparameters=outcome.best_params,
        train_positive_rate=float(train[spec.target.name].mean()),
        artifact_sha256=digests,
    )
    card_markdown = render_markdown(card)
    mlflow.log_text(card_markdown, MODEL_CARD_MARKDOWN)
    mlflow.log_text(card.model_dump_json(indent=2), MODEL_CARD_JSON)
    mlflow.log_text(json.dumps(outcome.trial_table, indent=2, default=str), OPTUNA_TRIALS_ARTIFACT)
    return version, digests, card_markdown


def _log_model(
    spec: DatasetSpec, outcome: TrainingOutcome, train: pd.DataFrame, registry_model_name: str
) -> tuple[int, dict[str, str]]:
    """Log the pipeline (cloudpickle, signature, feature groups) in the active run and register it; the version
    and the SHA-256 of its stored model.pkl and feature_groups.json."""
    import mlflow  # seconds to import (see the module docstring)
    from mlflow.models import infer_signature

    groups = encoded_feature_groups(outcome.pipeline, spec)
    inputs = model_inputs(spec, train)
    with warnings.catch_warnings():  # numeric inputs are float64 on purpose; the integer-column hint does not apply
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(inputs, outcome.pipeline.predict_proba(inputs.head(100)))
    with tempfile.TemporaryDirectory() as scratch:
        groups_file = Path(scratch) / FEATURE_GROUPS_ARTIFACT
        groups_file.write_text(json.dumps(groups, indent=2))
        info = mlflow.sklearn.log_model(
            outcome.pipeline,
            name=MODEL_ARTIFACT_PATH,
            signature=signature,
            input_example=inputs.head(3),
            serialization_format="cloudpickle",  # MLflow 3 defaults to skops, which mlserver cannot load
            pyfunc_predict_fn="predict_proba",  # matches the signature: pyfunc returns class probabilities
            pip_requirements=serving_requirements(),  # skips MLflow's slow requirement inference
            extra_files=[str(groups_file)],  # the model directory is self-contained for explanations
            metadata={"dataset": spec.name, "features": spec.feature_names},
            registered_model_name=registry_model_name,
        )
        mlflow.log_artifact(str(groups_file))
        groups_digest = sha256_file(groups_file)
    if info.registered_model_version is None:
        raise ModelRegistryError(f"MLflow logged the model but did not register it as {registry_model_name!r}")
    version = int(info.registered_model_version)
    digests = stored_artifact_digests(registry_model_name, version)
    if digests[FEATURE_GROUPS_FILE] != groups_digest:
        raise ModelRegistryError(
            f"{registry_model_name} version {version}: the stored {FEATURE_GROUPS_FILE} has SHA-256 "
            f"{digests[FEATURE_GROUPS_FILE]}, not {groups_digest} as written; the artifact store changed it"
        )
    return version, digests


def stored_artifact_digests(registry_model_name: str, version: int) -> dict[str, str]:
    """SHA-256 of a registered version's model.pkl and feature_groups.json, read back from the artifact store.

    MLflow pickles the model itself (its bytes differ from ``cloudpickle.dumps``), so the digest is taken of what
    it stored, right after the upload, in the training process.
    """
    import mlflow  # seconds to import (see the module docstring)

    client = mlflow.MlflowClient()
    uri = client.get_model_version_download_uri(registry_model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="riverbed-digest-") as scratch:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch))
        found = {name: next(iter(sorted(local.rglob(name))), None) for name in ARTIFACT_FILES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise ModelRegistryError(f"{registry_model_name} version {version} at {uri} lacks {', '.join(missing)}")
        return {name: sha256_file(path) for name, path in found.items() if path is not None}


@contextmanager
def _tracking_scope(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at ``tracking_uri``, then restore what was there.

    ``set_tracking_uri``/``set_registry_uri`` also export ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``;
    the previous values (or their absence) are put back so nothing leaks to later callers.
    """
    import mlflow  # seconds to import (see the module docstring)

    saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        # None clears MLflow's own setting too (MLflow handles it; its annotations omit it).
        mlflow.set_tracking_uri(cast(str, saved["MLFLOW_TRACKING_URI"]))
        mlflow.set_registry_uri(cast(str, saved["MLFLOW_REGISTRY_URI"]))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if experiment.lifecycle_stage != "active":
        raise ModelRegistryError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
    return experiment.experiment_id


def serving_requirements() -> list[str]:
    """Exactly what loading the pipeline needs (pinned to the installed versions), not the whole project."""
    return [f"{name}=={installed_version(name)}" for name in SERVING_PACKAGES]


@functools.cache
def _lakefs_source_class() -> Callable[[str], DatasetSource]:
    from mlflow.data.dataset_source import DatasetSource  # defined on first use: importing mlflow takes seconds

    class LakeFSDatasetSource(DatasetSource):
        """A dataset source recorded as its commit-pinned ``lakefs://`` URI."""

        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "lakefs"

        def load(self) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: object) -> bool:
            return isinstance(raw_source, str) and raw_source.startswith("lakefs://")

        @classmethod
        def _resolve(cls, raw_source: object) -> LakeFSDatasetSource:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, str]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[str, str]) -> LakeFSDatasetSource:
            return cls(source_dict["uri"])

    return LakeFSDatasetSource


def lakefs_dataset_source(uri: str) -> DatasetSource:
    """An MLflow dataset source for a ``lakefs://`` URI (MLflow has no resolver for that scheme)."""
    return _lakefs_source_class()(uri)


def _loggable(frame: pd.DataFrame) -> pd.DataFrame:
    """MLflow's dataset digest and schema want plain columns: categories and datetimes become objects/strings."""
    out = frame.copy()
    for column in out.columns:
        dtype = out[column].dtype
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
            out[column] = out[column].astype("object")
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            out[column] = out[column].astype(str)
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
