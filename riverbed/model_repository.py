"""MLServer's model repository folder and the deployment pointer of each dataset.

Layout under the repository root (the folder ``mlserver start`` is given)::

    <dataset>-v<version>/          one served model: model.pkl, feature_groups.json, model.json,
                                   model-settings.json (MLServer finds models by that file)
    deployments/<dataset>.json     which served model answers for the dataset, with its lineage
    .staging-*/                    folders being written; hidden, so MLServer's recursive scan skips them

A model folder is written under a hidden staging name and renamed into place, and a pointer is replaced
with ``os.replace`` after an fsync, so neither MLServer nor the gateway ever reads half a model or pointer.

Integrity: the deployment writes the SHA-256 of model.pkl and feature_groups.json (as recorded in MLflow at
training, checked against the downloaded files) and of the model.json it wrote into model-settings.json
(``parameters.extra.riverbed_sha256``); the runtime checks the files against them before unpickling. Someone who
can replace model.pkl on the volume but not model-settings.json therefore cannot get a changed model loaded.
No Dagster or MLflow here: the gateway imports this module. It is a contract between the deployment step
(writer) and the gateway and MLServer runtime (readers), so it lives in the core.
"""

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError

from riverbed.errors import ModelIntegrityError
from riverbed.ml.integrity import (
    ARTIFACT_FILES,
    FEATURE_GROUPS_FILE,
    MODEL_FILE,
    check_digest,
    parse_digests,
    sha256_file,
)
from riverbed.records import ModelLineage

logger = logging.getLogger(__name__)

POINTER_POLL_SECONDS = 0.5
DEPLOYMENTS_DIR = "deployments"
STAGING_PREFIX = ".staging-"
MODEL_SETTINGS_FILE = "model-settings.json"
MODEL_INFO_FILE = "model.json"  # with MODEL_FILE and FEATURE_GROUPS_FILE: the names serving/runtime.py reads
INSTALLED_FILES = (*ARTIFACT_FILES, MODEL_INFO_FILE)  # what the runtime reads; each has a digest in the settings
INTEGRITY_PARAMETER = "riverbed_sha256"  # model-settings.json parameters.extra key: {file name: SHA-256}
RUNTIME_IMPLEMENTATION = "serving.runtime.RiverbedModelRuntime"
# MLServer's adaptive batching: concurrent single-row requests share one predict + TreeSHAP call (XGBoost's
# TreeSHAP costs ~2.2 ms CPU for one row alone, ~1.5 ms a row in fours, ~1.4 in sixteens). Measured on 2 cores
# with the serving benchmark's load (quiet machine, 2-6 runs each, req/s at 8 / 32 clients): no batching 300 / 353
# (MLServer +0.3 ms CPU a request), 16 rows / 2 ms 287 / 352, 8 / 2 ms - / 348, 32 / 2 ms - / 320,
# 16 / 5 ms - / 369, 16 / 1 ms 305 / 388: a batch waits at most 1 ms for company.
ADAPTIVE_BATCHING: dict[str, float | int] = {"max_batch_size": 16, "max_batch_time": 0.001}


class ModelRepositoryError(RuntimeError):
    """The model repository folder cannot be read or written as needed."""


class DeployedModel(ModelLineage):
    """What a dataset's deployment pointer holds: the served model and the lineage behind it."""

    served_model_name: str
    classes: list[str]
    features: list[str] = Field(description="Input feature names, in the order the model reads them.")
    deployed_at: dt.datetime
    previous_version: int | None = None


def model_settings(served_name: str, folder: Path, version: int, digests: Mapping[str, str]) -> dict[str, object]:
    """MLServer's model-settings.json for one installed version (runtime, pinned folder, the SHA-256 of each file
    the runtime reads, adaptive batching)."""
    return {
        "name": served_name,
        "implementation": RUNTIME_IMPLEMENTATION,
        "parameters": {
            "uri": str(folder),
            "version": str(version),
            "extra": {INTEGRITY_PARAMETER: {name: digests[name] for name in INSTALLED_FILES}},
        },
        **ADAPTIVE_BATCHING,
    }


def integrity_parameters(folder: Path) -> dict[str, dict[str, str]]:
    """``parameters.extra`` vouching for the files now in ``folder``, for model folders built by hand (tests,
    tools): whoever calls this takes the files as they are. Deployments write digests checked against MLflow."""
    return {INTEGRITY_PARAMETER: {name: sha256_file(Path(folder) / name) for name in INSTALLED_FILES}}


