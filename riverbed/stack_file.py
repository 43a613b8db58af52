"""Where a running ``riverbed serve`` listens (``<home>/stack.json``), for readers outside the stack."""

from __future__ import annotations

import json
import os
from typing import Any

from riverbed.settings import RiverbedSettings


class InferenceLogNotAvailableError(RuntimeError):
    """No inference-log DSN is configured and no local stack is running."""


def running_stack(settings: RiverbedSettings) -> dict[str, Any] | None:
    """stack.json of a live ``riverbed serve`` (its pid still running), else None."""
    try:
        stack: dict[str, Any] = json.loads(settings.stack_file.read_text())
        os.kill(int(stack["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stack


def configured_inference_log_dsn(settings: RiverbedSettings) -> str | None:
    """The one inference-log DSN resolver: ``RIVERBED_INFERENCE_LOG_DSN``, else the running local stack's database.

    ``None`` when neither exists; the gateway and the CLI then start an embedded server
    (``serving.embedded_postgres.resolve_inference_log_dsn``), the code location raises.
    """
    if settings.inference_log_dsn is not None:
        return settings.inference_log_dsn.get_secret_value()
    stack = running_stack(settings)
    if stack and stack.get("database"):
        return str(stack["database"])
    return None


def inference_log_dsn(settings: RiverbedSettings) -> str:
    """:func:`configured_inference_log_dsn`, or :class:`InferenceLogNotAvailableError` when there is none."""
    dsn = configured_inference_log_dsn(settings)
    if dsn is not None:
        return dsn
    raise InferenceLogNotAvailableError(
        "no inference log: set RIVERBED_INFERENCE_LOG_DSN or start the local stack with `riverbed serve`"
    )
