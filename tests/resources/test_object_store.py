"""Object store contract on a local directory and on S3 (moto server over HTTP)."""

import socket
import time
from pathlib import Path

import pytest

from resources.object_store import (
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)
from resources.s3_object_store import S3ObjectStore
from tests.resources.conftest import make_s3_object_store


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    return make_s3_object_store(endpoint, prefix="riverbed/artifacts" if request.param == "s3-prefixed" else "")


def test_put_get_exists_delete(object_store: ObjectStore) -> None:
    object_store.put("reports/2026-10-01/drift.html", b"<html/>")
    assert object_store.exists("reports/2026-10-01/drift.html")
    assert object_store.get("reports/2026-10-01/drift.html") == b"<html/>"
    object_store.put("reports/2026-10-01/drift.html", b"v2")
    assert object_store.get("reports/2026-10-01/drift.html") == b"v2"
    object_store.delete("reports/2026-10-01/drift.html")
    assert not object_store.exists("reports/2026-10-01/drift.html")
    object_store.delete("reports/2026-10-01/drift.html")  # deleting a missing key is fine


def test_missing_key_raises_not_found(object_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        object_store.get("nope/missing.bin")


def test_list_keys_by_prefix_sorted(object_store: ObjectStore) -> None:
    for key in ("b/2", "a/1", "b/1", "c"):
        object_store.put(key, key.encode())
    assert object_store.list_keys("b/") == ["b/1", "b/2"]
    assert object_store.list_keys() == ["a/1", "b/1", "b/2", "c"]


def test_many_keys_are_listed_across_pages(object_store: ObjectStore) -> None:
    for i in range(1005):
        object_store.put(f"many/{i:05d}", b"x")
    assert len(object_store.list_keys("many/")) == 1005


@pytest.mark.parametrize("bad", ["", "/absolute", "a/../b"])
def test_invalid_keys_are_refused(object_store: ObjectStore, bad: str) -> None:
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        object_store.put(bad, b"x")


def test_s3_uri_names_bucket_and_prefix(moto_s3_endpoint: str) -> None:
    store = make_s3_object_store(moto_s3_endpoint, bucket="riverbed-uri", prefix="p")
    assert store.uri("a/b") == "s3://riverbed-uri/p/a/b"


def test_unreachable_s3_fails_fast_with_a_plain_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = S3ObjectStore(
        bucket="riverbed",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        access_key_id="k",
        secret_access_key="super-secret-value",
        connect_timeout=0.5,
        max_attempts=1,
    )
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError) as caught:
        store.get("anything")
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert "super-secret-value" not in str(caught.value)


def test_missing_bucket_is_reported(moto_s3_endpoint: str) -> None:
    store = S3ObjectStore(
        bucket="no-such-bucket-here", endpoint_url=moto_s3_endpoint, access_key_id="k", secret_access_key="s"
    )
    with pytest.raises(ObjectStoreUnavailableError, match="no-such-bucket-here"):
        store.put("x", b"1")


def test_s3_bucket_creation_is_idempotent_and_prefixes_are_isolated(moto_s3_endpoint: str) -> None:
    first = make_s3_object_store(moto_s3_endpoint, bucket="riverbed-shared", prefix="one")
    second = make_s3_object_store(moto_s3_endpoint, bucket="riverbed-shared", prefix="two")
    first.put("k", b"1")
    second.put("k", b"2")
    assert (first.get("k"), second.get("k")) == (b"1", b"2")
    assert first.list_keys() == ["k"]
    unprefixed = make_s3_object_store(moto_s3_endpoint, bucket="riverbed-shared")
    assert unprefixed.list_keys() == ["one/k", "two/k"]
