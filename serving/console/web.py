"""The console's web plumbing: templates (autoescaped), security headers, bounded form parsing, the session
dependency and the mapping of every refusal to an HTML error page (never a stack trace, never a 500 for bad input).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from psycopg_pool import PoolTimeout
from starlette.responses import HTMLResponse, RedirectResponse, Response

from riverbed import model_catalog
from riverbed.names import CONSOLE_PATH
from serving.audit_access import AuditAccessNotRecorded
from serving.audit_queries import AuditQueryError
from serving.console.sessions import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_COOKIE_SECONDS,
    SESSION_COOKIE,
    ConsoleSession,
    LoggedOut,
    SessionRefused,
    csrf_matches,
    csrf_token,
    current_key,
    issue_login_nonce,
    read_login_nonce,
    read_session,
    session_key_for,
)
from serving.gateway.deps import gateway_of
from serving.gateway.schemas import RequestRejected
from serving.gateway.state import GatewayState
from serving.inference_log import format_time
from serving.oversight import OversightError

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 8
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_environment = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined, trim_blocks=True
)
_LOGGED_OUT = LoggedOut()


class ConsolePageError(Exception):
    """A refusal shown as an error page: HTTP ``status``, the ``field`` at fault (if any) and the rule."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def render(
    request: Request, template: str, context: Mapping[str, Any], *, status: int = 200, session: Any = None
) -> HTMLResponse:
    """A page from ``template`` with the console's common context and security headers."""
    gateway = getattr(request.app.state, "gateway", None)
    values = {
        "console": CONSOLE_PATH,
        "session": session,
        "csrf_field": CSRF_FIELD,
        "csrf": csrf_token(_session_key(gateway), session.nonce) if isinstance(session, ConsoleSession) else "",
        "datasets": sorted(gateway.specs) if isinstance(gateway, GatewayState) else [],
        **context,
    }
    html = _environment.get_template(template).render(values)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def login_page(request: Request, error: str | None, *, status: int = 200) -> HTMLResponse:
    """The login form, with a fresh pre-login cookie its CSRF token is bound to."""
    key = session_key(gateway_of(request))
    cookie = issue_login_nonce(key)
    nonce = read_login_nonce(key, cookie)
    response = render(
        request, "login.html", {"error": error, "login_csrf": csrf_token(key, nonce or "")}, status=status
    )
    set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_COOKIE_SECONDS)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """An HttpOnly, SameSite=Strict cookie for the console's path (Secure when served over HTTPS)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def _session_key(gateway: Any) -> bytes:
    return session_key_for(gateway.cursor_key if isinstance(gateway, GatewayState) else None)


def session_key(gateway: GatewayState) -> bytes:
    return _session_key(gateway)


def logged_out() -> LoggedOut:
    return _LOGGED_OUT


async def require_session(request: Request) -> ConsoleSession:
    """The caller's console session (its key re-read now); raises :class:`SessionRefused`."""
    gateway = gateway_of(request)
    token = read_session(session_key(gateway), request.cookies.get(SESSION_COOKIE))
    if token.nonce in _LOGGED_OUT:
        raise SessionRefused("logged_out")
    return await current_key(gateway.writer.pool, token)


def require_review(session: ConsoleSession) -> None:
    if not session.can_review:
        raise ConsolePageError(403, "this API key lacks the 'review' role: oversight actions need it")


