"""Open routes: liveness, readiness (MLServer, the inference log, each deployed model) and Prometheus metrics.

``/readyz`` answers 200 only when MLServer is live, PostgreSQL answers and the inference-log writer is ``ready``
(committing directly into the chain). Its body:

* ``status``: ``ready``; ``degraded`` (MLServer live, the log not ready: requests are still served and
  recorded, in the spool or after a wait); ``unavailable`` (MLServer down).
* ``audit``: the writer's status, ``ok``, ``unavailable`` (PostgreSQL unreachable: rows go to the local spool),
  ``replaying`` (catching up with the spool in the background: new rows are spooled behind it) or ``stalled``
  (the chain head is locked: rows wait, and are answered 503 after the record timeout); ``audit_replaying``,
  ``audit_spool_depth``, ``audit_quarantined`` (rows this process kept outside the chain since it started).
* ``database``: whether PostgreSQL answers now; ``key_listener``: whether the API-key revocation listener is
  connected (without it revocations are polled: keys are re-read on every use); ``models``: each deployment.
* ``oversight``: where this gateway's knowledge of the reviewers' suspensions (:mod:`serving.oversight`) comes
  from: ``known`` (read from the inference log, kept fresh by LISTEN), ``last_known`` (the saved state file: the
  log not read since start), ``unknown`` (neither: every prediction is refused 503 ``oversight_state_unknown``)
  or ``not_enforced`` (no suspension monitor); ``suspended``: the datasets suspended now. An ``unknown`` state is
  treated as a log that is not ready is: 503, ``degraded`` when MLServer is live (audit reads are still served),
  with the reason in ``detail``. A suspended dataset does not make the gateway unready (it is a decision).
* ``detail`` when not ready: why, in words.
"""

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
from serving.gateway.state import GatewayState
from serving.oversight import OVERSIGHT_STATE_UNKNOWN, oversight_state_unknown

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
    writer = gateway.writer
    audit = writer.status
    audit_ready = database and writer.ready
    oversight = _oversight_state(gateway)
    ready = mlserver_live and audit_ready and oversight != "unknown"
    body: dict[str, Any] = {
        "status": "ready" if ready else ("degraded" if mlserver_live else "unavailable"),
        "mlserver": "reachable" if mlserver_live else "unreachable",
        "database": "reachable" if database else "unreachable",
        "audit": audit,
        "audit_replaying": writer.replaying,
        "audit_spool_depth": writer.spool_depth,
        "audit_quarantined": writer.quarantined,
        "key_listener": gateway.authenticator.listening,
        "oversight": oversight,
        "suspended": sorted(gateway.oversight.suspended()) if gateway.oversight is not None else [],
        "models": models,
    }
    if not ready:
        body["detail"] = _not_ready(mlserver_live, database, audit, writer.spool_depth, oversight)
    return ORJSONResponse(body, status_code=200 if ready else 503)


def _oversight_state(gateway: GatewayState) -> str:
    monitor = gateway.oversight
    if monitor is None:
        return "not_enforced"
    if oversight_state_unknown(gateway):
        return "unknown"
    return "last_known" if monitor.from_file else "known"


def _not_ready(mlserver_live: bool, database: bool, audit: str, spool_depth: int, oversight: str) -> str:
    """Why /readyz is not 200, in words (a log catching up is never called unreachable)."""
    reasons = [] if mlserver_live else ["MLServer is unreachable: predictions are answered 503"]
    if oversight == "unknown":
        reasons.append(
            f"oversight state unknown: every prediction is refused 503 ({OVERSIGHT_STATE_UNKNOWN}) until this "
            "gateway reads the reviewers' suspensions from the inference log"
        )
    if audit == "replaying":
        reasons.append(
            f"the inference log is catching up: replaying the local spool ({spool_depth} records left); "
            "new requests are recorded in the spool behind them"
        )
        if not database:
            reasons.append("PostgreSQL did not answer a ping just now")
    elif audit == "unavailable" or not database:
        reasons.append("the inference log is unreachable: requests are recorded in the local spool")
    elif audit == "stalled":
        reasons.append(
            "the inference log's chain head is locked: requests wait for their rows and are answered 503 "
            "(audit_timeout) if they are not recorded in time"
        )
    return "; ".join(reasons)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics.", include_in_schema=True)
async def metrics(gateway: GatewayDep) -> Response:
    if not gateway.writer.unavailable:
        await gateway.metrics.monitoring.refresh(partial(_fetch_rows, gateway.writer.pool))
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _fetch_rows(pool: AsyncConnectionPool[Any], query: str) -> list[tuple[Any, ...]]:
    async with pool.connection(timeout=2) as conn:
        cursor = await conn.execute(query)
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows
