"""Deployment and rollback of a dataset's model; the ``deployment_<dataset>`` asset.

``deployment_<dataset>`` (and :func:`rollback_deployment`) install the version in MLServer's model repository,
hot-load it when MLServer runs, move the ``champion``/``previous`` aliases, rewrite the deployment pointer,
wait a short drain and unload the old served model. It deploys only a version the promotion gate
(:mod:`platform_assets.promotion_gate`) passed. ``mlflow`` is imported inside functions only (seconds to import).
"""

import datetime as dt
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import dagster as dg

from monitoring.reference import build_reference, write_reference
from platform_assets.groups import DEPLOYMENT_GROUP
from platform_assets.model_registry import gate_passed, gate_reason, registered_aliases, version_exists
from platform_assets.stages import asset_key
from platform_assets.training import holdout_of, read_training_set
from resources.data_store_resource import VersionedDataStoreResource
from resources.mlflow_resource import MlflowTrackingResource, mlflow_client, quiet_mlflow
from resources.mlserver_admin import MLServerAdmin
from resources.mlserver_resource import MLServerResource
from riverbed.errors import MLServerModelError, MLServerUnavailableError
from riverbed.model_repository import POINTER_POLL_SECONDS, DeployedModel, ModelRepository
from riverbed.names import CHAMPION_ALIAS, GATE_CHECK_NAME, PREVIOUS_ALIAS, MlflowTag, Stage, served_model_name
from riverbed.records import DeploymentRecord, ModelLineage, ModelRecord
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 2 * POINTER_POLL_SECONDS  # long enough for every gateway to have re-read the pointer
DEPLOYMENT_CODE_VERSION = "1"


class DeploymentError(RuntimeError):
    """A model version could not be promoted, installed or hot-loaded."""


class RollbackError(DeploymentError):
    """A rollback target does not exist or cannot be determined."""


# ---------------------------------------------------------------------------------------- model files
@dataclass(frozen=True)
class ModelFiles:
    """A registered version's files as downloaded from MLflow."""

    model_file: Path
    feature_groups_file: Path


def download_model_files(tracking_uri: str, registered_model_name: str, version: int, destination: Path) -> ModelFiles:
    """Download a registered version's model directory (cloudpickled pipeline + feature groups)."""
    quiet_mlflow()
    import mlflow  # seconds to import: only when files are downloaded

    client = mlflow_client(tracking_uri)
    uri = client.get_model_version_download_uri(registered_model_name, str(version))
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination), tracking_uri=tracking_uri)
    )
    model_file = next(iter(sorted(local.rglob("model.pkl"))), None)
    groups_file = next(iter(sorted(local.rglob("feature_groups.json"))), None)
    if model_file is None or groups_file is None:
        raise DeploymentError(
            f"{registered_model_name} version {version} at {uri} lacks model.pkl or feature_groups.json; "
            "it was not logged by Riverbed's training step"
        )
    return ModelFiles(model_file=model_file, feature_groups_file=groups_file)


def load_registered_pipeline(tracking_uri: str, registered_model_name: str, version: int) -> Any:
    """The cloudpickled scikit-learn pipeline of a registered version."""
    with tempfile.TemporaryDirectory(prefix="riverbed-model-") as scratch:
        files = download_model_files(tracking_uri, registered_model_name, version, Path(scratch))
        with files.model_file.open("rb") as handle:
            return cloudpickle.load(handle)


def lineage_from_mlflow(tracking_uri: str, registered_model_name: str, version: int, dataset: str) -> ModelLineage:
    """Lineage of a registered version, read from its run's model card (written at training time)."""
    quiet_mlflow()
    import mlflow  # seconds to import: only when a card is read

    client = mlflow_client(tracking_uri)
    model_version = client.get_model_version(registered_model_name, str(version))
    run_id = str(model_version.run_id)
    with tempfile.TemporaryDirectory(prefix="riverbed-card-") as scratch:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model_card.json", dst_path=scratch, tracking_uri=tracking_uri
        )
        card = json.loads(Path(path).read_text())
    lineage = card["lineage"]
    commits = list(lineage["data_commit_ids"])
    partitions = list(lineage["partitions"])
    # The training step records [training set commit, one commit per partition in window order].
    return ModelLineage(
        dataset=dataset,
        registered_model_name=registered_model_name,
        version=version,
        mlflow_run_id=run_id,
        model_uri=f"models:/{registered_model_name}/{version}",
        training_set_commit_id=commits[0] if commits else "",
        data_commit_ids=dict(zip(partitions, commits[1:], strict=False)),
        dagster_run_id=str(lineage.get("dagster_run_id", "")),
    )


# ------------------------------------------------------------------------------------------ deployment
def _previous_version(old_champion: int | None, version: int, current: DeployedModel | None) -> int | None:
    """What ``previous`` will name: the old champion, or (re-deploying the champion) what the pointer said."""
    if old_champion not in (None, version):
        return old_champion
    return current.previous_version if current is not None and current.version == version else None


