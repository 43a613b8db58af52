"""The writer's one dedicated PostgreSQL connection: appends batches to the chain, keeps quarantine entries.

Every failure of an append is raised as a :class:`~serving.inference_log.failures.Failure` classified by the
phase it happened in. Internal to :mod:`serving.inference_log`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from serving.inference_log.chain import HASH_HMAC, HASH_SHA256, row_hash
from serving.inference_log.failures import ChainBroken, Failure, Kind, classify, describe
from serving.inference_log.quarantine import INSERT_ONCE_SQL, QuarantineEntry, insert_params
from serving.inference_log.records import CONTENT_FIELDS, Prepared, insert_placeholders, insert_values

_INSERT = (
    f"insert into inference_log (seq, {', '.join(CONTENT_FIELDS)}, prev_hash, row_hash, hash_alg) "
    f"values (%s, {', '.join(insert_placeholders())}, %s, %s, %s) "
    "on conflict (request_id) do nothing"
)
_LOCK_HEAD = (
    "select h.seq, h.row_hash, h.chain_id::text, l.hash_alg from inference_log_chain_head h "
    "left join inference_log l on l.seq = h.seq where h.id for update of h"
)
_READ_HEAD = (
    "select current_database(), h.chain_id::text, h.seq, h.row_hash, l.hash_alg "
    "from inference_log_chain_head h left join inference_log l on l.seq = h.seq where h.id"
)
_NO_KEY = "the chain is keyed (hmac-sha256) but this writer has no chain key"


@dataclass(frozen=True)
class ChainHead:
    """A committed chain head: what a checkpoint signs."""

    chain_id: str
    seq: int
    row_hash: str


async def set_timeouts(conn: psycopg.AsyncConnection[Any], statement_timeout_ms: int) -> None:
    """Session ``statement_timeout`` and ``lock_timeout`` (the pool's ``configure`` callback uses it too)."""
    timeout = f"{statement_timeout_ms}ms"
    await conn.execute(
        "select set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
        (timeout, timeout),
    )
    if not conn.autocommit:
        await conn.commit()


class ChainConnection:
    """One autocommit connection with statement and lock timeouts, opened on demand, used under one lock."""

    def __init__(self, dsn: str, *, key: bytes | None, connect_timeout: float, statement_timeout_ms: int) -> None:
        self._dsn = dsn
        self._key = key
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        # The writer's own deadline for one transaction: every statement has the server-side timeout already.
        self.commit_timeout = 2 * statement_timeout_ms / 1000 + 1.0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._phase = "idle"
        self.database: str | None = None
        self.head: ChainHead | None = None  # the last committed head this connection saw

    async def read_head(self) -> ChainHead:
        """Connect and read the chain head (raises on unavailability, :class:`ChainBroken` if it is unusable)."""
        async with self._lock:
            try:
                conn = await self._connect()
                async with asyncio.timeout(self.commit_timeout):
                    row = await (await conn.execute(_READ_HEAD)).fetchone()
            except BaseException:
                await self._close()
                raise
        if row is None:
            raise ChainBroken("inference_log_chain_head has no row")
        database, chain_id, seq, head_hash, last_alg = row
        if last_alg == HASH_HMAC and self._key is None:
            raise ChainBroken(_NO_KEY)
        self.database = str(database)
        self.head = ChainHead(str(chain_id), int(seq), str(head_hash))
        return self.head

    async def append(self, rows: Sequence[Prepared], skip: Callable[[Prepared], bool]) -> tuple[list[str], int]:
        """Append ``rows`` in one transaction: each row's state (inserted/existing/skipped) and the rows inserted.

        ``skip`` is asked after the head lock is held (a caller that gave up meanwhile is not written). Raises
        :class:`Failure` classified by :func:`classify`.
        """
        for prepared in rows:
            prepared.jsonb_texts  # noqa: B018 - encoded before any deadline starts
        async with self._lock:
            self._phase = "connect"
            try:
                conn = await self._connect()
                async with asyncio.timeout(self.commit_timeout):
                    return await self._append(conn, rows, skip)
            except Exception as error:
                kind = classify(error, self._phase)
                message = describe(error)
                if isinstance(error, TimeoutError):
                    message = f"no answer within {self.commit_timeout:g} s (phase {self._phase})"
                if kind is Kind.UNAVAILABLE or isinstance(error, TimeoutError) or _broken(self._conn):
                    await self._close()
                raise Failure(kind, message) from error
            finally:
                self._phase = "idle"

    async def insert_quarantine(self, entry: QuarantineEntry) -> None:
        """Insert a quarantine entry unless the same content of the same request is there; raises on failure."""
        async with self._lock:
            try:
                conn = await self._connect()
                async with asyncio.timeout(self.commit_timeout):
                    await conn.execute(INSERT_ONCE_SQL, (*insert_params(entry), entry.request_id, entry.content_sha256))
            except BaseException:
                await self._close()
                raise

    async def alive(self) -> bool:
        """Whether the server answers ``select 1`` (a lone timeout on a dead server is not the row's fault)."""
        async with self._lock:
            try:
                conn = await self._connect()
                async with asyncio.timeout(self._connect_timeout + 1.0):
                    await conn.execute("select 1")
            except Exception:
                await self._close()
                return False
        return True

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        async with asyncio.timeout(self._connect_timeout + 1.0):
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, connect_timeout=max(2, round(self._connect_timeout)), autocommit=True
            )
            await set_timeouts(conn, self._statement_timeout_ms)
        self._conn = conn
        return conn

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _append(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[Prepared], skip: Callable[[Prepared], bool]
    ) -> tuple[list[str], int]:
        async with conn.transaction(), conn.cursor() as cur:
            self._phase = "head"
            await cur.execute(_LOCK_HEAD)
            head = await cur.fetchone()
            if head is None:
                raise ChainBroken("inference_log_chain_head has no row")
            seq, prev_hash, chain_id, last_alg = head
            if last_alg == HASH_HMAC and self._key is None:
                raise ChainBroken(_NO_KEY)
            self._phase = "existing"
            await cur.execute(
                "select request_id from inference_log where request_id = any(%s)", ([p.request_id for p in rows],)
            )
            seen = {row[0] for row in await cur.fetchall()}
            hash_alg = HASH_HMAC if self._key is not None else HASH_SHA256
            states: list[str] = []
            params: list[list[Any]] = []
            for prepared in rows:
                if prepared.request_id in seen:
                    states.append("existing")  # already logged (a replay after a crash), or repeated in the batch
                    continue
                if skip(prepared):
                    states.append("skipped")
                    continue
                seen.add(prepared.request_id)
                seq += 1
                link = row_hash(hash_alg, self._key, prev_hash, prepared.canonical)
                params.append([seq, *insert_values(prepared), prev_hash, link, hash_alg])
                prev_hash = link
                states.append("inserted")
            self._phase = "insert"
            if params:
                await cur.executemany(_INSERT, params)  # pipelined: one round trip for the batch
                if cur.rowcount != len(params):  # ON CONFLICT skipped a row: the chain would have a gap
                    raise ChainBroken("a request id was logged concurrently outside the chain head lock")
                await cur.execute(
                    "update inference_log_chain_head set seq = %s, row_hash = %s where id", (seq, prev_hash)
                )
            self._phase = "commit"
        self.head = ChainHead(str(chain_id), int(seq), str(prev_hash))
        return states, len(params)


def _broken(conn: psycopg.AsyncConnection[Any] | None) -> bool:
    return conn is None or conn.closed or conn.broken
