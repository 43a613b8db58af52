"""Throw-away databases on the machine's PostgreSQL (127.0.0.1:5432, trust auth), for tests and benchmarks."""

import uuid

import psycopg
from psycopg import sql

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


def create_database(prefix: str = "riverbed_test") -> tuple[str, str]:
    """A new, uniquely named, empty database; returns (name, dsn)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return name, f"host=127.0.0.1 port=5432 user=postgres dbname={name} connect_timeout=5"


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
