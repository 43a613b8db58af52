"""Where a running ``riverbed serve`` listens (``<home>/stack.json``), for readers outside the stack."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from riverbed.settings import RiverbedSettings


class InferenceLogNotAvailableError(RuntimeError):
    """No inference-log DSN is configured and no local stack is running."""


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on; the command name before it may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_identity(pid: int) -> dict[str, Any]:
    """What distinguishes this run of ``pid`` from a later process given the same pid: boot id and start time
    (clock ticks after boot). Empty where ``/proc`` is not available."""
    fields = stat_fields(pid)
    boot = _boot_id()
    if fields is None or boot is None:
        return {}
    return {"boot_id": boot, "start_ticks": int(fields[19])}  # field 22 of stat(5)


def same_process(pid: int, identity: Mapping[str, Any]) -> bool | None:
    """Whether the live ``pid`` is the process ``identity`` was taken from (None: cannot tell)."""
    if not identity:
        return None
    current = process_identity(pid)
    if not current:
        return None
    return current == {key: identity.get(key) for key in current}


def running_stack(settings: RiverbedSettings) -> dict[str, Any] | None:
    """stack.json of a live ``riverbed serve`` (its pid still running and still that run), else None."""
    try:
        stack: dict[str, Any] = json.loads(settings.stack_file.read_text())
        pid = int(stack["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if same_process(pid, stack.get("process") or {}) is False:  # the pid now belongs to another process
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
