"""Dependencies of the gateway routes, as ``Annotated`` types: the gateway state, the request's id and clock,
and the caller's API key checked for a role.

The key dependencies never raise. FastAPI resolves dependencies before it validates query parameters, and the
gateway answers a malformed query with 422 whatever the key; a predict request refused for its key is still
recorded in the inference log. So each key dependency holds the outcome of the check (:class:`KeyCheck`) and
the handler calls :meth:`KeyCheck.require` first.

Keys are checked by :meth:`serving.api_keys.ApiKeyAuthenticator.verify` (cached, revocations pushed): a refused
key is answered 401 with its reason (``invalid or revoked API key``, ``key expired``), a key that cannot be checked
now (the key store unreachable and the cache may not vouch for it) 503. Every 401 carries a ``reason`` label
(``missing_key``, ``invalid_key``, ``expired_key``) that the refusal-row rate limit counts by
(:mod:`serving.gateway.refusals`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serving.api_keys import ApiKey, ApiKeyRefused, KeyExpiredError, KeyStoreUnavailableError
from serving.gateway.middleware import RequestClock, clock_of, request_id_of
from serving.gateway.schemas import RequestRejected
from serving.gateway.state import GatewayState, running_gateway

logger = logging.getLogger(__name__)

ROLE_PREDICT = "predict"
ROLE_AUDIT = "audit"
MAX_TOKEN_LENGTH = 256  # issued keys are about 70 characters; longer or non-printable tokens are refused unread


def gateway_of(request: Request) -> GatewayState:
    """The running gateway's state (an internal error before the lifespan has started it)."""
    gateway = running_gateway(request.app)
    if gateway is None:
        raise RuntimeError("the gateway is not running: its lifespan has not started")
    return gateway


# The dependencies are coroutines on purpose: FastAPI runs a plain function dependency in the thread pool, a
# hand-off per dependency per request that cost the predict route about a sixth of the gateway's CPU (measured
# with the serving benchmark); these only read the request's scope and never block.
async def get_gateway(request: Request) -> GatewayState:
    return gateway_of(request)


async def get_request_id(request: Request) -> str:
    return request_id_of(request)


async def get_clock(request: Request) -> RequestClock:
    return clock_of(request)


GatewayDep = Annotated[GatewayState, Depends(get_gateway)]
RequestId = Annotated[str, Depends(get_request_id)]
Clock = Annotated[RequestClock, Depends(get_clock)]


@dataclass(frozen=True)
class KeyCheck:
    """The caller's API key checked for a role: the key, or the refusal (401, 403 or 503) to answer with."""

    outcome: ApiKey | RequestRejected

    def require(self) -> ApiKey:
        """The key; raises the refusal if there is one."""
        if isinstance(self.outcome, RequestRejected):
            raise self.outcome
        return self.outcome


async def authenticate(request: Request, roles: tuple[str, ...]) -> ApiKey:
    """The bearer key if it is valid and holds one of ``roles``; else :class:`RequestRejected`.

    A 403 names the last of ``roles``.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise RequestRejected(401, "missing API key: send 'Authorization: Bearer <key>'", reason="missing_key")
    if len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or not token.isascii():
        raise RequestRejected(401, ApiKeyRefused().message, reason="invalid_key")  # never looked up
    try:
        key = await gateway_of(request).authenticator.verify(token)
    except KeyStoreUnavailableError as unavailable:  # database unreachable and the cache may not vouch for the key
        raise RequestRejected(503, unavailable.message, reason="key_store_unavailable") from None
    except KeyExpiredError as expired:
        raise RequestRejected(401, expired.message, reason="expired_key") from None
    except ApiKeyRefused as refused:
        raise RequestRejected(401, refused.message, reason="invalid_key") from None
    except Exception:  # a bug: refuse (and record the refusal) rather than answer 500 with no row
        logger.exception("could not verify an API key")
        raise RequestRejected(
            503, "cannot verify the API key right now: the key store is unreachable", reason="key_store_unavailable"
        ) from None
    if key.roles.isdisjoint(roles):
        raise RequestRejected(403, f"this API key lacks the '{roles[-1]}' role")
    return key


async def _check_key(request: Request, *roles: str) -> KeyCheck:
    try:
        return KeyCheck(await authenticate(request, roles))
    except RequestRejected as refusal:
        return KeyCheck(refusal)


async def check_predict_key(request: Request) -> KeyCheck:
    return await _check_key(request, ROLE_PREDICT)


async def check_audit_key(request: Request) -> KeyCheck:
    return await _check_key(request, ROLE_AUDIT)


async def check_reader_key(request: Request) -> KeyCheck:
    return await _check_key(request, ROLE_PREDICT, ROLE_AUDIT)


PredictKey = Annotated[KeyCheck, Depends(check_predict_key)]
AuditKey = Annotated[KeyCheck, Depends(check_audit_key)]
ReaderKey = Annotated[KeyCheck, Depends(check_reader_key)]  # either role
