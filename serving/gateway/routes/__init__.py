"""The gateway's routes, one router per concern, in the order they are matched and documented."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter

from serving.gateway.routes import audit, health, model_reviews, models, oversight, predict
from serving.gateway.schemas import DatasetSchemas


def api_router(schemas: Mapping[str, DatasetSchemas]) -> APIRouter:
    """Health and metrics, models, one predict route per dataset (plus the catch-all), audit."""
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(models.router)
    router.include_router(model_reviews.router)  # model catalog, approve/reject
    router.include_router(predict.predict_router(schemas))
    router.include_router(audit.router)
    router.include_router(oversight.router)
    return router
