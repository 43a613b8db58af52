"""``POST /v1/<dataset>/predict``: one route per dataset spec, its body documented by the spec's generated models.

A request for a dataset the gateway does not know reaches the hidden catch-all route and is answered 404; every
request, served or not, is recorded in the inference log. The handler's steps: parse, score, record, respond.

The query parameters ``explain`` and ``top_k`` are taken as text and checked by the handler (after the key and
the dataset), so a malformed one is answered 422 *and recorded*, like every other refusal; FastAPI would refuse
it before the handler runs, with no row. The OpenAPI document still publishes them as boolean and integer.

A served prediction is answered only once its row is durable: a row that was quarantined (outside the hash
chain), timed out or could not be written turns the 200 into a 503 whose ``reason`` says which
(:func:`serving.gateway.prediction.record`); a refusal keeps its own answer whatever happened to its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError, WithJsonSchema

from riverbed.model_repository import DeployedModel
from serving.gateway.body import BodyLimits, BodyTooLarge, decode_body, describe, read_body
from serving.gateway.deps import Clock, GatewayDep, KeyCheck, PredictKey, RequestId
from serving.gateway.prediction import PredictCall, predictions, record, score, scored_inputs
from serving.gateway.prediction_events import prediction_events
from serving.gateway.responses import ORJSONResponse, error_response, validation_problems
from serving.gateway.schemas import (
    DatasetSchemas,
    ErrorResponse,
    ParsedRequest,
    PredictResponse,
    RecordProblem,
    RequestRejected,
    parse_predict_body,
)
from serving.gateway.state import GatewayState
from serving.inference_log import RequestStatus
from serving.oversight import (
    DATASET_SUSPENDED,
    OVERSIGHT_STATE_UNKNOWN,
    oversight_state_unknown,
    state_unknown_message,
    suspension_message,
    suspension_of,
)

_EXPLAIN_HELP = "Override the body's 'explain' (default true)."
_TOP_K_HELP = "Override the body's 'top_k' (default 5)."
# Text as received (checked in the handler, see the module docstring), published as the types they are parsed to.
ExplainQuery = Annotated[
    str | None,
    Query(description=_EXPLAIN_HELP),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "null"}], "description": _EXPLAIN_HELP}),
]
TopKQuery = Annotated[
    str | None,
    Query(description=_TOP_K_HELP),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "null"}], "description": _TOP_K_HELP}),
]
_T = TypeVar("_T")
_AS_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_AS_INT: TypeAdapter[int] = TypeAdapter(int)

PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    403: {"model": ErrorResponse, "description": "The key lacks the 'predict' role."},
    413: {"model": ErrorResponse, "description": "The body is larger than the byte limit, or the batch too large."},
    422: {
        "model": ErrorResponse,
        "description": "Invalid records (each record, field, value and rule), or a body beyond the limits on "
        "nesting depth, string length, numbers (finite, integers up to 2^53) or NUL characters.",
    },
    503: {
        "model": ErrorResponse,
        "description": "MLServer or the inference log is unavailable, or the request's inference-log row was "
        "quarantined, not recorded in time or not written (reason audit_quarantined, audit_timeout, "
        "audit_unavailable, ...): no prediction is served without its row. Or the dataset is suspended by a "
        "reviewer (reason dataset_suspended; the message names the API key and the reason; the request is recorded "
        "as rejected).",
    },
}


def predict_router(schemas: Mapping[str, DatasetSchemas]) -> APIRouter:
    """The predict routes: one per dataset, then the catch-all for unknown datasets."""
    router = APIRouter()
    for dataset, dataset_schemas in schemas.items():
        _add_dataset_route(router, dataset, dataset_schemas)
    router.add_api_route(
        "/v1/{dataset}/predict", predict_unknown, methods=["POST"], tags=["predict"], include_in_schema=False
    )
    return router


def _add_dataset_route(router: APIRouter, dataset: str, schemas: DatasetSchemas) -> None:
    async def predict_dataset(
        request: Request,
        gateway: GatewayDep,
        key: PredictKey,
        request_id: RequestId,
        clock: Clock,
        explain: ExplainQuery = None,
        top_k: TopKQuery = None,
    ) -> Response:
        call = PredictCall(request_id, clock, dataset)
        return await predict(dataset, request, gateway, key, call, explain, top_k)

    router.add_api_route(
        f"/v1/{dataset}/predict",
        predict_dataset,
        name=f"predict_{dataset}",
        methods=["POST"],
        tags=["predict"],
        summary=f"Predict {schemas.spec.target.name} for one {dataset} record or a batch, with explanations.",
        response_model=PredictResponse,
        responses=PREDICT_RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schemas.openapi_body()}}}
        },
    )


async def predict_unknown(
    dataset: str,
    request: Request,
    gateway: GatewayDep,
    key: PredictKey,
    request_id: RequestId,
    clock: Clock,
    explain: ExplainQuery = None,
    top_k: TopKQuery = None,
) -> Response:
    call = PredictCall(request_id, clock, dataset if dataset in gateway.specs else None)
    return await predict(dataset, request, gateway, key, call, explain, top_k)


async def predict(
    dataset: str,
    request: Request,
    gateway: GatewayState,
    key: KeyCheck,
    call: PredictCall,
    explain: str | None,
    top_k: str | None,
) -> Response:
    """One prediction: parse, score, record, respond. Every outcome is recorded in the inference log."""
    try:
        parsed = await _parse(dataset, request, gateway, key, call, explain, top_k)
        deployment, scored = await score(gateway, dataset, parsed, call)
        answers = predictions(gateway.specs[dataset], parsed, scored)
        for answer in answers:
            gateway.metrics.predictions.labels(dataset, answer["label"]).inc()
    except RequestRejected as rejection:
        return await _reject(gateway, call, rejection)
    return await _respond(gateway, dataset, call, deployment, parsed, answers)


async def _parse(
    dataset: str,
    request: Request,
    gateway: GatewayState,
    key: KeyCheck,
    call: PredictCall,
    explain: str | None,
    top_k: str | None,
) -> ParsedRequest:
    """Check the key, the dataset and the query parameters, read the body within the byte limit, decode it within
    the limits on depth, strings and numbers, then validate it against the spec (query parameters override its
    options)."""
    call.client_key_id = key.require().key_id
    if dataset not in gateway.schemas:
        raise RequestRejected(404, f"unknown dataset {dataset!r}; known: {sorted(gateway.schemas)}")
    if oversight_state_unknown(gateway):  # fail closed: a suspended dataset must not serve because it is not known
        await _read_refused_body(request, gateway, call, dataset)
        if gateway.oversight is not None:
            gateway.oversight.unknown_refusals.labels(dataset).inc()
        raise RequestRejected(
            503,
            state_unknown_message(dataset),
            [RecordProblem(None, "dataset", dataset, "oversight state unknown: suspensions not read yet")],
            reason=OVERSIGHT_STATE_UNKNOWN,
        )
    suspension = suspension_of(gateway, dataset)
    if suspension is not None:  # a reviewer stopped this dataset's serving: refused (and recorded) with who and why
        await _read_refused_body(request, gateway, call, dataset)
        raise RequestRejected(
            503,
            suspension_message(dataset, suspension),
            [RecordProblem(None, "dataset", dataset, f"suspended by API key {suspension.actor_key_id}")],
            reason=DATASET_SUSPENDED,
        )
    explain_option = _query_option("explain", explain, _AS_BOOL)
    top_k_option = _query_option("top_k", top_k, _AS_INT)
    limits = body_limits(gateway, dataset)
    try:
        call.body = await read_body(request, limits.max_bytes)
    except BodyTooLarge as too_large:
        call.body = too_large.received  # what was read before the limit: the row keeps its summary
        raise
    body = decode_body(call.body.data, limits)
    parsed = parse_predict_body(
        gateway.schemas[dataset],
        body,
        max_records=limits.max_records,
        explain_query=explain_option,
        top_k_query=top_k_option,
    )
    call.inputs = scored_inputs(parsed)
    call.timings["validate_ms"] = call.elapsed_ms()
    return parsed


async def _read_refused_body(request: Request, gateway: GatewayState, call: PredictCall, dataset: str) -> None:
    """Read the body of a request refused before validation (within the byte limit) so its row keeps a summary."""
    try:
        call.body = await read_body(request, body_limits(gateway, dataset).max_bytes)
    except BodyTooLarge as too_large:
        call.body = too_large.received
    except RequestRejected:  # e.g. the client went away: the row has no body summary
        call.body = None


def _query_option(name: str, raw: str | None, adapter: TypeAdapter[_T]) -> _T | None:
    """A query parameter parsed as FastAPI would (same rules, same messages); 422 naming it if malformed."""
    if raw is None:
        return None
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        problems = validation_problems({**item, "loc": ("query", name)} for item in error.errors())
        raise RequestRejected(422, "invalid request", problems) from None


def body_limits(gateway: GatewayState, dataset: str) -> BodyLimits:
    """The settings' limits on a predict body of ``dataset``; the number of JSON values follows from the batch
    size and the spec's width (generously: four values per field and record)."""
    settings = gateway.settings
    width = len(gateway.specs[dataset].features) + 4
    return BodyLimits(
        max_bytes=settings.max_body_bytes,
        max_string_length=settings.max_string_length,
        max_depth=settings.max_json_depth,
        max_records=settings.max_batch_records,
        max_values=max(65_536, 4 * width * settings.max_batch_records),
    )


