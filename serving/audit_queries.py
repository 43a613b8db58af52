"""Auditor queries over the inference log: filtered keyset pagination, one request, CSV / Parquet export.

Rows come back JSON-ready (timestamps as ISO 8601 UTC text), newest first, ordered by (received_at, request_id).

**Escaped text.** The log stores a string holding NUL or a lone surrogate (or starting with U+241B) escaped, with
the marker U+241B first (:func:`serving.inference_log.escape_text`). :func:`fetch_predictions` and
:func:`get_prediction` return the *original* text (:func:`serving.inference_log.unescape` applied to every row),
so a NUL may be in a value: JSON carries it as ``\\u0000``. Exports (:func:`iter_export_rows` and the CSV /
Parquet writers) keep the *stored* (escaped) form on purpose: a CSV or Parquet file must be valid UTF-8 text
(a lone surrogate cannot be encoded at all, and a NUL byte breaks most CSV readers), and the stored form is
exactly what the chain hash covers. An exported string that starts with U+241B is escaped;
:func:`serving.inference_log.unescape_text` restores it.

Everything a caller sends is checked before it reaches SQL: a malformed filter, request id, limit or cursor
raises :class:`AuditQueryError` (a ``ValueError``) naming the parameter and the rule. Cursors are base64url
JSON with an HMAC-SHA256 tag over the position *and the filters they were issued for*; a cursor that was
altered, corrupted, forged or issued for other filters raises :class:`CursorError`. The tag's key is
:func:`cursor_key_for` the inference log's chain key (the gateway passes the key its writer was built with, so
its cursors stay valid across restarts and between its processes, and the CLI can use the same key); no key is
built in. A caller that passes no key gets a random key made once per process: its cursors are valid only in
that process, and a restart invalidates them (clients then start from the first page again).

Exports stop at ``max_rows`` (at most :data:`MAX_EXPORT_ROWS`); :func:`export_parquet_file` writes row
groups incrementally to a file and :func:`export_csv_chunks` yields text, so neither holds an export in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serving.inference_log import CONTENT_FIELDS, RequestStatus, escape_text, format_time, parse_time, unescape

MAX_LIMIT = 1000
MAX_EXPORT_ROWS = 1_000_000  # the most rows one export holds (newest first)
MAX_FILTER_LENGTH = 256  # dataset, model version and label filters
MAX_REQUEST_ID_LENGTH = 128
MAX_CURSOR_LENGTH = 512
# What the gateway issues (UUIDs) and any id of letters, digits, '-', '_', '.' and ':' (hex digests, ULIDs, ...).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_CURSOR_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,480})\.([A-Za-z0-9_-]{22})")
_CURSOR_VERSION = 1
_CURSOR_KEY_LABEL = b"audit-cursor"
# Used only when no key is passed: cursors then do not survive the process (see the module docstring).
_PROCESS_CURSOR_KEY = secrets.token_bytes(32)


class AuditQueryError(ValueError):
    """A malformed audit query: ``field`` names the parameter, ``rule`` what it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class CursorError(AuditQueryError):
    """A cursor this API did not issue for this query (malformed, altered, or issued for other filters)."""

    def __init__(self, rule: str) -> None:
        super().__init__("cursor", rule)


