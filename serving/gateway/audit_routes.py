"""Auditor routes (role ``audit``): one request with its lineage, filtered listing with keyset pagination, export."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from serving.gateway.schemas import RecordProblem, RequestRejected

ROLE_AUDIT = "audit"


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class StatusFilter(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


def lineage_of(row: dict[str, Any]) -> dict[str, Any]:
    """model version -> MLflow run -> lakeFS commit ids -> Dagster run id, as recorded with the request."""
    return {
        "model": {"name": row.get("model_name"), "version": row.get("model_version")},
        "mlflow_run_id": row.get("mlflow_run_id"),
        "training_set_commit_id": row.get("training_set_commit_id"),
        "data_commit_ids": row.get("data_commit_ids") or {},
        "dagster_run_id": row.get("dagster_run_id"),
    }


def add_audit_routes(
    app: FastAPI,
    state: Callable[[], Any],
    authenticate: Callable[[Request, str], Awaitable[Any]],
) -> None:
    from serving.gateway.app import ORJSONResponse

    def build_filter(
        dataset: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model_version: str | None,
        label: str | None,
        status: StatusFilter | None,
    ) -> Any:
        from serving.audit_queries import AuditFilter
        from serving.inference_log import RequestStatus

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

    @app.get("/v1/audit/predictions/{request_id}", tags=["audit"], summary="One request with its lineage chain.")
    async def audit_one(request_id: str, request: Request) -> Response:
        from serving.audit_queries import get_prediction

        await authenticate(request, ROLE_AUDIT)
        row = await get_prediction(state().writer.pool, request_id)
        if row is None:
            raise RequestRejected(404, f"no request {request_id!r} in the inference log")
        return ORJSONResponse({"request": row, "lineage": lineage_of(row)})

    @app.get("/v1/audit/predictions", tags=["audit"], summary="Logged requests, newest first, keyset-paginated.")
    async def audit_list(
        request: Request,
        dataset: str | None = None,
        since: Annotated[
            dt.datetime | None, Query(description="Inclusive lower bound on received_at (ISO 8601).")
        ] = None,
        until: Annotated[dt.datetime | None, Query(description="Exclusive upper bound on received_at.")] = None,
        model_version: str | None = None,
        label: Annotated[str | None, Query(description="Requests with a record predicted as this label.")] = None,
        status: StatusFilter | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    ) -> Response:
        from serving.audit_queries import fetch_predictions

        await authenticate(request, ROLE_AUDIT)
        selection = build_filter(dataset, since, until, model_version, label, status)
        try:
            rows, next_cursor = await fetch_predictions(state().writer.pool, selection, limit=limit, cursor=cursor)
        except ValueError as error:
            raise RequestRejected(422, "invalid query", [RecordProblem(None, "query", None, str(error))]) from None
        return ORJSONResponse({"predictions": rows, "next_cursor": next_cursor, "count": len(rows)})

    @app.get("/v1/audit/export", tags=["audit"], summary="Stream the selected requests as CSV or Parquet.")
    async def audit_export(
        request: Request,
        format: ExportFormat = ExportFormat.CSV,
        dataset: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model_version: str | None = None,
        label: str | None = None,
        status: StatusFilter | None = None,
    ) -> Response:
        from serving.audit_queries import export_csv_chunks, export_parquet_bytes, iter_export_rows

        await authenticate(request, ROLE_AUDIT)
        selection = build_filter(dataset, since, until, model_version, label, status)
        rows = iter_export_rows(state().writer.pool, selection)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        if format is ExportFormat.CSV:

            async def body() -> AsyncIterator[bytes]:
                async for chunk in export_csv_chunks(rows):
                    yield chunk.encode() if isinstance(chunk, str) else chunk

            return StreamingResponse(
                body(),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="riverbed-audit-{stamp}.csv"'},
            )
        payload = await export_parquet_bytes(rows)
        return Response(
            payload,
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="riverbed-audit-{stamp}.parquet"'},
        )
