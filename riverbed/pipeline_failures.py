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
    ``monitoring_query``). ``dsn`` None: no database is configured, so only the log line is written.
    Never raises: reporting a failure must not become a second failure.
    """
    if not _LABEL.match(component) or not _LABEL.match(reason):
        raise ValueError(f"component and reason must match {_LABEL.pattern}: {component!r}, {reason!r}")
    (log or logger).warning("%s: %s: %s", component, reason, message)
    if dsn is None:
        return False
    try:
        with psycopg.connect(
            dsn,
            connect_timeout=max(1, round(timeout_seconds)),
            autocommit=True,
            options=f"-c statement_timeout={int(timeout_seconds * 1000)}",
        ) as conn:
            conn.execute(_UPSERT, (component, reason, _clean(message)))
    except (psycopg.Error, OSError) as error:
        logger.warning("%s: %s: the failure could not be counted in pipeline_failures (%s)", component, reason, error)
        return False
    return True


def read_failures(dsn: str, *, timeout_seconds: float = 2.0) -> dict[tuple[str, str], int]:
    """``{(component, reason): failures}`` as stored (for tests and the CLI)."""
    with psycopg.connect(
        dsn,
        connect_timeout=max(1, round(timeout_seconds)),
        options=f"-c statement_timeout={int(timeout_seconds * 1000)}",
    ) as conn:
        rows = conn.execute(READ_FAILURES).fetchall()
    return {(str(component), str(reason)): int(failures) for component, reason, failures in rows}