def check_text(field: str, value: Any, max_length: int) -> None:
    """Raise :class:`AuditQueryError` unless ``value`` is text PostgreSQL can store, of at most ``max_length``."""
    if not isinstance(value, str):
        raise AuditQueryError(field, f"expected text, got {type(value).__name__}")
    if len(value) > max_length:
        raise AuditQueryError(field, f"longer than {max_length} characters")
    if "\x00" in value:
        raise AuditQueryError(field, "contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AuditQueryError(field, "is not valid Unicode text (a lone surrogate)") from None


def check_request_id(request_id: Any) -> str:
    """The request id if it has the shape of one (letters, digits, '-', '_', '.', ':'; at most 128 characters)."""
    check_text("request_id", request_id, MAX_REQUEST_ID_LENGTH)
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise AuditQueryError(
            "request_id", "must be a request id: letters, digits, '-', '_', '.' or ':' (as X-Request-ID returns)"
        )
    return str(request_id)


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
    # Oversight (serving.oversight): requests with (True) or without (False) a flag / an override action.
    flagged: bool | None = None
    overridden: bool | None = None

    def validate(self) -> None:
        """Raise :class:`AuditQueryError` naming the first malformed field."""
        for name in ("dataset", "model_version", "label"):
            value = getattr(self, name)
            if value is not None:
                check_text(name, value, MAX_FILTER_LENGTH)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, dt.datetime):
                raise AuditQueryError(name, f"expected a datetime, got {type(value).__name__}")
            try:
                _utc(value).astimezone(dt.UTC)
            except OverflowError:
                raise AuditQueryError(name, "out of range: must fall within the years 1 to 9999 in UTC") from None
        if self.since is not None and self.until is not None and _utc(self.since) > _utc(self.until):
            raise AuditQueryError("since", "must not be after 'until'")
        if self.status is not None:
            try:
                RequestStatus(self.status)
            except ValueError:
                raise AuditQueryError("status", "must be one of ok, rejected, failed") from None
        for name in ("flagged", "overridden"):
            if getattr(self, name) not in (None, True, False):
                raise AuditQueryError(name, "must be true or false")

    def as_json(self) -> dict[str, Any]:
        """The filter as JSON (unset fields left out), as the audit access log records it."""
        fields: dict[str, Any] = {
            "dataset": self.dataset,
            "since": format_time(self.since) if self.since is not None else None,
            "until": format_time(self.until) if self.until is not None else None,
            "model_version": self.model_version,
            "label": self.label,
            "status": RequestStatus(self.status).value if self.status is not None else None,
            "flagged": self.flagged,
            "overridden": self.overridden,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def digest(self) -> str:
        """A short digest of the filter, which binds a cursor to the query that issued it."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def cursor_key_for(chain_key: bytes) -> bytes:
    """The key of the cursors' HMAC tags, derived from the inference log's chain key: HMAC-SHA256(key,
    ``b"audit-cursor"``) (the chain key itself never tags anything else)."""
    if len(chain_key) < 16:
        raise ValueError("the chain key must be at least 16 bytes")
    return hmac.new(chain_key, _CURSOR_KEY_LABEL, hashlib.sha256).digest()


def _tag(payload: str, key: bytes | None) -> str:
    secret = _PROCESS_CURSOR_KEY if key is None else key
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()[:16])


def encode_cursor(received_at: str, request_id: str, flt: AuditFilter, *, key: bytes | None = None) -> str:
    """Opaque cursor of a row's keyset position under ``flt``: base64url JSON, a dot, its HMAC tag."""
    payload = _b64(json.dumps([_CURSOR_VERSION, received_at, request_id, flt.digest()]).encode("utf-8"))
    return f"{payload}.{_tag(payload, key)}"


def decode_cursor(cursor: Any, flt: AuditFilter, *, key: bytes | None = None) -> tuple[dt.datetime, str]:
    """The keyset position of a cursor :func:`encode_cursor` issued for ``flt``; raises :class:`CursorError`."""
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
        raise CursorError(f"malformed: not a cursor returned by this API (at most {MAX_CURSOR_LENGTH} characters)")
    match = _CURSOR_PATTERN.fullmatch(cursor)
    if match is None:
        raise CursorError("malformed: not a cursor returned by this API")
    payload, tag = match.groups()
    if not hmac.compare_digest(tag, _tag(payload, key)):
        raise CursorError("altered or corrupted: not a cursor returned by this API")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise CursorError("malformed: not a cursor returned by this API") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 4
        or decoded[0] != _CURSOR_VERSION
        or not all(isinstance(part, str) for part in decoded[1:])
    ):
        raise CursorError("malformed: not a cursor returned by this API")
    _, received_at, request_id, digest = decoded
    if digest != flt.digest():
        raise CursorError("issued for other filters: pass it with the filters of the page that returned it")
    try:
        position = parse_time(received_at)
        check_request_id(request_id)
    except ValueError:
        raise CursorError("malformed: not a cursor returned by this API") from None
    return position, request_id


