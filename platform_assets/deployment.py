"""Deployment and rollback of a dataset's model; the ``deployment_<dataset>`` asset.

``deployment_<dataset>`` (and :func:`rollback_deployment`) install the version in MLServer's model repository,
hot-load it when MLServer runs, move the ``champion``/``previous`` aliases, rewrite the deployment pointer,
wait a short drain and unload the old served model. It deploys only a version the promotion gate
(:mod:`platform_assets.promotion_gate`) passed; rollback too, unless forced (recorded on the version). For a dataset
with ``promotion.approval: manual`` the asset deploys only a version a reviewer approved (:func:`approved_target`,
the model catalog's reviews); a pending or rejected candidate is not deployed. Every deployment and rollback is
recorded in the model catalog (aliases, deployed/retired).

Before anything changes, two things must hold, or the deployment stops with the champion serving as before (no
alias moved, no pointer rewritten, no file deleted) and the refusal is logged at WARNING and counted
(:func:`riverbed.pipeline_failures.report_failure`, component ``deployment_<dataset>``):

- MLServer answers its repository API (reason ``mlserver_unreachable``). Only a dataset that nothing serves yet
  (no deployment pointer) may be installed while MLServer is down, for the next ``mlserver start`` to load.
- Every artifact matches the SHA-256 recorded in MLflow when the version was trained (reason ``model_integrity``),
  checked on the downloaded files and on an installed folder before anything unpickles them.

``mlflow`` is imported inside functions only (seconds to import).
"""

import datetime as dt
import getpass
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import dagster as dg
import psycopg
from pydantic import Field

from monitoring.reference import build_reference, write_reference
from platform_assets.catalog_records import CatalogNotRecordedError, catalog_dsn, record_champion, requires_approval
from platform_assets.groups import DEPLOYMENT_GROUP
from platform_assets.model_registry import gate_passed, gate_reason, registered_aliases, version_exists
from platform_assets.stages import asset_key
from platform_assets.training import holdout_of, read_training_set
from resources.data_store_resource import VersionedDataStoreResource
from resources.inference_log_resource import InferenceLogResource
from resources.mlflow_resource import MlflowTrackingResource, mlflow_client, quiet_mlflow
from resources.mlserver_admin import MLServerAdmin
from resources.mlserver_resource import MLServerResource
from riverbed.errors import MLServerModelError, MLServerUnavailableError, ModelIntegrityError
from riverbed.ml.integrity import ARTIFACT_FILES, MODEL_FILE, parse_digests, verified_bytes, verify_files
from riverbed.model_catalog import CatalogError, approval_for, superseding_version
from riverbed.model_repository import POINTER_POLL_SECONDS, DeployedModel, ModelRepository
from riverbed.names import (
    CHAMPION_ALIAS,
    GATE_CHECK_NAME,
    PREVIOUS_ALIAS,
    MlflowTag,
    RunTag,
    Stage,
    served_model_name,
)
from riverbed.pipeline_failures import report_failure
from riverbed.records import DeploymentRecord, ModelLineage, ModelRecord
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs
from riverbed.stack_file import InferenceLogNotAvailableError, configured_inference_log_dsn

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 2 * POINTER_POLL_SECONDS  # long enough for every gateway to have re-read the pointer
DEPLOYMENT_CODE_VERSION = "1"


class DeploymentError(RuntimeError):
    """A model version could not be promoted, installed or hot-loaded."""


class RollbackError(DeploymentError):
    """A rollback target does not exist, cannot be determined, or did not pass the gate (and was not forced)."""


class MLServerUnreachableError(DeploymentError):
    """MLServer did not answer the preflight call; nothing was changed."""


def deployment_component(dataset: str) -> str:
    """The ``component`` label of a deployment's failures in ``pipeline_failures``."""
    return f"deployment_{dataset}"


# ---------------------------------------------------------------------------------------- model files
@dataclass(frozen=True)
class ModelFiles:
    """A registered version's files as downloaded from MLflow, checked against the digests recorded at training."""

    model_file: Path
    feature_groups_file: Path
    sha256: Mapping[str, str]


def version_label(registered_model_name: str, version: int) -> str:
    return f"{registered_model_name} version {version}"


