"""Fixtures shared by the double's own tests: one running double per module and an authenticated HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.lakefs_double import LakeFSDouble, run_lakefs_double


@pytest.fixture(scope="module")
def double() -> Iterator[LakeFSDouble]:
    with run_lakefs_double() as running:
        yield running


@pytest.fixture
def http(double: LakeFSDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=double.api_url, auth=(double.access_key_id, double.secret_access_key)) as client:
        yield client
