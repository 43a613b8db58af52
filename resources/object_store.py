"""The object store interface (plain key/value blobs: MinIO / S3 in production, a directory locally).

Implementations: :class:`LocalObjectStore` (here) and ``S3ObjectStore`` (``resources/s3_object_store.py``).
The local versioned store keeps its content-addressed objects in an ``ObjectStore``.
"""

from __future__ import annotations

import abc
import os
import tempfile
from pathlib import Path


class ObjectStoreError(RuntimeError):
    """Base class for object store errors."""


class ObjectNotFoundError(ObjectStoreError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "object not found"


class ObjectStoreUnavailableError(ObjectStoreError):
    """The object store could not be reached or refused the request."""


class ObjectStore(abc.ABC):
    """Blobs under ``/``-separated keys."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Raises :class:`ObjectNotFoundError` when the key does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error."""

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abc.abstractmethod
    def uri(self, key: str) -> str: ...


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ObjectStoreError(f"invalid object key {key!r}: must be relative, non-empty and without '..'")
    return key


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def uri(self, key: str) -> str:
        return self._path(key).resolve().as_uri()
