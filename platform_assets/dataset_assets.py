"""The asset graph of one dataset, assembled from its spec by one small factory per stage.

``raw_<dataset>`` (daily partitions, :mod:`platform_assets.raw`) -> ``features_<dataset>`` (+ blocking checks,
:mod:`platform_assets.features`) -> ``training_set_<dataset>`` (window of partitions, frozen holdout) ->
``model_<dataset>`` (MLflow run + registered version, :mod:`platform_assets.training`; blocking gate
``beats_champion``, :mod:`platform_assets.promotion_gate`) -> ``deployment_<dataset>`` (champion alias +
MLServer, :mod:`platform_assets.deployment`), and the jobs ``ingest_``, ``train_`` and ``full_<dataset>``.
Asset bodies stay thin: the work is in plain functions of those modules and of ``riverbed.ml``.
"""

from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from platform_assets.deployment import build_deployment_asset
from platform_assets.features import build_features_asset
from platform_assets.promotion_gate import build_gate_check
from platform_assets.raw import build_raw_asset
from platform_assets.stages import daily_partitions
from platform_assets.training import build_model_asset, build_training_set_asset
from riverbed import names
from riverbed.specs import DatasetSpec


@dataclass(frozen=True)
class DatasetDefinitions:
    """One dataset's assets, gate and jobs; sensors and schedules take the jobs (and keys) from here."""

    raw: dg.AssetsDefinition
    features: dg.AssetsDefinition
    training_set: dg.AssetsDefinition
    model: dg.AssetsDefinition
    deployment: dg.AssetsDefinition
    gate_check: dg.AssetChecksDefinition
    ingest_job: UnresolvedAssetJobDefinition
    train_job: UnresolvedAssetJobDefinition
    full_job: UnresolvedAssetJobDefinition

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.raw, self.features, self.training_set, self.model, self.deployment]

    @property
    def jobs(self) -> list[UnresolvedAssetJobDefinition]:
        return [self.ingest_job, self.train_job, self.full_job]

    @property
    def asset_checks(self) -> list[dg.AssetChecksDefinition]:
        return [self.gate_check]


def build_dataset_definitions(spec: DatasetSpec) -> DatasetDefinitions:
    """Assets, the promotion gate and the jobs of one dataset spec."""
    name = spec.name
    partitions = daily_partitions(spec)
    raw = build_raw_asset(spec, partitions)
    features = build_features_asset(spec, partitions)
    training_set = build_training_set_asset(spec)
    model = build_model_asset(spec)
    deployment = build_deployment_asset(spec)
    ingest = dg.AssetSelection.assets(raw, features)
    train = dg.AssetSelection.assets(training_set, model, deployment)
    return DatasetDefinitions(
        raw=raw,
        features=features,
        training_set=training_set,
        model=model,
        deployment=deployment,
        gate_check=build_gate_check(spec),
        ingest_job=dg.define_asset_job(
            names.ingest_job(name),
            selection=ingest,
            partitions_def=partitions,
            description=f"Land and featurise {name} partitions (backfill ranges run as one run).",
        ),
        train_job=dg.define_asset_job(
            names.train_job(name), selection=train, description=f"Build the training set and train {name}."
        ),
        full_job=dg.define_asset_job(
            names.full_job(name),
            selection=ingest | train,
            partitions_def=partitions,
            description=f"Ingest the selected {name} partitions, then rebuild the training set and retrain.",
        ),
    )
