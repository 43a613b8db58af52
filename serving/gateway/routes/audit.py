"""Auditor routes (role ``audit``): one request with its lineage, filtered listing with keyset pagination, export.

Every parameter is checked before it reaches SQL: a malformed one (NUL or over-long text, a time that is not
ISO 8601 with a UTC offset or out of range, a limit out of range, a tampered cursor, an unknown format) is
answered 422 naming the parameter and the rule. Every read served is first recorded in ``audit_access_log``
(key id, route, filters, row count); a read that cannot be recorded is answered 503, not served. Exports hold
at most ``limit`` rows (default and maximum :data:`MAX_EXPORT_ROWS`), written to a temporary file under the
gateway's home (Parquet row group by row group) and streamed from disk.

Text the log stores escaped (a NUL or a lone surrogate: :func:`serving.inference_log.escape_text`) is shown as
the original in the JSON routes (a NUL as ``\\u0000``); exports keep the stored, escaped form (valid UTF-8, no NUL
in a CSV, and what the chain hash covers): a string starting with U+241B there is escaped (see
:mod:`serving.audit_queries`). Cursors are tagged with a key derived from the chain key, so they stay valid
across restarts of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from psycopg_pool import PoolTimeout
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from serving.api_keys import ApiKey
from serving.audit_access import AuditAccessNotRecorded, record_audit_access
from serving.audit_queries import (
    MAX_CURSOR_LENGTH,
    MAX_EXPORT_ROWS,
    MAX_FILTER_LENGTH,
    MAX_LIMIT,
    MAX_REQUEST_ID_LENGTH,
    AuditFilter,
    AuditQueryError,
    check_request_id,
    export_csv_file,
    export_parquet_file,
    fetch_predictions,
    get_prediction,
    iter_export_rows,
)
from serving.gateway.deps import AuditKey, Clock, GatewayDep, RequestId
from serving.gateway.lineage import lineage_of
from serving.gateway.middleware import RequestClock
from serving.gateway.responses import ORJSONResponse
from serving.gateway.schemas import ErrorResponse, RecordProblem, RequestRejected
from serving.gateway.state import GatewayState
from serving.inference_log import RequestStatus
from serving.oversight import fetch_actions

router = APIRouter()

ONE_ROUTE = "/v1/audit/predictions/{request_id}"
LIST_ROUTE = "/v1/audit/predictions"
EXPORT_ROUTE = "/v1/audit/export"
_STREAM_CHUNK = 256 * 1024

AUDIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    403: {"model": ErrorResponse, "description": "The key lacks the 'audit' role."},
    422: {"model": ErrorResponse, "description": "A malformed parameter: its name and the rule it broke."},
    503: {"model": ErrorResponse, "description": "The inference log is unreachable, or the read not recordable."},
}


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class StatusFilter(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


def _iso_time(value: Any) -> Any:
    """Only ISO 8601 text with a UTC offset, within the years 1 to 9999 in UTC (no Unix timestamps)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    rule = "must be an ISO 8601 date-time with a UTC offset, e.g. 2026-01-31T12:00:00Z"
    if not isinstance(value, str) or len(value) > 64 or "\x00" in value:
        raise PydanticCustomError("iso_datetime", rule)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise PydanticCustomError("iso_datetime", f"{rule} ({error})") from None
    if parsed.tzinfo is None:
        raise PydanticCustomError("iso_datetime", "needs a UTC offset, e.g. 2026-01-31T12:00:00Z")
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise PydanticCustomError("iso_datetime", "out of range: must fall within the years 1 to 9999 in UTC") from None


IsoTime = Annotated[dt.datetime | None, BeforeValidator(_iso_time)]
SinceQuery = Annotated[IsoTime, Query(description="Inclusive lower bound on received_at (ISO 8601).")]
UntilQuery = Annotated[IsoTime, Query(description="Exclusive upper bound on received_at.")]
DatasetQuery = Annotated[str | None, Query(max_length=MAX_FILTER_LENGTH)]
VersionQuery = Annotated[str | None, Query(max_length=MAX_FILTER_LENGTH)]
LabelQuery = Annotated[
    str | None, Query(max_length=MAX_FILTER_LENGTH, description="Requests with a record predicted as this label.")
]
FlaggedQuery = Annotated[bool | None, Query(description="Requests a reviewer flagged (true) or did not (false).")]
OverriddenQuery = Annotated[bool | None, Query(description="Requests a reviewer overrode (true) or did not (false).")]


# Handlers carry no docstrings: FastAPI would publish them as the operations' descriptions.
@router.get(
    ONE_ROUTE,
    tags=["audit"],
    summary="One request with its lineage chain.",
    responses={**AUDIT_RESPONSES, 404: {"model": ErrorResponse, "description": "No request with this id."}},
)
async def audit_one(
    request_id: Annotated[
        str, PathParam(max_length=MAX_REQUEST_ID_LENGTH, description="The X-Request-ID of a request.")
    ],
    gateway: GatewayDep,
    key: AuditKey,
    own_request_id: RequestId,
    clock: Clock,
) -> Response:
    caller = key.require()
    with _as_422():
        check_request_id(request_id)
    async with _database():
        row = await get_prediction(gateway.writer.pool, request_id)
    await _record_access(
        gateway, caller, ONE_ROUTE, {"request_id": request_id}, 0 if row is None else 1, own_request_id, clock
    )
    if row is None:
        raise RequestRejected(404, f"no request {request_id!r} in the inference log")
    async with _database():
        history = await fetch_actions(gateway.writer.pool, "prediction", request_id)
    return ORJSONResponse(
        {"request": row, "lineage": lineage_of(row), "oversight": [a.model_dump(mode="json") for a in history]}
    )


