"""What the gateway answers with: JSON via orjson, and one error body for every failure (never a stack trace).

A body orjson refuses (a lone surrogate in a string, as an audit row may hold) is written by the standard library
with every non-ASCII character escaped (``\\udXXX``), which is valid JSON in valid UTF-8.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.gateway.middleware import REQUEST_ID_HEADER, request_id_of
from serving.gateway.schemas import ErrorResponse, RecordProblem, RequestRejected

logger = logging.getLogger(__name__)


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate (UTF-8 cannot carry it): escape it instead
            text = json.dumps(content, ensure_ascii=True, separators=(",", ":"), default=_plain, allow_nan=False)
            return text.encode("ascii")


def _plain(value: Any) -> Any:
    """What the standard library's JSON encoder cannot write itself (numpy values, anything else as text)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def error_response(
    request_id: str,
    status: int,
    message: str,
    problems: list[RecordProblem] | None = None,
    headers: dict[str, str] | None = None,
    *,
    reason: str | None = None,
) -> ORJSONResponse:
    """The error body: the request id, a message, every broken rule (a value JSON cannot carry, as text) and,
    if there is one, a machine-readable reason."""
    body = ErrorResponse(
        request_id=request_id,
        error=message,
        problems=[_encodable(p.as_dict()) for p in problems or []],
        reason=reason,
    )
    return ORJSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _encodable(problem: dict[str, Any]) -> dict[str, Any]:
    try:
        orjson.dumps(problem["value"], option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # e.g. an integer beyond 64 bits, a lone surrogate
        text = repr(problem["value"])
        problem["value"] = text[:200].encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")
    return problem


async def on_request_rejected(request: Request, error: RequestRejected) -> Response:
    return error_response(
        request_id_of(request), error.status, error.message, error.problems, error.headers, reason=error.reason
    )


def validation_problems(errors: Any) -> list[RecordProblem]:
    """FastAPI's validation errors as problems: the parameter (its location without ``query``/``path``), the
    value and the rule."""
    return [
        RecordProblem(
            None, ".".join(str(p) for p in item["loc"][1:]) or str(item["loc"][0]), item.get("input"), item["msg"]
        )
        for item in errors
    ]


async def on_invalid_request(request: Request, error: RequestValidationError) -> Response:
    """422 for a parameter FastAPI refused. The predict routes take their query parameters as text and check
    them in the handler (so the refusal is recorded): this answers the other routes."""
    return error_response(request_id_of(request), 422, "invalid request", validation_problems(error.errors()))


async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
    return error_response(request_id_of(request), error.status_code, str(error.detail))


async def on_unexpected_error(request: Request, error: Exception) -> Response:
    logger.exception("unexpected error in %s", request.url.path)
    request_id = request_id_of(request)
    # Starlette answers unhandled errors outside the middleware stack, so the id header is set here.
    return error_response(
        request_id,
        500,
        "internal error; the request id identifies it in the logs",
        headers={REQUEST_ID_HEADER: request_id},
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Answer every failure with :func:`error_response`."""
    app.exception_handler(RequestRejected)(on_request_rejected)
    app.exception_handler(RequestValidationError)(on_invalid_request)
    app.exception_handler(StarletteHTTPException)(on_http_error)
    app.exception_handler(Exception)(on_unexpected_error)