def recorded_artifact_digests(
    client: "MlflowClient", registered_model_name: str, version: int, dataset: str | None = None
) -> dict[str, str]:
    """The artifact digests recorded on the model version at training (:attr:`MlflowTag.ARTIFACT_SHA256`).

    Raises :class:`ModelIntegrityError` for a version registered without them (the message says how to
    re-register).
    """
    tags = client.get_model_version(registered_model_name, str(version)).tags or {}
    return parse_digests(
        tags.get(MlflowTag.ARTIFACT_SHA256),
        model=version_label(registered_model_name, version),
        dataset=dataset,
    )


def download_model_files(
    tracking_uri: str,
    registered_model_name: str,
    version: int,
    destination: Path,
    expected_sha256: Mapping[str, str] | None = None,
) -> ModelFiles:
    """Download a registered version's model directory (cloudpickled pipeline + feature groups) and check each
    file against the digests recorded at training (``expected_sha256``, default: read from the version's tag).

    Raises :class:`ModelIntegrityError` on a mismatch or when no digest was recorded; nothing is unpickled here.
    """
    quiet_mlflow()
    import mlflow  # seconds to import: only when files are downloaded

    client = mlflow_client(tracking_uri)
    if expected_sha256 is None:
        expected_sha256 = recorded_artifact_digests(client, registered_model_name, version)
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
    found = dict(zip(ARTIFACT_FILES, (model_file, groups_file), strict=True))
    verify_files(found, expected_sha256, model=version_label(registered_model_name, version))
    return ModelFiles(model_file=model_file, feature_groups_file=groups_file, sha256=dict(expected_sha256))


def load_registered_pipeline(tracking_uri: str, registered_model_name: str, version: int) -> Any:
    """The cloudpickled scikit-learn pipeline of a registered version, unpickled only from bytes whose SHA-256 is
    the one recorded at training (:class:`ModelIntegrityError` otherwise)."""
    with tempfile.TemporaryDirectory(prefix="riverbed-model-") as scratch:
        files = download_model_files(tracking_uri, registered_model_name, version, Path(scratch))
        data = verified_bytes(
            files.model_file, files.sha256, model=version_label(registered_model_name, version), artifact=MODEL_FILE
        )
    return cloudpickle.loads(data)


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
        artifact_sha256=dict(card.get("artifact_sha256") or {}),
    )


# ------------------------------------------------------------------------------------------ deployment
def _previous_version(old_champion: int | None, version: int, current: DeployedModel | None) -> int | None:
    """What ``previous`` will name: the old champion, or (re-deploying the champion) what the pointer said."""
    if old_champion not in (None, version):
        return old_champion
    return current.previous_version if current is not None and current.version == version else None


def _install(spec: DatasetSpec, repository: ModelRepository, info: DeployedModel, tracking_uri: str) -> bool:
    """Install the version's files in the model repository unless they are there; True if installed now.

    Downloaded files are checked against the digests recorded at training before they are copied, and the copies
    again; an installed folder is checked (settings and files) instead of trusted. A mismatch raises
    :class:`ModelIntegrityError` and changes nothing.
    """
    model = version_label(info.registered_model_name, info.version)
    if repository.is_installed(info.served_model_name):
        repository.verify_installed(info.served_model_name, info.artifact_sha256, model=model)
        return False
    with tempfile.TemporaryDirectory(prefix="riverbed-deploy-") as scratch:
        files = download_model_files(
            tracking_uri, info.registered_model_name, info.version, Path(scratch), info.artifact_sha256
        )
        repository.install(
            files.model_file,
            files.feature_groups_file,
            info,
            numeric_features=list(spec.numeric_features),
            expected_sha256=info.artifact_sha256,
        )
    return True