_ACTED_ON = "request_id in (select target_id from oversight_actions where target_kind = 'prediction' and action = %s)"
_NOT_ACTED_ON = (
    "not exists (select 1 from oversight_actions o where o.target_kind = 'prediction' "
    "and o.target_id = inference_log.request_id and o.action = %s)"
)


def _where(flt: AuditFilter, after: tuple[dt.datetime, str] | None) -> tuple[sql.Composable, list[Any]]:
    """The filter as SQL; text filters are compared in their stored (escaped) form."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if flt.dataset is not None:
        clauses.append(sql.SQL("dataset = %s"))
        params.append(escape_text(flt.dataset))
    if flt.since is not None:
        clauses.append(sql.SQL("received_at >= %s"))
        params.append(_utc(flt.since))
    if flt.until is not None:
        clauses.append(sql.SQL("received_at < %s"))
        params.append(_utc(flt.until))
    if flt.model_version is not None:
        clauses.append(sql.SQL("model_version = %s"))
        params.append(escape_text(flt.model_version))
    if flt.label is not None:
        clauses.append(sql.SQL("labels @> array[%s]::text[]"))  # served by the GIN index
        params.append(escape_text(flt.label))
    if flt.status is not None:
        clauses.append(sql.SQL("status = %s"))
        params.append(RequestStatus(flt.status).value)
    for action, wanted in (("flag", flt.flagged), ("override", flt.overridden)):
        if wanted is None:
            continue
        # Index-backed (oversight_actions_acted_on): a semi-join on the few acted-on requests, or an anti-join probe
        # per row of the keyset scan. Action rows store the target id as the log stores request ids.
        clauses.append(sql.SQL(_ACTED_ON if wanted else _NOT_ACTED_ON))
        params.append(action)
    if after is not None:
        clauses.append(sql.SQL("(received_at, request_id) < (%s, %s)"))
        params.extend(after)
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL(" where ") + sql.SQL(" and ").join(clauses), params


def _original(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row with every string (and object key) unescaped to the text the gateway was given."""
    restored: dict[str, Any] = unescape(row)
    return restored