async def _reject(gateway: GatewayState, call: PredictCall, rejection: RequestRejected) -> Response:
    """Record the refused or failed request, then answer with the error. A refused body is recorded as its
    summary, and the row's error is the reason (the rules broken, or the model server's own error text).

    Unauthenticated refusals are recorded only within ``unauthenticated_log_per_second`` (see
    :mod:`serving.gateway.refusals`): beyond it they are answered, counted and not recorded.
    """
    if (
        rejection.status == 401
        and gateway.refusal_log is not None
        and not gateway.refusal_log.admit(rejection.reason or "unauthenticated")
    ):
        return error_response(call.request_id, 401, rejection.message, rejection.problems, reason=rejection.reason)
    # A suspension (or suspensions not known yet) refuses the request: it did not fail.
    failed = rejection.status >= 500 and rejection.reason not in (DATASET_SUSPENDED, OVERSIGHT_STATE_UNKNOWN)
    status = RequestStatus.FAILED if failed else RequestStatus.REJECTED
    reason = rejection.detail or describe(rejection.message, rejection.problems)
    await record(gateway, call, status, rejection.status, reason)  # whatever became of its row: still refused
    return error_response(
        call.request_id,
        rejection.status,
        rejection.message,
        rejection.problems,
        headers=rejection.headers,
        reason=rejection.reason,
    )


