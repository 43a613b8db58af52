"""The FastAPI gateway: predictions with exact explanations, every request durably on record, audit queries.

Long-lived parts (inference-log writer and its pool, MLServer client, API-key cache, deployment pointers) are
created once in the lifespan. Routes live under ``/v1``; ``/healthz``, ``/readyz`` and ``/metrics`` are open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import DatasetSpec, load_specs
from serving.gateway.deployments import DeploymentDirectory
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.mlserver_client import (
    MLServerClient,
    MLServerUnavailableError,
    ScoredBatch,
    ScoringError,
    ServedModelNotFoundError,
    encode_inputs,
)
from serving.gateway.schemas import (
    DatasetSchemas,
    ErrorResponse,
    ParsedRequest,
    PredictResponse,
    RecordProblem,
    RequestRejected,
    build_schemas,
    parse_predict_body,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
ROLE_PREDICT = "predict"
ROLE_AUDIT = "audit"


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


@dataclass
class GatewayState:
    settings: RiverbedSettings
    specs: dict[str, DatasetSpec]
    schemas: dict[str, DatasetSchemas]
    deployments: DeploymentDirectory
    mlserver: MLServerClient
    writer: Any  # serving.inference_log.InferenceLogWriter
    authenticator: Any  # serving.api_keys.ApiKeyAuthenticator
    metrics: GatewayMetrics
    embedded_postgres: Any = None
    events: Any = None  # PredictionEventPublisher, None when no Kafka is configured
    numeric: dict[str, set[str]] = field(default_factory=dict)


class RequestIdMiddleware:
    """Gives every request an id (echoed as ``X-Request-ID``) and records route/status metrics."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: Callable[[], GatewayMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = [500]
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                status = str(status_holder[0])
                metrics.requests.labels(path, status).inc()
                metrics.latency.labels(path, status).observe(time.perf_counter() - started)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _error(request_id: str, status: int, message: str, problems: list[RecordProblem] | None = None) -> ORJSONResponse:
    body = ErrorResponse(request_id=request_id, error=message, problems=[p.as_dict() for p in problems or []])
    return ORJSONResponse(body.model_dump(), status_code=status)


