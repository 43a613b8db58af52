"""One PostgreSQL LISTEN/NOTIFY listener, shared by the API-key revocations (:mod:`serving.api_keys`) and the
dataset suspensions (:mod:`serving.oversight`).

:meth:`NotifyListener.run` (run it as a task; cancel it to stop) keeps a dedicated autocommit connection with TCP
keepalives and ``LISTEN <channel>``, and reconnects forever with jittered exponential backoff (the first failure of
a series is a WARNING, the next ones DEBUG). On every (re)connect, once LISTEN is active, it awaits ``on_connect``
so the owner re-reads its whole state (nothing committed from then on is missed). Then, in turn: it waits up to
``ping_interval`` seconds for notifications, hands each payload to ``on_notify`` as it arrives, and either awaits
``on_notified(conn)`` (if given and something was heard: the connection is free again) or pings the server
(``select 1``, then ``on_ping``). A lost connection is a WARNING, anything else an ERROR with its traceback; both
reconnect. ``on_failure`` is called for every failure (connect, read, lost connection) and ``on_disconnect`` when
a connection ends, for the owner's metrics and flags.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

Conninfo = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]


def _nothing() -> None:
    return None


async def _ignore(payload: str) -> None:
    return None


class NotifyListener:
    """LISTEN ``channel`` on a connection of its own, forever; see the module docstring.

    ``conninfo`` returns the DSN and connection options (e.g. a pool's); ``connect_timeout`` is used unless those
    options name one. ``label`` starts every log line (e.g. ``"API-key listener"``), written to ``log`` (the
    owner's logger). ``stop_after`` is passed to ``notifies()``: 1 ends the wait at the first notification, so
    ``on_notified`` can use the connection at once. ``on_connect(conn, reconnected)`` gets ``reconnected`` True
    when connecting failed since the last connection.
    """

    def __init__(
        self,
        *,
        channel: str,
        application_name: str,
        label: str,
        conninfo: Conninfo,
        log: logging.Logger = logger,
        on_connect: Callable[[psycopg.AsyncConnection[Any], bool], Awaitable[None]],
        on_notify: Callable[[str], Awaitable[None]] = _ignore,
        on_notified: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
        on_ping: Callable[[], None] = _nothing,
        on_failure: Callable[[], None] = _nothing,
        on_disconnect: Callable[[], None] = _nothing,
        connect_timeout: float = 2,
        ping_interval: float = 2.0,
        reconnect_delay: tuple[float, float] = (0.2, 5.0),
        stop_after: int | None = None,
    ) -> None:
        self.channel = channel
        self._application_name = application_name
        self._label = label
        self._log = log
        self._conninfo = conninfo
        self._on_connect = on_connect
        self._on_notify = on_notify
        self._on_notified = on_notified
        self._on_ping = on_ping
        self._on_failure = on_failure
        self._on_disconnect = on_disconnect
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._reconnect_delay = reconnect_delay
        self._stop_after = stop_after

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection that LISTENs on the channel (closed again if LISTEN fails)."""
        conninfo, kwargs = await self._conninfo()
        kwargs.update(autocommit=True, application_name=self._application_name)
        kwargs.setdefault("connect_timeout", self._connect_timeout)
        # Keepalives notice a silently dead peer over TCP (libpq ignores them on a Unix socket).
        kwargs.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2)
        async with asyncio.timeout(float(kwargs["connect_timeout"]) + 1.0):
            conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        try:
            await conn.execute(f"listen {self.channel}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def run(self) -> None:
        """Listen, and reconnect, until cancelled."""
        first, longest = self._reconnect_delay
        delay = first
        failures = 0
        while True:
            try:
                conn = await self.connect()
            except Exception as error:  # psycopg.Error, OSError, TimeoutError; anything else is retried too
                failures += 1
                self._on_failure()
                log = self._log.warning if failures == 1 else self._log.debug
                log("%s cannot connect (retrying): %s: %s", self._label, type(error).__name__, error)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, longest)
                continue
            try:
                reconnected = failures > 0
                failures, delay = 0, first
                await self._on_connect(conn, reconnected)  # LISTEN is active: nothing committed from now is missed
                await self._serve(conn)
            except (psycopg.Error, OSError, TimeoutError) as error:
                self._on_failure()
                self._log.warning(
                    "%s lost its connection (reconnecting): %s: %s", self._label, type(error).__name__, error
                )
            except Exception:
                self._on_failure()
                self._log.exception("%s failed (reconnecting)", self._label)
            finally:
                self._on_disconnect()
                await close_quietly(conn)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            # The connection is busy while notifies() runs; a notification that arrives after it returns is kept
            # by psycopg for the next call.
            heard = 0
            async for notify in conn.notifies(timeout=self._ping_interval, stop_after=self._stop_after):
                heard += 1
                await self._on_notify(notify.payload)
            if heard and self._on_notified is not None:
                await self._on_notified(conn)
                continue
            async with asyncio.timeout(max(1.0, self._ping_interval)):
                await conn.execute("select 1")
            self._on_ping()


async def close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close ``conn`` within 2 s, or drop it (it is being abandoned either way)."""
    try:
        async with asyncio.timeout(2.0):
            await conn.close()
    except Exception:
        conn.pgconn.finish()