def preflight_mlserver(admin: MLServerAdmin, dataset: str, *, required: bool, failure_dsn: str | None = None) -> bool:
    """Ask MLServer for its repository index before anything changes; True if it answered.

    Unreachable and ``required``: the failure is reported (WARNING, ``pipeline_failures``) and
    :class:`MLServerUnreachableError` raised. Unreachable and not required: False (install only). Reachable but
    refusing the call: always an error, since a running MLServer that cannot load the model would leave the
    pointer on a model nobody serves.
    """
    try:
        admin.repository_index()
    except MLServerUnavailableError as error:
        if not required:
            logger.info(
                "MLServer is not reachable at %s (%s) and nothing serves %s yet: installing only; the next "
                "`mlserver start` (riverbed serve) loads it",
                admin.url,
                error,
                dataset,
            )
            return False
        reason, problem = "mlserver_unreachable", f"MLServer is not reachable ({error})"
    except MLServerModelError as error:
        reason, problem = "mlserver_unreachable", f"MLServer answered but refused its repository index ({error})"
    else:
        return True
    message = (
        f"{dataset} was not deployed: {problem}. Nothing was changed: the aliases, the deployment pointer and the "
        f"model files are as they were, and the champion keeps serving. Start MLServer (riverbed serve / up) or "
        f"correct RIVERBED_MLSERVER_URL ({admin.url}), then deploy again"
    )
    report_failure(deployment_component(dataset), reason, message, dsn=failure_dsn, log=logger)
    raise MLServerUnreachableError(message)


def _hot_load(
    admin: MLServerAdmin,
    repository: ModelRepository,
    served: str,
    installed_now: bool,
    current: DeployedModel | None,
    live: bool,
) -> bool:
    """Load ``served`` in MLServer and wait until it is ready; False if MLServer is not running (``live``).

    A failed load removes what this deployment installed and raises :class:`DeploymentError`.
    """
    if not live:
        logger.info(
            "%s is installed in %s; the next `mlserver start` (riverbed serve) loads it", served, repository.root
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
    require_mlserver: bool | None = None,
    failure_dsn: str | None = None,
) -> tuple[DeployedModel, DeploymentRecord]:
    """Make ``version`` the dataset's champion and the model that serves it.

    Order: preflight MLServer, check the recorded artifact digests, install the files (checked), hot-load in
    MLServer and wait until ready, move the aliases, rewrite the pointer, drain, unload and remove the old served
    model. A failed preflight, integrity check or load leaves the aliases, the pointer and the champion's files as
    they were. ``require_mlserver`` None: MLServer must answer unless nothing serves the dataset yet (no
    deployment pointer); False: install only when it does not answer (serving start-up, before MLServer starts).
    Failures are reported to ``pipeline_failures`` at ``failure_dsn`` (None: the WARNING log line only).
    """
    dataset = spec.name
    client = mlflow_client(tracking_uri)
    if not version_exists(client, registered_model_name, version):
        raise DeploymentError(f"{registered_model_name} has no version {version} in MLflow at {tracking_uri}")
    current = repository.read_deployment(dataset)
    required = require_mlserver if require_mlserver is not None else current is not None
    live = preflight_mlserver(admin, dataset, required=required, failure_dsn=failure_dsn)
    lineage = lineage or lineage_from_mlflow(tracking_uri, registered_model_name, version, dataset)
    try:
        digests = recorded_artifact_digests(client, registered_model_name, version, dataset)
        trained = dict(lineage.artifact_sha256)
        if trained and trained != digests:
            raise ModelIntegrityError(
                f"refusing to deploy {version_label(registered_model_name, version)}: the digests on its MLflow "
                f"version ({digests}) differ from those its training recorded ({trained}, model record / card); "
                "the registry tag was changed after registration",
                model=version_label(registered_model_name, version),
                expected=json.dumps(dict(trained), sort_keys=True),
                actual=json.dumps(digests, sort_keys=True),
            )
    except ModelIntegrityError as error:
        report_failure(deployment_component(dataset), "model_integrity", str(error), dsn=failure_dsn, log=logger)
        raise
    old_champion = registered_aliases(client, registered_model_name).get(CHAMPION_ALIAS)
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
        artifact_sha256=digests,
        classes=list(spec.target.classes),
        features=list(spec.feature_names),
        deployed_at=dt.datetime.now(dt.UTC),
        previous_version=_previous_version(old_champion, version, current),
    )
    try:
        installed_now = _install(spec, repository, info, tracking_uri)
    except ModelIntegrityError as error:
        report_failure(deployment_component(dataset), "model_integrity", str(error), dsn=failure_dsn, log=logger)
        raise
    live = _hot_load(admin, repository, served, installed_now, current, live)

    client.set_registered_model_alias(registered_model_name, CHAMPION_ALIAS, str(version))
    if old_champion is not None and old_champion != version:
        client.set_registered_model_alias(registered_model_name, PREVIOUS_ALIAS, str(old_champion))
    repository.set_deployment(info)
    record_champion(spec, version, info.previous_version, dsn=failure_dsn)  # never raises: the champion moved

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


