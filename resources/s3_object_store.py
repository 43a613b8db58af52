"""Object store on S3 / MinIO through boto3 (endpoint and credentials from settings, never hard-coded)."""

from __future__ import annotations

import logging

from resources.object_store import (
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    _check_key,
)

logger = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3ObjectStore(ObjectStore):
    """Blobs under ``s3://<bucket>/<prefix>/``; botocore errors become typed errors naming endpoint and bucket."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str = "us-east-1",
        prefix: str = "",
        create_bucket: bool = False,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_attempts: int = 2,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        if create_bucket:
            self._call("create bucket", lambda: self._ensure_bucket())

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"

    def _call(self, action: str, fn, key: str | None = None):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES and key is not None:
                raise ObjectNotFoundError(f"no object {key!r} in {self._where()}") from None
            if code == "NoSuchBucket":
                raise ObjectStoreUnavailableError(f"{self._where()} does not exist") from None
            raise ObjectStoreUnavailableError(f"{action} failed on {self._where()}: {code or error}") from None
        except BotoCoreError as error:
            raise ObjectStoreUnavailableError(
                f"{action} failed: cannot reach {self._where()} ({type(error).__name__})"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        self._call("put", lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data), key)

    def get(self, key: str) -> bytes:
        response = self._call("get", lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key)), key)
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._call("head", lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)), key)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)), key)

    def list_keys(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []

        def collect() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    keys.append(key[len(self.prefix) + 1 :] if self.prefix else key)

        self._call("list", collect)
        return sorted(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


__all__ = ["ObjectStoreError", "S3ObjectStore"]
