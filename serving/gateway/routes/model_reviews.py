"""The model catalog and reviewers' decisions on manual-approval candidates.

``GET /v1/models/versions`` (role ``audit`` or ``review``) lists the catalogued versions
(:mod:`riverbed.model_catalog`): aliases, status, why each was trained, the gate's decision and reasons, fairness
per protected attribute, the model card, a reviewer's decision. It is an audit read: recorded in
``audit_access_log`` (key id, route, filters, row count, request id) before it is served, as the audit routes are;
a read that cannot be recorded is refused 503. ``POST
/v1/models/{dataset}/versions/{version}/approve`` and ``.../reject`` (role ``review``, body ``{"reason": "..."}``)
decide on a candidate that passed the promotion gate of a ``promotion.approval: manual`` dataset and waits as
``pending_approval``.

A decision is taken in one database transaction (:func:`serving.model_decisions.decide_model_version`, which the
console uses too): the decision row is claimed (the version must be pending and
undecided; a concurrent decision waits on the unique key and then finds it taken), the oversight action is
appended to the chained inference log (:func:`serving.oversight.record_action`, target ``<dataset>:<version>``,
committed before this answers), and only then is the decision committed. A decision whose action could not be
committed is rolled back: the candidate stays pending. If the log became unreachable just then, the action's row is
spooled (it enters the chain later, as every accepted row does) while the decision is still rolled back: the 503
says that nothing was decided and that the reviewer must decide again once the log is back. The approvals sensor
(``sensors/approvals.py``) then asks the platform to deploy exactly the approved version; a rejected one is never
deployed.

Refusals: unknown dataset or version 404; a version that is not pending (failed the gate, automatic promotion,
already decided, a replay of the same request) 409; an approval of a stale candidate (a newer version of the dataset
is the champion, or was deployed after the candidate was trained) 409 "superseded by vN", since deploying it would
roll the champion back (a rejection of it is still taken); a malformed body (not a JSON object, an unknown field, a
missing, empty, over-long, NUL or non-Unicode reason) 422 naming the field; a body over 16 KiB 413; the database
unreachable 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from psycopg_pool import PoolTimeout

from riverbed.model_catalog import (
    MAX_LIST_LIMIT,
    MAX_NAME_CHARS,
    CatalogError,
    CatalogValueError,
    ModelStatus,
    NotPendingApprovalError,
    ReviewDecision,
    SupersededVersionError,
    UnknownModelVersionError,
    list_model_versions_async,
)
from serving.audit_access import AuditAccessNotRecorded, record_audit_access
from serving.gateway.body import read_body
from serving.gateway.deps import Clock, GatewayDep, KeyCheck, RequestId
from serving.gateway.responses import ORJSONResponse
from serving.gateway.routes.oversight import ReviewKey, check_key
from serving.gateway.schemas import ErrorResponse, RecordProblem, RequestRejected
from serving.model_decisions import DecisionNotTakenError, decide_model_version
from serving.oversight import OversightError, check_note

router = APIRouter()

ROLE_REVIEW = "review"
ROLE_AUDIT = "audit"
VERSIONS_ROUTE = "/v1/models/versions"
APPROVE_ROUTE = "/v1/models/{dataset}/versions/{version}/approve"
REJECT_ROUTE = "/v1/models/{dataset}/versions/{version}/reject"
MAX_REVIEW_BODY_BYTES = 16 * 1024
MAX_VERSION = 2**31 - 1
# The body is read and checked by hand (size limit first, then each rule by name); documented here for /docs.
REVIEW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 4000,
                            "description": "Why (recorded with the decision and in the chained log).",
                        }
                    },
                    "required": ["reason"],
                    "additionalProperties": False,
                }
            }
        },
    }
}

REVIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    403: {"model": ErrorResponse, "description": "The key lacks the 'review' role."},
    404: {"model": ErrorResponse, "description": "Unknown dataset or model version."},
    409: {"model": ErrorResponse, "description": "The version is not pending approval (or already decided)."},
    413: {"model": ErrorResponse, "description": "The body is larger than 16 KiB."},
    422: {"model": ErrorResponse, "description": "A malformed parameter or body field: its name and the rule."},
    503: {"model": ErrorResponse, "description": "The database is unreachable, or the action not committed."},
}


async def check_catalog_reader_key(request: Request) -> KeyCheck:
    return await check_key(request, (ROLE_AUDIT, ROLE_REVIEW))


CatalogReaderKey = Annotated[KeyCheck, Depends(check_catalog_reader_key)]
DatasetPath = Annotated[str, PathParam(max_length=MAX_NAME_CHARS, description="The dataset's name.")]
VersionPath = Annotated[int, PathParam(ge=1, le=MAX_VERSION, description="The registered model version.")]


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout):
        raise RequestRejected(503, "the model catalog is unreachable right now") from None


def _invalid(field: str, value: Any, rule: str) -> RequestRejected:
    return RequestRejected(422, "invalid request", [RecordProblem(None, field, value, rule)])


# No docstrings on the handlers: FastAPI would publish them as the operations' descriptions.
@router.get(
    VERSIONS_ROUTE,
    tags=["models"],
    summary="Catalogued model versions, newest first: aliases, status, reason, gate decision, fairness, card.",
    responses={k: v for k, v in REVIEW_RESPONSES.items() if k in (401, 403, 422, 503)},
)
async def model_versions(
    gateway: GatewayDep,
    key: CatalogReaderKey,
    own_request_id: RequestId,
    clock: Clock,
    dataset: Annotated[str | None, Query(max_length=MAX_NAME_CHARS, description="Only this dataset.")] = None,
    status: Annotated[ModelStatus | None, Query(description="Only versions in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> Response:
    caller = key.require()
    try:
        async with _database(), gateway.writer.pool.connection() as conn:
            versions = await list_model_versions_async(conn, dataset, limit, status=status)
    except CatalogValueError as error:
        raise _invalid(error.field, None, error.rule) from None
    # An audit read like the audit routes' (serving/gateway/routes/audit.py): recorded before it is served.
    filters: dict[str, Any] = {
        **({"dataset": dataset} if dataset is not None else {}),
        **({"status": status} if status is not None else {}),
        "limit": limit,
    }
    try:
        await record_audit_access(
            gateway.writer.pool,
            key_id=caller.key_id,
            route=VERSIONS_ROUTE,
            filters=filters,
            row_count=len(versions),
            request_id=own_request_id,
            received_at=clock.received_at,
        )
    except AuditAccessNotRecorded:
        raise RequestRejected(503, "the catalog read was not served because it could not be recorded") from None
    return ORJSONResponse({"versions": [v.model_dump(mode="json") for v in versions], "count": len(versions)})


async def _reason_of(request: Request) -> str:
    received = await read_body(request, MAX_REVIEW_BODY_BYTES)
    try:
        body = orjson.loads(received.data)
    except orjson.JSONDecodeError:
        raise _invalid("body", None, 'must be a JSON object {"reason": "..."}') from None
    if not isinstance(body, dict):
        raise _invalid("body", None, 'must be a JSON object {"reason": "..."}')
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise _invalid(unknown[0][:100], None, "unknown field: the body holds only 'reason'")
    if "reason" not in body:
        raise _invalid("reason", None, "is required: why the version is approved or rejected")
    try:
        return check_note("reason", body["reason"])
    except OversightError as error:
        raise _invalid(error.field, None, error.rule) from None


async def _decide(
    request: Request,
    gateway: GatewayDep,
    key: KeyCheck,
    request_id: str,
    dataset: str,
    version: int,
    decision: ReviewDecision,
) -> Response:
    caller = key.require()
    if dataset not in gateway.specs:
        raise RequestRejected(404, f"unknown dataset {dataset!r}", [RecordProblem(None, "dataset", dataset, "unknown")])
    reason = await _reason_of(request)
    try:
        async with _database():
            review, action = await decide_model_version(
                gateway,
                request_id=request_id,
                key_id=caller.key_id,
                dataset=dataset,
                version=version,
                decision=decision,
                reason=reason,
            )
    except UnknownModelVersionError as error:
        raise RequestRejected(404, str(error), [RecordProblem(None, "version", version, "unknown")]) from None
    except SupersededVersionError as error:
        rule = f"superseded by v{error.superseded_by}: a newer version is or was deployed (no rollback by approval)"
        raise RequestRejected(409, str(error), [RecordProblem(None, "version", version, rule)]) from None
    except NotPendingApprovalError as error:
        raise RequestRejected(
            409, str(error), [RecordProblem(None, "version", version, f"is {error.status}, not pending_approval")]
        ) from None
    except CatalogValueError as error:
        raise _invalid(error.field, None, error.rule) from None
    except OversightError as error:
        problem = [RecordProblem(None, error.field, None, error.rule)]
        # A spooled action with its decision rolled back: nothing was decided, the reviewer must decide again.
        outcome = "taken" if isinstance(error, DecisionNotTakenError) else "recorded"
        raise RequestRejected(error.status, f"the {decision} was not {outcome}: {error.rule}", problem) from None
    except CatalogError as error:
        raise RequestRejected(503, f"the model catalog could not record the decision: {error}") from None
    return ORJSONResponse({"review": review.model_dump(mode="json"), "action": action.model_dump(mode="json")})


def _decision_route(decision: ReviewDecision) -> Callable[..., Awaitable[Response]]:
    async def decide(
        request: Request,
        gateway: GatewayDep,
        key: ReviewKey,
        request_id: RequestId,
        dataset: DatasetPath,
        version: VersionPath,
    ) -> Response:
        return await _decide(request, gateway, key, request_id, dataset, version, decision)

    return decide


DECISION_SUMMARIES: dict[ReviewDecision, str] = {
    "approve": "Approve a pending candidate of a manual-approval dataset: the platform then deploys exactly it.",
    "reject": "Reject a pending candidate of a manual-approval dataset: it is never deployed.",
}
# One handler per decision, told apart only by the decision (and their routes' names and summaries).
DECISION_ROUTES: dict[ReviewDecision, str] = {"approve": APPROVE_ROUTE, "reject": REJECT_ROUTE}
for _decision, _route in DECISION_ROUTES.items():
    router.post(
        _route,
        name=f"{_decision}_model_version",
        tags=["models"],
        summary=DECISION_SUMMARIES[_decision],
        responses=REVIEW_RESPONSES,
        openapi_extra=REVIEW_BODY,
    )(_decision_route(_decision))
