"""Auditor queries over the inference log: filtered keyset pagination, one request, CSV / Parquet export.

Rows come back JSON-ready (timestamps as ISO 8601 UTC text), newest first, ordered by (received_at, request_id).
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serving.inference_log import CONTENT_FIELDS, RequestStatus, format_time, parse_time

MAX_LIMIT = 1000

# Columns of listings and exports (the row's content, chain position and hashes, and when it was committed).
COLUMNS = ("seq", *CONTENT_FIELDS, "logged_at", "prev_hash", "row_hash")
NESTED_COLUMNS = frozenset({"data_commit_ids", "inputs", "outputs", "labels", "timings_ms"})
_TIME_COLUMNS = ("received_at", "logged_at")
_SELECT = sql.SQL("select {} from inference_log").format(sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))


@dataclass(frozen=True)
class AuditFilter:
    """Which requests to select; every field is optional. ``since`` is inclusive, ``until`` exclusive."""

    dataset: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model_version: str | None = None
    label: str | None = None
    status: RequestStatus | None = None

    def validate(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dt.datetime):
                raise ValueError(f"{name}: expected a datetime, got {type(value).__name__}")
        if self.since is not None and self.until is not None and _utc(self.since) > _utc(self.until):
            raise ValueError("since: must not be after 'until'")
        if self.status is not None:
            try:
                RequestStatus(self.status)
            except ValueError:
                raise ValueError(f"status: {self.status!r} is not one of ok, rejected, failed") from None


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def encode_cursor(received_at: str, request_id: str) -> str:
    """Opaque cursor of a row's keyset position."""
    return base64.urlsafe_b64encode(json.dumps([received_at, request_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        received_at, request_id = json.loads(raw)
        return parse_time(received_at), str(request_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor returned by this API") from None


def _where(flt: AuditFilter, after: tuple[dt.datetime, str] | None) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if flt.dataset is not None:
        clauses.append(sql.SQL("dataset = %s"))
        params.append(flt.dataset)
    if flt.since is not None:
        clauses.append(sql.SQL("received_at >= %s"))
        params.append(_utc(flt.since))
    if flt.until is not None:
        clauses.append(sql.SQL("received_at < %s"))
        params.append(_utc(flt.until))
    if flt.model_version is not None:
        clauses.append(sql.SQL("model_version = %s"))
        params.append(flt.model_version)
    if flt.label is not None:
        clauses.append(sql.SQL("labels @> array[%s]::text[]"))  # served by the GIN index
        params.append(flt.label)
    if flt.status is not None:
        clauses.append(sql.SQL("status = %s"))
        params.append(RequestStatus(flt.status).value)
    if after is not None:
        clauses.append(sql.SQL("(received_at, request_id) < (%s, %s)"))
        params.extend(after)
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL(" where ") + sql.SQL(" and ").join(clauses), params


def _json_ready(row: dict[str, Any]) -> dict[str, Any]:
    for name in _TIME_COLUMNS:
        value = row.get(name)
        if isinstance(value, dt.datetime):
            row[name] = format_time(value)
    return row


async def _page(
    pool: AsyncConnectionPool, flt: AuditFilter, limit: int, after: tuple[dt.datetime, str] | None
) -> list[dict[str, Any]]:
    where, params = _where(flt, after)
    query = _SELECT + where + sql.SQL(" order by received_at desc, request_id desc limit %s")
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*params, limit])
        return [_json_ready(row) for row in await cur.fetchall()]


async def fetch_predictions(
    pool: AsyncConnectionPool, flt: AuditFilter, *, limit: int = 100, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of matching requests, newest first, and the cursor of the next page (None on the last one)."""
    flt.validate()
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}, got {limit!r}")
    after = decode_cursor(cursor) if cursor else None
    rows = await _page(pool, flt, limit + 1, after)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(last["received_at"], last["request_id"])


async def get_prediction(pool: AsyncConnectionPool, request_id: str) -> dict[str, Any] | None:
    """The full row of one request (with its chain position and hashes), or None."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + sql.SQL(" where request_id = %s"), (request_id,))
        row = await cur.fetchone()
    return None if row is None else _json_ready(row)


async def iter_export_rows(
    pool: AsyncConnectionPool, flt: AuditFilter, batch_size: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row, in the listing's order, fetched in keyset batches (no connection held between them)."""
    flt.validate()
    if batch_size < 1:
        raise ValueError("batch_size: must be at least 1")
    after: tuple[dt.datetime, str] | None = None
    while True:
        rows = await _page(pool, flt, batch_size, after)
        for row in rows:
            yield row
        if len(rows) < batch_size:
            return
        after = parse_time(rows[-1]["received_at"]), rows[-1]["request_id"]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its nested columns as JSON text (for CSV and Parquet)."""
    flat = dict(row)
    for name in NESTED_COLUMNS:
        if name in flat:
            flat[name] = json.dumps(flat[name], ensure_ascii=False, separators=(",", ":"))
    return flat


async def export_csv_chunks(rows: AsyncIterable[dict[str, Any]], *, rows_per_chunk: int = 500) -> AsyncIterator[str]:
    """CSV text in chunks: a header, then one line per row; nested columns are JSON-encoded."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    pending = 0
    async for row in rows:
        writer.writerow(_flat(row))
        pending += 1
        if pending >= rows_per_chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    tail = buffer.getvalue()
    if tail:
        yield tail


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = {
        "seq": pa.int64(),
        "http_status": pa.int32(),
        "received_at": pa.timestamp("us", tz="UTC"),
        "logged_at": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(name, types.get(name, pa.string())) for name in COLUMNS])


async def export_parquet_bytes(rows: AsyncIterable[dict[str, Any]], *, batch_rows: int = 2000) -> bytes:
    """A Parquet file of the rows (nested columns as JSON text, timestamps as UTC microseconds), built in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
            for row in batch:
                flat = _flat(row)
                for name in COLUMNS:
                    value = flat.get(name)
                    if name in _TIME_COLUMNS and isinstance(value, str):
                        value = parse_time(value)
                    columns[name].append(value)
            writer.write_table(pa.table(columns, schema=schema))
            batch.clear()

        async for row in rows:
            batch.append(row)
            if len(batch) >= batch_rows:
                flush()
        if batch:
            flush()
    return sink.getvalue()