def default_actor() -> str:
    """Who runs this process, as recorded on a forced rollback (the OS user)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _record_forced_rollback(client: "MlflowClient", name: str, version: int, record: dict[str, Any]) -> None:
    client.set_model_version_tag(name, str(version), MlflowTag.FORCED_ROLLBACK.value, json.dumps(record))


def rollback_deployment(
    dataset: str,
    to_version: int | None = None,
    *,
    settings: RiverbedSettings,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    require_mlserver: bool | None = None,
) -> DeployedModel:
    """Re-point ``champion`` to ``to_version`` (default: the ``previous`` alias) and serve it, hot-swapping MLServer.

    Only a version the promotion gate passed (its :attr:`MlflowTag.GATE` tag) is rolled back to, unless
    ``force`` with a ``reason``: the version then gets a :attr:`MlflowTag.FORCED_ROLLBACK` tag (who, when, why,
    from which champion, outcome) and a WARNING is logged. The artifact digests are checked as for any deployment;
    ``force`` does not skip them. ``previous`` then names the version that was champion. Raises
    :class:`RollbackError` for an unknown dataset or version, a version that did not pass the gate, or when there
    is no ``previous`` alias to roll back to; :class:`ModelIntegrityError` for files that do not match.
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
    tags = client.get_model_version(registered_model_name, str(to_version)).tags or {}
    forced: dict[str, Any] | None = None
    if not gate_passed(tags):
        verdict = (
            f"tag {MlflowTag.GATE.value}={tags.get(MlflowTag.GATE, 'missing')}: {gate_reason(tags, 'not checked')}"
        )
        if not force:
            raise RollbackError(
                f"{registered_model_name} version {to_version} did not pass the promotion gate ({verdict}); only "
                "versions the gate passed are rolled back to. To serve it anyway, pass --force with --reason "
                "(recorded on the version)"
            )
        if not (reason or "").strip():
            raise RollbackError(
                f"a forced rollback to {registered_model_name} version {to_version} needs a reason (--reason)"
            )
        forced = {
            "by": actor or default_actor(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reason": (reason or "").strip()[:1000],
            "from_version": aliases.get(CHAMPION_ALIAS),
            "gate": verdict[:1000],
            "outcome": "started",
        }
        _record_forced_rollback(client, registered_model_name, to_version, forced)
        logger.warning(
            "%s: forced rollback to %s version %d, which did not pass the promotion gate (%s), by %s: %s",
            dataset,
            registered_model_name,
            to_version,
            verdict,
            forced["by"],
            forced["reason"],
        )
    try:
        with MLServerAdmin(settings.mlserver_url) as admin:
            info, _ = deploy_model_version(
                specs[dataset],
                registered_model_name=registered_model_name,
                version=to_version,
                tracking_uri=tracking_uri,
                repository=ModelRepository(settings.model_repository_dir),
                admin=admin,
                require_mlserver=require_mlserver,
                failure_dsn=configured_inference_log_dsn(settings),
            )
    except (DeploymentError, ModelIntegrityError) as error:
        if forced is not None:
            _record_forced_rollback(
                client, registered_model_name, to_version, {**forced, "outcome": f"failed: {str(error)[:2000]}"}
            )
        raise
    if forced is not None:
        _record_forced_rollback(client, registered_model_name, to_version, {**forced, "outcome": "deployed"})
    return info


# ---------------------------------------------------------------------------------------------- Dagster
def require_gate_passed(tracking_uri: str, model: ModelLineage) -> None:
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
    spec: DatasetSpec, model: ModelLineage, data_store: VersionedDataStoreResource, tracking_uri: str, root: Path
) -> tuple[Path, int]:
    """Monitoring's reference: the champion's predictions on its own frozen holdout (file, rows).

    The pipeline is unpickled only after its SHA-256 matched the recorded one (:func:`load_registered_pipeline`).
    """
    training_set = read_training_set(data_store.get_store(), model.training_set_commit_id, spec.name)
    pipeline = load_registered_pipeline(tracking_uri, model.registered_model_name, model.version)
    reference = build_reference(spec, pipeline, holdout_of(training_set))
    return write_reference(root, spec.name, model.version, reference), len(reference)


