"""SHA-256 digests of a model version's artifacts, recorded at training and checked before anything unpickles them.

A cloudpickle runs code when it loads, so whoever can change ``model.pkl`` (in the MLflow artifact store or on
the shared model volume) could run code in the gate, the deployment or MLServer. Training records the digests of
the files it produced (:data:`ARTIFACT_FILES`) as JSON ``{file name: hex}``; every loader reads the bytes once,
checks them against that record and unpickles those same bytes (:func:`verified_bytes`), so a file swapped
between the check and the load is not what loads. No Dagster, MLflow or cloudpickle here: the serving runtime
imports this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from riverbed.errors import ModelIntegrityError

MODEL_FILE = "model.pkl"
FEATURE_GROUPS_FILE = "feature_groups.json"
ARTIFACT_FILES = (MODEL_FILE, FEATURE_GROUPS_FILE)  # what training logs to MLflow and scoring depends on
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def format_digests(digests: Mapping[str, str]) -> str:
    """The recorded form (MLflow tag, commit metadata): compact JSON with sorted keys."""
    return json.dumps(dict(sorted(digests.items())), separators=(",", ":"))


def how_to_reregister(dataset: str | None) -> str:
    target = f"model_{dataset}" if dataset else "the dataset's model asset"
    return (
        f"re-register it by training a new version (materialise {target} in Dagster, or run the train job / "
        "`riverbed demo`), which records the digests, and deploy that version"
    )


def parse_digests(
    recorded: str | Mapping[str, str] | None,
    *,
    model: str,
    required: tuple[str, ...] = ARTIFACT_FILES,
    dataset: str | None = None,
) -> dict[str, str]:
    """The recorded digests, validated: every ``required`` file has a 64-character lower-case hex digest.

    Raises :class:`ModelIntegrityError` when nothing is recorded (a version registered before digests were
    recorded: the message says how to re-register) or the record is malformed.
    """
    if recorded is None or recorded == "" or recorded == {}:
        raise ModelIntegrityError(
            f"{model} has no recorded SHA-256 of its artifacts ({', '.join(required)}); it was registered before "
            f"Riverbed recorded them, so its files cannot be verified and it is not loaded: "
            f"{how_to_reregister(dataset)}",
            model=model,
        )
    try:
        parsed = json.loads(recorded) if isinstance(recorded, str) else dict(recorded)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ModelIntegrityError(
            f"{model}: the recorded artifact digests are not a JSON object of file name -> SHA-256: {recorded!r:.200}",
            model=model,
        )
    digests = {str(name): str(value) for name, value in parsed.items()}
    for name in required:
        if not _HEX_DIGEST.match(digests.get(name, "")):
            raise ModelIntegrityError(
                f"{model}: no valid recorded SHA-256 for {name} (recorded: {digests.get(name, 'missing')!r}); "
                f"{how_to_reregister(dataset)}",
                model=model,
                artifact=name,
                expected=digests.get(name),
            )
    return digests


def check_digest(model: str, artifact: str, expected: str, actual: str, where: str) -> None:
    """Raise :class:`ModelIntegrityError` naming the version, the file and both digests unless they are equal."""
    if actual != expected:
        raise ModelIntegrityError(
            f"refusing to load {model}: {artifact} at {where} has SHA-256 {actual}, but {expected} was recorded "
            "when the version was trained; the file was changed after registration",
            model=model,
            artifact=artifact,
            expected=expected,
            actual=actual,
        )


def verified_bytes(path: Path, expected: Mapping[str, str], *, model: str, artifact: str | None = None) -> bytes:
    """The file's bytes, after checking their SHA-256 against ``expected[artifact]`` (default: the file's name).

    Load from the returned bytes (``cloudpickle.loads``), not from the path again.
    """
    name = artifact or Path(path).name
    data = Path(path).read_bytes()
    check_digest(model, name, expected[name], sha256_bytes(data), str(path))
    return data


def verify_files(files: Mapping[str, Path], expected: Mapping[str, str], *, model: str) -> None:
    """Check every ``{artifact name: path}`` against ``expected`` (a file missing from ``expected`` is refused)."""
    for name, path in files.items():
        if name not in expected:
            raise ModelIntegrityError(
                f"refusing to load {model}: no recorded SHA-256 for {name}", model=model, artifact=name
            )
        check_digest(model, name, expected[name], sha256_file(path), str(path))
