"""The FastAPI gateway: predictions with exact explanations, every request durably on record, audit queries.

:func:`create_app` builds the application (routes under ``/v1``; ``/healthz``, ``/readyz`` and ``/metrics`` are
open). Long-lived parts (inference-log writer and its pool, MLServer client, API-key authenticator, prediction
event publisher, deployment pointers) are created once in :func:`lifespan` and kept on ``app.state.gateway``.

The inference log: a configured DSN (``RIVERBED_INFERENCE_LOG_DSN``) is used as it is (it names its own role);
without one the gateway starts the embedded server and connects as its least-privileged ``gateway`` role (append
rows, advance the chain head; never update or delete), which cannot run migrations: the embedded server applies
them when it starts, and the writer's own check (:func:`riverbed.inference_log_schema.apply_migrations`) then
only reads that they are recorded. The log is keyed (:meth:`InferenceLogWriter.from_settings`): outside the
local environment a gateway with neither ``RIVERBED_AUDIT_CHAIN_KEY`` nor a key file refuses to start
(:class:`ChainKeyError`); with the embedded server or in the local environment a missing key file is created.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI

from riverbed.settings import Environment, RiverbedSettings, get_settings
from riverbed.specs import load_specs
from serving.api_keys import ApiKeyAuthenticator
from serving.audit_queries import cursor_key_for
from serving.console import install_console
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
from serving.inference_log import InferenceLogWriter, load_chain_key
from serving.oversight import SuspensionMonitor

logger = logging.getLogger(__name__)


def create_app(settings: RiverbedSettings | None = None, *, writer_options: Mapping[str, Any] | None = None) -> FastAPI:
    """The gateway application; everything long-lived starts in its lifespan.

    ``writer_options`` override the inference-log writer's settings (keyword arguments of
    :class:`InferenceLogWriter`, e.g. ``max_row_bytes``; not ``chain_key``): for tests and tools.
    """
    settings = settings or get_settings()
    schemas = {name: build_schemas(spec) for name, spec in load_specs(settings.specs_dirs).items()}
    app = FastAPI(
        title="Riverbed gateway",
        version="1",
        description="Predictions with exact SHAP explanations; every request is recorded in the inference log.",
        lifespan=partial(lifespan, settings=settings, schemas=schemas, writer_options=writer_options),
        default_response_class=ORJSONResponse,
    )
    app.add_middleware(RequestIdMiddleware, metrics=partial(running_metrics, app))
    install_exception_handlers(app)
    app.include_router(api_router(schemas))
    install_console(app)  # the oversight console under /console (serving/console)
    register_request_models(app, schemas)
    return app


@asynccontextmanager
async def lifespan(
    app: FastAPI,
    *,
    settings: RiverbedSettings,
    schemas: dict[str, DatasetSchemas],
    writer_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[None]:
    """Start the inference log (embedded PostgreSQL if none is configured), API-key authenticator, MLServer client
    and event publisher; stop them in reverse at shutdown, and whatever started if a later part fails to."""
    async with AsyncExitStack() as stack:
        stack.callback(_forget_gateway, app)  # undone last: a request still running meets a stopped part, not none
        dsn, embedded = await asyncio.to_thread(resolve_inference_log_dsn, settings, role="gateway")
        if embedded is not None:
            stack.push_async_callback(asyncio.to_thread, embedded.stop)
        create_key = embedded is not None or settings.env is Environment.LOCAL
        # Loaded once here and handed to the writer, so the cursors' key derives from the very key it chains with.
        chain_key = await asyncio.to_thread(load_chain_key, settings, create=create_key)
        writer = InferenceLogWriter.from_settings(
            dsn, settings, create_key=create_key, **{**(writer_options or {}), "chain_key": chain_key}
        )
        await writer.start()  # returns at once: a spool left by an earlier run is replayed in the background
        stack.push_async_callback(writer.stop)
        authenticator = ApiKeyAuthenticator(
            writer.pool, ttl_seconds=settings.api_key_cache_seconds, database_down=lambda: writer.unavailable
        )
        await authenticator.start()
        stack.push_async_callback(authenticator.stop)  # stops before the writer, whose pool it uses
        mlserver = MLServerClient(
            settings.mlserver_url,
            max_batch_rows=settings.mlserver_coalesce_max_rows,
            max_in_flight=settings.mlserver_max_in_flight,
        )
        await mlserver.start()
        stack.push_async_callback(mlserver.close)
        metrics = GatewayMetrics(
            writer, key_listener=lambda: authenticator.listening, specs={name: s.spec for name, s in schemas.items()}
        )
        # Reviewers' suspensions, from the log; the last known ones kept in a private file for a start-up in an outage
        oversight = SuspensionMonitor(writer.pool, metrics.registry, state_file=settings.oversight_state_path)
        await oversight.start(wait=not writer.unavailable)  # PostgreSQL down: no start-up wait (see its doc)
        stack.push_async_callback(oversight.stop)
        events = await start_event_publisher(settings, metrics)
        if events is not None:
            stack.push_async_callback(events.stop)
        specs = {name: dataset_schemas.spec for name, dataset_schemas in schemas.items()}
        app.state.gateway = GatewayState(
            settings=settings,
            specs=specs,
            schemas=schemas,
            deployments=DeploymentDirectory(settings.model_repository_dir),
            mlserver=mlserver,
            writer=writer,
            authenticator=authenticator,
            metrics=metrics,
            embedded_postgres=embedded,
            events=events,
            numeric={name: set(spec.numeric_features) for name, spec in specs.items()},
            refusal_log=RefusalLogLimiter(settings.unauthenticated_log_per_second, metrics.unlogged_refusals),
            cursor_key=cursor_key_for(chain_key) if chain_key is not None else None,
            oversight=oversight,
        )
        logger.info(
            "gateway ready: datasets %s, MLServer %s, inference log %s, chain key %s",
            sorted(specs),
            settings.mlserver_url,
            "embedded (gateway role)" if embedded is not None else "configured",
            writer.key_id,
        )
        yield


def _forget_gateway(app: FastAPI) -> None:
    if hasattr(app.state, "gateway"):
        del app.state.gateway
