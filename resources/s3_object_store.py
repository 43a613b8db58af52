"""Object store on S3 / MinIO through boto3 (endpoint and credentials from settings, never hard-coded)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from resources.object_store import (
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    _check_key,
)

logger = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_T = TypeVar("_T")


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
        self.region = region
        if create_bucket:
            self._call("create bucket", self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        options: dict[str, Any] = {}
        if self.region != "us-east-1":  # S3 refuses an explicit us-east-1 location, and needs any other one
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **options)
            logger.info("created bucket %s at %s", self.bucket, self.endpoint_url or "AWS S3")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # a concurrent creator
                raise

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"

    def _call(self, action: str, fn: Callable[[], _T], key: str | None = None) -> _T:
        """Run one S3 call; missing keys become ObjectNotFoundError, anything else ObjectStoreUnavailableError.

        Messages name the action, bucket and endpoint, never credentials; the original error goes to the
        debug log only.
        """
        try:
            return fn()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            logger.debug("%s on %s failed", action, self._where(), exc_info=True)
            if code in _MISSING_CODES and key is not None:
                raise ObjectNotFoundError(f"no object {key!r} in {self._where()}") from None
            if code == "NoSuchBucket":
                raise ObjectStoreUnavailableError(f"{self._where()} does not exist") from None
            raise ObjectStoreUnavailableError(f"{action} failed on {self._where()}: {code or error}") from None
        except BotoCoreError as error:
            logger.debug("%s on %s failed", action, self._where(), exc_info=True)
            raise ObjectStoreUnavailableError(
                f"{action} failed: cannot reach {self._where()} ({type(error).__name__})"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        self._call("put", lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data), key)

    def get(self, key: str) -> bytes:
        def read() -> bytes:  # the body streams: a dropped connection surfaces here, inside _call
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            body: bytes = response["Body"].read()  # boto3 is untyped (no boto3-stubs): a StreamingBody
            return body

        return self._call("get", read, key)

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
