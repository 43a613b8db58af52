"""The embedded PostgreSQL server: start, migrate, write, stop, start again on the same data and read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from serving.database_roles import DATABASE_ROLES
from serving.embedded_postgres import resolve_inference_log_dsn, start_embedded_postgres
from serving.inference_log import Durability, InferenceLogWriter, verify_chain

pytestmark = pytest.mark.timeout(120)


def test_configured_dsn_wins(tmp_path: Path) -> None:
    settings = RiverbedSettings(home=tmp_path, inference_log_dsn=SecretStr("host=db user=u dbname=x"))
    assert resolve_inference_log_dsn(settings) == ("host=db user=u dbname=x", None)
    assert not settings.embedded_postgres_dir.exists()


def test_embedded_server_keeps_rows_across_restarts(tmp_path: Path, make_record: Callable) -> None:
    settings = RiverbedSettings(home=tmp_path / "home", inference_log_dsn=None)
    records = [make_record() for _ in range(3)]

    async def write(dsn: str) -> list[Durability]:
        writer = InferenceLogWriter(dsn, settings.audit_spool_path)
        await writer.start()
        try:
            return [await writer.record(r) for r in records]
        finally:
            await writer.stop()

    began = time.perf_counter()
    dsn, embedded = resolve_inference_log_dsn(settings)
    assert embedded is not None
    try:
        assert "host=/" in dsn and "dbname=riverbed" in dsn  # a Unix socket, no TCP port
        assert asyncio.run(write(dsn)) == [Durability.COMMITTED] * 3
    finally:
        embedded.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()

    again = start_embedded_postgres(settings.embedded_postgres_dir)
    try:
        with psycopg.connect(again.dsn) as conn:
            ids = [row[0] for row in conn.execute("select request_id from inference_log order by seq")]
        assert ids == [r.request_id for r in records]
        assert verify_chain(again.dsn).ok
    finally:
        again.stop()
        again.stop()  # idempotent
    assert time.perf_counter() - began < 30


def test_embedded_server_gives_each_component_its_least_privileged_role(tmp_path: Path, make_record: Callable) -> None:
    settings = RiverbedSettings(home=tmp_path / "home", inference_log_dsn=None)
    gateway_dsn, embedded = resolve_inference_log_dsn(settings, role="gateway")
    assert embedded is not None
    try:
        assert gateway_dsn == embedded.dsn_for("gateway")
        assert "user=riverbed_gateway_login" in gateway_dsn and "password" not in gateway_dsn  # socket, trust
        assert embedded.dsn_for("admin") == embedded.dsn and "user=postgres" in embedded.dsn
        for role in DATABASE_ROLES:
            assert f"user=riverbed_{role}_login" in embedded.dsn_for(role)
        with pytest.raises(ValueError, match="no role"):
            embedded.dsn_for("root")  # type: ignore[arg-type]

        # Already migrated by the start: the gateway's own (no-op) migration run and its writes succeed.
        writer = InferenceLogWriter(gateway_dsn, settings.audit_spool_path)

        async def write() -> list[Durability]:
            await writer.start()
            try:
                return [await writer.record(make_record()) for _ in range(2)]
            finally:
                await writer.stop()

        assert asyncio.run(write()) == [Durability.COMMITTED] * 2
        with psycopg.connect(gateway_dsn, autocommit=True) as conn:
            for statement in (
                "update inference_log set error = 'x'",
                "delete from inference_log",
                "delete from api_keys",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        created = create_api_key(embedded.dsn_for("owner"), ["predict"])  # key administration: the owner
        with psycopg.connect(embedded.dsn_for("auditor")) as conn:
            assert conn.execute("select key_id from api_keys").fetchall() == [(created.key_id,)]
        assert verify_chain(embedded.dsn_for("auditor")).ok
    finally:
        embedded.stop()