def _originals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_original(row) for row in rows]


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
    pool: AsyncConnectionPool,
    flt: AuditFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    cursor_key: bytes | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of matching requests, newest first (their text unescaped: see the module docstring), and the
    cursor of the next page (None on the last one).

    Raises :class:`AuditQueryError` for a malformed filter, limit or cursor (a cursor is valid only with the
    filters, and the ``cursor_key``, of the query that returned it; None: this process's random key).
    """
    flt.validate()
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise AuditQueryError("limit", f"must be between 1 and {MAX_LIMIT}, got {limit!r}")
    after = decode_cursor(cursor, flt, key=cursor_key) if cursor else None
    rows = await _page(pool, flt, limit + 1, after)
    if len(rows) <= limit:
        return _originals(rows), None
    rows = rows[:limit]
    last = rows[-1]  # the stored request id: the keyset position is compared with what is stored
    return _originals(rows), encode_cursor(last["received_at"], last["request_id"], flt, key=cursor_key)


async def get_prediction(pool: AsyncConnectionPool, request_id: str) -> dict[str, Any] | None:
    """The full row of one request (with its chain position and hashes, its text unescaped), or None; raises
    :class:`AuditQueryError` for text that cannot be a request id (NUL, over-long)."""
    check_text("request_id", request_id, MAX_REQUEST_ID_LENGTH)
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + sql.SQL(" where request_id = %s"), (request_id,))
        row = await cur.fetchone()
    return None if row is None else _original(_json_ready(row))


async def iter_export_rows(
    pool: AsyncConnectionPool, flt: AuditFilter, batch_size: int = 1000, *, max_rows: int = MAX_EXPORT_ROWS
) -> AsyncIterator[dict[str, Any]]:
    """The matching rows (the newest ``max_rows``), in the listing's order, fetched in keyset batches (no
    connection held between them). Rows keep their stored (escaped) text: see the module docstring."""
    flt.validate()
    if batch_size < 1:
        raise AuditQueryError("batch_size", "must be at least 1")
    if not isinstance(max_rows, int) or not 1 <= max_rows <= MAX_EXPORT_ROWS:
        raise AuditQueryError("limit", f"must be between 1 and {MAX_EXPORT_ROWS}, got {max_rows!r}")
    after: tuple[dt.datetime, str] | None = None
    left = max_rows
    while left > 0:
        wanted = min(batch_size, left)
        rows = await _page(pool, flt, wanted, after)
        for row in rows:
            yield row
        left -= len(rows)
        if len(rows) < wanted:
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
    """CSV text in chunks: a header, then one line per row; nested columns are JSON-encoded. Text is in its
    stored (escaped) form, so the CSV is valid UTF-8 without NUL characters (see the module docstring)."""
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
    import pyarrow as pa  # pyarrow: ~0.3 s to import; only Parquet exports need it, not the gateway's start

    types = {
        "seq": pa.int64(),
        "http_status": pa.int32(),
        "received_at": pa.timestamp("us", tz="UTC"),
        "logged_at": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(name, types.get(name, pa.string())) for name in COLUMNS])


async def _write_parquet(rows: AsyncIterable[dict[str, Any]], sink: str | IO[bytes], batch_rows: int) -> int:
    """Write the rows as Parquet to ``sink``, one row group per ``batch_rows`` (written in a worker thread)."""
    import pyarrow as pa  # ~0.3 s to import (see _arrow_schema)
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    count = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []

        def table() -> Any:
            columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
            for row in batch:
                flat = _flat(row)
                for name in COLUMNS:
                    value = flat.get(name)
                    if name in _TIME_COLUMNS and isinstance(value, str):
                        value = parse_time(value)
                    columns[name].append(value)
            return pa.table(columns, schema=schema)

        async for row in rows:
            batch.append(row)
            count += 1
            if len(batch) >= batch_rows:
                await asyncio.to_thread(writer.write_table, table())
                batch.clear()
        if batch:
            await asyncio.to_thread(writer.write_table, table())
    return count


async def export_parquet_file(rows: AsyncIterable[dict[str, Any]], path: Path, *, batch_rows: int = 2000) -> int:
    """Write a Parquet file of the rows (nested columns as JSON text, timestamps as UTC microseconds) to
    ``path`` incrementally, one row group per ``batch_rows``; returns the number of rows."""
    return await _write_parquet(rows, str(path), batch_rows)


async def export_parquet_bytes(rows: AsyncIterable[dict[str, Any]], *, batch_rows: int = 2000) -> bytes:
    """A Parquet file of the rows as bytes (for small exports; :func:`export_parquet_file` for large ones)."""
    sink = io.BytesIO()
    await _write_parquet(rows, sink, batch_rows)
    return sink.getvalue()


async def export_csv_file(rows: AsyncIterable[dict[str, Any]], path: Path, *, rows_per_chunk: int = 500) -> int:
    """Write the rows as CSV (see :func:`export_csv_chunks`) to ``path``; returns the number of rows."""
    counted = _Counted(rows)
    with path.open("w", encoding="utf-8", newline="") as handle:
        async for chunk in export_csv_chunks(counted, rows_per_chunk=rows_per_chunk):
            await asyncio.to_thread(handle.write, chunk)
    return counted.count


class _Counted:
    """An async iterable of rows that counts what passed through it."""

    def __init__(self, rows: AsyncIterable[dict[str, Any]]) -> None:
        self.rows = rows
        self.count = 0

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for row in self.rows:
            self.count += 1
            yield row
