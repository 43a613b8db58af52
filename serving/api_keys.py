"""Gateway API keys: ``rb_<key_id>_<secret>``, stored only as the sha256 of the whole key, with roles and an
optional expiry.

Roles: ``predict`` (call the prediction routes), ``audit`` (read the inference log) and ``review`` (human
oversight: flag, override, suspend / resume, approve / reject; see :mod:`serving.oversight`).

Administration (:func:`create_api_key`, :func:`revoke_api_key`, :func:`list_api_keys`) needs a DSN that may write
``api_keys`` (the ``riverbed_owner`` role or a superuser); the gateway's role only reads it.

How the gateway checks keys (:class:`ApiKeyAuthenticator`)
----------------------------------------------------------
* **Revocation is pushed.** Every change of an ``api_keys`` row (revoked, expiry changed, created, deleted) sends
  ``NOTIFY riverbed_api_keys, '<key_id>'`` from a trigger, in the same transaction, whatever tool made the change
  (migration 0006). :meth:`ApiKeyAuthenticator.start` runs a listener on a dedicated connection that drops the
  cached entry on each notification, so a revoked key is refused by every gateway process within about a second.
  The listener pings the server every ``ping_interval`` seconds and reconnects with backoff. On every (re)connect
  it re-reads every cached key at once: a revocation made while it was disconnected is honoured as soon as it is
  back.
* **Cache.** Only verified keys (the presented secret matched the stored hash, not revoked, not expired) enter the
  positive cache, an LRU of at most ``max_cached_keys`` entries; a wrong secret for a cached key id is refused
  without touching the cache. Refusals (unknown, revoked or expired key ids) go to a separate, smaller LRU with a
  short lifetime, so a flood of made-up keys can neither evict a valid key nor grow memory without bound. With the
  database reachable, a cached key is trusted without re-reading its row for at most ``ttl_seconds``
  (``api_key_cache_seconds``), and only while the listener is connected and has been since the key was verified;
  otherwise it is re-read on every use. Without a listener (``start`` not called) a cached key is re-read every
  ``ttl_seconds`` (polling).
* **Expiry** is checked against the clock on every request, cached or not: an expired key is refused with
  "key expired" (only when the presented secret is right; otherwise it is just an invalid key).
* **Fail closed while the key store is unreachable.** A request whose key cannot be re-read is answered from the
  cache only if no revocation of that key can have been missed:

  1. the listener was running and the entry was verified during its current connection (so every notification
     sent after the verification was either received, which removed the entry, or lost with the connection), and
  2. the listener heard from the server (notification or ping) at most ``max_disconnected_seconds`` ago (default:
     ``ttl_seconds``), which bounds how long a revocation made after the connection died can go unnoticed.

  Otherwise :class:`KeyStoreUnavailableError` (503 "cannot verify keys: the key store is unreachable"). A key
  already known to be refused stays refused (401) during an outage; an unknown key id cannot be checked (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import inspect
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from serving.notify_listener import NotifyListener

logger = logging.getLogger(__name__)

ROLES = frozenset({"predict", "audit", "review"})
KEY_PREFIX = "rb"
NOTIFY_CHANNEL = "riverbed_api_keys"
CACHE_TTL_SECONDS = 30.0  # RiverbedSettings.api_key_cache_seconds' default
MAX_CACHED_KEYS = 10_000
MAX_CACHED_REFUSALS = 4_096
REFUSAL_TTL_SECONDS = 5.0
INVALID_KEY_MESSAGE = "invalid or revoked API key"
EXPIRED_KEY_MESSAGE = "key expired"
UNVERIFIABLE_MESSAGE = "cannot verify keys: the key store is unreachable"

_SELECT_KEY = "select key_id, name, roles, key_hash, revoked_at, expires_at from api_keys"


# ---------------------------------------------------------------------------------------------- errors
class ApiKeyRefused(Exception):
    """The presented key is not valid (answer 401 with :attr:`message`)."""

    status_code = 401

    def __init__(self, message: str = INVALID_KEY_MESSAGE) -> None:
        super().__init__(message)
        self.message = message


class KeyExpiredError(ApiKeyRefused):
    """The key is right but past its ``expires_at`` (401 "key expired")."""

    def __init__(self) -> None:
        super().__init__(EXPIRED_KEY_MESSAGE)


class KeyStoreUnavailableError(RuntimeError):
    """The key cannot be verified: the database is unreachable and the cache may not vouch for it (503)."""

    status_code = 503

    def __init__(self, message: str = UNVERIFIABLE_MESSAGE) -> None:
        super().__init__(message)
        self.message = message


class UnknownKeyError(LookupError):
    """No API key has this id (raised by :func:`revoke_api_key`)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r}")
        self.key_id = key_id


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is shown once and never stored."""

    key_id: str
    key: str
    roles: frozenset[str]
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller."""

    key_id: str
    name: str
    roles: frozenset[str]
    expires_at: dt.datetime | None = None


class KeyStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass
class ApiKeyInfo:
    """A stored key as listed (never the key itself)."""

    key_id: str
    name: str
    roles: frozenset[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None = None

    def status(self, now: dt.datetime | None = None) -> KeyStatus:
        if self.revoked_at is not None:
            return KeyStatus.REVOKED
        if _is_expired(self.expires_at, now):
            return KeyStatus.EXPIRED
        return KeyStatus.ACTIVE


@dataclass(frozen=True)
class Revocation:
    """What :func:`revoke_api_key` did: ``already_revoked`` if the key was revoked before (nothing changed)."""

    key_id: str
    revoked_at: dt.datetime
    already_revoked: bool


# ---------------------------------------------------------------------------------------------- helpers
def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    if isinstance(roles, str):
        raise ValueError(f"roles: expected a list of roles, got the string {roles!r}")
    roles = list(roles)
    if not roles:
        raise ValueError(f"roles: at least one role is needed ({', '.join(sorted(ROLES))})")
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown: use {', '.join(sorted(ROLES))}")
    return frozenset(roles)


def _is_expired(expires_at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    return expires_at is not None and expires_at <= (now or dt.datetime.now(dt.UTC))


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An expiry from the command line: a duration from now (``90d``, ``12h``, ``30m``, ``2w``) or an ISO 8601
    time (UTC when it has no offset; a date alone means its midnight UTC). Raises ValueError."""
    now = now or dt.datetime.now(dt.UTC)
    if match := _DURATION.match(text):
        return now + dt.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90d, 12h, 30m, 2w) nor an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------- administration
def create_api_key(dsn: str, roles: list[str], name: str = "", expires_at: dt.datetime | None = None) -> CreatedKey:
    """Create and store a key with ``roles`` (a non-empty subset of :data:`ROLES`) that expires at
    ``expires_at`` (timezone-aware, in the future; None: never); returns it once."""
    wanted = _check_roles(roles)
    if expires_at is not None:
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ValueError("expires_at must be timezone-aware (e.g. datetime.now(UTC) + timedelta(days=90))")
        if _is_expired(expires_at):
            raise ValueError(f"expires_at {expires_at.isoformat()} is in the past")
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute(
            "insert into api_keys (key_id, name, roles, key_hash, created_at, expires_at) "
            "values (%s, %s, %s, %s, now(), %s)",
            (key_id, name, sorted(wanted), hash_key(key), expires_at),
        )
    logger.info(
        "created API key %s (%s) with roles %s%s",
        key_id,
        name or "unnamed",
        sorted(wanted),
        f", expiring {expires_at.isoformat()}" if expires_at else "",
    )
    return CreatedKey(key_id=key_id, key=key, roles=wanted, expires_at=expires_at)


def revoke_api_key(dsn: str, key_id: str) -> Revocation:
    """Revoke a key; raises :class:`UnknownKeyError` if no key has this id.

    Idempotent: revoking a revoked key changes nothing and says so (``already_revoked``). The revocation's NOTIFY
    (a trigger) reaches every listening gateway at commit; they refuse the key within about a second.
    """
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("select revoked_at from api_keys where key_id = %s for update", (key_id,)).fetchone()
        if row is None:
            logger.warning("no API key %s to revoke", key_id)
            raise UnknownKeyError(key_id)
        if row[0] is not None:
            logger.info("API key %s was already revoked at %s", key_id, row[0].isoformat())
            return Revocation(key_id=key_id, revoked_at=row[0], already_revoked=True)
        updated = conn.execute(
            "update api_keys set revoked_at = now() where key_id = %s returning revoked_at", (key_id,)
        ).fetchone()
    assert updated is not None  # the row is locked
    logger.info("revoked API key %s", key_id)
    return Revocation(key_id=key_id, revoked_at=updated[0], already_revoked=False)


def list_api_keys(dsn: str) -> list[ApiKeyInfo]:
    """Every stored key with its expiry, oldest first."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "select key_id, name, roles, created_at, revoked_at, expires_at from api_keys order by created_at, key_id"
        ).fetchall()
    return [
        ApiKeyInfo(key_id=r[0], name=r[1], roles=frozenset(r[2]), created_at=r[3], revoked_at=r[4], expires_at=r[5])
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------- authenticator
@dataclass(frozen=True)
class _Verified:
    """A key whose secret was seen to match its stored hash, valid when read."""

    key: ApiKey
    key_hash: str
    verified_at: float  # monotonic
    session: int  # listener connection it was verified during (0: none; not usable during an outage)


@dataclass(frozen=True)
class _Refusal:
    """A key id known to be refused: no such key (``key_hash`` None), revoked, or expired."""

    key_hash: str | None
    expired: bool
    fetched: float  # monotonic

    def error(self, presented: str) -> ApiKeyRefused:
        if self.expired and self.key_hash is not None and hmac.compare_digest(presented, self.key_hash):
            return KeyExpiredError()
        return ApiKeyRefused()


class ApiKeyAuthenticator:
    """Checks bearer tokens against the stored hashes; see the module docstring for the caching and outage rules.

    ``pool`` is used for key lookups (at most ``max_concurrent_lookups`` at once, so a flood of made-up keys cannot
    take the pool from the inference-log writer); the listener opens its own connection to the pool's database
    (or to ``listen_conninfo``). ``database_down`` (e.g. the inference-log writer's degraded flag) lets a request
    whose key is cached skip a lookup that would only time out.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        ttl_seconds: float = CACHE_TTL_SECONDS,
        database_down: Callable[[], bool] | None = None,
        lookup_timeout: float = 1.0,
        max_cached_keys: int = MAX_CACHED_KEYS,
        max_cached_refusals: int = MAX_CACHED_REFUSALS,
        refusal_ttl_seconds: float = REFUSAL_TTL_SECONDS,
        max_disconnected_seconds: float | None = None,
        max_concurrent_lookups: int = 4,
        ping_interval: float | None = None,
        listen_conninfo: str | None = None,
        reconnect_delay: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        if max_cached_keys < 1 or max_cached_refusals < 1 or max_concurrent_lookups < 1:
            raise ValueError("cache sizes and max_concurrent_lookups must be at least 1")
        self._pool = pool
        self._ttl = ttl_seconds
        self._database_down = database_down or (lambda: False)
        self._lookup_timeout = lookup_timeout
        self._max_keys = max_cached_keys
        self._max_refusals = max_cached_refusals
        self._refusal_ttl = min(refusal_ttl_seconds, ttl_seconds)
        self._max_disconnected = ttl_seconds if max_disconnected_seconds is None else max_disconnected_seconds
        self._ping_interval = ping_interval or max(0.5, min(5.0, self._max_disconnected / 3))
        self._listen_conninfo = listen_conninfo
        self._reconnect_delay = reconnect_delay
        self._lookup_slots = asyncio.Semaphore(max_concurrent_lookups)
        self._keys: OrderedDict[str, _Verified] = OrderedDict()
        self._refusals: OrderedDict[str, _Refusal] = OrderedDict()
        # Listener state: ``_session`` counts connections (0: never connected); ``_last_contact`` is when the
        # server was last heard from; ``_notifications`` counts notifications (a lookup racing one is not cached).
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._listening_event: asyncio.Event | None = None
        self._session = 0
        self._last_contact: float | None = None
        self._notifications = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the revocation listener (returns at once; it connects, and reconnects, in the background)."""
        if self._task is not None:
            return
        self._listening_event = asyncio.Event()
        listener = NotifyListener(
            channel=NOTIFY_CHANNEL,
            application_name="riverbed-api-key-listener",
            label="API-key listener",
            conninfo=self._conninfo,
            log=logger,
            connect_timeout=max(1, round(self._lookup_timeout * 2)),
            ping_interval=self._ping_interval,
            reconnect_delay=self._reconnect_delay,
            on_connect=self._on_connect,
            on_notify=self._on_notify,
            on_ping=self._on_ping,
            on_disconnect=lambda: self._set_listening(False),
        )
        self._task = asyncio.create_task(listener.run(), name="api-key-listener")

    async def stop(self) -> None:
        """Stop the listener; cached keys are then re-read every ``ttl_seconds`` and never vouched for in an
        outage."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._set_listening(False)

    async def wait_listening(self, seconds: float) -> bool:
        """Wait until the listener is connected (True) or ``seconds`` pass (False)."""
        if self._listening_event is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._listening_event.wait()
        return self._listening

    @property
    def listening(self) -> bool:
        """Whether the revocation listener is connected now (for readiness and metrics)."""
        return self._listening

    @property
    def cached_keys(self) -> int:
        return len(self._keys)

    @property
    def cached_refusals(self) -> int:
        return len(self._refusals)

    # ------------------------------------------------------------------------------------------ checks
    async def verify(self, token: str) -> ApiKey:
        """The key's identity and roles.

        Raises :class:`ApiKeyRefused` (401: malformed, unknown, wrong secret or revoked; :class:`KeyExpiredError`
        for a right but expired key) or :class:`KeyStoreUnavailableError` (503: cannot be checked now).
        """
        key_id = _key_id_of(token)
        if key_id is None:
            raise ApiKeyRefused()
        presented = hash_key(token)
        now = time.monotonic()
        entry = self._keys.get(key_id)
        if entry is not None:
            if not hmac.compare_digest(presented, entry.key_hash):
                raise ApiKeyRefused()
            if _is_expired(entry.key.expires_at):
                self._keys.pop(key_id, None)
                self._refuse(key_id, _Refusal(entry.key_hash, expired=True, fetched=now))
                raise KeyExpiredError()
            if self._trusted(entry, now):
                self._keys.move_to_end(key_id)
                return entry.key
            if self._database_down() and self._may_vouch(entry, now):
                return entry.key  # the database is known to be down: skip a lookup that would time out
        else:
            refusal = self._refusals.get(key_id)
            if refusal is not None:
                if now - refusal.fetched <= self._refusal_ttl:
                    raise refusal.error(presented)
                self._refusals.pop(key_id, None)

        session, notifications = (self._session if self._listening else 0), self._notifications
        try:
            row = await self._lookup(key_id)
        except (psycopg.Error, OSError, TimeoutError) as error:
            if entry is not None:
                return self._vouch(key_id, entry, now, f"{type(error).__name__}: {error}")
            logger.warning("cannot verify API key %s: %s: %s", key_id, type(error).__name__, error)
            raise KeyStoreUnavailableError() from error
        return self._settle(key_id, presented, row, session, notifications)

    async def authenticate(self, token: str) -> ApiKey | None:
        """:meth:`verify`, with every refusal (401) as None; :class:`KeyStoreUnavailableError` still raises."""
        try:
            return await self.verify(token)
        except ApiKeyRefused:
            return None

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget cached keys and refusals (one key id, or all)."""
        if key_id is None:
            self._keys.clear()
            self._refusals.clear()
        else:
            self._keys.pop(key_id, None)
            self._refusals.pop(key_id, None)

    # ------------------------------------------------------------------------------------------ cache rules
    def _trusted(self, entry: _Verified, now: float) -> bool:
        """May ``entry`` be used without re-reading its row (database reachable)?"""
        if now - entry.verified_at > self._ttl:
            return False
        if self._task is None:
            return True  # no listener: plain polling every ttl
        return entry.session == self._session and self._listener_healthy(now)

    def _listener_healthy(self, now: float) -> bool:
        """Connected, and heard from the server within two ping intervals (a stuck ping does not count)."""
        contact = self._last_contact
        return self._listening and contact is not None and now - contact <= 2 * self._ping_interval + 1.0

    def _may_vouch(self, entry: _Verified, now: float) -> bool:
        """Whether ``entry`` may stand in for its row during an outage: verified during the listener's current
        connection, which heard from the server at most ``max_disconnected_seconds`` ago (module docstring)."""
        contact = self._last_contact
        return (
            self._task is not None
            and entry.session != 0
            and entry.session == self._session
            and contact is not None
            and now - contact <= self._max_disconnected
        )

    def _vouch(self, key_id: str, entry: _Verified, now: float, why: str) -> ApiKey:
        """The cached key during an outage if no revocation can have been missed, else 503."""
        if self._may_vouch(entry, now):
            logger.debug("key store unreachable (%s); key %s vouched for by the cache", why, key_id)
            return entry.key
        logger.warning(
            "cannot verify API key %s: key store unreachable (%s) and the revocation listener %s",
            key_id,
            why,
            "is not running" if self._task is None else "may have missed a revocation",
        )
        raise KeyStoreUnavailableError()

    def _settle(self, key_id: str, presented: str, row: Any, session: int, notifications: int) -> ApiKey:
        """Answer from a freshly read row and cache the outcome."""
        now = time.monotonic()
        if row is None:
            self._keys.pop(key_id, None)
            self._refuse(key_id, _Refusal(None, expired=False, fetched=now))
            raise ApiKeyRefused()
        _, name, roles, key_hash, revoked_at, expires_at = row
        if revoked_at is not None or _is_expired(expires_at):
            self._keys.pop(key_id, None)
            refusal = _Refusal(key_hash, expired=revoked_at is None, fetched=now)
            self._refuse(key_id, refusal)
            raise refusal.error(presented)
        if not hmac.compare_digest(presented, key_hash):
            raise ApiKeyRefused()  # the right key may still be cached; this one never is
        key = ApiKey(key_id=key_id, name=name, roles=frozenset(roles), expires_at=expires_at)
        if notifications != self._notifications:
            return key  # a change was announced while reading: answer, but do not cache what may be stale
        if session != (self._session if self._listening else 0):
            session = 0  # the listener (re)connected while reading: not covered by one connection
        self._refusals.pop(key_id, None)
        self._keys[key_id] = _Verified(key=key, key_hash=key_hash, verified_at=now, session=session)
        self._keys.move_to_end(key_id)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return key

    def _refuse(self, key_id: str, refusal: _Refusal) -> None:
        self._refusals[key_id] = refusal
        self._refusals.move_to_end(key_id)
        while len(self._refusals) > self._max_refusals:
            self._refusals.popitem(last=False)

    async def _lookup(self, key_id: str) -> Any:
        async with (
            asyncio.timeout(self._lookup_timeout),
            self._lookup_slots,
            self._pool.connection(timeout=self._lookup_timeout) as conn,
        ):
            cur = await conn.execute(_SELECT_KEY + " where key_id = %s", (key_id,))
            return await cur.fetchone()

    # ------------------------------------------------------------------------------------------ listener
    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        if self._listening_event is not None:
            if listening:
                self._listening_event.set()
            else:
                self._listening_event.clear()

    def _on_notification(self, payload: str) -> None:
        self._notifications += 1
        self._last_contact = time.monotonic()
        if payload == "*" or not payload:
            logger.info("API keys changed in bulk: forgetting every cached key")
            self.invalidate()
        else:
            logger.debug("API key %s changed: forgetting its cached entry", payload)
            self.invalidate(payload)

    async def _conninfo(self) -> tuple[str, dict[str, Any]]:
        if self._listen_conninfo is not None:
            return self._listen_conninfo, {}
        conninfo: Any = self._pool.conninfo
        kwargs: Any = self._pool.kwargs or {}
        if callable(conninfo):
            conninfo = conninfo()
            if inspect.isawaitable(conninfo):
                conninfo = await conninfo
        if callable(kwargs):
            kwargs = kwargs()
            if inspect.isawaitable(kwargs):
                kwargs = await kwargs
        return str(conninfo), dict(kwargs)

    async def _on_connect(self, conn: psycopg.AsyncConnection[Any], reconnected: bool) -> None:
        """A new listener connection (LISTEN active): count the session, then re-read every cached key."""
        self._session += 1
        self._last_contact = time.monotonic()
        self._set_listening(True)
        if reconnected or self._session > 1:
            logger.info("API-key listener connected again: re-validating %d cached keys", len(self._keys))
        await self._revalidate(conn)

    async def _on_notify(self, payload: str) -> None:
        self._on_notification(payload)

    def _on_ping(self) -> None:
        self._last_contact = time.monotonic()

    async def _revalidate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Re-read every cached key (after a (re)connect, LISTEN already active): drop the revoked, expired or
        deleted ones, and mark the others as verified during this connection."""
        snapshot = dict(self._keys)
        if not snapshot:
            return
        session = self._session
        rows: dict[str, Any] = {}
        ids = list(snapshot)
        for start in range(0, len(ids), 1000):
            cur = await conn.execute(_SELECT_KEY + " where key_id = any(%s)", (ids[start : start + 1000],))
            rows.update((row[0], row) for row in await cur.fetchall())
        now = time.monotonic()
        dropped = 0
        for key_id, entry in snapshot.items():
            if self._keys.get(key_id) is not entry:
                continue  # replaced or dropped meanwhile
            row = rows.get(key_id)
            if row is None or row[4] is not None or _is_expired(row[5]) or row[3] != entry.key_hash:
                self._keys.pop(key_id, None)
                dropped += 1
                continue
            key = ApiKey(key_id=key_id, name=row[1], roles=frozenset(row[2]), expires_at=row[5])
            self._keys[key_id] = _Verified(key=key, key_hash=entry.key_hash, verified_at=now, session=session)
        if dropped:
            logger.info("API-key listener: %d cached keys were revoked, expired or deleted meanwhile", dropped)
