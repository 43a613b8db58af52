"""Shared set-up for gateway tests: a quickly trained salary_band model installed in a model repository."""

import datetime as dt
import json
import uuid
from pathlib import Path

import cloudpickle
import pandas as pd

from riverbed.cli.demo_serving import gateway_records
from riverbed.ml.features import build_features
from riverbed.ml.training import build_pipeline, encoded_feature_groups, model_inputs
from riverbed.model_repository import DeployedModel, ModelRepository
from riverbed.names import served_model_name
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import load_source_records
from riverbed.specs import DatasetSpec, load_specs
from riverbed.validation import validate_records


def salary_band_spec() -> DatasetSpec:
    return load_specs([PROJECT_ROOT / "datasets"])["salary_band"]


def salary_band_features(rows: int = 3000) -> pd.DataFrame:
    spec = salary_band_spec()
    records = load_source_records(spec).head(rows)
    return build_features(spec, validate_records(spec, records).valid).reset_index(drop=True)


def api_records(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict]:
    """Rows as the gateway's JSON records (None for missing values)."""
    return gateway_records(spec, frame)


def install_trained_model(
    repository: ModelRepository, version: int, trees: int, folder: Path, *, point: bool = True
) -> DeployedModel:
    """Train a small pipeline, install it as ``salary_band-v<version>`` and point the deployment at it."""
    spec = salary_band_spec()
    frame = salary_band_features()
    pipeline = build_pipeline(spec, {"n_estimators": trees, "max_depth": 3}, seed=version)
    pipeline.fit(model_inputs(spec, frame), frame[spec.target.name])
    folder.mkdir(parents=True, exist_ok=True)
    model_file, groups_file = folder / f"model-{version}.pkl", folder / f"groups-{version}.json"
    model_file.write_bytes(cloudpickle.dumps(pipeline))
    groups_file.write_text(json.dumps(encoded_feature_groups(pipeline, spec)))
    info = DeployedModel(
        dataset=spec.name,
        served_model_name=served_model_name(spec.name, version),
        registered_model_name="riverbed-salary_band",
        version=version,
        mlflow_run_id=uuid.uuid4().hex,
        model_uri=f"models:/riverbed-salary_band/{version}",
        training_set_commit_id=uuid.uuid4().hex,
        data_commit_ids={"2026-10-01": uuid.uuid4().hex, "2026-10-02": uuid.uuid4().hex},
        dagster_run_id=str(uuid.uuid4()),
        classes=list(spec.target.classes),
        features=spec.feature_names,
        deployed_at=dt.datetime.now(dt.UTC),
    )
    repository.install(model_file, groups_file, info, numeric_features=spec.numeric_features)
    if point:
        repository.set_deployment(info)
    return info
