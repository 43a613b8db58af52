"""API keys: only hashes are stored; authentication by key, with roles, refusing wrong and revoked keys."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from serving.api_keys import ApiKeyAuthenticator, create_api_key, list_api_keys, revoke_api_key

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def pool(migrated_dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(migrated_dsn, min_size=1, max_size=2, open=False) as opened:
        await opened.open(wait=True, timeout=10)
        yield opened


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
async def test_authenticate_right_wrong_and_revoked_keys(migrated_dsn: str, pool: AsyncConnectionPool) -> None:
    predictor = create_api_key(migrated_dsn, ["predict"], name="app")
    auditor = create_api_key(migrated_dsn, ["audit"], name="auditor")
    auth = ApiKeyAuthenticator(pool, ttl_seconds=60)

    key = await auth.authenticate(predictor.key)
    assert key is not None
    assert (key.key_id, key.name, key.roles) == (predictor.key_id, "app", frozenset({"predict"}))
    assert (await auth.authenticate(auditor.key)).roles == frozenset({"audit"})

    wrong_secret = predictor.key[:-4] + ("AAAA" if not predictor.key.endswith("AAAA") else "BBBB")
    assert await auth.authenticate(wrong_secret) is None
    assert await auth.authenticate(f"rb_{auditor.key_id}_{predictor.key.split('_', 2)[2]}") is None
    for malformed in ("", "rb_", "Bearer x", "rb__secret", "xx_" + predictor.key[3:], "rb_unknownid_secret"):
        assert await auth.authenticate(malformed) is None

    assert revoke_api_key(migrated_dsn, predictor.key_id)
    assert await auth.authenticate(predictor.key) is not None  # still cached within the TTL
    auth.invalidate(predictor.key_id)
    assert await auth.authenticate(predictor.key) is None
    assert not revoke_api_key(migrated_dsn, "no-such-key")

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
