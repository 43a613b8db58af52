"""Gateway API keys: ``rb_<key_id>_<secret>``, stored only as the sha256 of the whole key, with roles.

Roles: ``predict`` (call the prediction routes) and ``audit`` (read the inference log).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

logger = logging.getLogger(__name__)

ROLES = frozenset({"predict", "audit"})
KEY_PREFIX = "rb"
CACHE_TTL_SECONDS = 5.0
_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is shown once and never stored."""

    key_id: str
    key: str
    roles: frozenset[str]


@dataclass(frozen=True)
class ApiKey:
    """An authenticated caller."""

    key_id: str
    name: str
    roles: frozenset[str]


@dataclass
class ApiKeyInfo:
    """A stored key as listed (never the key itself)."""

    key_id: str
    name: str
    roles: frozenset[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def _check_roles(roles: list[str] | set[str] | frozenset[str]) -> frozenset[str]:
    if isinstance(roles, str):
        raise ValueError(f"roles: expected a list of roles, got the string {roles!r}")
    if not roles:
        raise ValueError(f"roles: at least one role is needed ({', '.join(sorted(ROLES))})")
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown: use {', '.join(sorted(ROLES))}")
    return frozenset(roles)


def create_api_key(dsn: str, roles: list[str], name: str = "") -> CreatedKey:
    """Create and store a key with ``roles`` (a non-empty subset of predict, audit); returns it once."""
    wanted = _check_roles(roles)
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute(
            "insert into api_keys (key_id, name, roles, key_hash, created_at) values (%s, %s, %s, %s, now())",
            (key_id, name, sorted(wanted), hash_key(key)),
        )
    logger.info("created API key %s (%s) with roles %s", key_id, name or "unnamed", sorted(wanted))
    return CreatedKey(key_id=key_id, key=key, roles=wanted)


def revoke_api_key(dsn: str, key_id: str) -> bool:
    """Revoke a key (idempotent); False if no such key exists. Gateways refuse it within the cache TTL."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        found = conn.execute(
            "update api_keys set revoked_at = coalesce(revoked_at, now()) where key_id = %s returning key_id",
            (key_id,),
        ).fetchone()
    if found is None:
        logger.warning("no API key %s to revoke", key_id)
        return False
    logger.info("revoked API key %s", key_id)
    return True


def list_api_keys(dsn: str) -> list[ApiKeyInfo]:
    """Every stored key, oldest first."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "select key_id, name, roles, created_at, revoked_at from api_keys order by created_at, key_id"
        ).fetchall()
    return [ApiKeyInfo(key_id=r[0], name=r[1], roles=frozenset(r[2]), created_at=r[3], revoked_at=r[4]) for r in rows]


@dataclass(frozen=True)
class _Entry:
    key_hash: str | None  # None: no usable key with this id (unknown or revoked)
    key: ApiKey | None
    fetched: float


class ApiKeyAuthenticator:
    """Checks bearer tokens against the stored hashes, caching each key id's row for a few seconds."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        ttl_seconds: float = CACHE_TTL_SECONDS,
        database_down: Callable[[], bool] | None = None,
        lookup_timeout: float = 1.0,
    ) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._cache: dict[str, _Entry] = {}
        self._database_down = database_down or (lambda: False)
        self._lookup_timeout = lookup_timeout

    async def authenticate(self, token: str) -> ApiKey | None:
        """The key's identity and roles, or None for a malformed, unknown, wrong or revoked key."""
        key_id = _key_id_of(token)
        if key_id is None:
            return None
        entry = self._cache.get(key_id)
        now = time.monotonic()
        if entry is None or now - entry.fetched > self._ttl:
            if entry is not None and self._database_down():
                pass  # keep serving with the last known row while the database is unreachable
            else:
                try:
                    entry = await self._load(key_id, now)
                except (psycopg.OperationalError, PoolTimeout):
                    if entry is None:
                        raise
                    logger.warning("key store unreachable; using the cached row of key %s", key_id)
        presented = hash_key(token)
        expected = entry.key_hash if entry.key_hash is not None else "0" * 64
        if not hmac.compare_digest(presented, expected) or entry.key is None:
            return None
        return entry.key

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget cached rows (one key id, or all)."""
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)

    async def _load(self, key_id: str, now: float) -> _Entry:
        async with self._pool.connection(timeout=self._lookup_timeout) as conn:
            cur = await conn.execute(
                "select name, roles, key_hash, revoked_at from api_keys where key_id = %s", (key_id,)
            )
            row: Any = await cur.fetchone()
        if row is None or row[3] is not None:
            entry = _Entry(key_hash=None, key=None, fetched=now)
        else:
            entry = _Entry(
                key_hash=row[2], key=ApiKey(key_id=key_id, name=row[0], roles=frozenset(row[1])), fetched=now
            )
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key_id] = entry
        return entry