async def _respond(
    gateway: GatewayState,
    dataset: str,
    call: PredictCall,
    deployment: DeployedModel,
    parsed: ParsedRequest,
    answers: list[dict[str, Any]],
) -> Response:
    """Record the served request, publish its events, answer; a prediction whose row is not in the chain (or the
    spool) is not served: 503 naming why."""
    call.outputs = answers
    refusal = await record(gateway, call, RequestStatus.OK, 200, None)
    if refusal is not None:
        return error_response(call.request_id, refusal.status, refusal.message, reason=refusal.reason)
    if gateway.events is not None:
        spec = gateway.specs[dataset]
        gateway.events.publish(
            dataset, prediction_events(spec, call.request_id, call.clock.received_at, deployment, parsed, answers)
        )
    model = {
        "name": deployment.registered_model_name,
        "version": deployment.version,
        "mlflow_run_id": deployment.mlflow_run_id,
    }
    return ORJSONResponse({"request_id": call.request_id, "dataset": dataset, "model": model, "predictions": answers})


def register_request_models(app: FastAPI, schemas: Mapping[str, DatasetSchemas]) -> None:
    """Put the generated request models into the OpenAPI components so the predict bodies' $refs resolve."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = original()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for dataset_schemas in schemas.values():
            for model in (dataset_schemas.single, dataset_schemas.batch):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = schema
        return document

    app.openapi = openapi  # type: ignore[method-assign]