class DeploymentConfig(dg.Config):
    """How the deployment treats an MLServer that does not answer."""

    require_mlserver: bool | None = Field(
        default=None,
        description="Blank: MLServer must answer unless nothing serves the dataset yet (first deployment, installed "
        "for the next start). true: always. false: install and re-point even if MLServer is down (it loads the "
        "model at its next start).",
    )


def failure_dsn_of(inference_log: InferenceLogResource) -> str | None:
    """Where deployment failures are counted: the inference-log database, if one is configured or running."""
    try:
        return inference_log.resolve_dsn()
    except InferenceLogNotAvailableError:
        return None


def approved_version_of(tags: Mapping[str, str]) -> int | None:
    """The version a deploy run was requested for (:attr:`RunTag.APPROVED_VERSION`, set by the approvals sensor)."""
    text = tags.get(RunTag.APPROVED_VERSION)
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise dg.Failure(description=f"run tag {RunTag.APPROVED_VERSION.value}={text!r} is not a model version")
    return int(text)


def approved_target(
    spec: DatasetSpec,
    model: ModelRecord,
    tags: Mapping[str, str],
    inference_log: InferenceLogResource,
    tracking_uri: str,
) -> ModelLineage | None:
    """What a manual-approval dataset's deployment deploys: the version the run was requested for (the approvals
    sensor's tag) or else the upstream candidate, and only if a reviewer approved exactly that version (its MLflow
    run). None: the candidate is not approved (pending, or rejected): nothing is deployed and the champion keeps
    serving. A requested version without an approval is a failure (:class:`dg.Failure`), as is an approved version
    older than one already deployed (superseded: deploying it would roll the champion back) and a catalog that
    cannot be read (WARNING + ``pipeline_failures``)."""
    requested = approved_version_of(tags)
    version = requested if requested is not None else model.version
    try:
        dsn = catalog_dsn(inference_log)
        if dsn is None:
            raise CatalogNotRecordedError(
                f"{spec.name} needs a reviewer's approval (promotion.approval: manual) and no inference-log database "
                "is configured to read approvals from: set RIVERBED_INFERENCE_LOG_DSN or start the local stack"
            )
        approval = approval_for(dsn, spec.name, version)
        newer = superseding_version(dsn, spec.name, version) if approval is not None else None
    except (psycopg.Error, OSError, CatalogError, CatalogNotRecordedError) as error:
        message = f"{spec.name}: the approval of version {version} could not be read from the model catalog: {error}"
        report_failure(deployment_component(spec.name), "approval_unreadable", message, dsn=None, log=logger)
        raise dg.Failure(description=message) from error
    if approval is None:
        if requested is not None:
            raise dg.Failure(
                description=f"{model.registered_model_name} version {version} has no reviewer approval in the model "
                "catalog (pending, rejected, or not a candidate): it is not deployed"
            )
        return None
    if newer is not None:
        # Defence in depth (the gateway refuses such an approval 409): an approval never rolls the champion back.
        message = (
            f"{spec.name} version {version} is superseded by v{newer}, a newer version already deployed: its approval "
            "is not deployed (that would roll the champion back; use `riverbed rollback` to do so on purpose)"
        )
        report_failure(deployment_component(spec.name), "approval_superseded", message, dsn=dsn, log=logger)
        raise dg.Failure(description=message, metadata={"version": version, "superseded_by": newer})
    target: ModelLineage = (
        model
        if version == model.version
        else lineage_from_mlflow(tracking_uri, model.registered_model_name, version, spec.name)
    )
    if approval.mlflow_run_id != target.mlflow_run_id:
        raise dg.Failure(
            description=f"the approval of {spec.name} version {version} names MLflow run {approval.mlflow_run_id!r}, "
            f"but that version is run {target.mlflow_run_id!r}: not deployed"
        )
    logger.info(
        "%s: version %d approved by key %s (review %d, action %s)",
        spec.name,
        version,
        approval.key_id,
        approval.review_id,
        approval.action_id,
    )
    return target


