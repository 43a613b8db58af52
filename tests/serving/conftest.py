"""Fixtures of the serving tests: a fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.scratch_postgres import create_database, drop_database


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """DSN of a new, uniquely named, empty database, dropped after the test."""
    try:
        name, dsn = create_database()
    except psycopg.OperationalError as error:  # the machine's PostgreSQL is part of the test environment
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {error}")
    try:
        yield dsn
    finally:
        drop_database(name)


@pytest.fixture
def migrated_dsn(postgres_dsn: str) -> str:
    """A fresh database with the inference-log migrations applied."""
    from riverbed.inference_log_schema import apply_migrations

    apply_migrations(postgres_dsn)
    return postgres_dsn


@pytest.fixture
def make_record() -> Callable[..., Any]:
    """Builds an InferenceRecord with plausible defaults; keyword arguments override fields."""
    from serving.inference_log import InferenceRecord, RequestStatus

    def build(**overrides: Any) -> InferenceRecord:
        label = overrides.pop("label", "setosa")
        fields: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "received_at": dt.datetime.now(dt.UTC),
            "dataset": "iris",
            "route": "/v1/{dataset}/predict",
            "status": RequestStatus.OK,
            "http_status": 200,
            "client_key_id": "k1",
            "model_name": "iris-classifier",
            "model_version": "3",
            "mlflow_run_id": "run-abc",
            "training_set_commit_id": "c0ffee",
            "data_commit_ids": {"2024-01-01": "c0ffee", "2024-01-02": "beef01"},
            "dagster_run_id": "dagster-run-1",
            "inputs": [{"sepal_length": 5.1, "sepal_width": 3.5, "species_hint": "ßetosa ✓"}],
            "outputs": [
                {
                    "sample_id": 0,
                    "label": label,
                    "probabilities": {label: 0.93, "other": 0.07},
                    "explanation": {"base_value": 0.33, "contributions": {"sepal_length": 0.6}, "top_features": []},
                }
            ],
            "labels": [label],
            "error": None,
            "timings_ms": {"model_ms": 1.25, "total_ms": 2.5},
        }
        fields.update(overrides)
        return InferenceRecord(**fields)

    return build


@pytest.fixture
def unreachable_dsn(postgres_dsn: str) -> str:
    """The test database's DSN with the port of a closed TCP port on 127.0.0.1 (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return postgres_dsn.replace("port=5432", f"port={port}")
