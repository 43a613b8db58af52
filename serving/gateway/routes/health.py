"""Open routes: liveness, readiness (MLServer, the inference log, each deployed model) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from serving.gateway.deps import GatewayDep
from serving.gateway.responses import ORJSONResponse

router = APIRouter()


# Handlers carry no docstrings: FastAPI would publish them as the operations' descriptions.
@router.get("/healthz", tags=["health"], summary="The process is up.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="MLServer and the inference log are reachable.")
async def readyz(gateway: GatewayDep) -> Response:
    mlserver_live, database = await asyncio.gather(gateway.mlserver.live(), gateway.writer.ping())
    models = {}
    for deployment in gateway.deployments.all():
        models[deployment.dataset] = {
            "served_model": deployment.served_model_name,
            "version": deployment.version,
            "ready": mlserver_live and await gateway.mlserver.model_ready(deployment.served_model_name),
        }
    degraded = not database or gateway.writer.degraded
    body: dict[str, Any] = {
        "status": "ready" if mlserver_live and not degraded else ("degraded" if mlserver_live else "unavailable"),
        "mlserver": "reachable" if mlserver_live else "unreachable",
        "database": "reachable" if database else "unreachable",
        "audit_spool_depth": gateway.writer.spool_depth,
        "models": models,
    }
    if degraded and mlserver_live:
        body["detail"] = "the inference log is unreachable: requests are recorded in the local spool"
    return ORJSONResponse(body, status_code=200 if mlserver_live and not degraded else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics.", include_in_schema=True)
async def metrics(gateway: GatewayDep) -> Response:
    if not gateway.writer.degraded:
        await gateway.metrics.monitoring.refresh(partial(_fetch_rows, gateway.writer.pool))
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _fetch_rows(pool: AsyncConnectionPool[Any], query: str) -> list[tuple[Any, ...]]:
    async with pool.connection(timeout=2) as conn:
        cursor = await conn.execute(query)
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows
