"""Child processes of ``riverbed serve`` and the ports they listen on (Linux; elsewhere the safeguards are skipped).

- :func:`spawn` starts a child in its own process group that receives SIGTERM when this process dies, even by
  SIGKILL (``prctl(PR_SET_PDEATHSIG)``): MLServer and the gateway never outlive the stack that started them.
- :func:`stop` stops one: SIGTERM, a grace period, then SIGKILL for its whole process group.
- :func:`port_free` probes a port the way uvicorn and MLServer bind it (``SO_REUSEADDR``): sockets in TIME-WAIT
  left by a previous run do not count, a listener does; :func:`port_holder` names the process listening.
- :class:`GroupReaper` covers grandchildren: a separate process that kills the process groups it was told about
  once this process is gone, however it went (a child's own children do not get the parent-death signal).
- :func:`process_identity` and :func:`same_process` (from the core's stack file module) tell a live process
  from a reused pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from riverbed.stack_file import stat_fields

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Loaded in the parent: the forked child only calls into it before exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_TCP_LISTEN = "0A"  # st column of /proc/net/tcp


# ------------------------------------------------------------------------------------------------ children
def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM to the child when the parent dies; exit at once if it already has."""
    libc = _LIBC
    assert libc is not None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect: no signal would ever come
            os._exit(1)

    return preexec


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, SIGTERMed by the kernel if this process dies.

    Own process group: a Ctrl-C in the terminal reaches ``riverbed serve`` alone, which then stops the children
    in order (gateway first, so it flushes its audit writer). The kernel's parent-death signal fires when the
    *thread* that forked the child exits, so it is only set when spawning from the main thread (``riverbed
    serve`` does); from another thread the child only gets its own process group.
    """
    preexec: Callable[[], None] | None = None
    if _LIBC is not None and threading.current_thread() is threading.main_thread():
        preexec = _die_with_parent(os.getpid())
    return subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=str(cwd),
        stdout=stdout,
        stderr=stderr,
        process_group=0,
        preexec_fn=preexec,
    )


def _wait_exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for the child to exit, without reaping it: while it is a zombie its pid, and so its
    process group id, cannot be reused, so a following ``killpg`` cannot hit a stranger."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop(process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """SIGTERM ``process``, wait up to ``timeout`` s, then SIGKILL; what is left of its process group is killed."""
    if process.returncode is not None:  # reaped already
        return
    if not _wait_exited(process, 0):
        os.kill(process.pid, signal.SIGTERM)  # not send_signal(): it polls, and reaping now would free the pid
        if not _wait_exited(process, timeout):
            logger.warning("%s (pid %d) did not stop in %.0f s; killing it", name, process.pid, timeout)
    _kill_group(process.pid)  # spawn() made it a group leader: its group id is its pid
    process.wait(timeout=10)


# The reaper's program: reads "+PGID" / "-PGID" lines; at end of input (its parent exited, by any means: the pipe's
# only writer is gone) it SIGTERMs the groups still listed, waits, then SIGKILLs what is left.
_REAPER_PROGRAM = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] == "+":
        groups.add(int(line[1:]))
    elif line[:1] == "-":
        groups.discard(int(line[1:]))
def alive(group):
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    return True
for signum, grace in ((signal.SIGTERM, float(sys.argv[1])), (signal.SIGKILL, 0.0)):
    for group in list(groups):
        try:
            os.killpg(group, signum)
        except OSError:
            groups.discard(group)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        groups = {group for group in groups if alive(group)}
        time.sleep(0.1)
"""


class GroupReaper:
    """Kills the registered process groups when this process is gone, even by SIGKILL.

    :func:`spawn` makes each child a group leader that gets SIGTERM when this process dies, but the child's own
    children (``dagster dev``'s webserver and daemon, ``mlflow server``'s uvicorn) are not told. The reaper is a
    small Python process in its own session reading a pipe only this process writes: end of input means this
    process exited, and the groups still registered are SIGTERMed, then SIGKILLed after ``grace`` seconds.
    """

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> GroupReaper:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _REAPER_PROGRAM, str(self.grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it
        )
        return self

    def _send(self, line: str) -> None:
        if self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(f"{line}\n".encode())
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            logger.warning("the process-group reaper (pid %d) is gone; %s not registered", self._process.pid, line)

    def watch(self, pgid: int) -> None:
        """Kill group ``pgid`` if this process dies before :meth:`forget` is called for it."""
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        """End the reaper (it kills groups still registered) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=self.grace + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------ ports
def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now.

    Binds as uvicorn and MLServer do, with ``SO_REUSEADDR``: connections of a stopped server lingering in
    TIME-WAIT do not block it, while any socket listening on the port does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of a process listening on TCP ``port``, if ``/proc`` lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        command = " ".join(process_cmdline(int(entry.name)) or [])
                        return f"pid {entry.name} ({command[:100]})" if command else f"pid {entry.name}"
    return None


def port_problem(owner: str, host: str, port: int, setting: str) -> str | None:
    """None when ``port`` is free on ``host``, else the message saying who holds it and what to set."""
    if port_free(host, port):
        return None
    holder = port_holder(port)
    return f"{owner} port {port} is in use{f' by {holder}' if holder else ''} (set {setting})"


# ------------------------------------------------------------------------------------------------ identity
def process_cmdline(pid: int) -> list[str] | None:
    """The process's arguments (None if it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")