def create_app(settings: RiverbedSettings | None = None) -> FastAPI:
    """The gateway application; everything long-lived starts in its lifespan."""
    settings = settings or get_settings()
    holder: dict[str, GatewayState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from serving.api_keys import ApiKeyAuthenticator
        from serving.embedded_postgres import resolve_inference_log_dsn
        from serving.inference_log import InferenceLogWriter

        dsn, embedded = await asyncio.to_thread(resolve_inference_log_dsn, settings)
        writer = InferenceLogWriter(dsn, settings.audit_spool_path, pool_size=settings.inference_log_pool_size)
        await writer.start()
        mlserver = MLServerClient(settings.mlserver_url)
        await mlserver.start()
        state = GatewayState(
            settings=settings,
            specs=specs,
            schemas=schemas,
            deployments=DeploymentDirectory(settings.model_repository_dir),
            mlserver=mlserver,
            writer=writer,
            authenticator=ApiKeyAuthenticator(writer.pool, database_down=lambda: writer.degraded),
            metrics=GatewayMetrics(
                spool_depth=lambda: float(writer.spool_depth), degraded=lambda: float(writer.degraded)
            ),
            embedded_postgres=embedded,
            numeric={name: set(spec.numeric_features) for name, spec in specs.items()},
        )
        holder["state"] = state
        app.state.gateway = state
        state.events = await _start_event_publisher(settings, state.metrics)
        logger.info("gateway ready: datasets %s, MLServer %s", sorted(specs), settings.mlserver_url)
        try:
            yield
        finally:
            if state.events is not None:
                await state.events.stop()
            await mlserver.close()
            await writer.stop()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            holder.pop("state", None)

    specs = load_specs(settings.specs_dirs)
    schemas = {name: build_schemas(spec) for name, spec in specs.items()}
    app = FastAPI(
        title="Riverbed gateway",
        version="1",
        description="Predictions with exact SHAP explanations; every request is recorded in the inference log.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.add_middleware(RequestIdMiddleware, metrics=lambda: holder["state"].metrics if "state" in holder else None)

    def state() -> GatewayState:
        return holder["state"]

    def request_id_of(request: Request) -> str:
        return request.scope.get("state", {}).get("request_id") or str(uuid.uuid4())

    async def authenticate(request: Request, role: str) -> Any:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestRejected(401, "missing API key: send 'Authorization: Bearer <key>'")
        try:
            key = await state().authenticator.authenticate(token.strip())
        except Exception as error:  # database unreachable and key not cached
            logger.warning("could not verify an API key: %s", error)
            raise RequestRejected(503, "cannot verify the API key right now: the key store is unreachable") from None
        if key is None:
            raise RequestRejected(401, "invalid or revoked API key")
        if role not in key.roles:
            raise RequestRejected(403, f"this API key lacks the '{role}' role")
        return key

    # ---------------------------------------------------------------- exception handlers (never a stack trace)
    @app.exception_handler(RequestRejected)
    async def _rejected(request: Request, error: RequestRejected) -> Response:
        return _error(request_id_of(request), error.status, error.message, error.problems)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        problems = [
            RecordProblem(
                None, ".".join(str(p) for p in item["loc"][1:]) or str(item["loc"][0]), item.get("input"), item["msg"]
            )
            for item in error.errors()
        ]
        return _error(request_id_of(request), 422, "invalid request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        return _error(request_id_of(request), error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error in %s", request.url.path)
        return _error(request_id_of(request), 500, "internal error; the request id identifies it in the logs")

    # ---------------------------------------------------------------- health and metrics
    @app.get("/healthz", tags=["health"], summary="The process is up.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="MLServer and the inference log are reachable.")
    async def readyz() -> Response:
        gateway = state()
        mlserver_live, database = await asyncio.gather(gateway.mlserver.live(), gateway.writer.ping())
        models = {}
        for deployment in gateway.deployments.all():
            models[deployment.dataset] = {
                "served_model": deployment.served_model_name,
                "version": deployment.version,
                "ready": mlserver_live and await gateway.mlserver.model_ready(deployment.served_model_name),
            }
        degraded = not database or gateway.writer.degraded
        body = {
            "status": "ready" if mlserver_live and not degraded else ("degraded" if mlserver_live else "unavailable"),
            "mlserver": "reachable" if mlserver_live else "unreachable",
            "database": "reachable" if database else "unreachable",
            "audit_spool_depth": gateway.writer.spool_depth,
            "models": models,
        }
        if degraded and mlserver_live:
            body["detail"] = "the inference log is unreachable: requests are recorded in the local spool"
        return ORJSONResponse(body, status_code=200 if mlserver_live and not degraded else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics.", include_in_schema=True)
    async def metrics() -> Response:
        gateway = state()

        async def fetch(query: str) -> list[tuple[Any, ...]]:
            async with gateway.writer.pool.connection(timeout=2) as conn:
                cursor = await conn.execute(query)
                return await cursor.fetchall()

        if not gateway.writer.degraded:
            await gateway.metrics.monitoring.refresh(fetch)
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---------------------------------------------------------------- models
    @app.get("/v1/models", tags=["models"], summary="Deployed models with their lineage.")
    async def models(request: Request) -> Response:
        key = await authenticate_any(request)
        del key
        deployments = [d.model_dump(mode="json") for d in state().deployments.all()]
        return ORJSONResponse({"models": deployments})

    async def authenticate_any(request: Request) -> Any:
        try:
            return await authenticate(request, ROLE_PREDICT)
        except RequestRejected as error:
            if error.status != 403:
                raise
            return await authenticate(request, ROLE_AUDIT)

    # ---------------------------------------------------------------- predict
    async def predict(dataset: str, request: Request, explain: bool | None, top_k: int | None) -> Response:
        gateway = state()
        request_id = request_id_of(request)
        received = _now()
        started = time.perf_counter()
        timings: dict[str, float] = {}
        context: dict[str, Any] = {"dataset": dataset if dataset in gateway.specs else None, "inputs": []}
        try:
            key = await authenticate(request, ROLE_PREDICT)
            context["client_key_id"] = key.key_id
            if dataset not in gateway.schemas:
                raise RequestRejected(404, f"unknown dataset {dataset!r}; known: {sorted(gateway.schemas)}")
            raw_body = await request.body()
            try:
                body = orjson.loads(raw_body)
            except orjson.JSONDecodeError as error:
                raise RequestRejected(
                    422, "the body is not valid JSON", [RecordProblem(None, "body", None, f"invalid JSON: {error}")]
                ) from None
            context["inputs"] = _loggable_inputs(body)
            parsed = parse_predict_body(
                gateway.schemas[dataset],
                body,
                max_records=gateway.settings.max_batch_records,
                explain_query=explain,
                top_k_query=top_k,
            )
            context["inputs"] = parsed.raw_records
            timings["validate_ms"] = (time.perf_counter() - started) * 1000
            deployment, scored = await score(gateway, dataset, request_id, parsed, timings, context)
            predictions = _predictions(gateway.specs[dataset], parsed, scored)
            for record in predictions:
                gateway.metrics.predictions.labels(dataset, record["label"]).inc()
        except RequestRejected as rejection:
            status = "failed" if rejection.status >= 500 else "rejected"
            await record_row(
                request_id, received, started, timings, context, status, rejection.status, rejection.message
            )
            return _error(request_id, rejection.status, rejection.message, rejection.problems)
        response = {
            "request_id": request_id,
            "dataset": dataset,
            "model": {
                "name": deployment.registered_model_name,
                "version": deployment.version,
                "mlflow_run_id": deployment.mlflow_run_id,
            },
            "predictions": predictions,
        }
        context["outputs"] = predictions
        durable = await record_row(request_id, received, started, timings, context, "ok", 200, None)
        if not durable:
            return _error(request_id, 503, "the prediction was not served because it could not be recorded")
        if gateway.events is not None:
            gateway.events.publish(
                dataset,
                _prediction_events(gateway.specs[dataset], request_id, received, deployment, parsed, predictions),
            )
        return ORJSONResponse(response)

    async def score(
        gateway: GatewayState,
        dataset: str,
        request_id: str,
        parsed: ParsedRequest,
        timings: dict[str, float],
        context: dict[str, Any],
    ) -> tuple[Any, ScoredBatch]:
        spec = gateway.specs[dataset]
        columns = {name: [getattr(r, name) for r in parsed.records] for name in spec.feature_names}
        inputs = encode_inputs(spec.feature_names, gateway.numeric[dataset], columns)
        began = time.perf_counter()
        for attempt in range(3):
            deployment = gateway.deployments.get(dataset, refresh=attempt > 0)
            if deployment is None:
                raise RequestRejected(503, f"no model is deployed for dataset {dataset!r}")
            context.update(_lineage(deployment))
            try:
                scored = await gateway.mlserver.infer(
                    deployment.served_model_name, request_id, inputs, explain=parsed.explain
                )
                break
            except ServedModelNotFoundError:
                if attempt == 2:
                    raise RequestRejected(
                        503, f"MLServer does not serve the deployed model {deployment.served_model_name!r}"
                    ) from None
                await asyncio.sleep(0.05 * attempt)  # a swap in progress: re-read the pointer and retry
            except MLServerUnavailableError as error:
                raise RequestRejected(503, f"the model server is unavailable: {error}") from None
            except ScoringError as error:
                raise RequestRejected(422, f"the model could not score these records: {error}") from None
        elapsed = time.perf_counter() - began
        timings["score_ms"] = elapsed * 1000
        gateway.metrics.scoring_seconds.labels(dataset, str(parsed.explain).lower()).observe(elapsed)
        if parsed.explain:
            gateway.metrics.explanation_seconds.labels(dataset).observe(elapsed)
        return deployment, scored

    async def record_row(
        request_id: str,
        received: dt.datetime,
        started: float,
        timings: dict[str, float],
        context: dict[str, Any],
        status: str,
        http_status: int,
        error: str | None,
    ) -> bool:
        from serving.inference_log import AuditWriteError, Durability, InferenceRecord, RequestStatus

        gateway = state()
        outputs = context.get("outputs") or []
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        record = InferenceRecord(
            request_id=request_id,
            received_at=received,
            dataset=context.get("dataset"),
            route="/v1/{dataset}/predict",
            status=RequestStatus(status),
            http_status=http_status,
            client_key_id=context.get("client_key_id"),
            model_name=context.get("model_name"),
            model_version=context.get("model_version"),
            mlflow_run_id=context.get("mlflow_run_id"),
            training_set_commit_id=context.get("training_set_commit_id"),
            data_commit_ids=context.get("data_commit_ids") or {},
            dagster_run_id=context.get("dagster_run_id"),
            inputs=context.get("inputs") or [],
            outputs=outputs,
            labels=[o["label"] for o in outputs],
            error=error,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )
        began = time.perf_counter()
        try:
            durability = await gateway.writer.record(record)
        except AuditWriteError as failure:
            logger.error("request %s could not be recorded: %s", request_id, failure)
            return False
        gateway.metrics.audit_write_seconds.labels(
            "committed" if durability is Durability.COMMITTED else "spooled"
        ).observe(time.perf_counter() - began)
        return True

    for name, dataset_schemas in schemas.items():
        _add_predict_route(app, name, dataset_schemas, predict)

    @app.post("/v1/{dataset}/predict", tags=["predict"], include_in_schema=False)
    async def predict_unknown(
        dataset: str, request: Request, explain: bool | None = None, top_k: int | None = None
    ) -> Response:
        return await predict(dataset, request, explain, top_k)

    # ---------------------------------------------------------------- audit
    from serving.gateway.audit_routes import add_audit_routes

    add_audit_routes(app, state, authenticate)
    return app


def _add_predict_route(
    app: FastAPI,
    dataset: str,
    schemas: DatasetSchemas,
    predict: Callable[[str, Request, bool | None, int | None], Awaitable[Response]],
) -> None:
    async def predict_dataset(
        request: Request,
        explain: Annotated[bool | None, Query(description="Override the body's 'explain' (default true).")] = None,
        top_k: Annotated[int | None, Query(description="Override the body's 'top_k' (default 5).")] = None,
    ) -> Response:
        return await predict(dataset, request, explain, top_k)

    predict_dataset.__name__ = f"predict_{dataset}"
    app.add_api_route(
        f"/v1/{dataset}/predict",
        predict_dataset,
        methods=["POST"],
        tags=["predict"],
        summary=f"Predict {schemas.spec.target.name} for one {dataset} record or a batch, with explanations.",
        response_model=PredictResponse,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
            403: {"model": ErrorResponse, "description": "The key lacks the 'predict' role."},
            413: {"model": ErrorResponse, "description": "Too many records in one batch."},
            422: {"model": ErrorResponse, "description": "Invalid records: each field, value and rule."},
            503: {"model": ErrorResponse, "description": "MLServer or the inference log is unavailable."},
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schemas.openapi_body()}}}
        },
    )
    _register_models(app, schemas)


