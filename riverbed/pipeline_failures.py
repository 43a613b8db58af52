"""Pipeline failures that must surface: logged at WARNING and counted in the ``pipeline_failures`` table.

Sensors, serving start-up and deployments call :func:`report_failure` where they give up on something (a
trigger that could not be evaluated, a registry that could not be read, a deployment refused before it moved
an alias). The count per ``(component, reason)`` lives in the inference-log database, which every pipeline
process already reaches, and the gateway exports it as ``riverbed_pipeline_failures_total`` on ``/metrics``.
Recording is best effort and bounded (a short connect and statement timeout): when the database itself is
the failure, the WARNING line is what remains, and it says the count was not stored.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000
_LABEL = re.compile(r"^[a-z0-9_.:-]{1,200}$")

_UPSERT = """
insert into pipeline_failures (component, reason, last_message)
values (%s, %s, %s)
on conflict (component, reason) do update
set failures = pipeline_failures.failures + 1, last_at = now(), last_message = excluded.last_message
"""

READ_FAILURES = "select component, reason, failures from pipeline_failures"
# Session settings, not a connect-time ``options``: that would replace any ``options`` the DSN carries.
_TIMEOUTS = "select set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)"


def _check_label(field: str, value: str) -> None:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ValueError(f"{field} {value!r} is not a metric label: 1-200 characters of a-z, 0-9, '_', '.', ':' or '-'")


def _connect(dsn: str, timeout_seconds: float) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection whose every statement (and lock wait) gives up after ``timeout_seconds``."""
    conn = psycopg.connect(dsn, connect_timeout=max(1, round(timeout_seconds)), autocommit=True)
    try:
        timeout = f"{int(timeout_seconds * 1000)}ms"
        conn.execute(_TIMEOUTS, (timeout, timeout))
    except BaseException:
        conn.close()
        raise
    return conn


def _clean(message: str) -> str:
    """Text PostgreSQL can store, bounded: NUL escaped, at most ``MAX_MESSAGE_CHARS`` characters."""
    return message.replace("\x00", "\\u0000")[:MAX_MESSAGE_CHARS]


def report_failure(
    component: str,
    reason: str,
    message: str,
    *,
    dsn: str | None,
    log: logging.Logger | None = None,
    timeout_seconds: float = 2.0,
) -> bool:
    """Log ``message`` at WARNING and count it under ``(component, reason)``; True when the count was stored.

    ``component`` and ``reason`` are metric labels: lower-case identifiers (``retrain_machine_failure``,
    ``monitoring_query``); anything else is a ``ValueError`` naming the field (a programming error, not a failure
    to report). ``dsn`` None: no database is configured, so only the log line is written. Past the label check it
    never raises: reporting a failure must not become a second failure.
    """
    _check_label("component", component)
    _check_label("reason", reason)
    (log or logger).warning("%s: %s: %s", component, reason, message)
    if dsn is None:
        return False
    try:
        with _connect(dsn, timeout_seconds) as conn:
            conn.execute(_UPSERT, (component, reason, _clean(message)))
    except (psycopg.Error, OSError) as error:
        logger.warning("%s: %s: the failure could not be counted in pipeline_failures (%s)", component, reason, error)
        return False
    return True


def read_failures(dsn: str, *, timeout_seconds: float = 2.0) -> dict[tuple[str, str], int]:
    """``{(component, reason): failures}`` as stored (for tests and the CLI)."""
    with _connect(dsn, timeout_seconds) as conn:
        rows = conn.execute(READ_FAILURES).fetchall()
    return {(str(component), str(reason)): int(failures) for component, reason, failures in rows}
