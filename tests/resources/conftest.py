"""The ``versioned_store`` fixture: one contract suite, every backend.

- ``local``: the embedded store, objects in a local directory;
- ``local-s3``: the embedded store with its objects in S3 (moto server over HTTP);
- ``lakefs``: the production lakeFS backend (official SDK) over HTTP to the lakeFS API test double, which
  validates every request and response against lakeFS's published API (a test fails on any violation).
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.local_versioned_store import LocalVersionedStore
from resources.object_store import LocalObjectStore
from resources.s3_object_store import S3ObjectStore
from resources.versioned_store import VersionedStore
from tests.conftest import MOTO_ACCESS_KEY, MOTO_SECRET_KEY
from tests.resources.lakefs_fixture import (  # noqa: F401 - fixture re-exports
    lakefs_contract_guard,
    lakefs_double,
    make_lakefs_store,
)


def make_s3_object_store(endpoint: str, bucket: str | None = None, prefix: str = "") -> S3ObjectStore:
    return S3ObjectStore(
        bucket=bucket or f"test-{uuid.uuid4().hex[:10]}",
        endpoint_url=endpoint,
        access_key_id=MOTO_ACCESS_KEY,
        secret_access_key=MOTO_SECRET_KEY,
        prefix=prefix,
        create_bucket=True,
    )


@pytest.fixture(params=["local", "local-s3", "lakefs"])
def versioned_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VersionedStore]:
    repository = f"test-{uuid.uuid4().hex[:10]}"
    if request.param == "local":
        store: VersionedStore = LocalVersionedStore(
            tmp_path / "meta", LocalObjectStore(tmp_path / "objects"), repository=repository
        )
    elif request.param == "local-s3":
        endpoint = request.getfixturevalue("moto_s3_endpoint")
        store = LocalVersionedStore(tmp_path / "meta", make_s3_object_store(endpoint), repository=repository)
    else:
        double = request.getfixturevalue("lakefs_double")
        violations_before, checked_before = len(double.violations), double.violations.checked
        store = make_lakefs_store(double, repository=repository)
        store.ensure_repository()
        yield store
        # every response of the double during the test was checked against the published API, and none broke it
        assert double.violations.checked > checked_before
        double.assert_no_violations(since=violations_before)
        return
    store.ensure_repository()
    yield store
