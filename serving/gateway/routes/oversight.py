"""Human oversight routes (role ``review`` to act; ``audit`` or ``review`` to list): flag or override a
prediction, suspend or resume a dataset's serving, list the recorded actions.

Each action is recorded by :mod:`serving.oversight` as a committed row of the inference log (its id is the
response's ``X-Request-ID``) before it is answered. Bodies are read and decoded under the gateway's limits
(:mod:`serving.gateway.body`: bytes, depth, NUL, non-finite numbers), then checked field by field; every refusal
is a 4xx (or 503) naming the field and the rule, and is itself recorded as a ``rejected`` row of the log, like a
refused prediction (unauthenticated ones within ``unauthenticated_log_per_second``). Listings are audit reads:
recorded in ``audit_access_log`` before they are served.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.audit_access import AuditAccessNotRecorded, record_audit_access
from serving.gateway.body import BodyLimits, BodyTooLarge, ReceivedBody, decode_body, describe, read_body
from serving.gateway.deps import Clock, GatewayDep, KeyCheck, RequestId, authenticate
from serving.gateway.middleware import RequestClock
from serving.gateway.responses import ORJSONResponse, error_response
from serving.gateway.schemas import ErrorResponse, RecordProblem, RequestRejected
from serving.gateway.state import GatewayState
from serving.inference_log import AuditWriteError, InferenceRecord, RequestStatus
from serving.oversight import (
    ACTION_ROUTES,
    MAX_LIST_LIMIT,
    MAX_NOTE_LENGTH,
    ActionFilter,
    OversightAction,
    OversightError,
    flag_prediction,
    list_actions,
    override_prediction,
    resume_dataset,
    suspend_dataset,
)

logger = logging.getLogger(__name__)

router = APIRouter()

ROLE_REVIEW = "review"
ROLE_AUDIT = "audit"
LIST_ROUTE = "/v1/oversight"


async def check_key(request: Request, roles: tuple[str, ...]) -> KeyCheck:
    """The key check of a route needing one of ``roles`` (a 403 names the last): the refusal is kept, not raised,
    so the handler can record it as a row first (``KeyCheck.require()``)."""
    try:
        return KeyCheck(await authenticate(request, roles))
    except RequestRejected as refusal:
        return KeyCheck(refusal)


async def check_review_key(request: Request) -> KeyCheck:
    return await check_key(request, (ROLE_REVIEW,))


async def check_oversight_reader_key(request: Request) -> KeyCheck:
    return await check_key(request, (ROLE_REVIEW, ROLE_AUDIT))


ReviewKey = Annotated[KeyCheck, Depends(check_review_key)]  # the oversight actions (and B's approve / reject)
OversightReaderKey = Annotated[KeyCheck, Depends(check_oversight_reader_key)]  # audit or review

ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    403: {"model": ErrorResponse, "description": "The key lacks the 'review' role."},
    404: {"model": ErrorResponse, "description": "No such request or dataset."},
    409: {"model": ErrorResponse, "description": "The target's state does not allow the action."},
    413: {"model": ErrorResponse, "description": "The body is larger than the byte limit."},
    422: {"model": ErrorResponse, "description": "A malformed body or id: the field and the rule it broke."},
    503: {"model": ErrorResponse, "description": "The inference log cannot commit the action right now."},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FlagBody(_Body):
    note: str


class OverrideBody(_Body):
    outcome: str
    reason: str


class ReasonBody(_Body):
    reason: str


def _body_schema(model: type[_Body]) -> dict[str, Any]:
    """The body as the OpenAPI document shows it (the handlers read and check it themselves, see the module doc)."""
    schema = model.model_json_schema()
    for name in ("note", "reason"):
        if name in schema["properties"]:
            schema["properties"][name] |= {"minLength": 1, "maxLength": MAX_NOTE_LENGTH}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _action_json(action: OversightAction) -> dict[str, Any]:
    return action.model_dump(mode="json")


class _Call:
    """What an action request did so far: what its refusal row needs."""

    def __init__(self, request_id: str, clock: RequestClock, route: str, dataset: str | None = None) -> None:
        self.request_id = request_id
        self.clock = clock
        self.route = route
        self.dataset = dataset
        self.key_id: str | None = None
        self.body: ReceivedBody | None = None
        self.row_attempted = False  # the action's own row was offered to the log: no refusal row with its id


async def _read_fields(request: Request, gateway: GatewayState, call: _Call, model: type[_Body]) -> Any:
    settings = gateway.settings
    # Read up to the gateway's body limit (as predict), so an over-long note is refused naming its field and limit.
    max_bytes = settings.max_body_bytes
    limits = BodyLimits(
        max_bytes=max_bytes,
        max_string_length=max_bytes,
        max_depth=settings.max_json_depth,
        max_records=1,
        max_values=64,
    )
    try:
        call.body = await read_body(request, max_bytes)
    except BodyTooLarge as too_large:
        call.body = too_large.received
        raise
    body = decode_body(call.body.data, limits)
    if not isinstance(body, dict):
        raise RequestRejected(422, "invalid request", [RecordProblem(None, "body", None, "must be a JSON object")])
    try:
        return model.model_validate(body)
    except ValidationError as error:
        problems = [
            RecordProblem(
                None,
                ".".join(str(part) for part in item["loc"]) or "body",
                None,
                "required" if item["type"] == "missing" else item["msg"],
            )
            for item in error.errors()
        ]
        raise RequestRejected(422, "invalid request", problems) from None


@contextlib.contextmanager
def _refusals(call: _Call) -> Iterator[None]:
    """Oversight refusals as HTTP refusals naming the field and the rule."""
    try:
        yield
    except OversightError as error:
        call.row_attempted = call.row_attempted or getattr(error, "row_attempted", False)
        raise RequestRejected(
            error.status,
            f"{error.field}: {error.rule}",
            [RecordProblem(None, error.field, None, error.rule)],
            reason="audit_unavailable" if error.status == 503 else None,
        ) from None


async def _refuse(gateway: GatewayState, call: _Call, rejection: RequestRejected) -> Response:
    """Record the refused action request as a ``rejected`` (or ``failed``) row, then answer with the error."""
    admitted = not (
        rejection.status == 401
        and gateway.refusal_log is not None
        and not gateway.refusal_log.admit(rejection.reason or "unauthenticated", answered=f"401 on POST {call.route}")
    )
    if admitted and not call.row_attempted:
        row = InferenceRecord(
            request_id=call.request_id,
            received_at=call.clock.received_at,
            dataset=call.dataset if call.dataset in gateway.specs else None,
            route=call.route,
            status=RequestStatus.FAILED if rejection.status >= 500 else RequestStatus.REJECTED,
            http_status=rejection.status,
            client_key_id=call.key_id,
            inputs=[call.body.summary()] if call.body is not None else [],
            error=rejection.detail or describe(rejection.message, rejection.problems),
        )
        try:
            await gateway.writer.record(row)
        except AuditWriteError as failure:  # the refusal stands whatever became of its row
            logger.warning(
                "refused oversight request %s not recorded (%s): %s", call.request_id, failure.reason, failure
            )
    return error_response(
        call.request_id,
        rejection.status,
        rejection.message,
        rejection.problems,
        headers=rejection.headers,
        reason=rejection.reason,
    )


async def _act(
    request: Request,
    gateway: GatewayState,
    key: KeyCheck,
    call: _Call,
    body: type[_Body],
    perform: Callable[[str, Any], Awaitable[OversightAction]],
) -> Response:
    """One action request: the key, then the body, then ``perform(key_id, fields)``; a refusal is recorded and
    answered (:func:`_refuse`)."""
    try:
        call.key_id = key.require().key_id
        fields = await _read_fields(request, gateway, call, body)
        with _refusals(call):
            action = await perform(call.key_id, fields)
    except RequestRejected as rejection:
        return await _refuse(gateway, call, rejection)
    return ORJSONResponse(_action_json(action))


# Handlers carry no docstrings: FastAPI would publish them as the operations' descriptions.
@router.post(
    ACTION_ROUTES["flag"],
    tags=["oversight"],
    openapi_extra=_body_schema(FlagBody),
    summary="Flag a logged prediction with a note (role review).",
    responses=ACTION_RESPONSES,
)
async def flag(
    request_id: str, request: Request, gateway: GatewayDep, key: ReviewKey, own_id: RequestId, clock: Clock
) -> Response:
    def perform(key_id: str, fields: FlagBody) -> Awaitable[OversightAction]:
        return flag_prediction(
            gateway, request_id=own_id, key_id=key_id, target_request_id=request_id, note=fields.note
        )

    return await _act(request, gateway, key, _Call(own_id, clock, ACTION_ROUTES["flag"]), FlagBody, perform)


@router.post(
    ACTION_ROUTES["override"],
    tags=["oversight"],
    openapi_extra=_body_schema(OverrideBody),
    summary="Record a reviewer's outcome (one of the dataset's target classes) and reason for a prediction.",
    responses=ACTION_RESPONSES,
)
async def override(
    request_id: str, request: Request, gateway: GatewayDep, key: ReviewKey, own_id: RequestId, clock: Clock
) -> Response:
    def perform(key_id: str, fields: OverrideBody) -> Awaitable[OversightAction]:
        return override_prediction(
            gateway,
            request_id=own_id,
            key_id=key_id,
            target_request_id=request_id,
            outcome=fields.outcome,
            reason=fields.reason,
        )

    return await _act(request, gateway, key, _Call(own_id, clock, ACTION_ROUTES["override"]), OverrideBody, perform)


def _serving_route(action: Literal["suspend", "resume"]) -> Callable[..., Awaitable[Response]]:
    change = suspend_dataset if action == "suspend" else resume_dataset

    async def change_serving(
        dataset: str, request: Request, gateway: GatewayDep, key: ReviewKey, own_id: RequestId, clock: Clock
    ) -> Response:
        def perform(key_id: str, fields: ReasonBody) -> Awaitable[OversightAction]:
            return change(gateway, request_id=own_id, key_id=key_id, dataset=dataset, reason=fields.reason)

        call = _Call(own_id, clock, ACTION_ROUTES[action], dataset)
        return await _act(request, gateway, key, call, ReasonBody, perform)

    return change_serving


# Suspend and resume: one handler each, told apart only by the action (and their summaries).
SERVING_SUMMARIES: dict[Literal["suspend", "resume"], str] = {
    "suspend": "Suspend a dataset's serving with a reason: its predict route answers 503 naming who and why.",
    "resume": "Resume a suspended dataset's serving, with a reason (409 if it is not suspended).",
}
for _action, _summary in SERVING_SUMMARIES.items():
    router.post(
        ACTION_ROUTES[_action],
        name=_action,
        tags=["oversight"],
        openapi_extra=_body_schema(ReasonBody),
        summary=_summary,
        responses=ACTION_RESPONSES,
    )(_serving_route(_action))


@router.get(
    LIST_ROUTE,
    tags=["oversight"],
    summary="Recorded oversight actions, oldest first (chain order), keyset-paginated (role audit or review).",
    responses={**ACTION_RESPONSES, 403: {"model": ErrorResponse, "description": "Neither audit nor review role."}},
)
async def list_oversight(
    gateway: GatewayDep,
    key: OversightReaderKey,
    own_id: RequestId,
    clock: Clock,
    target_kind: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=300)] = None,
    dataset: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page.")] = None,
) -> Response:
    caller = key.require()
    selection = ActionFilter(
        target_kind=target_kind,  # type: ignore[arg-type]  # checked by validate()
        target_id=target_id,
        dataset=dataset,
        action=action,  # type: ignore[arg-type]
    )
    call = _Call(own_id, clock, LIST_ROUTE)
    with _refusals(call):
        actions, next_cursor = await list_actions(gateway, selection, limit=limit, cursor=cursor)
    filters = {**selection.as_json(), "limit": limit, **({"cursor": cursor} if cursor else {})}
    try:
        await record_audit_access(
            gateway.writer.pool,
            key_id=caller.key_id,
            route=LIST_ROUTE,
            filters=filters,
            row_count=len(actions),
            request_id=own_id,
            received_at=clock.received_at,
        )
    except AuditAccessNotRecorded:
        raise RequestRejected(503, "the read was not served because it could not be recorded") from None
    return ORJSONResponse(
        {"actions": [_action_json(a) for a in actions], "next_cursor": next_cursor, "count": len(actions)}
    )


__all__ = ["MAX_NOTE_LENGTH", "OversightReaderKey", "ReviewKey", "check_key", "router"]