def settings_digests(settings: Mapping[str, object]) -> dict[str, str] | None:
    """The digests a model-settings.json carries (None if it has none: installed before digests were written)."""
    parameters = settings.get("parameters")
    extra = parameters.get("extra") if isinstance(parameters, dict) else None
    digests = extra.get(INTEGRITY_PARAMETER) if isinstance(extra, dict) else None
    return {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else None


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class ModelRepository:
    """The model repository folder MLServer serves from, and the deployment pointers in it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    # -- served model folders ---------------------------------------------------
    def model_dir(self, served_name: str) -> Path:
        if not served_name or "/" in served_name or served_name.startswith(".") or served_name == DEPLOYMENTS_DIR:
            raise ValueError(f"served model name {served_name!r} is not a plain folder name")
        return self.root / served_name

    def is_installed(self, served_name: str) -> bool:
        return (self.model_dir(served_name) / MODEL_SETTINGS_FILE).is_file()

    def installed_models(self) -> list[str]:
        """Served model names with a folder in the repository."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and (entry / MODEL_SETTINGS_FILE).is_file()
        )

    def install(
        self,
        model_file: Path,
        feature_groups_file: Path,
        info: DeployedModel,
        *,
        numeric_features: list[str] | None = None,
        expected_sha256: Mapping[str, str] | None = None,
    ) -> Path:
        """Copy one model version into ``<root>/<served name>/`` with what MLServer and the runtime read.

        ``expected_sha256`` (the digests recorded in MLflow at training) is checked against the copies before
        anything is renamed into place (:class:`ModelIntegrityError` otherwise, and nothing is installed); None
        records the digests of the given files, so the caller vouches for them. The folder is assembled under a
        hidden staging name and renamed into place; an existing folder of the same name is replaced (moved aside
        first, then deleted).
        """
        target = self.model_dir(info.served_model_name)
        for source in (model_file, feature_groups_file):
            if not Path(source).is_file():
                raise ModelRepositoryError(f"cannot install {info.served_model_name}: {source} is not a file")
        model = f"{info.registered_model_name} version {info.version}"
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{STAGING_PREFIX}{info.served_model_name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            shutil.copyfile(feature_groups_file, staging / FEATURE_GROUPS_FILE)
            copied = {name: sha256_file(staging / name) for name in ARTIFACT_FILES}
            if expected_sha256 is not None:
                for name in ARTIFACT_FILES:
                    check_digest(model, name, expected_sha256[name], copied[name], str(staging / name))
            model_info: dict[str, object] = {**info.model_dump(mode="json"), "installed_at": _now().isoformat()}
            if numeric_features is not None:
                model_info["numeric_features"] = list(numeric_features)
            (staging / MODEL_INFO_FILE).write_text(json.dumps(model_info, indent=2))
            digests = {**copied, MODEL_INFO_FILE: sha256_file(staging / MODEL_INFO_FILE)}
            settings = model_settings(info.served_model_name, target, info.version, digests)
            (staging / MODEL_SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
            for written in staging.iterdir():
                with written.open("rb") as stream:
                    os.fsync(stream.fileno())
            if target.exists():
                self._discard(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_directory(self.root)
        logger.info(
            "installed %s (%s version %d) at %s",
            info.served_model_name,
            info.registered_model_name,
            info.version,
            target,
        )
        return target

    def refresh_model_settings(self, deployment: DeployedModel) -> None:
        """Rewrite an installed version's model-settings.json with the current serving options (before a start).

        The digests the deployment wrote are kept as they are (never recomputed from the files on the volume);
        a folder installed before digests were written stays without them, and the runtime refuses it.
        """
        folder = self.model_dir(deployment.served_model_name)
        path = folder / MODEL_SETTINGS_FILE
        current = json.loads(path.read_text())
        digests = settings_digests(current)
        if digests is None or any(name not in digests for name in INSTALLED_FILES):
            logger.warning(
                "%s has no artifact digests in %s: the runtime will refuse it; redeploy the version",
                deployment.served_model_name,
                path,
            )
            return
        wanted = model_settings(deployment.served_model_name, folder, deployment.version, digests)
        if current != wanted:
            atomic_write_text(path, json.dumps(wanted, indent=2))

    def verify_installed(self, served_name: str, expected_sha256: Mapping[str, str], *, model: str) -> None:
        """Check an installed folder against the digests recorded in MLflow: the settings carry them and the files
        match the settings (model.json included). Raises :class:`ModelIntegrityError`; changes nothing."""
        folder = self.model_dir(served_name)
        recorded = settings_digests(json.loads((folder / MODEL_SETTINGS_FILE).read_text()))
        if recorded is None:
            raise ModelIntegrityError(
                f"{model} is installed at {folder} without artifact digests (installed before Riverbed wrote them); "
                "remove the folder and deploy the version again",
                model=model,
            )
        installed = parse_digests(recorded, model=model, required=INSTALLED_FILES)
        for name in ARTIFACT_FILES:
            check_digest(model, name, expected_sha256[name], installed[name], str(folder / MODEL_SETTINGS_FILE))
        for name in INSTALLED_FILES:
            check_digest(model, name, installed[name], sha256_file(folder / name), str(folder / name))

    def remove_version(self, served_name: str) -> bool:
        """Delete a served model's folder (renamed to a hidden name first); False if it was not there."""
        target = self.model_dir(served_name)
        if not target.exists():
            return False
        self._discard(target)
        logger.info("removed %s from the model repository", served_name)
        return True

    def _discard(self, folder: Path) -> None:
        trash = self.root / f"{STAGING_PREFIX}removed-{folder.name}-{uuid.uuid4().hex[:8]}"
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- deployment pointers ----------------------------------------------------
    @property
    def deployments_dir(self) -> Path:
        return self.root / DEPLOYMENTS_DIR

    def pointer_path(self, dataset: str) -> Path:
        if not dataset or "/" in dataset or dataset.startswith("."):
            raise ValueError(f"dataset name {dataset!r} is not a plain file name")
        return self.deployments_dir / f"{dataset}.json"

    def read_deployment(self, dataset: str) -> DeployedModel | None:
        """The dataset's deployment, or None if nothing is deployed."""
        path = self.pointer_path(dataset)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return DeployedModel.model_validate_json(text)
        except ValidationError as error:
            raise ModelRepositoryError(f"deployment pointer {path} is not a valid deployment record: {error}") from None

    def list_deployments(self) -> list[DeployedModel]:
        if not self.deployments_dir.is_dir():
            return []
        found = []
        for path in sorted(self.deployments_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            deployment = self.read_deployment(path.stem)
            if deployment is not None:
                found.append(deployment)
        return found

    def set_deployment(self, info: DeployedModel) -> Path:
        """Point the dataset at ``info`` (temp file, fsync, os.replace)."""
        path = self.pointer_path(info.dataset)
        atomic_write_text(path, info.model_dump_json(indent=2))
        logger.info("dataset %s now points at %s", info.dataset, info.served_model_name)
        return path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
