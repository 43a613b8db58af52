"""Auditor routes (role ``audit``): one request with its lineage, filtered listing with keyset pagination, export."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, AsyncIterator
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from serving.audit_queries import (
    AuditFilter,
    export_csv_chunks,
    export_parquet_bytes,
    fetch_predictions,
    get_prediction,
    iter_export_rows,
)
from serving.gateway.deps import AuditKey, GatewayDep
from serving.gateway.lineage import lineage_of
from serving.gateway.responses import ORJSONResponse
from serving.gateway.schemas import RecordProblem, RequestRejected
from serving.inference_log import RequestStatus

router = APIRouter()


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class StatusFilter(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


# Handlers carry no docstrings: FastAPI would publish them as the operations' descriptions.
@router.get("/v1/audit/predictions/{request_id}", tags=["audit"], summary="One request with its lineage chain.")
async def audit_one(request_id: str, gateway: GatewayDep, key: AuditKey) -> Response:
    key.require()
    row = await get_prediction(gateway.writer.pool, request_id)
    if row is None:
        raise RequestRejected(404, f"no request {request_id!r} in the inference log")
    return ORJSONResponse({"request": row, "lineage": lineage_of(row)})


@router.get("/v1/audit/predictions", tags=["audit"], summary="Logged requests, newest first, keyset-paginated.")
async def audit_list(
    gateway: GatewayDep,
    key: AuditKey,
    dataset: str | None = None,
    since: Annotated[dt.datetime | None, Query(description="Inclusive lower bound on received_at (ISO 8601).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Exclusive upper bound on received_at.")] = None,
    model_version: str | None = None,
    label: Annotated[str | None, Query(description="Requests with a record predicted as this label.")] = None,
    status: StatusFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    key.require()
    selection = _audit_filter(dataset, since, until, model_version, label, status)
    try:
        rows, next_cursor = await fetch_predictions(gateway.writer.pool, selection, limit=limit, cursor=cursor)
    except ValueError as error:
        raise RequestRejected(422, "invalid query", [RecordProblem(None, "query", None, str(error))]) from None
    return ORJSONResponse({"predictions": rows, "next_cursor": next_cursor, "count": len(rows)})


@router.get("/v1/audit/export", tags=["audit"], summary="Stream the selected requests as CSV or Parquet.")
async def audit_export(
    gateway: GatewayDep,
    key: AuditKey,
    format: ExportFormat = ExportFormat.CSV,
    dataset: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model_version: str | None = None,
    label: str | None = None,
    status: StatusFilter | None = None,
) -> Response:
    key.require()
    selection = _audit_filter(dataset, since, until, model_version, label, status)
    rows = iter_export_rows(gateway.writer.pool, selection)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if format is ExportFormat.CSV:
        return StreamingResponse(
            _csv_bytes(rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="riverbed-audit-{stamp}.csv"'},
        )
    payload = await export_parquet_bytes(rows)
    return Response(
        payload,
        media_type="application/vnd.apache.parquet",
        headers={"Content-Disposition": f'attachment; filename="riverbed-audit-{stamp}.parquet"'},
    )


def _audit_filter(
    dataset: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    model_version: str | None,
    label: str | None,
    status: StatusFilter | None,
) -> AuditFilter:
    """The query's filter; bounds must carry a UTC offset and ``since`` must not be after ``until``."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise RequestRejected(
                422, "invalid filter", [RecordProblem(None, name, value.isoformat(), "needs a UTC offset")]
            )
    if since is not None and until is not None and since > until:
        raise RequestRejected(
            422, "invalid filter", [RecordProblem(None, "since", since.isoformat(), "must not be after 'until'")]
        )
    return AuditFilter(
        dataset=dataset,
        since=since,
        until=until,
        model_version=model_version,
        label=label,
        status=RequestStatus(status.value) if status else None,
    )


async def _csv_bytes(rows: AsyncIterable[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for chunk in export_csv_chunks(rows):
        yield chunk.encode()