async def read_form(
    request: Request, session: ConsoleSession | None, *, csrf_nonce: str | None = None
) -> dict[str, str]:
    """The POSTed form (URL-encoded, at most :data:`MAX_FORM_BYTES`), its CSRF token checked.

    Checks the token against the session's nonce (or ``csrf_nonce`` for the login form). Raises
    :class:`ConsolePageError`: 413 too large, 415 not a form, 400 not UTF-8 or repeated fields, 403 bad token,
    422 a NUL in a field.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ConsolePageError(415, "send the form as application/x-www-form-urlencoded (an HTML form)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise ConsolePageError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            raise ConsolePageError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise ConsolePageError(400, "the form is not valid UTF-8") from None
    except ValueError:
        raise ConsolePageError(400, f"the form has more than {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise ConsolePageError(400, f"field {name!r} is repeated", field=name[:40])
        form[name] = value
    nonce = session.nonce if session is not None else csrf_nonce
    if nonce is None or not csrf_matches(session_key(gateway_of(request)), nonce, form.get(CSRF_FIELD)):
        raise ConsolePageError(403, "missing or wrong CSRF token: reload the page and submit the form again")
    for name, value in form.items():
        if "\x00" in value:
            raise ConsolePageError(422, "contains a NUL character", field=name[:40])
    return form


def check_query_text(name: str, value: str | None, max_length: int) -> str | None:
    """A query parameter as text (None if absent or empty); 422 for NUL or over-long text."""
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise ConsolePageError(422, f"longer than {max_length} characters", field=name)
    if "\x00" in value:
        raise ConsolePageError(422, "contains a NUL character", field=name)
    return value


def parse_time(name: str, value: str | None) -> dt.datetime | None:
    """ISO 8601 with a UTC offset (as the audit API takes it); 422 otherwise."""
    text = check_query_text(name, value, 64)
    if text is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConsolePageError(
            422, "must be an ISO 8601 date-time with a UTC offset, e.g. 2026-01-31T12:00:00Z", field=name
        ) from None
    if parsed.tzinfo is None:
        raise ConsolePageError(422, "needs a UTC offset, e.g. 2026-01-31T12:00:00Z", field=name)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise ConsolePageError(422, "out of range: must fall within the years 1 to 9999 in UTC", field=name) from None


def parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    text = check_query_text(name, value, 12)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise ConsolePageError(422, f"must be a whole number from {low} to {high}", field=name)
    number = int(text)
    if not low <= number <= high:
        raise ConsolePageError(422, f"must be a whole number from {low} to {high}", field=name)
    return number


def parse_choice(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    text = check_query_text(name, value, 32)
    if text is not None and text not in choices:
        raise ConsolePageError(422, f"must be one of {', '.join(choices)}", field=name)
    return text


def number(value: Any, digits: int = 4) -> str:
    """A number for display (finite floats rounded; anything else as text)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


_environment.filters["number"] = number


def utc(value: Any) -> str:
    """A timestamp as the log shows them (microsecond ISO UTC); other values as text."""
    return format_time(value) if isinstance(value, dt.datetime) else ("" if value is None else str(value))


_environment.filters["utc"] = utc


@dataclass(frozen=True)
class _Failure:
    status: int
    message: str
    field: str | None = None


def _failure_of(error: Exception) -> _Failure | None:
    """The page to show for a known refusal (None: a bug)."""
    if isinstance(error, ConsolePageError):
        return _Failure(error.status, error.message, error.field)
    if isinstance(error, AuditQueryError):
        return _Failure(422, error.rule, error.field)
    if isinstance(error, OversightError):
        return _Failure(error.status, error.rule, error.field)
    if isinstance(error, RequestRejected):
        field = error.problems[0].field if error.problems else None
        rule = error.problems[0].rule if error.problems else error.message
        return _Failure(error.status, rule, field)
    if isinstance(error, RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        location = first.get("loc", ())
        return _Failure(422, str(first.get("msg", "invalid request")), str(location[-1]) if location else None)
    if isinstance(error, AuditAccessNotRecorded):
        return _Failure(503, "the page was not shown because its read could not be recorded in the audit access log")
    if isinstance(error, psycopg.OperationalError | PoolTimeout):
        return _Failure(503, "the inference log is unreachable right now")
    catalog = _catalog_failure(error)
    if catalog is not None:
        return catalog
    return None


def _catalog_failure(error: Exception) -> _Failure | None:
    if isinstance(error, model_catalog.CatalogValueError):
        return _Failure(422, error.rule, error.field)
    if isinstance(error, model_catalog.UnknownModelVersionError):
        return _Failure(404, str(error))
    if isinstance(error, model_catalog.NotPendingApprovalError):
        return _Failure(409, str(error), "version")
    if isinstance(error, model_catalog.CatalogError):
        return _Failure(503, f"the model catalog could not do this: {error}")
    return None


class ConsoleRoute(APIRoute):
    """A console route: every refusal becomes an HTML page (login page for a missing or ended session)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SessionRefused as refused:
                # A redirect, not a 401 page: the browser then shows the login form without logging an error.
                return redirect(f"{CONSOLE_PATH}/login?reason={refused.code}")
            except Exception as error:
                failure = _failure_of(error)
                if failure is None:
                    logger.exception("console page %s failed", request.url.path)
                    failure = _Failure(500, "the console could not show this page (the error is logged)")
                elif failure.status >= 500:
                    logger.warning("console page %s refused %s: %s", request.url.path, failure.status, failure.message)
                session = None
                if failure.status != 401:
                    try:
                        session = await require_session(request)
                    except Exception:  # the error page is shown without the navigation then
                        session = None
                return render(
                    request,
                    "error.html",
                    {"status": failure.status, "message": failure.message, "field": failure.field},
                    status=failure.status,
                    session=session,
                )

        return console_handler
