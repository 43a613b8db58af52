"""Least-privilege PostgreSQL roles of the inference-log database, and the login roles that use them.

Migration 0006 (``riverbed/inference_log_schema/0006_api_key_expiry_and_roles.sql``) creates four NOLOGIN group
roles and their grants; :func:`provision_login_roles` creates one LOGIN role per group and returns a DSN for each:

==========  =======================  ============================  ==================================================
role        group (NOLOGIN)          login                         may
==========  =======================  ============================  ==================================================
owner       ``riverbed_owner``       ``riverbed_owner_login``      own the tables, run migrations, manage API keys
gateway     ``riverbed_gateway``     ``riverbed_gateway_login``    read; append to the inference log, advance its head
pipeline    ``riverbed_pipeline``    ``riverbed_pipeline_login``   read; write prediction_labels, monitoring_results
auditor     ``riverbed_auditor``     ``riverbed_auditor_login``    read only
==========  =======================  ============================  ==================================================

Sessions of ``riverbed_owner_login`` start as ``riverbed_owner`` (``ALTER ROLE ... SET role``), so the tables a
migration creates belong to the group, not to the login. ``inference_log`` refuses UPDATE, DELETE and TRUNCATE to
everyone (superusers included) unless an owner session ran ``set riverbed.maintenance = on`` first.

The production stack creates the same login roles with passwords from its environment
(``deploy/postgres/20-riverbed-roles.sh``); the embedded server (``serving.embedded_postgres``) calls
:func:`provision_login_roles` without passwords (it listens on a Unix socket with trust authentication).

``python -m serving.database_roles migrate`` applies the migrations to ``RIVERBED_INFERENCE_LOG_DSN`` (the
production stack's one-shot ``inference-log-migrate`` service runs it as the owner).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, get_args

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from riverbed.inference_log_schema import apply_migrations
from riverbed.settings import RiverbedSettings

logger = logging.getLogger(__name__)

DatabaseRole = Literal["owner", "gateway", "pipeline", "auditor"]
DATABASE_ROLES: Final[tuple[DatabaseRole, ...]] = get_args(DatabaseRole)
GROUP_ROLES: Final[dict[DatabaseRole, str]] = {role: f"riverbed_{role}" for role in DATABASE_ROLES}
LOGIN_ROLES: Final[dict[DatabaseRole, str]] = {role: f"riverbed_{role}_login" for role in DATABASE_ROLES}
MAINTENANCE_SETTING: Final = "riverbed.maintenance"


class RolesNotInstalledError(RuntimeError):
    """The group roles do not exist: apply the inference-log migrations (0006) first, as a role that may create
    roles."""


def role_dsn(dsn: str, user: str, password: str | None = None) -> str:
    """``dsn`` with its user (and password) replaced; no password at all when ``password`` is None."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    params["user"] = user
    if password is not None:
        params["password"] = password
    return make_conninfo("", **params)


def provision_login_roles(
    admin_dsn: str,
    passwords: Mapping[str, str] | None = None,
    *,
    roles: Iterable[DatabaseRole] = DATABASE_ROLES,
) -> dict[DatabaseRole, str]:
    """Create (or update) the LOGIN role of each of ``roles`` in its group and return ``{role: dsn}``.

    ``admin_dsn`` must be a superuser or a CREATEROLE role with admin rights on the groups. ``passwords``
    (``{role: password}``, one for every role) sets each login's password (stored as SCRAM, hashed on this side:
    the password never travels in a statement); None removes any password (socket-only servers with peer or trust
    authentication). The returned DSNs are ``admin_dsn`` with that user and password: they hold the passwords,
    so do not log them. Idempotent; passwords are never logged.
    """
    wanted = tuple(dict.fromkeys(roles))
    unknown = [role for role in wanted if role not in DATABASE_ROLES]
    if unknown:
        raise ValueError(f"unknown database roles {unknown}: use {', '.join(DATABASE_ROLES)}")
    if passwords is not None:
        missing = [role for role in wanted if not passwords.get(role)]
        if missing:
            raise ValueError(f"passwords: none (or empty) for {', '.join(missing)}")
        extra = sorted(set(passwords) - set(wanted))
        if extra:
            raise ValueError(f"passwords: {', '.join(extra)} not among the roles provisioned ({', '.join(wanted)})")
    dsns: dict[DatabaseRole, str] = {}
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        groups = {GROUP_ROLES[role] for role in wanted}
        found = {
            row[0] for row in conn.execute("select rolname from pg_roles where rolname = any(%s)", (list(groups),))
        }
        if found != groups:
            raise RolesNotInstalledError(
                f"roles {sorted(groups - found)} do not exist: apply the inference-log migrations (0006) first, "
                "as a superuser or a role with CREATEROLE"
            )
        for role in wanted:
            password = passwords[role] if passwords is not None else None
            for attempt in range(3):  # role catalogs are shared by every database: another may change them too
                try:
                    _provision(conn, role, password)
                    break
                except psycopg.errors.InternalError_ as error:  # "tuple concurrently updated"
                    if attempt == 2:
                        raise
                    logger.debug("provisioning %s raced another session (%s); retrying", LOGIN_ROLES[role], error)
            dsns[role] = role_dsn(admin_dsn, LOGIN_ROLES[role], password)
    logger.info(
        "login roles %s ready (%s)",
        ", ".join(LOGIN_ROLES[role] for role in wanted),
        "with passwords" if passwords is not None else "no passwords: socket with peer or trust authentication",
    )
    return dsns


def _provision(conn: psycopg.Connection[Any], role: DatabaseRole, password: str | None) -> None:
    login, group = LOGIN_ROLES[role], GROUP_ROLES[role]
    with conn.transaction():
        existing = conn.execute(
            "select rolsuper or rolcreaterole or rolcreatedb or rolreplication or rolbypassrls from pg_roles "
            "where rolname = %s",
            (login,),
        ).fetchone()
        if existing is None:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("create role {} login").format(sql.Identifier(login)))
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # created meanwhile (roles are shared by every database of the server)
        elif existing[0]:
            raise RuntimeError(f"role {login} exists with administrative attributes: refusing to use it as {role}")
        if password is None:
            secret: sql.Composable = sql.SQL("null")
        else:
            # PQencryptPasswordConn: hashed with the server's password_encryption (scram-sha-256) on this side.
            secret = sql.Literal(conn.pgconn.encrypt_password(password.encode(), login.encode()).decode())
        conn.execute(sql.SQL("alter role {} with login inherit password {}").format(sql.Identifier(login), secret))
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(group), sql.Identifier(login)))
        if role == "owner":
            # Start every session as the group, so what migrations create belongs to riverbed_owner.
            conn.execute(sql.SQL("alter role {} set role = {}").format(sql.Identifier(login), sql.Literal(group)))


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.database_roles migrate``: apply the inference-log migrations to the configured DSN."""

    args = sys.argv[1:] if argv is None else argv
    if args != ["migrate"]:
        sys.stderr.write("usage: python -m serving.database_roles migrate\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configured = RiverbedSettings().inference_log_dsn
    if configured is None:
        logger.error("RIVERBED_INFERENCE_LOG_DSN is not set")
        return 2
    applied = apply_migrations(configured.get_secret_value())
    logger.info("inference-log schema up to date (%s)", f"applied {', '.join(applied)}" if applied else "no change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
