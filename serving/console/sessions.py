"""Console sessions: a signed, expiring cookie that names an API key (never holds it), and per-session CSRF tokens.

A reviewer or auditor logs in with an API key (:func:`login`, checked by the gateway's
:class:`~serving.api_keys.ApiKeyAuthenticator`); the console then sets ``riverbed_console``, an HttpOnly,
SameSite=Strict cookie scoped to ``/console`` holding a *signed token*: base64url JSON ``[version, key id,
issued at, expires at, nonce]``, a dot, and an HMAC-SHA256 tag. The tag's key is derived from the audit cursors'
key (itself derived from the inference log's chain key, :func:`serving.audit_queries.cursor_key_for`), so a
session is valid in every gateway process and across restarts, and the chain key never tags anything else.

Every request re-reads the key's row (:func:`current_key`: one primary-key lookup in ``api_keys``), so a revoked
or expired key's session stops at once, and roles are the key's current ones, not those it had at login. A
session lasts ``console_session_seconds`` (and never past the key's own expiry). Logout clears the cookie and
remembers the session's nonce in this process until it would have expired.

CSRF: every POST form carries ``csrf_token``, an HMAC of the session's nonce (:func:`csrf_token`); the login form
carries one bound to a short-lived pre-login cookie. Both are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

SESSION_COOKIE = "riverbed_console"
LOGIN_COOKIE = "riverbed_console_login"
CSRF_FIELD = "csrf_token"
LOGIN_COOKIE_SECONDS = 900
MAX_COOKIE_LENGTH = 512
ROLE_AUDIT = "audit"
ROLE_REVIEW = "review"
CONSOLE_ROLES = frozenset({ROLE_AUDIT, ROLE_REVIEW})
_SESSION_LABEL = b"console-session"
_VERSION = 1
_TOKEN_PATTERN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_PROCESS_KEY = secrets.token_bytes(32)  # only when the gateway has no cursor key (an unkeyed log)
_MAX_LOGGED_OUT = 10_000


# Why a session (or a login) was refused: a short code the login page is redirected with, and what it shows.
REFUSALS = {
    "login": "not logged in",
    "malformed": "malformed session cookie: log in again",
    "forged": "session cookie not issued by this console: log in again",
    "expired": "session expired: log in again",
    "logged_out": "logged out: log in again",
    "gone": "the API key of this session no longer exists",
    "revoked": "the API key of this session was revoked",
    "key_expired": "the API key expired",
    "no_role": "this API key has neither the 'audit' nor the 'review' role",
    "invalid_key": "invalid or revoked API key",
    "empty_key": "api_key: enter an API key",
    "form_expired": "the login form expired or was not loaded from this console: log in again",
}


class SessionRefused(Exception):
    """No usable session: missing, malformed, forged, expired, logged out, or its key revoked / without a role.
    ``code`` is a key of :data:`REFUSALS`."""

    def __init__(self, code: str) -> None:
        super().__init__(REFUSALS[code])
        self.code = code
        self.reason = REFUSALS[code]


@dataclass(frozen=True)
class ConsoleSession:
    """A logged-in console user: the API key's id and current roles, and the session's CSRF nonce."""

    key_id: str
    key_name: str
    roles: frozenset[str]
    nonce: str
    expires_at: float  # Unix seconds

    @property
    def can_review(self) -> bool:
        return ROLE_REVIEW in self.roles

    @property
    def can_audit(self) -> bool:
        return ROLE_AUDIT in self.roles


def session_key_for(cursor_key: bytes | None) -> bytes:
    """The session tags' key: HMAC-SHA256(cursor key, ``b"console-session"``) (a per-process random key without one)."""
    if cursor_key is None:
        return _PROCESS_KEY
    return hmac.new(cursor_key, _SESSION_LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _tag(key: bytes, label: str, payload: str) -> str:
    return _b64(hmac.new(key, f"{label}|{payload}".encode("ascii"), hashlib.sha256).digest()[:24])


def issue_session(key: bytes, key_id: str, lifetime_seconds: float, key_expires_at: dt.datetime | None) -> str:
    """A signed session token for ``key_id`` valid for ``lifetime_seconds`` (never past the key's expiry)."""
    now = time.time()
    expires = now + lifetime_seconds
    if key_expires_at is not None:
        expires = min(expires, key_expires_at.timestamp())
    payload = _b64(json.dumps([_VERSION, key_id, int(now), int(expires), secrets.token_urlsafe(16)]).encode())
    return f"{payload}.{_tag(key, 'session', payload)}"


@dataclass(frozen=True)
class SessionToken:
    key_id: str
    issued_at: int
    expires_at: int
    nonce: str


def read_session(key: bytes, token: str | None, now: float | None = None) -> SessionToken:
    """The session a cookie names; raises :class:`SessionRefused` if it is not one this console issued and valid."""
    if not token:
        raise SessionRefused("login")
    if len(token) > MAX_COOKIE_LENGTH or not set(token) <= _TOKEN_PATTERN_CHARS or token.count(".") != 1:
        raise SessionRefused("malformed")
    payload, tag = token.split(".")
    if not hmac.compare_digest(tag, _tag(key, "session", payload)):
        raise SessionRefused("forged")
    try:
        decoded: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise SessionRefused("malformed") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 5
        or decoded[0] != _VERSION
        or not isinstance(decoded[1], str)
        or not all(isinstance(part, int) for part in decoded[2:4])
        or not isinstance(decoded[4], str)
    ):
        raise SessionRefused("malformed")
    _, key_id, issued, expires, nonce = decoded
    if (time.time() if now is None else now) >= expires:
        raise SessionRefused("expired")
    return SessionToken(key_id, issued, expires, nonce)


