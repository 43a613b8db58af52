"""Dagster resources for the versioned data store and the object store.

One resource per external system, with a typed backend switch: the same resource key works on embedded
parts (``local``) and on real services (``lakefs`` / ``s3``). Hosts and secrets arrive as ``dg.EnvVar``
values chosen in ``platform_assets/environments.py``; clients are built lazily, never at import.
"""

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import PrivateAttr

from resources.local_versioned_store import LocalVersionedStore
from resources.object_store import LocalObjectStore, ObjectStore
from resources.s3_object_store import S3ObjectStore
from resources.versioned_store import VersionedStore, VersionedStoreError


class ObjectStoreResource(dg.ConfigurableResource["ObjectStoreResource"]):
    """Blobs (artifacts, reports): a local directory or an S3 / MinIO bucket."""

    backend: Literal["local", "s3"] = "local"
    local_root: str = ".riverbed/objects"
    bucket: str = "riverbed"
    prefix: str = ""
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"

    _client: ObjectStore | None = PrivateAttr(default=None)

    def get_client(self) -> ObjectStore:
        if self._client is None:
            if self.backend == "local":
                self._client = LocalObjectStore(self.local_root)
            else:
                self._client = S3ObjectStore(
                    bucket=self.bucket,
                    endpoint_url=self.endpoint_url,
                    access_key_id=self.access_key_id,
                    secret_access_key=self.secret_access_key,
                    region=self.region,
                    prefix=self.prefix,
                )
        return self._client


class VersionedDataStoreResource(dg.ConfigurableResource["VersionedDataStoreResource"]):
    """The versioned data store: the embedded local store or lakeFS over its HTTP API."""

    backend: Literal["local", "lakefs"] = "local"
    repository: str = "riverbed"
    main_branch: str = "main"
    local_dir: str = ".riverbed/versioned-store"
    objects: ObjectStoreResource | None = None
    lakefs_endpoint: str | None = None
    lakefs_access_key_id: str | None = None
    lakefs_secret_access_key: str | None = None
    lakefs_storage_namespace: str | None = None

    _store: VersionedStore | None = PrivateAttr(default=None)

    def get_store(self) -> VersionedStore:
        if self._store is None:
            self._store = self._build()
        return self._store

    def _build(self) -> VersionedStore:
        if self.backend == "local":
            objects = (
                self.objects.get_client()
                if self.objects is not None
                else LocalObjectStore(Path(self.local_dir) / "objects")
            )
            return LocalVersionedStore(
                metadata_dir=Path(self.local_dir) / "metadata",
                objects=objects,
                repository=self.repository,
                main_branch=self.main_branch,
            )
        missing = [
            name
            for name, value in (
                ("lakefs_endpoint", self.lakefs_endpoint),
                ("lakefs_access_key_id", self.lakefs_access_key_id),
                ("lakefs_secret_access_key", self.lakefs_secret_access_key),
            )
            if not value
        ]
        if missing:
            raise VersionedStoreError(
                f"the lakefs backend needs {', '.join(missing)} (set RIVERBED_LAKEFS_* in the environment)"
            )
        # lakefs-sdk: ~0.6 s to import even after Dagster is loaded; only the lakefs backend needs it
        from resources.lakefs_versioned_store import LakeFSVersionedStore

        return LakeFSVersionedStore(
            endpoint=self.lakefs_endpoint or "",
            access_key_id=self.lakefs_access_key_id or "",
            secret_access_key=self.lakefs_secret_access_key or "",
            repository=self.repository,
            main_branch=self.main_branch,
            storage_namespace=self.lakefs_storage_namespace,
        )