@router.get(
    LIST_ROUTE, tags=["audit"], summary="Logged requests, newest first, keyset-paginated.", responses=AUDIT_RESPONSES
)
async def audit_list(
    gateway: GatewayDep,
    key: AuditKey,
    own_request_id: RequestId,
    clock: Clock,
    dataset: DatasetQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    model_version: VersionQuery = None,
    label: LabelQuery = None,
    status: StatusFilter | None = None,
    flagged: FlaggedQuery = None,
    overridden: OverriddenQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=MAX_CURSOR_LENGTH, description="next_cursor of the previous page.")
    ] = None,
) -> Response:
    caller = key.require()
    selection = _audit_filter(dataset, since, until, model_version, label, status, flagged, overridden)
    with _as_422():
        async with _database():
            rows, next_cursor = await fetch_predictions(
                gateway.writer.pool, selection, limit=limit, cursor=cursor, cursor_key=gateway.cursor_key
            )
    filters = {**selection.as_json(), "limit": limit, **({"cursor": cursor} if cursor else {})}
    await _record_access(gateway, caller, LIST_ROUTE, filters, len(rows), own_request_id, clock)
    return ORJSONResponse({"predictions": rows, "next_cursor": next_cursor, "count": len(rows)})


@router.get(
    EXPORT_ROUTE,
    tags=["audit"],
    summary="Stream the selected requests as CSV or Parquet.",
    description="Text is exported as the inference log stores it: a string that held a NUL character or a lone "
    "surrogate is escaped, marked by a first character U+241B (backslash doubled, NUL as \\0, a surrogate as "
    "\\uXXXX), so the file is valid UTF-8 with no NUL; every other string is exported unchanged. The JSON routes "
    "show the original text.",
    responses=AUDIT_RESPONSES,
)
async def audit_export(
    gateway: GatewayDep,
    key: AuditKey,
    own_request_id: RequestId,
    clock: Clock,
    format: ExportFormat = ExportFormat.CSV,
    dataset: DatasetQuery = None,
    since: IsoTime = None,
    until: IsoTime = None,
    model_version: VersionQuery = None,
    label: LabelQuery = None,
    status: StatusFilter | None = None,
    flagged: FlaggedQuery = None,
    overridden: OverriddenQuery = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_EXPORT_ROWS, description="At most this many rows, the newest first.")
    ] = MAX_EXPORT_ROWS,
) -> Response:
    caller = key.require()
    selection = _audit_filter(dataset, since, until, model_version, label, status, flagged, overridden)
    path = await asyncio.to_thread(_temporary_file, gateway.settings.home / "tmp", format.value)
    try:
        rows = iter_export_rows(gateway.writer.pool, selection, max_rows=limit)
        with _as_422():
            async with _database():
                if format is ExportFormat.CSV:
                    count = await export_csv_file(rows, path)
                else:
                    count = await export_parquet_file(rows, path)
        filters = {**selection.as_json(), "format": format.value, "limit": limit}
        await _record_access(gateway, caller, EXPORT_ROUTE, filters, count, own_request_id, clock)
        handle = await asyncio.to_thread(path.open, "rb")
    finally:
        # The open handle keeps the data until the response has streamed it; a refused export leaves nothing.
        await asyncio.to_thread(path.unlink, missing_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    media_type = "text/csv" if format is ExportFormat.CSV else "application/vnd.apache.parquet"
    return StreamingResponse(
        _stream(handle),
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="riverbed-audit-{stamp}.{format.value}"',
            "X-Export-Rows": str(count),
        },
    )


def _audit_filter(
    dataset: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    model_version: str | None,
    label: str | None,
    status: StatusFilter | None,
    flagged: bool | None = None,
    overridden: bool | None = None,
) -> AuditFilter:
    """The query's filter; raises 422 naming the first malformed parameter."""
    selection = AuditFilter(
        dataset=dataset,
        since=since,
        until=until,
        model_version=model_version,
        label=label,
        status=RequestStatus(status.value) if status else None,
        flagged=flagged,
        overridden=overridden,
    )
    with _as_422():
        selection.validate()
    return selection


@contextlib.contextmanager
def _as_422() -> Iterator[None]:
    try:
        yield
    except AuditQueryError as error:
        raise RequestRejected(422, "invalid query", [RecordProblem(None, error.field, None, error.rule)]) from None


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout):
        raise RequestRejected(503, "the inference log is unreachable right now") from None


async def _record_access(
    gateway: GatewayState,
    caller: ApiKey,
    route: str,
    filters: dict[str, Any],
    row_count: int,
    request_id: str,
    clock: RequestClock,
) -> None:
    try:
        await record_audit_access(
            gateway.writer.pool,
            key_id=caller.key_id,
            route=route,
            filters=filters,
            row_count=row_count,
            request_id=request_id,
            received_at=clock.received_at,
        )
    except AuditAccessNotRecorded:
        raise RequestRejected(503, "the audit read was not served because it could not be recorded") from None


def _temporary_file(directory: Path, suffix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="riverbed-export-", suffix=f".{suffix}", dir=directory)
    os.close(descriptor)
    return Path(name)


async def _stream(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, _STREAM_CHUNK):
            yield chunk
    finally:
        handle.close()
