"""Auditor queries: filtered keyset pagination, one request, CSV and Parquet export."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import pytest_asyncio

from serving.audit_queries import (
    AuditFilter,
    export_csv_chunks,
    export_parquet_bytes,
    fetch_predictions,
    get_prediction,
    iter_export_rows,
)
from serving.inference_log import InferenceLogWriter, InferenceRecord, RequestStatus

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest_asyncio.fixture
async def logged(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., InferenceRecord]
) -> AsyncIterator[tuple[InferenceLogWriter, list[InferenceRecord]]]:
    """57 recorded requests over two datasets, three model versions, labels and statuses; some share a timestamp."""
    records = []
    for i in range(57):
        status = [RequestStatus.OK, RequestStatus.OK, RequestStatus.REJECTED, RequestStatus.FAILED][i % 4]
        label = ["setosa", "versicolor", "virginica"][i % 3]
        records.append(
            make_record(
                received_at=T0 + dt.timedelta(seconds=i // 3, microseconds=7),  # triples share a timestamp
                dataset="iris" if i % 5 else "wine",
                model_version=str(1 + i % 3),
                status=status,
                http_status={RequestStatus.OK: 200, RequestStatus.REJECTED: 422, RequestStatus.FAILED: 503}[status],
                label=label,
                labels=[label] if status is RequestStatus.OK else [],
                error=None if status is RequestStatus.OK else 'it, failed; "quoted"\nnext line',
            )
        )
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool")
    await writer.start()
    for record in records:
        await writer.record(record)
    try:
        yield writer, records
    finally:
        await writer.stop()


def _expected(records: list[InferenceRecord], flt: AuditFilter) -> list[str]:
    def keep(r: InferenceRecord) -> bool:
        return (
            (flt.dataset is None or r.dataset == flt.dataset)
            and (flt.since is None or r.received_at >= flt.since)
            and (flt.until is None or r.received_at < flt.until)
            and (flt.model_version is None or r.model_version == flt.model_version)
            and (flt.label is None or flt.label in r.labels)
            and (flt.status is None or r.status == flt.status)
        )

    chosen = sorted((r for r in records if keep(r)), key=lambda r: (r.received_at, r.request_id), reverse=True)
    return [r.request_id for r in chosen]


FILTERS = [
    AuditFilter(),
    AuditFilter(dataset="iris"),
    AuditFilter(dataset="wine", status=RequestStatus.OK),
    AuditFilter(since=T0 + dt.timedelta(seconds=3), until=T0 + dt.timedelta(seconds=11, microseconds=7)),
    AuditFilter(model_version="2", label="versicolor"),
    AuditFilter(label="virginica", dataset="iris"),
    AuditFilter(status=RequestStatus.FAILED),
    AuditFilter(dataset="nope"),
]


@pytest.mark.parametrize("flt", FILTERS, ids=[f"filter{i}" for i in range(len(FILTERS))])
async def test_pagination_returns_every_row_once(logged: tuple[InferenceLogWriter, list], flt: AuditFilter) -> None:
    writer, records = logged
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        rows, cursor = await fetch_predictions(writer.pool, flt, limit=7, cursor=cursor)
        assert len(rows) <= 7
        seen.extend(row["request_id"] for row in rows)
        pages += 1
        if cursor is None:
            break
        assert pages < 50
    assert seen == _expected(records, flt)
    assert len(seen) == len(set(seen))


async def test_rows_are_json_ready(logged: tuple[InferenceLogWriter, list]) -> None:
    writer, _ = logged
    rows, cursor = await fetch_predictions(writer.pool, AuditFilter(status=RequestStatus.OK), limit=1)
    assert cursor is not None
    row = rows[0]
    json.dumps(row)  # no datetimes or other objects left
    assert row["received_at"].endswith("Z")
    assert row["data_commit_ids"] == {"2024-01-01": "c0ffee", "2024-01-02": "beef01"}
    assert row["outputs"][0]["probabilities"]


async def test_get_prediction(logged: tuple[InferenceLogWriter, list]) -> None:
    writer, records = logged
    row = await get_prediction(writer.pool, records[10].request_id)
    assert row is not None
    assert row["seq"] == 11
    assert len(row["row_hash"]) == 64 and len(row["prev_hash"]) == 64
    assert row["mlflow_run_id"] == "run-abc" and row["training_set_commit_id"] == "c0ffee"
    assert await get_prediction(writer.pool, "no-such-request") is None


@pytest.mark.parametrize(
    ("flt", "kwargs", "field"),
    [
        (AuditFilter(since=T0, until=T0 - dt.timedelta(seconds=1)), {}, "since"),
        (AuditFilter(), {"limit": 0}, "limit"),
        (AuditFilter(), {"limit": 1001}, "limit"),
        (AuditFilter(), {"cursor": "not-a-cursor!"}, "cursor"),
    ],
)
async def test_invalid_queries_name_the_field(
    logged: tuple[InferenceLogWriter, list], flt: AuditFilter, kwargs: dict[str, Any], field: str
) -> None:
    writer, _ = logged
    with pytest.raises(ValueError, match=field):
        await fetch_predictions(writer.pool, flt, **kwargs)


async def test_export_iterates_in_listing_order(logged: tuple[InferenceLogWriter, list]) -> None:
    writer, records = logged
    flt = AuditFilter(dataset="iris")
    ids = [row["request_id"] async for row in iter_export_rows(writer.pool, flt, batch_size=5)]
    assert ids == _expected(records, flt)


async def test_csv_export_round_trips(logged: tuple[InferenceLogWriter, list]) -> None:
    writer, records = logged
    chunks = [c async for c in export_csv_chunks(iter_export_rows(writer.pool, AuditFilter()), rows_per_chunk=10)]
    assert len(chunks) >= 6
    frame = pd.read_csv(io.StringIO("".join(chunks)), dtype=str, keep_default_na=False)
    assert list(frame["request_id"]) == _expected(records, AuditFilter())
    by_id = {r.request_id: r for r in records}
    for _, row in frame.iterrows():
        original = by_id[row["request_id"]]
        assert json.loads(row["inputs"]) == original.inputs
        assert json.loads(row["labels"]) == original.labels
        assert row["error"] == (original.error or "")
        assert pd.Timestamp(row["received_at"]) == pd.Timestamp(original.received_at)


async def test_parquet_export_round_trips(logged: tuple[InferenceLogWriter, list]) -> None:
    writer, records = logged
    flt = AuditFilter(status=RequestStatus.OK)
    payload = await export_parquet_bytes(iter_export_rows(writer.pool, flt, batch_size=4), batch_rows=3)
    frame = pd.read_parquet(io.BytesIO(payload))
    assert list(frame["request_id"]) == _expected(records, flt)
    by_id = {r.request_id: r for r in records}
    for _, row in frame.iterrows():
        original = by_id[row["request_id"]]
        assert row["received_at"] == pd.Timestamp(original.received_at)
        assert json.loads(row["outputs"]) == original.outputs
        assert row["status"] == "ok"
    empty = await export_parquet_bytes(iter_export_rows(writer.pool, AuditFilter(dataset="nope")))
    assert pd.read_parquet(io.BytesIO(empty)).empty