def refuse_rollback_by_approval(
    spec: DatasetSpec, target: ModelLineage, served: ModelLineage | None, failure_dsn: str | None
) -> None:
    """The served champion is the second check (after the catalog's, :func:`approved_target`): an approved version
    of the same registered model older than the one MLServer serves is never deployed (:class:`dg.Failure`)."""
    if (
        served is None
        or served.registered_model_name != target.registered_model_name
        or served.version <= target.version
    ):
        return
    message = (
        f"{spec.name} version {target.version} is superseded by v{served.version}, the champion being served: its "
        "approval is not deployed (that would roll the champion back; use `riverbed rollback` to do so on purpose)"
    )
    report_failure(deployment_component(spec.name), "approval_superseded", message, dsn=failure_dsn, log=logger)
    raise dg.Failure(description=message, metadata={"version": target.version, "superseded_by": served.version})


def build_deployment_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    name = spec.name
    held_note = (
        " With promotion.approval: manual, only a version a reviewer approved is deployed; an unapproved candidate "
        "is not materialised here and the champion keeps serving."
        if requires_approval(spec)
        else ""
    )

    @dg.asset(
        key=asset_key(Stage.DEPLOYMENT, name),
        group_name=DEPLOYMENT_GROUP,
        code_version=DEPLOYMENT_CODE_VERSION,
        kinds={"mlserver"},
        ins={"model": dg.AssetIn(asset_key(Stage.MODEL, name))},
        description=f"The {name} champion: MLflow alias moved to the gated candidate, installed in MLServer's "
        "model repository and hot-swapped with no failed request; its artifacts checked against the digests "
        "recorded at training before anything loads them." + held_note,
        metadata={"dataset": name},
        output_required=False,
    )
    def deployment(
        context: dg.AssetExecutionContext,
        config: DeploymentConfig,
        model: ModelRecord,
        mlflow: MlflowTrackingResource,
        mlserver: MLServerResource,
        data_store: VersionedDataStoreResource,
        inference_log: InferenceLogResource,
    ) -> Iterator[dg.Output[DeploymentRecord]]:
        target: ModelLineage = model
        if requires_approval(spec):
            approved = approved_target(spec, model, context.run.tags, inference_log, mlflow.tracking_uri)
            if approved is None:
                context.log.info(
                    f"{name} version {model.version} waits for a reviewer's approval (promotion.approval: manual): "
                    "not deployed; the champion keeps serving"
                )
                return
            target = approved
        require_gate_passed(mlflow.tracking_uri, target)
        failure_dsn = failure_dsn_of(inference_log)
        repository = mlserver.repository()
        if requires_approval(spec):
            refuse_rollback_by_approval(spec, target, repository.read_deployment(name), failure_dsn)
        with mlserver.admin() as admin:
            try:
                # Preflight and the reference (a verified load) come first: a refusal leaves everything as it was.
                required = config.require_mlserver
                if required is None:
                    required = mlserver.must_answer()
                if required is None:
                    required = repository.read_deployment(name) is not None
                preflight_mlserver(admin, name, required=required, failure_dsn=failure_dsn)
                try:
                    reference_file, reference_rows = write_monitoring_reference(
                        spec, target, data_store, mlflow.tracking_uri, repository.root
                    )
                except ModelIntegrityError as error:
                    report_failure(
                        deployment_component(name), "model_integrity", str(error), dsn=failure_dsn, log=logger
                    )
                    raise
                _, record = deploy_model_version(
                    spec,
                    registered_model_name=target.registered_model_name,
                    version=target.version,
                    tracking_uri=mlflow.tracking_uri,
                    repository=repository,
                    admin=admin,
                    lineage=target,
                    require_mlserver=required,
                    failure_dsn=failure_dsn,
                )
            except (DeploymentError, ModelIntegrityError) as error:
                raise dg.Failure(
                    description=str(error),
                    metadata={"reason": type(error).__name__, "version": target.version},
                ) from error
        yield dg.Output(
            record,
            metadata={
                "monitoring_reference": dg.MetadataValue.path(str(reference_file)),
                "reference_rows": reference_rows,
                "version": record.version,
                "served_model_name": record.served_model_name,
                "model_uri": record.model_uri,
                "previous_version": record.previous_version if record.previous_version is not None else "none",
                "mlserver_loaded": "yes" if record.mlserver_loaded else "no (loads at the next start)",
                "old_model_unloaded": record.old_model_unloaded,
                "artifact_sha256": dg.MetadataValue.json(dict(target.artifact_sha256)),
            },
        )

    return deployment
