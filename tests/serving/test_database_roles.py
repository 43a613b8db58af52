"""Least-privilege roles of the inference-log database (migration 0006 + serving.database_roles): the gateway
appends and advances the chain but can never change or remove a row; the auditor only reads; the pipeline writes
labels and monitoring results; inference_log is append-only for everyone outside owner maintenance."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from riverbed.inference_log_schema import MIGRATIONS_DIR, apply_migrations
from serving.api_keys import create_api_key, revoke_api_key
from serving.database_roles import (
    DATABASE_ROLES,
    GROUP_ROLES,
    LOGIN_ROLES,
    provision_login_roles,
    role_dsn,
)
from serving.inference_log import Durability, InferenceLogWriter, verify_chain
from tests.scratch_postgres import create_database, drop_database

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {role: f"pw-{role}-not-logged" for role in DATABASE_ROLES}
REFUSED = (errors.InsufficientPrivilege,)


@pytest.fixture
def dsns(migrated_dsn: str, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    caplog.set_level(logging.DEBUG)
    provisioned = provision_login_roles(migrated_dsn, PASSWORDS)
    assert set(provisioned) == set(DATABASE_ROLES)
    for role, password in PASSWORDS.items():
        assert password in provisioned[role]  # the DSN carries it ...
        assert password not in caplog.text  # ... the logs never do
    return provisioned


def run(dsn: str, statement: str, params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).rowcount


async def write_rows(dsn: str, spool: Path, make_record: Callable, count: int) -> list[Durability]:
    writer = InferenceLogWriter(dsn, spool)
    await writer.start()
    try:
        return [await writer.record(make_record()) for _ in range(count)]
    finally:
        await writer.stop()


def test_login_roles_join_their_groups_with_scram_passwords(migrated_dsn: str, dsns: dict[str, str]) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        for role in DATABASE_ROLES:
            login, group = LOGIN_ROLES[role], GROUP_ROLES[role]
            (can_login, superuser, password) = conn.execute(
                "select rolcanlogin, rolsuper, rolpassword from pg_authid where rolname = %s", (login,)
            ).fetchone()
            assert can_login and not superuser
            assert password.startswith("SCRAM-SHA-256$")  # hashed, never the plain text
            assert conn.execute("select pg_has_role(%s, %s, 'member')", (login, group)).fetchone()[0]
            (group_login,) = conn.execute("select rolcanlogin from pg_roles where rolname = %s", (group,)).fetchone()
            assert not group_login
    with psycopg.connect(dsns["owner"]) as conn:  # sessions of the owner login act as the group
        assert conn.execute("select current_user").fetchone()[0] == "riverbed_owner"
    with psycopg.connect(dsns["gateway"]) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "riverbed_gateway_login"


def test_provisioning_without_passwords_and_role_dsn(migrated_dsn: str) -> None:
    provisioned = provision_login_roles(migrated_dsn, None, roles=["auditor"])
    assert list(provisioned) == ["auditor"] and "password" not in provisioned["auditor"]
    assert "user=riverbed_auditor_login" in provisioned["auditor"]
    with psycopg.connect(migrated_dsn) as conn:
        (password,) = conn.execute(
            "select rolpassword from pg_authid where rolname = 'riverbed_auditor_login'"
        ).fetchone()
    assert password is None
    assert "password=x" in role_dsn("host=h user=u password=old dbname=d", "v", "x")
    assert "old" not in role_dsn("host=h user=u password=old dbname=d", "v")
    with pytest.raises(ValueError, match="gateway"):
        provision_login_roles(migrated_dsn, {"auditor": "a"}, roles=["auditor", "gateway"])
    with pytest.raises(ValueError, match="unknown"):
        provision_login_roles(migrated_dsn, None, roles=["root"])  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_gateway_appends_and_advances_the_chain_but_cannot_change_the_log(
    dsns: dict[str, str], tmp_path: Path, make_record: Callable
) -> None:
    gateway = dsns["gateway"]
    assert apply_migrations(gateway) == []  # everything applied: a no-op the gateway may run at start
    assert await write_rows(gateway, tmp_path / "spool", make_record, 3) == [Durability.COMMITTED] * 3
    assert verify_chain(dsns["auditor"]).ok
    with psycopg.connect(gateway) as conn:
        assert conn.execute("select seq from inference_log_chain_head").fetchone() == (3,)

    for statement in (
        "update inference_log set labels = array['tampered']",
        "delete from inference_log",
        "truncate inference_log",
        "delete from inference_log_chain_head",
        "truncate inference_log_chain_head",
        "delete from api_keys",
        "insert into api_keys (key_id, roles, key_hash) values ('x', '{predict}', repeat('0', 64))",
        "update api_keys set revoked_at = null",
        "delete from riverbed_schema_migrations",
        'insert into prediction_labels (topic, partition, "offset", dataset, request_id, label, labelled_at) '
        "values ('t', 0, 0, 'd', 'r', 'l', now())",
        "delete from monitoring_results",
        "create table gateway_scratch (x int)",
    ):
        with pytest.raises(REFUSED):
            run(gateway, statement)
    # Setting the maintenance flag does not help a role that is not the owner.
    with psycopg.connect(gateway, autocommit=True) as conn:
        conn.execute("set riverbed.maintenance = on")
        with pytest.raises(REFUSED):
            conn.execute("update inference_log set labels = array['tampered']")
    with psycopg.connect(gateway) as conn:
        assert conn.execute("select count(*) from api_keys").fetchone() == (0,)  # reads the keys it checks
        assert conn.execute("select count(*) from monitoring_results").fetchone() == (0,)  # drift gauges
    assert verify_chain(dsns["auditor"]).ok


@pytest.mark.asyncio
async def test_the_log_is_append_only_for_everyone_outside_owner_maintenance(
    migrated_dsn: str, dsns: dict[str, str], tmp_path: Path, make_record: Callable
) -> None:
    await write_rows(dsns["gateway"], tmp_path / "spool", make_record, 2)
    for dsn in (migrated_dsn, dsns["owner"]):  # the superuser and the owner, without the maintenance flag
        for statement in (
            "update inference_log set error = 'x'",
            "delete from inference_log",
            "truncate inference_log",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                run(dsn, statement)
    with psycopg.connect(dsns["owner"]) as conn:
        conn.execute("set local riverbed.maintenance = on")
        assert conn.execute("update inference_log set error = 'maintenance' where seq = 1").rowcount == 1
        conn.rollback()
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("set riverbed.maintenance = on")
        assert conn.execute("delete from inference_log where seq = 2").rowcount == 1
        conn.rollback()
    assert verify_chain(migrated_dsn).ok


def test_auditor_only_reads(dsns: dict[str, str]) -> None:
    auditor = dsns["auditor"]
    with psycopg.connect(auditor) as conn:
        for table in (
            "inference_log",
            "inference_log_chain_head",
            "api_keys",
            "prediction_labels",
            "monitoring_results",
            "riverbed_schema_migrations",
        ):
            conn.execute(f"select count(*) from {table}").fetchone()
    for statement in (
        "insert into inference_log_chain_head (id, seq, row_hash) values (false, 0, repeat('0', 64))",
        "update inference_log_chain_head set seq = 7",
        "delete from api_keys",
        "insert into monitoring_results (dataset, day, kind, name) values ('d', now(), 'cbpe', 'x')",
        "delete from prediction_labels",
        "create table auditor_scratch (x int)",
    ):
        with pytest.raises(REFUSED):
            run(auditor, statement)


def test_pipeline_writes_labels_and_monitoring_results_only(dsns: dict[str, str]) -> None:
    pipeline = dsns["pipeline"]
    assert apply_migrations(pipeline) == []
    labels = (
        'insert into prediction_labels (topic, partition, "offset", dataset, request_id, label, labelled_at) '
        "values ('t', 0, 0, 'd', 'r', 'l', now()) on conflict (topic, partition, \"offset\") do nothing"
    )
    assert run(pipeline, labels) == 1
    assert run(pipeline, labels) == 0
    results = (
        "insert into monitoring_results (dataset, day, kind, name, value) values ('d', '2025-01-01', 'cbpe', 'x', 1)"
    )
    assert run(pipeline, results) == 1
    assert run(pipeline, "delete from monitoring_results where dataset = 'd' and day = '2025-01-01'") == 1
    for statement in (
        "insert into inference_log (request_id, seq, received_at, route, status, http_status, prev_hash, row_hash) "
        "values ('r', 1, now(), '/', 'ok', 200, repeat('0', 64), repeat('0', 64))",
        "update inference_log_chain_head set seq = 7",
        "delete from api_keys",
    ):
        with pytest.raises(REFUSED):
            run(pipeline, statement)


def test_owner_manages_keys_and_later_tables_get_default_grants(dsns: dict[str, str]) -> None:
    owner = dsns["owner"]
    created = create_api_key(owner, ["predict"], name="by-owner")
    assert not revoke_api_key(owner, created.key_id).already_revoked
    # A later migration, run as the owner, creates a table: the default privileges cover it.
    run(owner, "create table later_table (id bigserial primary key, note text)")
    with psycopg.connect(dsns["owner"]) as conn:
        assert conn.execute(
            "select pg_get_userbyid(relowner) from pg_class where relname = 'later_table'"
        ).fetchone() == ("riverbed_owner",)
    assert run(dsns["gateway"], "insert into later_table (note) values ('appended')") == 1
    run(dsns["auditor"], "select * from later_table")
    for dsn in (dsns["gateway"], dsns["auditor"]):
        with pytest.raises(REFUSED):
            run(dsn, "delete from later_table")


QUARANTINE_ROW = (
    "insert into inference_log_quarantine (reason, content, content_bytes, content_sha256) "
    "values ('test', '{}', 2, repeat('0', 64))"
)
ACCESS_ROW = (
    "insert into audit_access_log (received_at, key_id, route, row_count, request_id) "
    "values (now(), 'k', '/v1/audit/predictions', 0, 'r')"
)


def assert_gateway_appends_only(provisioned: dict[str, str], *, auditor_records_reads: bool) -> None:
    """The gateway appends to both tables and changes neither; the auditor reads both, never writes the quarantine,
    and appends its own reads to audit_access_log once 0007 ran."""
    gateway, auditor = provisioned["gateway"], provisioned["auditor"]
    assert run(gateway, QUARANTINE_ROW) == 1
    assert run(gateway, ACCESS_ROW) == 1
    for table in ("inference_log_quarantine", "audit_access_log"):
        for role in (gateway, auditor):
            for statement in (f"delete from {table}", f"update {table} set id = id", f"truncate {table}"):
                with pytest.raises(REFUSED):
                    run(role, statement)
        run(auditor, f"select * from {table}")
    with pytest.raises(REFUSED):
        run(auditor, QUARANTINE_ROW)
    if auditor_records_reads:
        assert run(auditor, ACCESS_ROW) == 1
    else:
        with pytest.raises(REFUSED):
            run(auditor, ACCESS_ROW)


def test_gateway_appends_to_the_quarantine_and_the_audit_access_log(dsns: dict[str, str]) -> None:
    """0004 (audit_access_log) and 0005 (inference_log_quarantine) ran before 0006: granted on existing tables;
    0007 lets the auditor record its own reads."""
    assert_gateway_appends_only(dsns, auditor_records_reads=True)


def test_tables_of_migrations_applied_after_0006_get_the_default_grants(tmp_path: Path) -> None:
    """0006 applied first (merged before 0004 and 0005 reached a database); they then run as the owner."""
    for path in MIGRATIONS_DIR.glob("000[1-3]_*.sql"):
        shutil.copy(path, tmp_path)
    shutil.copy(MIGRATIONS_DIR / "0006_api_key_expiry_and_roles.sql", tmp_path)
    name, dsn = create_database()
    try:
        apply_migrations(dsn, directory=tmp_path)
        for later in ("0004_*.sql", "0005_*.sql"):
            (path,) = MIGRATIONS_DIR.glob(later)
            shutil.copy(path, tmp_path)
        provisioned = provision_login_roles(dsn, None)
        assert [version[:4] for version in apply_migrations(provisioned["owner"], directory=tmp_path)] == [
            "0004",
            "0005",
        ]
        assert_gateway_appends_only(provisioned, auditor_records_reads=False)  # 0007 not applied here
    finally:
        drop_database(name)
