"""Log one training as one MLflow run and register the model as a new version.

The run holds params, metrics (fairness included), the Dagster run id, dataset inputs whose source is
the commit-pinned ``lakefs://`` URI, the model (cloudpickle: the format the serving runtime loads), a
signature and input example, the model card and the encoded-feature groups used for explanations.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from platform_assets.training.model_card import build_model_card, render_markdown
from platform_assets.training.model_training import TrainingOutcome, encoded_feature_groups, model_inputs
from riverbed.specs import DatasetSpec

FEATURE_GROUPS_ARTIFACT = "feature_groups.json"


class ModelRegistryError(RuntimeError):
    """MLflow could not record the run or register the model."""


@dataclass(frozen=True)
class TrainingLineage:
    training_data_uri: str
    test_data_uri: str
    data_commit_ids: list[str]
    dagster_run_id: str
    partitions: list[str]


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    run_id: str
    model_uri: str
    artifact_uri: str


def log_and_register(
    spec: DatasetSpec,
    outcome: TrainingOutcome,
    metrics: dict[str, float],
    fairness: dict[str, dict[str, float]],
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    lineage: TrainingLineage,
    tracking_uri: str,
    registry_model_name: str,
    experiment_name: str,
    tags: dict[str, str] | None = None,
) -> RegisteredModel:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        target = spec.target.name
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-train") as run:
            run_id = run.info.run_id
            params = outcome.params.model_dump() if outcome.params else {}
            mlflow.log_params({**{f"hp.{k}": v for k, v in outcome.best_params.items()}, **params})
            mlflow.log_metrics({k: v for k, v in metrics.items() if pd.notna(v)})
            mlflow.log_metric("validation_score", outcome.best_validation_score)
            for attribute, values in fairness.items():
                for name in ("demographic_parity_difference", "equalized_odds_difference"):
                    mlflow.log_metric(f"fairness.{attribute}.{name}", values[name])
            mlflow.set_tags(
                {
                    "dagster.run_id": lineage.dagster_run_id,
                    "riverbed.dataset": spec.name,
                    "riverbed.data_commits": ",".join(lineage.data_commit_ids),
                    **(tags or {}),
                }
            )
            for frame, uri, context in (
                (train, lineage.training_data_uri, "training"),
                (test, lineage.test_data_uri, "testing"),
            ):
                dataset = mlflow.data.from_pandas(
                    _loggable(frame), source=lakefs_dataset_source(uri), name=f"{spec.name}-{context}", targets=target
                )
                mlflow.log_input(dataset, context=context)

            inputs = model_inputs(spec, train)
            example = inputs.head(3)
            with warnings.catch_warnings():  # numeric inputs are float64 on purpose; the hint does not apply
                warnings.simplefilter("ignore", UserWarning)
                signature = infer_signature(example, outcome.pipeline.predict_proba(example))
            info = mlflow.sklearn.log_model(
                outcome.pipeline,
                pip_requirements=serving_requirements(),
                name="model",
                signature=signature,
                input_example=example,
                serialization_format="cloudpickle",
                registered_model_name=registry_model_name,
            )
            version = int(info.registered_model_version)
            card = build_model_card(
                spec,
                model_name=registry_model_name,
                version=version,
                mlflow_run_id=run_id,
                training_data_uri=lineage.training_data_uri,
                data_commit_ids=lineage.data_commit_ids,
                partitions=lineage.partitions,
                train_rows=len(train),
                test_rows=len(test),
                positive_rate=float(train[target].mean()) if len(train) else 0.0,
                metrics=metrics,
                fairness=fairness,
                hyperparameters=outcome.best_params,
                dagster_run_id=lineage.dagster_run_id,
            )
            with tempfile.TemporaryDirectory() as scratch:
                folder = Path(scratch)
                (folder / "model_card.md").write_text(render_markdown(card))
                (folder / "model_card.json").write_text(card.model_dump_json(indent=2))
                (folder / FEATURE_GROUPS_ARTIFACT).write_text(
                    json.dumps(encoded_feature_groups(outcome.pipeline, spec), indent=2)
                )
                mlflow.log_artifacts(str(folder))
            artifact_uri = run.info.artifact_uri
        for key, value in {
            "dataset": spec.name,
            "mlflow_run_id": run_id,
            "data_commit_ids": ",".join(lineage.data_commit_ids),
            "dagster.run_id": lineage.dagster_run_id,
            **(tags or {}),
        }.items():
            client.set_model_version_tag(registry_model_name, str(version), key, value)
    except ModelRegistryError:
        raise
    except Exception as error:  # MLflow raises many types; surface one with a plain message
        raise ModelRegistryError(
            f"could not record the {spec.name} training in MLflow at {tracking_uri}: {error}"
        ) from error
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return RegisteredModel(
        name=registry_model_name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{registry_model_name}/{version}",
        artifact_uri=artifact_uri,
    )


def serving_requirements() -> list[str]:
    """Exactly what loading the pipeline needs (pinned to the installed versions), not the whole project."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle")]


def lakefs_dataset_source(uri: str):
    """An MLflow dataset source whose recorded source is the commit-pinned ``lakefs://`` URI itself."""
    from mlflow.data.dataset_source import DatasetSource

    class LakeFSDatasetSource(DatasetSource):
        def __init__(self, source_uri: str) -> None:
            self.uri = source_uri

        @staticmethod
        def _get_source_type() -> str:
            return "lakefs"

        def load(self) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: object) -> bool:
            return isinstance(raw_source, str) and raw_source.startswith("lakefs://")

        @classmethod
        def _resolve(cls, raw_source: object) -> DatasetSource:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, str]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict) -> DatasetSource:
            return cls(source_dict["uri"])

    return LakeFSDatasetSource(uri)


def _loggable(frame: pd.DataFrame) -> pd.DataFrame:
    """MLflow's dataset digest wants plain columns: categories as strings, datetimes as strings."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype("object")
        elif pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].astype(str)
        elif pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].astype("object")
    return out