def _register_models(app: FastAPI, schemas: DatasetSchemas) -> None:
    """Put the generated request models into the OpenAPI components so the body's $refs resolve."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = original()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (schemas.single, schemas.batch):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = schema
        return document

    app.openapi = openapi  # type: ignore[method-assign]


async def _start_event_publisher(settings: RiverbedSettings, metrics: GatewayMetrics) -> Any:
    """A started publisher of prediction events, or None when Kafka is not configured."""
    from riverbed.kafka_config import KafkaNotConfiguredError, client_config
    from riverbed.names import TopicKind, topic_name
    from serving.gateway.prediction_events import PredictionEventPublisher

    try:
        config = client_config(settings)
    except KafkaNotConfiguredError:
        logger.info("no Kafka configured: prediction events are not published (the audit log has them)")
        return None
    publisher = PredictionEventPublisher(
        config,
        lambda dataset: topic_name(dataset, TopicKind.PREDICTIONS, settings.kafka_topic_prefix),
        lambda outcome, n: metrics.prediction_events.labels(outcome).inc(n),
    )
    await publisher.start()
    logger.info("publishing prediction events to %s", config["bootstrap.servers"])
    return publisher


def _prediction_events(
    spec: DatasetSpec,
    request_id: str,
    received: dt.datetime,
    deployment: Any,
    parsed: ParsedRequest,
    predictions: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    received_text = received.isoformat()
    positive = spec.target.positive_class
    events = []
    for index, (record, prediction) in enumerate(zip(parsed.records, predictions, strict=True)):
        event_time = getattr(record, "event_time", None)
        events.append(
            {
                "dataset": spec.name,
                "request_id": request_id,
                "record_index": index,
                "sample_id": prediction.get("sample_id"),
                "event_time": event_time.isoformat() if event_time is not None else received_text,
                "model_name": deployment.registered_model_name,
                "model_version": deployment.version,
                "label": prediction["label"],
                "probability": prediction["probabilities"][positive],
            }
        )
    return events


def _loggable_inputs(body: Any) -> list[Any]:
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return body["records"][:10_000]
    if isinstance(body, dict) and "record" in body:
        return [body["record"]]
    return [body]


def _lineage(deployment: Any) -> dict[str, Any]:
    return {
        "model_name": deployment.registered_model_name,
        "model_version": str(deployment.version),
        "mlflow_run_id": deployment.mlflow_run_id,
        "training_set_commit_id": deployment.training_set_commit_id,
        "data_commit_ids": dict(deployment.data_commit_ids),
        "dagster_run_id": deployment.dagster_run_id,
    }


def _predictions(spec: DatasetSpec, parsed: ParsedRequest, scored: ScoredBatch) -> list[dict[str, Any]]:
    classes = list(spec.target.classes)
    names = scored.feature_names or spec.feature_names
    results = []
    probabilities = np.round(scored.probabilities, 6).tolist()
    contributions = scored.contributions
    for index, record in enumerate(parsed.records):
        item: dict[str, Any] = {
            "sample_id": getattr(record, "sample_id", None),
            "label": scored.labels[index],
            "probabilities": dict(zip(classes, probabilities[index], strict=True)),
        }
        if contributions is not None and scored.base_value is not None:
            row = contributions[index]
            order = np.argsort(-np.abs(row))[: parsed.top_k]
            item["explanation"] = {
                "base_value": float(scored.base_value[index]),
                "contributions": dict(zip(names, row.tolist(), strict=True)),
                "top_features": [
                    {"feature": names[i], "value": getattr(record, names[i]), "contribution": float(row[i])}
                    for i in order
                ],
            }
        else:
            item["explanation"] = None
        results.append(item)
    return results