def _install(spec: DatasetSpec, repository: ModelRepository, info: DeployedModel, tracking_uri: str) -> bool:
    """Install the version's files in the model repository unless they are there; True if installed now."""
    if repository.is_installed(info.served_model_name):
        return False
    with tempfile.TemporaryDirectory(prefix="riverbed-deploy-") as scratch:
        files = download_model_files(tracking_uri, info.registered_model_name, info.version, Path(scratch))
        repository.install(
            files.model_file, files.feature_groups_file, info, numeric_features=list(spec.numeric_features)
        )
    return True


def _hot_load(
    admin: MLServerAdmin,
    repository: ModelRepository,
    served: str,
    installed_now: bool,
    current: DeployedModel | None,
) -> bool:
    """Load ``served`` in a running MLServer and wait until it is ready; False if MLServer is not running.

    A failed load removes what this deployment installed and raises :class:`DeploymentError`.
    """
    if not admin.is_live():
        logger.info(
            "MLServer is not reachable at %s: %s is installed in %s; the next `mlserver start` (riverbed serve) "
            "loads it",
            admin.url,
            served,
            repository.root,
        )
        return False
    try:
        admin.load(served)
        admin.wait_ready(served)
    except (MLServerModelError, MLServerUnavailableError) as error:
        if installed_now and (current is None or current.served_model_name != served):
            repository.remove_version(served)
        raise DeploymentError(f"{served} was not deployed: {error}") from error
    return True


def _retire(
    admin: MLServerAdmin, repository: ModelRepository, old_served: str, live: bool, drain_seconds: float
) -> bool:
    """After the pointer moved: drain, unload the old served model and remove its files; True if unloaded."""
    unloaded = False
    if live:
        time.sleep(drain_seconds)  # requests already routed to the old model finish; new ones see the pointer
        try:
            admin.unload(old_served)
            unloaded = True
        except (MLServerModelError, MLServerUnavailableError) as error:
            logger.warning("could not unload %s after the swap: %s", old_served, error)
    # Keep only what is deployed, so a restarted MLServer does not load stale versions (rollback reinstalls).
    repository.remove_version(old_served)
    return unloaded


def deploy_model_version(
    spec: DatasetSpec,
    *,
    registered_model_name: str,
    version: int,
    tracking_uri: str,
    repository: ModelRepository,
    admin: MLServerAdmin,
    lineage: ModelLineage | None = None,
    drain_seconds: float = DRAIN_SECONDS,
) -> tuple[DeployedModel, DeploymentRecord]:
    """Make ``version`` the dataset's champion and the model that serves it.

    Order: install the files, hot-load in MLServer (if it runs) and wait until ready, move the aliases,
    rewrite the pointer, drain, unload and remove the old served model. A failed load leaves the aliases
    and the pointer as they were.
    """
    dataset = spec.name
    client = mlflow_client(tracking_uri)
    if not version_exists(client, registered_model_name, version):
        raise DeploymentError(f"{registered_model_name} has no version {version} in MLflow at {tracking_uri}")
    lineage = lineage or lineage_from_mlflow(tracking_uri, registered_model_name, version, dataset)
    old_champion = registered_aliases(client, registered_model_name).get(CHAMPION_ALIAS)
    current = repository.read_deployment(dataset)
    served = served_model_name(dataset, version)
    info = DeployedModel(
        dataset=dataset,
        served_model_name=served,
        registered_model_name=registered_model_name,
        version=version,
        mlflow_run_id=lineage.mlflow_run_id,
        model_uri=f"models:/{registered_model_name}/{version}",
        training_set_commit_id=lineage.training_set_commit_id,
        data_commit_ids=lineage.data_commit_ids,
        dagster_run_id=lineage.dagster_run_id,
        classes=list(spec.target.classes),
        features=list(spec.feature_names),
        deployed_at=dt.datetime.now(dt.UTC),
        previous_version=_previous_version(old_champion, version, current),
    )
    installed_now = _install(spec, repository, info, tracking_uri)
    live = _hot_load(admin, repository, served, installed_now, current)

    client.set_registered_model_alias(registered_model_name, CHAMPION_ALIAS, str(version))
    if old_champion is not None and old_champion != version:
        client.set_registered_model_alias(registered_model_name, PREVIOUS_ALIAS, str(old_champion))
    repository.set_deployment(info)

    old_served = current.served_model_name if current is not None and current.served_model_name != served else None
    unloaded = _retire(admin, repository, old_served, live, drain_seconds) if old_served is not None else False
    record = DeploymentRecord(
        dataset=dataset,
        registered_model_name=registered_model_name,
        version=version,
        served_model_name=served,
        model_uri=info.model_uri,
        previous_version=info.previous_version,
        previous_served_model_name=old_served,
        mlserver_loaded=live,
        old_model_unloaded=unloaded,
        deployed_at=info.deployed_at,
    )
    logger.info("%s: version %d is the champion, served as %s", dataset, version, served)
    return info, record


