"""API keys: only hashes are stored; authentication by key, with roles and expiry; revocation pushed to every
gateway process (LISTEN/NOTIFY); fail closed while the key store is unreachable; a bounded cache."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from serving.api_keys import (
    ApiKeyAuthenticator,
    ApiKeyRefused,
    KeyExpiredError,
    KeyStatus,
    KeyStoreUnavailableError,
    UnknownKeyError,
    create_api_key,
    hash_key,
    list_api_keys,
    parse_expiry,
    revoke_api_key,
)
from tests.serving.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.timeout(120)


async def open_pool(dsn: str) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False, kwargs={"connect_timeout": 2}, timeout=2)
    await pool.open(wait=True, timeout=10)
    return pool


@pytest_asyncio.fixture
async def pool(migrated_dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    opened = await open_pool(migrated_dsn)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    """A TCP proxy to the machine's PostgreSQL that the test can cut and restore."""
    started = CuttableProxy()
    started.up()
    yield started
    started.down()


async def eventually(check: Callable[[], Awaitable[bool]], within: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` is true; fails after ``within`` seconds."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < within, f"not within {within} s"
        await asyncio.sleep(step)
    return time.monotonic() - began


async def refused(auth: ApiKeyAuthenticator, key: str) -> bool:
    try:
        await auth.verify(key)
    except ApiKeyRefused:
        return True
    return False


# ---------------------------------------------------------------------------------------------- storage
def test_only_the_hash_is_stored(migrated_dsn: str) -> None:
    created = create_api_key(migrated_dsn, ["predict", "audit"], name="ci")
    assert created.key.startswith(f"rb_{created.key_id}_")
    assert len(created.key) > 50
    assert created.roles == frozenset({"predict", "audit"})
    with psycopg.connect(migrated_dsn) as conn:
        stored = conn.execute("select * from api_keys").fetchall()
    assert len(stored) == 1
    assert not any(created.key in str(value) for value in stored[0])
    secret = created.key.split("_", 2)[2]
    assert not any(secret in str(value) for value in stored[0])
    with psycopg.connect(migrated_dsn) as conn:
        (key_hash,) = conn.execute("select key_hash from api_keys").fetchone()
    assert key_hash == hashlib.sha256(created.key.encode()).hexdigest()


@pytest.mark.parametrize(("roles", "named"), [(["predict", "admin"], "admin"), ([], "role"), (["Audit"], "Audit")])
def test_bad_roles_are_refused(migrated_dsn: str, roles: list[str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        create_api_key(migrated_dsn, roles)
    assert list_api_keys(migrated_dsn) == []


@pytest.mark.asyncio
async def test_review_role_is_allowed_and_grants_only_itself(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    created = create_api_key(migrated_dsn, ["review"], name="console")
    key = await ApiKeyAuthenticator(pool).verify(created.key)
    assert key.roles == frozenset({"review"})
    assert key.roles.isdisjoint({"predict", "audit"})  # what the gateway's predict and audit routes require


def test_revoke_unknown_raises_and_revoking_twice_says_already_revoked(migrated_dsn: str) -> None:
    with pytest.raises(UnknownKeyError, match="no-such-key"):
        revoke_api_key(migrated_dsn, "no-such-key")
    created = create_api_key(migrated_dsn, ["predict"])
    first = revoke_api_key(migrated_dsn, created.key_id)
    assert not first.already_revoked and first.key_id == created.key_id
    second = revoke_api_key(migrated_dsn, created.key_id)
    assert second.already_revoked and second.revoked_at == first.revoked_at
    (listed,) = list_api_keys(migrated_dsn)
    assert listed.revoked_at == first.revoked_at and listed.status() is KeyStatus.REVOKED


@pytest.mark.asyncio
async def test_authenticate_right_wrong_and_revoked_keys(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    predictor = create_api_key(migrated_dsn, ["predict"], name="app")
    auditor = create_api_key(migrated_dsn, ["audit"], name="auditor")
    auth = ApiKeyAuthenticator(pool, ttl_seconds=60)  # not started: polling every ttl

    key = await auth.authenticate(predictor.key)
    assert key is not None
    assert (key.key_id, key.name, key.roles) == (predictor.key_id, "app", frozenset({"predict"}))
    assert (await auth.authenticate(auditor.key)).roles == frozenset({"audit"})

    wrong_secret = predictor.key[:-4] + ("AAAA" if not predictor.key.endswith("AAAA") else "BBBB")
    assert await auth.authenticate(wrong_secret) is None
    assert await auth.authenticate(f"rb_{auditor.key_id}_{predictor.key.split('_', 2)[2]}") is None
    for malformed in ("", "rb_", "Bearer x", "rb__secret", "xx_" + predictor.key[3:], "rb_unknownid_secret"):
        assert await auth.authenticate(malformed) is None
    with pytest.raises(ApiKeyRefused, match="invalid or revoked API key"):
        await auth.verify(wrong_secret)

    assert revoke_api_key(migrated_dsn, predictor.key_id)
    assert await auth.authenticate(predictor.key) is not None  # no listener: cached within the TTL
    auth.invalidate(predictor.key_id)
    assert await auth.authenticate(predictor.key) is None

    listed = {k.key_id: k for k in list_api_keys(migrated_dsn)}
    assert listed[predictor.key_id].revoked_at is not None
    assert listed[auditor.key_id].revoked_at is None
    assert listed[auditor.key_id].roles == frozenset({"audit"})


@pytest.mark.asyncio
async def test_cache_expires_after_ttl(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    auth = ApiKeyAuthenticator(pool, ttl_seconds=0.0)
    assert await auth.authenticate(created.key) is not None
    revoke_api_key(migrated_dsn, created.key_id)
    assert await auth.authenticate(created.key) is None


# ---------------------------------------------------------------------------------------------- expiry
def test_expiry_must_be_aware_and_in_the_future(migrated_dsn: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        create_api_key(migrated_dsn, ["predict"], expires_at=dt.datetime(2999, 1, 1))
    with pytest.raises(ValueError, match="in the past"):
        create_api_key(migrated_dsn, ["predict"], expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert list_api_keys(migrated_dsn) == []


def test_parse_expiry() -> None:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert parse_expiry("90d", now) == now + dt.timedelta(days=90)
    assert parse_expiry("12h", now) == now + dt.timedelta(hours=12)
    assert parse_expiry("2w", now) == now + dt.timedelta(weeks=2)
    assert parse_expiry("2026-03-01", now) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert parse_expiry("2026-03-01T10:00:00+02:00", now).utcoffset() == dt.timedelta(hours=2)
    with pytest.raises(ValueError, match="duration"):
        parse_expiry("soon", now)


@pytest.mark.asyncio
async def test_expired_key_is_refused_even_when_cached(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    created = create_api_key(migrated_dsn, ["predict"], name="temp", expires_at=expires_at)
    assert created.expires_at == expires_at
    auth = ApiKeyAuthenticator(pool, ttl_seconds=3600)
    key = await auth.verify(created.key)
    assert key.expires_at == expires_at
    (listed,) = list_api_keys(migrated_dsn)
    assert listed.expires_at == expires_at and listed.status() is KeyStatus.ACTIVE

    await asyncio.sleep(max(0.0, (expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)
    with pytest.raises(KeyExpiredError, match="key expired"):
        await auth.verify(created.key)  # cached for an hour, yet refused at its expiry
    with pytest.raises(KeyExpiredError):
        await ApiKeyAuthenticator(pool).verify(created.key)  # read from the database
    wrong = f"rb_{created.key_id}_{'x' * 43}"
    with pytest.raises(ApiKeyRefused) as refusal:
        await auth.verify(wrong)
    assert not isinstance(refusal.value, KeyExpiredError)  # only the key's holder learns it expired
    assert await auth.authenticate(created.key) is None
    (listed,) = list_api_keys(migrated_dsn)
    assert listed.status() is KeyStatus.EXPIRED


@pytest.mark.asyncio
async def test_expiry_set_in_the_database_is_pushed(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    auth = ApiKeyAuthenticator(pool, ttl_seconds=3600)
    await auth.start()
    try:
        assert await auth.wait_listening(5)
        await auth.verify(created.key)
        with psycopg.connect(migrated_dsn) as conn:  # another tool (psql) expires the key
            conn.execute("update api_keys set expires_at = now() where key_id = %s", (created.key_id,))

        async def expired() -> bool:
            try:
                await auth.verify(created.key)
            except KeyExpiredError:
                return True
            return False

        assert await eventually(expired, within=1.0) < 1.0
    finally:
        await auth.stop()


# ---------------------------------------------------------------------------------------------- push
@pytest.mark.asyncio
async def test_revocation_reaches_every_authenticator_within_a_second(migrated_dsn: str) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    other = create_api_key(migrated_dsn, ["predict"])
    pools = [await open_pool(migrated_dsn) for _ in range(2)]
    gateways = [ApiKeyAuthenticator(p, ttl_seconds=3600) for p in pools]  # the TTL alone would take an hour
    try:
        for auth in gateways:
            await auth.start()
            assert await auth.wait_listening(5)
            await auth.verify(created.key)
            await auth.verify(other.key)
        revoke_api_key(migrated_dsn, created.key_id)
        for auth in gateways:
            assert await eventually(lambda auth=auth: refused(auth, created.key), within=1.0) < 1.0
            assert (await auth.verify(other.key)).key_id == other.key_id  # the others stay cached
        # A revocation by any tool (a trigger sends the NOTIFY), not only revoke_api_key:
        with psycopg.connect(migrated_dsn) as conn:
            conn.execute("update api_keys set revoked_at = now() where key_id = %s", (other.key_id,))
        for auth in gateways:
            assert await eventually(lambda auth=auth: refused(auth, other.key), within=1.0) < 1.0
    finally:
        for auth in gateways:
            await auth.stop()
        for p in pools:
            await p.close()


@pytest.mark.asyncio
async def test_a_new_key_is_accepted_at_once_after_a_refusal(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    auth = ApiKeyAuthenticator(pool, ttl_seconds=3600)
    await auth.start()
    try:
        assert await auth.wait_listening(5)
        key_id = secrets.token_hex(8)
        token = f"rb_{key_id}_{secrets.token_urlsafe(32)}"
        assert await refused(auth, token)
        assert auth.cached_refusals == 1
        with psycopg.connect(migrated_dsn) as conn:  # created with this id after the refusal was cached
            conn.execute(
                "insert into api_keys (key_id, roles, key_hash) values (%s, %s, %s)",
                (key_id, ["predict"], hash_key(token)),
            )

        async def accepted() -> bool:
            return not await refused(auth, token)

        assert await eventually(accepted, within=1.0) < 1.0
    finally:
        await auth.stop()


# ---------------------------------------------------------------------------------------------- outages
@pytest.mark.asyncio
async def test_revoked_key_is_refused_while_the_database_is_unreachable(
    migrated_dsn: str, proxy: CuttableProxy
) -> None:
    revoked, kept = create_api_key(migrated_dsn, ["predict"]), create_api_key(migrated_dsn, ["predict"])
    proxied = proxy.dsn(migrated_dsn)
    pool = await open_pool(proxied)
    auth = ApiKeyAuthenticator(pool, ttl_seconds=60, max_disconnected_seconds=2.0, lookup_timeout=0.5)
    await auth.start()
    try:
        assert await auth.wait_listening(5)
        await auth.verify(revoked.key)
        await auth.verify(kept.key)
        revoke_api_key(migrated_dsn, revoked.key_id)
        await eventually(lambda: refused(auth, revoked.key), within=1.0)

        proxy.down()  # the gateway loses the database; the revoked key must stay refused
        with pytest.raises((ApiKeyRefused, KeyStoreUnavailableError)):
            await auth.verify(revoked.key)
        for _ in range(3):
            with pytest.raises((ApiKeyRefused, KeyStoreUnavailableError)):
                await auth.verify(revoked.key)
        # The other key was verified while the listener was connected and nothing was missed: still served.
        await eventually(lambda: asyncio.sleep(0, result=not auth.listening), within=5.0)
        assert (await auth.verify(kept.key)).key_id == kept.key_id
        # Past max_disconnected_seconds a revocation could have been missed: 503, not the cached answer.
        await asyncio.sleep(2.2)
        with pytest.raises(KeyStoreUnavailableError, match="cannot verify keys: the key store is unreachable"):
            await auth.verify(kept.key)
    finally:
        await auth.stop()
        await pool.close()


@pytest.mark.asyncio
async def test_revocation_made_during_an_outage_is_honoured_on_reconnect(
    migrated_dsn: str, proxy: CuttableProxy
) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    proxied = proxy.dsn(migrated_dsn)
    pool = await open_pool(proxied)
    auth = ApiKeyAuthenticator(
        pool, ttl_seconds=3600, max_disconnected_seconds=30, lookup_timeout=0.5, reconnect_delay=(0.05, 0.2)
    )
    await auth.start()
    try:
        assert await auth.wait_listening(5)
        await auth.verify(created.key)
        proxy.down()
        await eventually(lambda: asyncio.sleep(0, result=not auth.listening), within=5.0)
        revoke_api_key(migrated_dsn, created.key_id)  # the gateway cannot hear this NOTIFY
        assert (await auth.verify(created.key)).key_id == created.key_id  # within max_disconnected_seconds
        proxy.up()
        assert await auth.wait_listening(10)
        # Re-validated on reconnect (not after the hour-long TTL): refused at once.
        await eventually(lambda: refused(auth, created.key), within=1.0)
    finally:
        await auth.stop()
        await pool.close()


@pytest.mark.asyncio
async def test_without_a_listener_an_outage_fails_closed(migrated_dsn: str, proxy: CuttableProxy) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    pool = await open_pool(proxy.dsn(migrated_dsn))
    auth = ApiKeyAuthenticator(pool, ttl_seconds=0.0, lookup_timeout=0.5)  # never started
    try:
        await auth.verify(created.key)
        proxy.down()
        with pytest.raises(KeyStoreUnavailableError):
            await auth.verify(created.key)
        with pytest.raises(KeyStoreUnavailableError):
            await auth.verify(f"rb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}")  # unknown: cannot check
    finally:
        await pool.close()


@pytest.mark.asyncio
async def test_degraded_flag_uses_the_cache_under_the_same_rule(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    down = False
    auth = ApiKeyAuthenticator(pool, ttl_seconds=0.0, max_disconnected_seconds=5, database_down=lambda: down)
    await auth.start()
    try:
        assert await auth.wait_listening(5)
        await auth.verify(created.key)
        down = True  # e.g. the inference-log writer is degraded: no lookup, the listener vouches
        assert (await auth.verify(created.key)).key_id == created.key_id
        revoke_api_key(migrated_dsn, created.key_id)
        await eventually(lambda: refused(auth, created.key), within=1.0)
    finally:
        await auth.stop()


# ---------------------------------------------------------------------------------------------- bounds
@pytest.mark.asyncio
async def test_a_flood_of_random_keys_neither_evicts_a_valid_key_nor_grows_the_cache(
    migrated_dsn: str, pool: AsyncConnectionPool
) -> None:
    created = create_api_key(migrated_dsn, ["predict"])
    auth = ApiKeyAuthenticator(pool, ttl_seconds=3600, max_cached_keys=100, max_cached_refusals=256)
    await auth.verify(created.key)
    for _ in range(10_000):
        token = f"rb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        with pytest.raises(ApiKeyRefused):
            await auth.verify(token)
    assert auth.cached_keys == 1
    assert auth.cached_refusals == 256
    for _ in range(1000):  # wrong secrets for the valid id: refused from the cache, nothing added
        assert await refused(auth, f"rb_{created.key_id}_{secrets.token_urlsafe(32)}")
    assert auth.cached_keys == 1
    await pool.close()  # still served: from the cache, with no database at all
    assert (await auth.verify(created.key)).key_id == created.key_id


@pytest.mark.asyncio
async def test_the_cache_of_valid_keys_is_a_bounded_lru(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    tokens = {}
    with psycopg.connect(migrated_dsn) as conn:
        for _ in range(30):
            key_id = secrets.token_hex(8)
            tokens[key_id] = f"rb_{key_id}_{secrets.token_urlsafe(32)}"
            conn.execute(
                "insert into api_keys (key_id, roles, key_hash) values (%s, %s, %s)",
                (key_id, ["predict"], hash_key(tokens[key_id])),
            )
    auth = ApiKeyAuthenticator(pool, ttl_seconds=3600, max_cached_keys=10)
    first = next(iter(tokens.values()))
    for token in tokens.values():
        await auth.verify(token)
        await auth.verify(first)  # used all along: never the least recently used
        assert auth.cached_keys <= 10
    assert auth.cached_keys == 10
    await pool.close()
    assert (await auth.verify(first)).key_id == first.split("_")[1]
