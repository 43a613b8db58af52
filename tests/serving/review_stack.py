"""The gateway the oversight and model-review tests share: a real uvicorn gateway (in this process) over a scratch
PostgreSQL database, in front of a scripted MLServer serving salary_band, with one key per role."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    ScriptedMLServer,
    in_process_gateway,
    point_at_scripted_model,
    salary_band_spec,
)

SPEC = salary_band_spec()


@dataclass(frozen=True)
class Keys:
    predict: str
    audit: str
    review: str
    review_id: str

    def of(self, role: str) -> str:
        """The key of ``role`` (predict, audit or review)."""
        return {"predict": self.predict, "audit": self.audit, "review": self.review}[role]


@dataclass(frozen=True)
class Stack:
    url: str
    settings: RiverbedSettings
    dsn: str
    mlserver_url: str
    keys: Keys


def wait_ready(url: str, within: float = 30.0) -> None:
    """Until /readyz is 200 with the API-key listener connected."""
    deadline = time.monotonic() + within
    while True:
        response = httpx.get(f"{url}/readyz", timeout=5)
        if response.status_code == 200 and response.json()["key_listener"]:
            return
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)


@contextlib.contextmanager
def review_stack(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Stack]:
    """The gateway (ready), its database and keys; the database is dropped afterwards."""
    home = tmp_path_factory.mktemp(name)
    database, dsn = create_database()
    try:
        with ScriptedMLServer() as mlserver:
            settings = RiverbedSettings(
                home=home, inference_log_dsn=dsn, mlserver_url=mlserver.url, model_repository=home / "repository"
            )
            point_at_scripted_model(ModelRepository(settings.model_repository_dir), SPEC)
            with in_process_gateway(settings) as url:
                wait_ready(url)
                review = create_api_key(dsn, ["review"], "reviewer")
                keys = Keys(
                    predict=create_api_key(dsn, ["predict"], "app").key,
                    audit=create_api_key(dsn, ["audit"], "auditor").key,
                    review=review.key,
                    review_id=review.key_id,
                )
                yield Stack(url, settings, dsn, mlserver.url, keys)
    finally:
        drop_database(database)
