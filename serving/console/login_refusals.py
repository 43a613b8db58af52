"""Refused console logins on record: every refusal of ``POST /console/login`` has an inference-log row.

A refused login is an unauthenticated refusal, so it is recorded as the predict route records its 401s: a
``rejected`` row (``failed`` when the key store could not be read) with the route ``/console/login``, the
``http_status`` the refusal stands for (401 for a missing, wrong, revoked or expired key; 403 for a key without a
console role or a missing / wrong CSRF token; 4xx for a malformed form; 503 when the key could not be checked),
and the reason as its error. The browser is answered with the redirect to the login form (303, see
:data:`serving.console.sessions.REFUSALS`) or the error page; the error text names that answer.

The row never holds the submitted key: no inputs, and as ``client_key_id`` only the key id a well-formed key
names (``rb_<16 hex>_...``), else nothing. Rows pass the gateway's :class:`~serving.gateway.refusals.
RefusalLogLimiter` (``unauthenticated_log_per_second``, shared with the predict route's 401s): a login refused
beyond it is still refused but has no row, and is counted in ``riverbed_gateway_unlogged_refusals_total{reason=
"console_<code>"}``. Every refused login is counted in ``riverbed_console_login_refusals_total{reason, row}``
(``row`` is ``logged``, ``sampled_out`` or ``not_recorded``); a row the log could not take is a WARNING too.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from starlette.requests import Request

from riverbed.names import CONSOLE_PATH
from serving.api_keys import KEY_PREFIX
from serving.gateway.middleware import clock_of, request_id_of
from serving.gateway.state import GatewayState
from serving.inference_log import AuditWriteError, InferenceRecord, RequestStatus

logger = logging.getLogger(__name__)

LOGIN_ROUTE: Final = f"{CONSOLE_PATH}/login"
# Refusals that are not session codes (serving.console.sessions.REFUSALS): the form itself was refused.
CSRF_REFUSED: Final = "csrf"
FORM_REFUSED: Final = "bad_form"
KEY_STORE_UNAVAILABLE: Final = "key_store_unavailable"
_KEY_ID: Final = re.compile(r"[0-9a-f]{16}")  # serving.api_keys.create_api_key: secrets.token_hex(8)


def key_id_of(presented: str) -> str | None:
    """The key id a submitted key names if it is well formed (``rb_<16 lowercase hex>_<secret>``), else None.

    Only the id is ever kept: it is public (``riverbed apikey list`` shows it) and names no secret.
    """
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[2] or not _KEY_ID.fullmatch(parts[1]):
        return None
    return parts[1]


async def record_login_refusal(
    gateway: GatewayState,
    request: Request,
    *,
    code: str,
    http_status: int,
    message: str,
    answered: str,
    key_id: str | None = None,
) -> None:
    """Record one refused login (see the module docstring); never raises for the log's sake."""
    row_outcome = "logged"
    limiter = gateway.refusal_log
    if limiter is not None and not limiter.admit(f"console_{code}", answered=f"{answered} on POST {LOGIN_ROUTE}"):
        row_outcome = "sampled_out"
    else:
        row = InferenceRecord(
            request_id=request_id_of(request),
            received_at=clock_of(request).received_at,
            dataset=None,
            route=LOGIN_ROUTE,
            status=RequestStatus.FAILED if http_status >= 500 else RequestStatus.REJECTED,
            http_status=http_status,
            client_key_id=key_id,
            error=f"console login refused ({code}): {message}; answered {answered}",
        )
        try:
            await gateway.writer.record(row)
        except AuditWriteError as failure:  # the login is refused whatever became of its row
            row_outcome = "not_recorded"
            logger.warning("refused console login %s not recorded (%s): %s", row.request_id, failure.reason, failure)
    gateway.metrics.console_login_refusals.labels(code, row_outcome).inc()
