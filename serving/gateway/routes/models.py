"""``GET /v1/models``: the deployed models with their lineage (either role may read it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.gateway.deps import GatewayDep, ReaderKey
from serving.gateway.responses import ORJSONResponse

router = APIRouter()


# No docstring: FastAPI would publish it as the operation's description.
@router.get("/v1/models", tags=["models"], summary="Deployed models with their lineage.")
async def models(gateway: GatewayDep, key: ReaderKey) -> Response:
    key.require()
    deployments = [d.model_dump(mode="json") for d in gateway.deployments.all()]
    return ORJSONResponse({"models": deployments})