def rollback_deployment(dataset: str, to_version: int | None = None, *, settings: RiverbedSettings) -> DeployedModel:
    """Re-point ``champion`` to ``to_version`` (default: the ``previous`` alias) and serve it, hot-swapping MLServer.

    ``previous`` then names the version that was champion. Raises :class:`RollbackError` for an unknown
    dataset or version, or when there is no ``previous`` alias to roll back to.
    """
    specs = load_specs(settings.specs_dirs)
    if dataset not in specs:
        raise RollbackError(f"unknown dataset {dataset!r}; known: {sorted(specs)}")
    tracking_uri = settings.resolved_mlflow_tracking_uri
    registered_model_name = MlflowTrackingResource(tracking_uri=tracking_uri).registered_model_name(dataset)
    client = mlflow_client(tracking_uri)
    aliases = registered_aliases(client, registered_model_name)
    if to_version is None:
        if PREVIOUS_ALIAS not in aliases:
            raise RollbackError(
                f"{registered_model_name} has no '{PREVIOUS_ALIAS}' version to roll back to "
                f"(champion: {aliases.get(CHAMPION_ALIAS, 'none')}); pass a version explicitly"
            )
        to_version = aliases[PREVIOUS_ALIAS]
    if not version_exists(client, registered_model_name, to_version):
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{registered_model_name}'"))
        raise RollbackError(
            f"{registered_model_name} has no version {to_version}; registered versions: {versions or 'none'}"
        )
    with MLServerAdmin(settings.mlserver_url) as admin:
        info, _ = deploy_model_version(
            specs[dataset],
            registered_model_name=registered_model_name,
            version=to_version,
            tracking_uri=tracking_uri,
            repository=ModelRepository(settings.model_repository_dir),
            admin=admin,
        )
    return info


# ---------------------------------------------------------------------------------------------- Dagster
def require_gate_passed(tracking_uri: str, model: ModelRecord) -> None:
    """Raise ``dg.Failure`` unless the promotion gate passed this model version (its MLflow version tags)."""
    tags = mlflow_client(tracking_uri).get_model_version(model.registered_model_name, str(model.version)).tags or {}
    if not gate_passed(tags):
        raise dg.Failure(
            description=f"{model.registered_model_name} version {model.version} has not passed the promotion "
            f"gate (tag {MlflowTag.GATE.value}={tags.get(MlflowTag.GATE, 'missing')}: "
            f"{gate_reason(tags, 'not checked')}); run the {GATE_CHECK_NAME} check on "
            f"{asset_key(Stage.MODEL, model.dataset).to_user_string()} first"
        )


def write_monitoring_reference(
    spec: DatasetSpec, model: ModelRecord, data_store: VersionedDataStoreResource, tracking_uri: str, root: Path
) -> tuple[Path, int]:
    """Monitoring's reference: the champion's predictions on its own frozen holdout (file, rows)."""
    training_set = read_training_set(data_store.get_store(), model.training_set_commit_id, spec.name)
    pipeline = load_registered_pipeline(tracking_uri, model.registered_model_name, model.version)
    reference = build_reference(spec, pipeline, holdout_of(training_set))
    return write_reference(root, spec.name, model.version, reference), len(reference)


def build_deployment_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=asset_key(Stage.DEPLOYMENT, name),
        group_name=DEPLOYMENT_GROUP,
        code_version=DEPLOYMENT_CODE_VERSION,
        kinds={"mlserver"},
        ins={"model": dg.AssetIn(asset_key(Stage.MODEL, name))},
        description=f"The {name} champion: MLflow alias moved to the gated candidate, installed in MLServer's "
        "model repository and hot-swapped with no failed request.",
        metadata={"dataset": name},
    )
    def deployment(
        context: dg.AssetExecutionContext,
        model: ModelRecord,
        mlflow: MlflowTrackingResource,
        mlserver: MLServerResource,
        data_store: VersionedDataStoreResource,
    ) -> DeploymentRecord:
        require_gate_passed(mlflow.tracking_uri, model)
        with mlserver.admin() as admin:
            _, record = deploy_model_version(
                spec,
                registered_model_name=model.registered_model_name,
                version=model.version,
                tracking_uri=mlflow.tracking_uri,
                repository=mlserver.repository(),
                admin=admin,
                lineage=model,
            )
        reference_file, reference_rows = write_monitoring_reference(
            spec, model, data_store, mlflow.tracking_uri, mlserver.repository().root
        )
        context.add_output_metadata(
            {
                "monitoring_reference": dg.MetadataValue.path(str(reference_file)),
                "reference_rows": reference_rows,
                "version": record.version,
                "served_model_name": record.served_model_name,
                "model_uri": record.model_uri,
                "previous_version": record.previous_version if record.previous_version is not None else "none",
                "mlserver_loaded": "yes" if record.mlserver_loaded else "no (loads at the next start)",
                "old_model_unloaded": record.old_model_unloaded,
            }
        )
        return record

    return deployment
