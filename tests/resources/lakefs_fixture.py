"""lakeFS backend fixtures: one API test double per session, a store on a fresh repository per test.

Every response of the double is validated against lakeFS's published API (``tests/lakefs_double/contract.py``);
:func:`lakefs_contract_guard` fails the test during which the double answered something the API does not allow.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from resources.lakefs_versioned_store import LakeFSVersionedStore
from tests.lakefs_double import LakeFSDouble, run_lakefs_double


def fresh_repository_name(prefix: str = "test") -> str:
    """A name lakeFS accepts (``^[a-z0-9][a-z0-9-]{2,62}$``) that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_lakefs_store(double: LakeFSDouble, repository: str | None = None, **options: float) -> LakeFSVersionedStore:
    """The production lakeFS store, talking HTTP to ``double``; the repository is created on first use."""
    repository = repository or fresh_repository_name()
    return LakeFSVersionedStore(
        endpoint=double.url,
        access_key_id=double.access_key_id,
        secret_access_key=double.secret_access_key,
        repository=repository,
        storage_namespace=f"local://riverbed-tests/{repository}",
        **options,
    )


@pytest.fixture(scope="session")
def lakefs_double() -> Iterator[LakeFSDouble]:
    with run_lakefs_double() as double:
        yield double


@pytest.fixture(autouse=True)
def lakefs_contract_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests on the session double: no response may break the published API during the test."""
    if "lakefs_double" not in request.fixturenames:
        yield
        return
    double: LakeFSDouble = request.getfixturevalue("lakefs_double")
    before = len(double.violations)
    yield
    double.assert_no_violations(since=before)
