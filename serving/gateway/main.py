"""The FastAPI gateway: predictions with exact explanations, every request durably on record, audit queries.

:func:`create_app` builds the application (routes under ``/v1``; ``/healthz``, ``/readyz`` and ``/metrics`` are
open). Long-lived parts (inference-log writer and its pool, MLServer client, API-key authenticator, prediction
event publisher, deployment pointers) are created once in :func:`lifespan` and kept on ``app.state.gateway``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs
from serving.api_keys import ApiKeyAuthenticator
from serving.embedded_postgres import resolve_inference_log_dsn
from serving.gateway.deployments import DeploymentDirectory
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.middleware import RequestIdMiddleware
from serving.gateway.mlserver_client import MLServerClient
from serving.gateway.prediction_events import start_event_publisher
from serving.gateway.refusals import RefusalLogLimiter
from serving.gateway.responses import ORJSONResponse, install_exception_handlers
from serving.gateway.routes import api_router
from serving.gateway.routes.predict import register_request_models
from serving.gateway.schemas import DatasetSchemas, build_schemas
from serving.gateway.state import GatewayState, running_metrics
from serving.inference_log import InferenceLogWriter

logger = logging.getLogger(__name__)


def create_app(settings: RiverbedSettings | None = None) -> FastAPI:
    """The gateway application; everything long-lived starts in its lifespan."""
    settings = settings or get_settings()
    schemas = {name: build_schemas(spec) for name, spec in load_specs(settings.specs_dirs).items()}
    app = FastAPI(
        title="Riverbed gateway",
        version="1",
        description="Predictions with exact SHAP explanations; every request is recorded in the inference log.",
        lifespan=partial(lifespan, settings=settings, schemas=schemas),
        default_response_class=ORJSONResponse,
    )
    app.add_middleware(RequestIdMiddleware, metrics=partial(running_metrics, app))
    install_exception_handlers(app)
    app.include_router(api_router(schemas))
    register_request_models(app, schemas)
    return app


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: RiverbedSettings, schemas: dict[str, DatasetSchemas]
) -> AsyncIterator[None]:
    """Start the inference log (embedded PostgreSQL if none is configured), MLServer client, key authenticator and
    event publisher; stop them in reverse at shutdown."""
    dsn, embedded = await asyncio.to_thread(resolve_inference_log_dsn, settings)
    writer = InferenceLogWriter(dsn, settings.audit_spool_path, pool_size=settings.inference_log_pool_size)
    await writer.start()
    mlserver = MLServerClient(settings.mlserver_url)
    await mlserver.start()
    metrics = GatewayMetrics(spool_depth=lambda: float(writer.spool_depth), degraded=lambda: float(writer.degraded))
    events = await start_event_publisher(settings, metrics)
    specs = {name: dataset_schemas.spec for name, dataset_schemas in schemas.items()}
    app.state.gateway = GatewayState(
        settings=settings,
        specs=specs,
        schemas=schemas,
        deployments=DeploymentDirectory(settings.model_repository_dir),
        mlserver=mlserver,
        writer=writer,
        authenticator=ApiKeyAuthenticator(writer.pool, database_down=lambda: writer.degraded),
        metrics=metrics,
        embedded_postgres=embedded,
        events=events,
        numeric={name: set(spec.numeric_features) for name, spec in specs.items()},
        refusal_log=RefusalLogLimiter(settings.unauthenticated_log_per_second, metrics.unlogged_refusals),
    )
    logger.info("gateway ready: datasets %s, MLServer %s", sorted(specs), settings.mlserver_url)
    try:
        yield
    finally:
        if events is not None:
            await events.stop()
        await mlserver.close()
        await writer.stop()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        del app.state.gateway
