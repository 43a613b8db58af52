"""The writer: group commit into the keyed chain, per-row failure classification, spool, background replay.

One task per process drains a queue and writes every record waiting at that moment in one transaction, so
concurrent requests share commits. :meth:`InferenceLogWriter.record` returns within ``record_timeout`` with the
row's :class:`Durability`, or raises :class:`AuditWriteError` (:class:`AuditTimeoutError` on timeout).

Failures are classified per row, so no row can block the log:

* **refused** (data or integrity error, program limit): the batch is retried row by row; a row refused alone is
  **quarantined** (``inference_log_quarantine``, else the local quarantine file) and its caller gets
  ``QUARANTINED``; the rest of the batch commits.
* **timed out** after the chain head was locked (statement or lock timeout, or the writer's own deadline): the
  batch is retried row by row (the spool replay halves its chunk down to 1 instead); a row that times out alone,
  on a server that still answers ``select 1``, is the culprit and is quarantined.
* **busy** (the chain head lock itself timed out, serialisation failure): nobody's fault; retried after a
  pause, the callers' own deadlines bound the wait; ``stalled`` is true meanwhile.
* **unavailable** (connection refused or lost, server shutdown, disk full, schema or chain head broken, a commit
  whose outcome is unknown): only these rows go to the fsynced spool; the writer is ``degraded``.
* a row larger than ``max_row_bytes`` is quarantined without being offered to PostgreSQL.

Spool replay runs as a background task, never in :meth:`~InferenceLogWriter.start`: while it is behind
(``replaying``), new records are appended to the spool, behind the older ones, and acknowledged ``SPOOLED``; the
replay commits the spool in file and line order, then — in the same event-loop step in which it finds the last
file's end — switches back to direct commits. The chain order is thus arrival order and no spooled row can be
overtaken or lost. Replay is idempotent (rows already logged are skipped; quarantine entries are not repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from riverbed.inference_log_schema import apply_migrations
from riverbed.settings import Environment, RiverbedSettings
from serving.inference_log.chain import (
    ChainKeyError,
    Checkpointer,
    CheckpointSink,
    checkpoint_sink,
    key_id,
    load_chain_key,
)
from serving.inference_log.connection import ChainConnection, set_timeouts
from serving.inference_log.failures import (
    ChainBroken,
    Failure,
    Halted,
    Kind,
    Outcome,
    Unavailable,
    describe,
)
from serving.inference_log.quarantine import (
    LOCAL_QUARANTINE_FILE,
    LocalQuarantine,
    QuarantineEntry,
    entry_for,
    entry_for_oversized_line,
)
from serving.inference_log.records import (
    AuditTimeoutError,
    AuditWriteError,
    Durability,
    InferenceRecord,
    Prepared,
    from_content,
    prepare,
)
from serving.inference_log.spool import Spool

logger = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0
_BUSY_RETRY_SECONDS = 0.1
_MIGRATION_TIMEOUT_S = 10.0
DEFAULT_MAX_ROW_BYTES = 32 * 2**20


@dataclass
class _Pending:
    prepared: Prepared
    future: asyncio.Future[Durability]
    abandoned: bool = False  # the caller already got its timeout error: do not write it


_STOP = object()


def _never(_prepared: Prepared) -> bool:
    return False


class InferenceLogWriter:
    """Group-committing, quarantining, spooling writer of the inference log; one per process.

    ``pool`` is an :class:`AsyncConnectionPool` on the same DSN for read queries (audit, API keys): every one of
    its connections has ``statement_timeout`` and ``lock_timeout`` = ``statement_timeout_ms``. The writer itself
    uses one dedicated connection with the same timeouts.

    ``chain_key``: the HMAC key of the chain (None writes unkeyed SHA-256 rows, for tools and old tests; a writer
    without a key refuses to extend a keyed chain and stays degraded). ``checkpoints``: where signed checkpoints
    of the chain head go (a directory or a :class:`CheckpointSink`; needs the key), every
    ``checkpoint_interval`` seconds while the head moves, at start and at stop. ``quarantine_file``: the local
    fallback of the quarantine (default ``<spool_dir>/quarantine.jsonl``).
    """

    def __init__(
        self,
        dsn: str,
        spool_dir: Path,
        *,
        pool_size: int = 4,
        max_batch: int = 500,
        connect_timeout: float = 2.0,
        statement_timeout_ms: int = 5000,
        record_timeout: float = 15.0,
        chain_key: bytes | None = None,
        checkpoints: CheckpointSink | Path | None = None,
        checkpoint_interval: float = 60.0,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
        quarantine_file: Path | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if statement_timeout_ms < 1 or record_timeout <= 0 or checkpoint_interval <= 0 or max_row_bytes < 1024:
            raise ValueError("timeouts and the checkpoint interval must be positive, max_row_bytes at least 1024")
        if chain_key is not None and len(chain_key) < 16:
            raise ChainKeyError("the chain key must be at least 16 bytes")
        self._dsn = dsn
        self._max_batch = max_batch
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._record_timeout = record_timeout
        self._key = chain_key
        self._db = ChainConnection(
            dsn, key=chain_key, connect_timeout=connect_timeout, statement_timeout_ms=statement_timeout_ms
        )
        sink = checkpoint_sink(checkpoints)
        self._has_sink = sink is not None
        self._checkpointer = Checkpointer(chain_key, sink) if chain_key is not None and sink is not None else None
        self._checkpoint_interval = checkpoint_interval
        self._max_row_bytes = max_row_bytes
        self._spool = Spool(Path(spool_dir))
        self._local_quarantine = LocalQuarantine(quarantine_file or Path(spool_dir) / LOCAL_QUARANTINE_FILE)
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            kwargs={"connect_timeout": max(2, round(connect_timeout))},
            configure=self._configure_pool_connection,  # statement and lock timeouts on every connection
            check=AsyncConnectionPool.check_connection,
            timeout=max(connect_timeout, 1.0) + 3.0,
            reconnect_timeout=60.0,
            name="inference-log",
        )
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._stop_event = asyncio.Event()
        self._migrated = False
        self._accepting = False
        self._unavailable = False
        self._replaying = False
        self._stalled = False
        self._uncounted: list[Path] = []
        self._last_error: str | None = None
        self._commits = 0
        self._rows_committed = 0
        self._quarantined = 0

    @classmethod
    def from_settings(
        cls, dsn: str, settings: RiverbedSettings, *, create_key: bool | None = None, **options: Any
    ) -> InferenceLogWriter:
        """A writer configured from settings: spool, pool size, timeouts, chain key, checkpoints.

        The key comes from ``audit_chain_key`` or the key file; a missing key file is created when ``create_key``
        (default: the ``local`` environment). Outside it, a missing key raises :class:`ChainKeyError`.
        """
        key = load_chain_key(settings, create=create_key)
        if key is None:
            raise ChainKeyError(
                "no inference-log chain key: set RIVERBED_AUDIT_CHAIN_KEY or create the key file "
                f"{settings.audit_chain_key_path} (0600)"
                + ("" if settings.env is Environment.LOCAL else f" (environment {settings.env.value})")
            )
        defaults: dict[str, Any] = {
            "pool_size": settings.inference_log_pool_size,
            "statement_timeout_ms": settings.database_statement_timeout_ms,
            "record_timeout": settings.audit_record_timeout_seconds,
            "chain_key": key,
            "checkpoints": settings.audit_checkpoint_path,
            "checkpoint_interval": settings.audit_checkpoint_interval_seconds,
        }
        return cls(dsn, settings.audit_spool_path, **{**defaults, **options})

    # -------------------------------------------------------------------------------------------- public state
    @property
    def degraded(self) -> bool:
        """True while new records go to the spool: PostgreSQL unreachable, or the spool not yet replayed."""
        return self._unavailable or self._replaying

    @property
    def unavailable(self) -> bool:
        """True while PostgreSQL is unreachable (what API-key caching should treat as "database down")."""
        return self._unavailable

    @property
    def replaying(self) -> bool:
        """True until the spool is replayed (in the background); new records are spooled behind it meanwhile."""
        return self._replaying

    @property
    def stalled(self) -> bool:
        """True while the last write attempt found the chain head locked (records wait, then time out)."""
        return self._stalled

    @property
    def ready(self) -> bool:
        """Records are being committed directly (not degraded, not stalled)."""
        return not self.degraded and not self._stalled

    @property
    def status(self) -> str:
        """``ok``, ``unavailable``, ``replaying`` or ``stalled`` (for /readyz)."""
        if self._unavailable:
            return "unavailable"
        if self._replaying:
            return "replaying"
        return "stalled" if self._stalled else "ok"

    @property
    def spool_depth(self) -> int:
        """Records waiting in the spool."""
        return max(0, self._spool.depth)

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def commits(self) -> int:
        """Write transactions committed by this writer (group commits and replays)."""
        return self._commits

    @property
    def rows_committed(self) -> int:
        return self._rows_committed

    @property
    def quarantined(self) -> int:
        """Rows this writer quarantined (table or local file) since it was created."""
        return self._quarantined

    @property
    def keyed(self) -> bool:
        return self._key is not None

    @property
    def key_id(self) -> str | None:
        """Public fingerprint of the chain key (None if unkeyed)."""
        return key_id(self._key) if self._key is not None else None

    @property
    def checkpoints_written(self) -> int:
        return self._checkpointer.written if self._checkpointer is not None else 0

    @property
    def checkpoint_error(self) -> str | None:
        """The last failure to write a checkpoint (None once one succeeds)."""
        return self._checkpointer.error if self._checkpointer is not None else None

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Migrate, open the pool and the writer connection; returns without replaying the spool.

        A non-empty spool is replayed by a background task (``replaying`` and ``degraded`` until it is done);
        if PostgreSQL is unreachable the writer starts degraded and keeps retrying in the background.
        """
        if self._task is not None:
            raise RuntimeError("the writer is already started")
        files = self._spool.pending_files()
        self._stop_event.clear()
        await self.pool.open(wait=False)
        self._accepting = True
        if self._key is None:
            logger.warning("the inference log is not keyed: rows are chained with plain SHA-256")
        elif not self._has_sink:
            logger.warning("no checkpoint sink: deleting the newest rows of the log would go unnoticed")
        self._uncounted = files
        self._replaying = bool(files)
        try:
            await self._probe()
        except (psycopg.Error, OSError, TimeoutError, ChainBroken) as error:
            self._enter_unavailable(error)
        if self._replaying:
            self._start_recovery()
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")
        if self._checkpointer is not None:
            self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="inference-log-checkpoints")

    async def stop(self) -> None:
        """Flush everything queued (commit or spool), stop the replay (the rest stays spooled), checkpoint, close."""
        self._accepting = False
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self._stop_event.set()
        for task in (self._recovery_task, self._checkpoint_task):
            if task is None:
                continue
            if task is self._recovery_task:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=self._db.commit_timeout + 1.0)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._recovery_task = self._checkpoint_task = None
        await self._checkpoint()
        await self._db.close()
        self._spool.close()
        await self.pool.close()

    async def wait_replayed(self, within: float | None = None) -> bool:
        """Wait until the spool is replayed and PostgreSQL reachable; False if ``within`` seconds passed first."""
        deadline = None if within is None else time.monotonic() + within
        while self.degraded:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def ping(self) -> bool:
        """True if PostgreSQL answers ``SELECT 1`` within about a second."""
        try:
            async with asyncio.timeout(1.0), self.pool.connection(timeout=1.0) as conn:
                await conn.execute("select 1")
        except Exception:  # any failure means "not reachable"
            return False
        return True

    async def record(self, rec: InferenceRecord) -> Durability:
        """Return once ``rec`` is durable: COMMITTED, SPOOLED or QUARANTINED (see :class:`Durability`).

        Raises :class:`AuditWriteError` if it is durable nowhere (its ``reason`` names why), and
        :class:`AuditTimeoutError` if that is not settled within ``record_timeout`` seconds; the record is
        then dropped unless its transaction was already under way.
        """
        if not self._accepting:
            raise AuditWriteError("the inference log writer is not running", reason="not_running")
        prepared = prepare(rec, max_bytes=self._max_row_bytes)
        future: asyncio.Future[Durability] = asyncio.get_running_loop().create_future()
        pending = _Pending(prepared, future)
        self._queue.put_nowait(pending)
        try:
            async with asyncio.timeout(self._record_timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            if future.done():
                return future.result()
            pending.abandoned = True
            detail = self._last_error or ("the chain head is locked" if self._stalled else "the writer is behind")
            raise AuditTimeoutError(
                f"request {prepared.request_id}: not recorded within {self._record_timeout:g} s ({detail})"
            ) from None

    # -------------------------------------------------------------------------------------------- the writer task
    async def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            try:
                item = await self._queue.get()
                while True:
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= self._max_batch or self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                if batch:
                    await self._handle(batch)
            except Exception as error:  # pragma: no cover - a bug must not kill the only writer task
                logger.exception("inference log writer: unexpected error")
                for pending in batch:
                    _resolve(pending, AuditWriteError(f"inference log writer failed: {describe(error)}"))

    async def _handle(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.abandoned]
        if self.degraded:
            self._divert(batch)  # synchronous: see the module docstring on replay order
            return
        rows: list[_Pending] = []
        for pending in batch:
            if pending.prepared.oversized:
                _resolve(pending, await self._quarantine(pending.prepared, self._too_large(pending.prepared)))
            else:
                rows.append(pending)
        while rows:
            by_prepared = {id(p.prepared): p for p in rows}

            def abandoned(prepared: Prepared, by_prepared: dict[int, _Pending] = by_prepared) -> bool:
                return by_prepared[id(prepared)].abandoned

            try:
                outcomes = await self._commit_in_order([p.prepared for p in rows], halve=False, skip=abandoned)
            except Halted as halt:
                for pending, outcome in zip(rows, halt.outcomes, strict=False):
                    _resolve(pending, outcome)
                rows = [p for p in rows[halt.index :] if not p.abandoned]
                if halt.failure.kind is Kind.BUSY:
                    self._set_stalled(halt.failure)
                    await asyncio.sleep(_BUSY_RETRY_SECONDS)
                    continue
                self._enter_unavailable(halt.failure)
                self._divert(rows)
                return
            for pending, outcome in zip(rows, outcomes, strict=True):
                _resolve(pending, outcome)
            self._stalled = False
            return

    def _divert(self, batch: list[_Pending]) -> None:
        """Degraded: spool the batch (fsynced) in order; an oversized record goes to the local quarantine file."""
        spooled: list[_Pending] = []
        for pending in batch:
            if pending.abandoned:
                continue
            if pending.prepared.oversized:
                _resolve(
                    pending, self._quarantine_locally(entry_for(pending.prepared, self._too_large(pending.prepared)))
                )
            else:
                spooled.append(pending)
        if not spooled:
            return
        try:
            self._spool.append([p.prepared.canonical for p in spooled])
        except OSError as error:
            logger.error("inference log: cannot spool %d records: %s", len(spooled), error)
            failure = AuditWriteError(f"PostgreSQL unavailable ({self._last_error}) and spooling failed ({error})")
            for pending in spooled:
                _resolve(pending, failure)
            return
        for pending in spooled:
            _resolve(pending, Durability.SPOOLED)

    def _too_large(self, prepared: Prepared) -> str:
        size = len(prepared.canonical.encode("utf-8", "surrogatepass"))
        return f"too large: {size:,} bytes of JSON, over the writer's limit of {self._max_row_bytes:,} bytes"

    # -------------------------------------------------------------------------------------------- classification
    async def _commit_in_order(
        self, rows: list[Prepared], *, halve: bool, skip: Callable[[Prepared], bool] = _never
    ) -> list[Outcome]:
        """Write ``rows`` in order, quarantining the ones PostgreSQL refuses or that time out alone.

        A refused batch is retried row by row; a timed-out batch row by row too, or in halves (``halve``, for
        replay chunks). Raises :class:`Halted` on a busy head or unavailability: ``rows[index:]`` are unwritten.
        """
        outcomes: list[Outcome] = [Durability.COMMITTED] * len(rows)
        segments: deque[tuple[int, int]] = deque([(0, len(rows))])
        while segments:
            lo, hi = segments.popleft()
            try:
                states, inserted = await self._db.append(rows[lo:hi], skip)
            except Failure as failure:
                if failure.kind in (Kind.BUSY, Kind.UNAVAILABLE):
                    raise Halted(lo, failure, outcomes[:lo]) from None
                if hi - lo > 1:
                    if failure.kind is Kind.TIMEOUT and halve:
                        mid = (lo + hi) // 2
                        parts = [(lo, mid), (mid, hi)]
                    else:
                        parts = [(index, index + 1) for index in range(lo, hi)]
                    logger.warning(
                        "inference log: a batch of %d %s; retrying it in %d parts",
                        hi - lo,
                        "timed out" if failure.kind is Kind.TIMEOUT else "was refused",
                        len(parts),
                    )
                    segments.extendleft(reversed(parts))
                    continue
                if failure.kind is Kind.TIMEOUT and not await self._db.alive():
                    raise Halted(lo, Failure(Kind.UNAVAILABLE, failure.message), outcomes[:lo]) from None
                outcomes[lo] = await self._quarantine(rows[lo], f"{failure.kind.value}: {failure.message}")
                continue
            self._commits += 1
            self._rows_committed += inserted
            for index, state in zip(range(lo, hi), states, strict=True):
                if state == "existing":
                    outcomes[index] = AuditWriteError(
                        f"request {rows[index].request_id} is already logged", reason="duplicate"
                    )
                elif state == "skipped":
                    outcomes[index] = AuditTimeoutError(f"request {rows[index].request_id}: abandoned")
        return outcomes

    async def _quarantine(self, prepared: Prepared, reason: str) -> Outcome:
        """Keep a row outside the chain: in ``inference_log_quarantine``, else in the local quarantine file."""
        return await self._quarantine_entry(entry_for(prepared, reason))

    async def _quarantine_entry(self, entry: QuarantineEntry) -> Outcome:
        if not self._unavailable:
            try:
                await self._db.insert_quarantine(entry)
            except Exception as error:  # the fallback file keeps it; the next write classifies the failure
                logger.error("cannot insert into inference_log_quarantine (%s); using the local file", describe(error))
            else:
                self._quarantined += 1
                logger.error("inference log: quarantined request %s (%s)", entry.request_id, entry.reason)
                return Durability.QUARANTINED
        return self._quarantine_locally(entry)

    def _quarantine_locally(self, entry: QuarantineEntry) -> Outcome:
        try:
            self._local_quarantine.append(entry)
        except OSError as error:
            logger.error("cannot quarantine request %s anywhere: %s", entry.request_id, error)
            return AuditWriteError(
                f"request {entry.request_id}: refused ({entry.reason}) and not quarantined ({error})"
            )
        self._quarantined += 1
        logger.error(
            "inference log: quarantined request %s in %s (%s)",
            entry.request_id,
            self._local_quarantine.path,
            entry.reason,
        )
        return Durability.QUARANTINED

    # -------------------------------------------------------------------------------------------- recovery
    def _enter_unavailable(self, error: BaseException) -> None:
        self._last_error = error.message if isinstance(error, Failure) else describe(error)
        if not self._unavailable:
            logger.error("inference log unavailable, spooling to %s: %s", self._spool.directory, self._last_error)
        self._unavailable = True
        self._replaying = True  # whatever is spooled now is replayed before direct commits resume
        self._start_recovery()

    def _set_stalled(self, failure: Failure) -> None:
        if not self._stalled:
            logger.warning("inference log stalled: %s", failure.message)
        self._stalled = True
        self._last_error = f"the chain head is locked ({failure.message})"

    def _start_recovery(self) -> None:
        if self._accepting and (self._recovery_task is None or self._recovery_task.done()):
            self._recovery_task = asyncio.create_task(self._recover(), name="inference-log-replay")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)

    async def _recover(self) -> None:
        """Background: count the spool, reconnect when needed, replay the spool, then leave degraded mode."""
        if self._uncounted:
            files, self._uncounted = self._uncounted, []
            self._spool.depth += await asyncio.to_thread(Spool.count_lines, files)
        if self._unavailable:
            await self._pause(_RETRY_SECONDS)  # it just failed: an immediate probe would (nearly) always fail too
        while not self._stop_event.is_set():
            if self._unavailable:
                try:
                    await self._probe()
                except Exception as error:
                    self._last_error = describe(error)
                    await self._pause(_RETRY_SECONDS)
                    continue
                self._unavailable = False
                logger.info("inference log reachable again; replaying the spool")
                with contextlib.suppress(Exception):
                    await self.pool.check()
            try:
                if await self._replay_spool():
                    return
            except Unavailable as error:
                self._enter_unavailable(error)
                await self._pause(_RETRY_SECONDS)

    async def _probe(self) -> None:
        """Migrate (once), open the writer connection, read the chain head and checkpoint it; raises if unavailable."""
        if not self._migrated:
            await asyncio.wait_for(
                asyncio.to_thread(apply_migrations, self._dsn, connect_timeout=self._connect_timeout),
                timeout=self._connect_timeout + _MIGRATION_TIMEOUT_S,
            )
            self._migrated = True
        await self._db.read_head()
        await self._checkpoint()

    async def _replay_spool(self) -> bool:
        """Commit every claimable spool file in order; True once none is left (then direct commits resume).

        Raises :class:`Unavailable`; returns False if the writer is stopping (the rest stays spooled).
        """
        done: set[Path] = set()
        skipped: list[Path] = []
        while True:
            files = [path for path in self._spool.pending_files() if path not in done]
            if not files:
                break
            for path in files:
                done.add(path)
                with self._spool.claim(path) as handle:
                    if handle is None:
                        logger.info("spool %s belongs to another live writer; not replaying it", path.name)
                        skipped.append(path)
                        continue
                    if not await self._replay_file(path, handle):
                        return False
                    self._spool.remove(path)
        # No await since the last file's end was read: no record can have been spooled behind it.
        self._spool.depth = Spool.count_lines(skipped) if skipped else 0
        self._replaying = False
        self._last_error = None
        logger.info("inference log spool replayed; committing directly")
        return True

    async def _replay_file(self, path: Path, handle: IO[bytes]) -> bool:
        chunk: list[Prepared] = []
        replayed = 0
        while True:
            line = handle.readline(self._max_row_bytes + 1)
            if len(line) > self._max_row_bytes and not line.endswith(b"\n"):
                entry = entry_for_oversized_line(handle, line, self._max_row_bytes)
                if entry is not None:
                    await self._quarantine_spooled(entry)
                continue
            if line and line.endswith(b"\n"):
                if line.strip():
                    try:
                        chunk.append(from_content(json.loads(line)))
                    except ValueError as error:
                        text = line.decode("utf-8", "replace").rstrip("\n")
                        await self._quarantine_spooled(
                            entry_for(None, f"unreadable spool line in {path.name}: {error}", raw=text)
                        )
                if len(chunk) < self._max_batch:
                    continue
            elif line:  # a torn last write: it was never acknowledged, so no caller was told SPOOLED
                logger.warning("spool %s: ignoring a partial last line", path.name)
            if not chunk:
                break
            await self._replay_chunk(chunk)
            self._spool.depth -= len(chunk)
            replayed += len(chunk)
            chunk = []
            if self._stop_event.is_set():
                return False
        if replayed:
            logger.info("replayed %d spooled records from %s", replayed, path.name)
        return True

    async def _quarantine_spooled(self, entry: QuarantineEntry) -> None:
        outcome = await self._quarantine_entry(entry)
        if isinstance(outcome, AuditWriteError):
            raise Unavailable(str(outcome))
        self._spool.depth -= 1

    async def _replay_chunk(self, chunk: list[Prepared]) -> None:
        rows = chunk
        while rows:
            try:
                outcomes = await self._commit_in_order(rows, halve=True)
            except Halted as halt:
                _check_replayed(halt.outcomes)
                if halt.failure.kind is Kind.BUSY and not self._stop_event.is_set():
                    self._set_stalled(halt.failure)
                    await self._pause(_BUSY_RETRY_SECONDS)
                    rows = rows[halt.index :]
                    continue
                raise Unavailable(halt.failure.message) from None
            _check_replayed(outcomes)
            self._stalled = False
            return

    # -------------------------------------------------------------------------------------------- checkpoints
    async def _checkpoint_loop(self) -> None:
        while not self._stop_event.is_set():
            await self._pause(self._checkpoint_interval)
            if not self._stop_event.is_set():
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Sign and append the last committed chain head (unless it is already the last checkpoint)."""
        head, database = self._db.head, self._db.database
        if self._checkpointer is not None and head is not None and database is not None:
            await self._checkpointer.write(
                database=database, chain_id=head.chain_id, seq=head.seq, row_hash=head.row_hash
            )

    async def _configure_pool_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await set_timeouts(conn, self._statement_timeout_ms)


def _check_replayed(outcomes: list[Outcome]) -> None:
    """A replayed row must be committed, already logged or quarantined; otherwise the spool must stay."""
    for outcome in outcomes:
        if isinstance(outcome, AuditWriteError) and outcome.reason != "duplicate":
            raise Unavailable(str(outcome))


def _resolve(pending: _Pending, outcome: Outcome | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
