"""Run the lakeFS API test double over HTTP on 127.0.0.1 (uvicorn in a background thread, free port)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from tests.lakefs_double.app import create_app
from tests.lakefs_double.state import LakeFSState
from tests.lakefs_double.validation import ContractViolations, Violation

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LakeFSDouble:
    """A running double: its endpoint, the one key pair it accepts, its in-memory state, and every response it
    produced that broke the published API (there must be none)."""

    url: str
    access_key_id: str
    secret_access_key: str
    state: LakeFSState
    violations: ContractViolations

    def assert_no_violations(self, since: int = 0) -> None:
        """Fail loudly if the double answered anything the published API does not allow."""
        found: list[Violation] = self.violations.snapshot()[since:]
        if found:
            lines = "\n".join(f"  {v.method} {v.path} -> {v.status}: {v.problem}" for v in found)
            raise AssertionError(f"the lakeFS API double broke the published API {len(found)} time(s):\n{lines}")

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"


@contextlib.contextmanager
def run_lakefs_double(
    access_key_id: str | None = None, secret_access_key: str | None = None, username: str = "riverbed-tests"
) -> Iterator[LakeFSDouble]:
    """Serve a fresh double for the duration of the block; keys are generated unless given.

    Leaving the block raises if any response broke the published API (see :meth:`LakeFSDouble.assert_no_violations`).
    """
    access_key_id = access_key_id or "AKIAJ" + secrets.token_hex(6).upper()
    secret_access_key = secret_access_key or secrets.token_urlsafe(30)
    state = LakeFSState(committer=username)
    violations = ContractViolations()
    app = create_app(state, access_key_id, secret_access_key, violations)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lakefs-double", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the lakeFS API double did not start")
            time.sleep(0.01)
        logger.debug("lakeFS API double listening on 127.0.0.1:%d", port)
        double = LakeFSDouble(f"http://127.0.0.1:{port}", access_key_id, secret_access_key, state, violations)
        yield double
        double.assert_no_violations()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