def csrf_token(key: bytes, nonce: str) -> str:
    """The CSRF token of the session (or pre-login cookie) with ``nonce``."""
    return _tag(key, "csrf", nonce)


def csrf_matches(key: bytes, nonce: str, presented: str | None) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(presented.encode(), csrf_token(key, nonce).encode())


def issue_login_nonce(key: bytes) -> str:
    """The pre-login cookie: a nonce with its expiry, signed (the login form's CSRF token is bound to it)."""
    payload = _b64(json.dumps([int(time.time()) + LOGIN_COOKIE_SECONDS, secrets.token_urlsafe(16)]).encode())
    return f"{payload}.{_tag(key, 'login', payload)}"


def read_login_nonce(key: bytes, cookie: str | None) -> str | None:
    """The pre-login cookie's nonce if the cookie is valid and unexpired, else None."""
    if not cookie or len(cookie) > MAX_COOKIE_LENGTH or cookie.count(".") != 1:
        return None
    payload, tag = cookie.split(".")
    if not set(cookie) <= _TOKEN_PATTERN_CHARS or not hmac.compare_digest(tag, _tag(key, "login", payload)):
        return None
    try:
        expires, nonce = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(expires, int) or not isinstance(nonce, str) or time.time() >= expires:
        return None
    return nonce


class LoggedOut:
    """Nonces of sessions logged out in this process, kept until the session would have expired (bounded)."""

    def __init__(self, capacity: int = _MAX_LOGGED_OUT) -> None:
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity

    def add(self, nonce: str, expires_at: float) -> None:
        self._prune()
        self._nonces[nonce] = expires_at
        while len(self._nonces) > self._capacity:
            self._nonces.popitem(last=False)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def _prune(self) -> None:
        now = time.time()
        for nonce in [n for n, expires in self._nonces.items() if expires <= now]:
            del self._nonces[nonce]


_SELECT_KEY = "select name, roles, revoked_at, expires_at from api_keys where key_id = %s"


async def current_key(pool: AsyncConnectionPool[Any], token: SessionToken) -> ConsoleSession:
    """The session's key as it is *now*: refused once the key is revoked, expired or holds no console role."""
    async with pool.connection(timeout=5.0) as conn:
        cur = await conn.execute(_SELECT_KEY, (token.key_id,))
        row = await cur.fetchone()
    if row is None:
        raise SessionRefused("gone")
    name, roles, revoked_at, expires_at = row
    if revoked_at is not None:
        raise SessionRefused("revoked")
    if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
        raise SessionRefused("key_expired")
    held = frozenset(roles) & CONSOLE_ROLES
    if not held:
        raise SessionRefused("no_role")
    return ConsoleSession(token.key_id, name or "", frozenset(roles), token.nonce, float(token.expires_at))
