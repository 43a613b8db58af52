"""The inference log: every gateway request as one hash-chained row in PostgreSQL.

:class:`InferenceLogWriter` group-commits: one task per process drains a queue and writes every record waiting
at that moment in one transaction, so concurrent requests share commits. :meth:`InferenceLogWriter.record`
returns only once the row is durable: committed in PostgreSQL, or, while PostgreSQL is unreachable, appended
and fsynced to a local JSON-lines spool that is replayed (in order, without duplicates) when it comes back.

Hash chain: ``row_hash = sha256(prev_hash + canonical JSON of the row's content)``; the first row's prev_hash
is 64 zeros; the head (last seq and hash) lives in a one-row table locked ``FOR UPDATE`` by every write
transaction, so several gateway processes extend one chain. :func:`verify_chain` recomputes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from riverbed.inference_log_schema import apply_migrations

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
SPOOL_PREFIX = "inference-log-"
SPOOL_SUFFIX = ".spool.jsonl"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_RETRY_SECONDS = 1.0
_STATEMENT_TIMEOUT_MS = 5000
_COMMIT_TIMEOUT_S = 10.0

# The row's content fields, in InferenceRecord order: exactly what the hash covers.
CONTENT_FIELDS = (
    "request_id",
    "received_at",
    "dataset",
    "route",
    "status",
    "http_status",
    "client_key_id",
    "model_name",
    "model_version",
    "mlflow_run_id",
    "training_set_commit_id",
    "data_commit_ids",
    "dagster_run_id",
    "inputs",
    "outputs",
    "labels",
    "error",
    "timings_ms",
)
_JSONB_FIELDS = frozenset({"data_commit_ids", "inputs", "outputs", "timings_ms"})

_INSERT = (
    f"insert into inference_log (seq, {', '.join(CONTENT_FIELDS)}, prev_hash, row_hash) "
    f"values (%s, {', '.join(['%s'] * len(CONTENT_FIELDS))}, %s, %s) "
    "on conflict (request_id) do nothing"
)


class RequestStatus(enum.StrEnum):
    """Outcome of a request: ``ok``; ``rejected`` (bad input, 4xx); ``failed`` (server side, e.g. MLServer down)."""

    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


class Durability(enum.Enum):
    """Where a recorded row is durable when :meth:`InferenceLogWriter.record` returns."""

    COMMITTED = "committed"
    SPOOLED = "spooled"


class AuditWriteError(RuntimeError):
    """The record could be neither committed nor spooled (or is not a valid record)."""


@dataclass
class InferenceRecord:
    """One gateway request, as recorded. Dict and list fields hold anything JSON-serialisable."""

    request_id: str
    received_at: dt.datetime
    dataset: str | None
    route: str
    status: RequestStatus
    http_status: int
    client_key_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    mlflow_run_id: str | None = None
    training_set_commit_id: str | None = None
    data_commit_ids: dict[str, str] = field(default_factory=dict)
    dagster_run_id: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainReport:
    """Result of :func:`verify_chain`."""

    ok: bool
    rows_checked: int
    problems: list[str]


# ----------------------------------------------------------------------------------------------- canonical form
def format_time(value: dt.datetime) -> str:
    """Microsecond ISO UTC text of a timestamp (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def _jsonb_float(text: str) -> float | int:
    """Parse a JSON number the way it reads back from jsonb (numeric never prints exponents or negative zero)."""
    lowered = text.lower()
    if "e" in lowered and "e-" not in lowered:
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    value = float(text)
    return 0.0 if value == 0 else value


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(content: dict[str, Any]) -> str:
    """The hashed text of a row's content: sorted keys, no spaces, UTF-8."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Prepared:
    """A record normalised to exactly what PostgreSQL will store and give back: its content and canonical text."""

    content: dict[str, Any]
    canonical: str

    @property
    def request_id(self) -> str:
        return str(self.content["request_id"])


def _prepare(rec: InferenceRecord) -> _Prepared:
    raw = {name: getattr(rec, name) for name in CONTENT_FIELDS}
    raw["received_at"] = format_time(rec.received_at)
    raw["status"] = RequestStatus(rec.status).value
    raw["labels"] = [str(label) for label in rec.labels]
    try:
        text = json.dumps(raw, default=_json_default, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as error:  # UnicodeEncodeError is a ValueError
        raise AuditWriteError(f"record {rec.request_id}: not JSON-serialisable ({error})") from error
    if "\\u0000" in text:
        raise AuditWriteError(f"record {rec.request_id}: contains a NUL character, which PostgreSQL cannot store")
    return _from_content(json.loads(text, parse_float=_jsonb_float))


def _from_content(content: dict[str, Any]) -> _Prepared:
    missing = [name for name in CONTENT_FIELDS if name not in content]
    if missing:
        raise ValueError(f"record lacks fields {missing}")
    content = {name: content[name] for name in CONTENT_FIELDS}
    return _Prepared(content=content, canonical=canonical_json(content))


def _content_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The content fields of a row read back from PostgreSQL, in canonical form."""
    content = {name: row[name] for name in CONTENT_FIELDS}
    content["received_at"] = format_time(row["received_at"])
    return content


def _params(seq: int, prepared: _Prepared, prev_hash: str, row_hash: str) -> list[Any]:
    values: list[Any] = [seq]
    for name in CONTENT_FIELDS:
        value = prepared.content[name]
        if name == "received_at":
            value = parse_time(value)
        elif name in _JSONB_FIELDS:
            value = Jsonb(value)
        values.append(value)
    values.extend([prev_hash, row_hash])
    return values


# --------------------------------------------------------------------------------------------------------- spool
class _Spool:
    """Fsynced JSON-lines spool files in one directory; this process appends to its own, locked, file.

    Files are replayed in name order (creation time); a file whose lock another live process holds is skipped.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._own: Path | None = None
        self._handle: IO[bytes] | None = None
        self.depth = 0

    def pending_files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob(f"{SPOOL_PREFIX}*{SPOOL_SUFFIX}"))

    def count_pending(self) -> int:
        total = 0
        for path in self.pending_files():
            with contextlib.suppress(OSError), path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip())
        return total

    def append(self, lines: list[str]) -> None:
        """Append one line per record and fsync once; raises OSError if the disk refuses."""
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{SPOOL_PREFIX}{time.time_ns():020d}-{os.getpid()}{SPOOL_SUFFIX}"
            handle = path.open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_dir(self.directory)
            self._own, self._handle = path, handle
        payload = "".join(line + "\n" for line in lines).encode("utf-8")
        self._handle.write(payload)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.depth += len(lines)

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[IO[bytes] | None]:
        """Hold the lock of a spool file for replay: yields a read handle, or None if another process holds it."""
        if path == self._own and self._handle is not None:
            with path.open("rb") as reader:
                yield reader
            return
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield handle
        finally:
            handle.close()

    def remove(self, path: Path) -> None:
        """Delete a fully replayed file (the caller still holds its lock)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _fsync_dir(self.directory)
        if path == self._own and self._handle is not None:
            self._handle.close()
            self._own, self._handle = None, None

    def set_aside(self, path: Path, line: bytes, reason: str) -> None:
        """Keep a line that cannot be replayed in a ``.rejected`` file instead of losing it."""
        logger.error("spool %s: cannot replay a record (%s); kept in %s.rejected", path.name, reason, path.name)
        with (self.directory / f"{path.name}.rejected").open("ab") as out:
            out.write(line if line.endswith(b"\n") else line + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._own = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------------- writer
@dataclass
class _Pending:
    prepared: _Prepared
    future: asyncio.Future[Durability]


_STOP = object()


class _Unavailable(Exception):
    """PostgreSQL did not take a batch (connection lost, timeout, server error); the writer is now degraded."""


class _Rejected(Exception):
    """PostgreSQL refused a batch's data (data or integrity error); the connection is still usable."""


def _outcome(pending: _Pending, existing: set[str]) -> Durability | AuditWriteError:
    if pending.prepared.request_id in existing:
        return AuditWriteError(f"request {pending.prepared.request_id} is already logged")
    return Durability.COMMITTED


class InferenceLogWriter:
    """Group-committing, spooling writer of the inference log; one per process.

    ``pool`` is an :class:`AsyncConnectionPool` on the same DSN for read queries (audit, API keys); the writer
    task itself uses one dedicated connection with statement and lock timeouts.
    """

    def __init__(
        self,
        dsn: str,
        spool_dir: Path,
        *,
        pool_size: int = 4,
        max_batch: int = 500,
        connect_timeout: float = 2.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._dsn = dsn
        self._max_batch = max_batch
        self._connect_timeout = connect_timeout
        self._spool = _Spool(Path(spool_dir))
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            kwargs={"connect_timeout": max(2, round(connect_timeout))},
            check=AsyncConnectionPool.check_connection,
            timeout=max(connect_timeout, 1.0) + 3.0,
            reconnect_timeout=60.0,
            name="inference-log",
        )
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._next_probe = 0.0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._migrated = False
        self._accepting = False
        self._degraded = False
        self._last_error: str | None = None
        self._commits = 0
        self._rows_committed = 0

    # -------------------------------------------------------------------------------------------- public state
    @property
    def degraded(self) -> bool:
        """True while records go to the spool because PostgreSQL is unreachable."""
        return self._degraded

    @property
    def spool_depth(self) -> int:
        """Records waiting in the spool."""
        return self._spool.depth

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

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Migrate, open the pool and replay the spool; if PostgreSQL is unreachable, start degraded and retry."""
        if self._task is not None:
            raise RuntimeError("the writer is already started")
        self._spool.depth = self._spool.count_pending()
        await self.pool.open(wait=False)
        self._accepting = True
        try:
            await self._probe()
        except (psycopg.Error, OSError, TimeoutError) as error:
            self._enter_degraded(error)
            self._next_probe = time.monotonic() + _RETRY_SECONDS
        else:
            with contextlib.suppress(_Unavailable):
                await self._replay_spool()
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")

    async def stop(self) -> None:
        """Flush everything queued (commit or spool), then close the connection and the pool."""
        self._accepting = False
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(BaseException):
                await self._probe_task
            self._probe_task = None
        await self._close_conn()
        self._spool.close()
        await self.pool.close()

    async def ping(self) -> bool:
        """True if PostgreSQL answers ``SELECT 1`` within about a second."""
        try:
            async with asyncio.timeout(1.0), self.pool.connection(timeout=1.0) as conn:
                await conn.execute("select 1")
        except Exception:  # any failure means "not reachable"
            return False
        return True

    async def record(self, rec: InferenceRecord) -> Durability:
        """Return once ``rec`` is committed (COMMITTED) or fsynced to the spool (SPOOLED).

        Raises :class:`AuditWriteError` if neither is possible, or if the record cannot be stored at all.
        """
        if not self._accepting:
            raise AuditWriteError("the inference log writer is not running")
        prepared = _prepare(rec)
        future: asyncio.Future[Durability] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(prepared, future))
        return await future

    # -------------------------------------------------------------------------------------------- the writer task
    async def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                if self._degraded:
                    await self._poll_recovery()
                    if self._degraded:
                        wait = 0.05 if self._probe_task is not None else self._next_probe - time.monotonic()
                        try:
                            first = await asyncio.wait_for(self._queue.get(), timeout=max(wait, 0.01))
                        except TimeoutError:
                            continue
                    else:
                        first = await self._queue.get()
                else:
                    first = await self._queue.get()
                batch: list[_Pending] = []
                item = first
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
            except Exception:  # pragma: no cover - a bug must not kill the only writer task
                logger.exception("inference log writer: unexpected error")

    async def _handle(self, batch: list[_Pending]) -> None:
        if self._degraded:
            self._spool_batch(batch)
            return
        try:
            existing = await self._commit([p.prepared for p in batch])
        except _Unavailable:
            self._spool_batch(batch)  # now degraded
            return
        except _Rejected:
            await self._handle_one_by_one(batch)
            return
        for pending in batch:
            _resolve(pending, _outcome(pending, existing))

    async def _handle_one_by_one(self, batch: list[_Pending]) -> None:
        """PostgreSQL refused a batch's data: commit its records singly so one bad record fails alone."""
        for index, pending in enumerate(batch):
            try:
                existing = await self._commit([pending.prepared])
            except _Unavailable:
                self._spool_batch(batch[index:])
                return
            except _Rejected as error:
                logger.error("PostgreSQL refused request %s: %s", pending.prepared.request_id, error)
                _resolve(pending, AuditWriteError(f"PostgreSQL refused request {pending.prepared.request_id}: {error}"))
                continue
            _resolve(pending, _outcome(pending, existing))

    def _spool_batch(self, batch: list[_Pending]) -> None:
        try:
            self._spool.append([p.prepared.canonical for p in batch])
        except OSError as error:
            logger.error("inference log: cannot spool %d records: %s", len(batch), error)
            failure = AuditWriteError(f"PostgreSQL unreachable ({self._last_error}) and spooling failed ({error})")
            for pending in batch:
                _resolve(pending, failure)
            return
        for pending in batch:
            _resolve(pending, Durability.SPOOLED)

    def _drain_to_spool(self) -> None:
        """During a replay, answer waiting callers quickly: their records go to the end of the spool."""
        batch: list[_Pending] = []
        stop_seen = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                stop_seen = True
                break
            batch.append(item)
        if batch:
            self._spool_batch(batch)
        if stop_seen:
            self._queue.put_nowait(_STOP)  # the queue is empty now: the marker stays last

    # -------------------------------------------------------------------------------------------- recovery
    async def _probe(self) -> None:
        """Migrate (once) and open the writer connection; raises if PostgreSQL is not reachable."""
        if not self._migrated:
            await asyncio.wait_for(
                asyncio.to_thread(apply_migrations, self._dsn, connect_timeout=self._connect_timeout),
                timeout=self._connect_timeout + _COMMIT_TIMEOUT_S,
            )
            self._migrated = True
        try:
            await asyncio.wait_for(self._connect(), timeout=self._connect_timeout + 1.0)
        except BaseException:
            await self._close_conn()
            raise

    async def _poll_recovery(self) -> None:
        """Degraded: start a probe every ~1 s; once one succeeds, replay the spool and leave degraded mode."""
        if self._probe_task is None:
            if time.monotonic() >= self._next_probe:
                self._probe_task = asyncio.create_task(self._probe(), name="inference-log-probe")
            return
        if not self._probe_task.done():
            return
        task, self._probe_task = self._probe_task, None
        self._next_probe = time.monotonic() + _RETRY_SECONDS
        error = task.exception()
        if error is not None:
            self._last_error = f"{type(error).__name__}: {error}".strip()
            return
        try:
            await self._replay_spool()
        except _Unavailable:
            return

    async def _replay_spool(self) -> None:
        """Commit every claimable spool file in order, then leave degraded mode; raises :class:`_Unavailable`."""
        done: set[Path] = set()
        while True:
            files = [path for path in self._spool.pending_files() if path not in done]
            if not files:
                break
            for path in files:
                done.add(path)
                with self._spool.claim(path) as handle:
                    if handle is None:
                        logger.info("spool %s belongs to another live writer; not replaying it", path.name)
                        continue
                    await self._replay_file(path, handle)
                    self._spool.remove(path)
        self._spool.depth = self._spool.count_pending()
        if self._degraded:
            logger.info("inference log reachable again; spool replayed")
            with contextlib.suppress(Exception):
                await self.pool.check()
        self._degraded = False
        self._last_error = None

    async def _replay_file(self, path: Path, handle: IO[bytes]) -> None:
        chunk: list[_Prepared] = []
        replayed = 0
        while True:
            line = handle.readline()
            if line and line.endswith(b"\n"):
                if line.strip():
                    try:
                        chunk.append(_from_content(json.loads(line, parse_float=_jsonb_float)))
                    except ValueError as error:
                        self._spool.set_aside(path, line, str(error))
                if len(chunk) < self._max_batch:
                    continue
            elif line:  # a torn last write: it was never acknowledged, so no caller was told SPOOLED
                logger.warning("spool %s: ignoring a partial last line", path.name)
            if not chunk:
                break
            await self._replay_chunk(path, chunk)
            self._spool.depth = max(0, self._spool.depth - len(chunk))
            replayed += len(chunk)
            chunk = []
            self._drain_to_spool()  # may append to this very file: the loop reads on
        logger.info("replayed %d spooled records from %s", replayed, path.name)

    async def _replay_chunk(self, path: Path, chunk: list[_Prepared]) -> None:
        try:
            await self._commit(chunk)
        except _Rejected:
            for prepared in chunk:
                try:
                    await self._commit([prepared])
                except _Rejected as error:  # kept aside, never dropped: it would block the replay forever
                    self._spool.set_aside(path, prepared.canonical.encode("utf-8"), str(error))

    # -------------------------------------------------------------------------------------------- PostgreSQL
    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, connect_timeout=max(2, round(self._connect_timeout)), autocommit=True
        )
        await conn.execute(f"set statement_timeout = {_STATEMENT_TIMEOUT_MS}")
        await conn.execute(f"set lock_timeout = {_STATEMENT_TIMEOUT_MS}")
        self._conn = conn
        return conn

    async def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _enter_degraded(self, error: BaseException) -> None:
        self._last_error = f"{type(error).__name__}: {error}".strip()
        if not self._degraded:
            logger.error("inference log degraded, spooling to %s: %s", self._spool.directory, self._last_error)
        self._degraded = True
        self._next_probe = time.monotonic() + _RETRY_SECONDS

    async def _commit(self, batch: list[_Prepared]) -> set[str]:
        """Append ``batch`` to the chain in one transaction; returns the request ids that were already logged.

        Raises :class:`_Unavailable` (after entering degraded mode) if PostgreSQL did not take the batch, or
        :class:`_Rejected` if it refused the data (a data or integrity error: retrying would fail again).
        """
        try:
            conn = await self._connect()
            return await asyncio.wait_for(self._write(conn, batch), timeout=_COMMIT_TIMEOUT_S)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            # The data itself was refused (the transaction rolled back; the connection is fine).
            raise _Rejected(f"{type(error).__name__}: {error}".strip()) from error
        except (psycopg.Error, OSError, TimeoutError) as error:
            # The commit may or may not have happened: the batch is spooled and the replay skips what is there.
            await self._close_conn()
            self._enter_degraded(error)
            raise _Unavailable(str(error)) from error

    async def _write(self, conn: psycopg.AsyncConnection[Any], batch: list[_Prepared]) -> set[str]:
        ids = [p.request_id for p in batch]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("select seq, row_hash from inference_log_chain_head where id for update")
            head = await cur.fetchone()
            if head is None:
                raise psycopg.errors.DataException("inference_log_chain_head has no row")
            seq, prev_hash = head
            await cur.execute("select request_id from inference_log where request_id = any(%s)", (ids,))
            existing = {row[0] for row in await cur.fetchall()}
            seen = set(existing)
            params = []
            for prepared in batch:
                if prepared.request_id in seen:
                    continue  # already logged (a replay after a crash), or repeated within the batch
                seen.add(prepared.request_id)
                seq += 1
                row_hash = chain_hash(prev_hash, prepared.canonical)
                params.append(_params(seq, prepared, prev_hash, row_hash))
                prev_hash = row_hash
            if params:
                await cur.executemany(_INSERT, params)  # pipelined: one round trip for the batch
                if cur.rowcount != len(params):  # ON CONFLICT skipped a row: the chain would have a gap
                    raise psycopg.OperationalError("a request id was logged concurrently; spooled for a retry")
                await cur.execute(
                    "update inference_log_chain_head set seq = %s, row_hash = %s where id", (seq, prev_hash)
                )
        self._commits += 1
        self._rows_committed += len(params)
        return existing


def _resolve(pending: _Pending, outcome: Durability | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)


# ------------------------------------------------------------------------------------------------- verification
def verify_chain(dsn: str, *, batch_size: int = 5000) -> ChainReport:
    """Walk the log in seq order and recompute every hash; name each edited, deleted or missing row."""
    problems: list[str] = []
    checked = 0
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        exists = conn.execute("select to_regclass('inference_log') is not null").fetchone()
        if not exists or not exists[0]:
            tracked = conn.execute("select to_regclass('riverbed_schema_migrations') is not null").fetchone()
            migrated = (
                tracked
                and tracked[0]
                and conn.execute(
                    "select 1 from riverbed_schema_migrations where version = %s", ("0001_inference_log",)
                ).fetchone()
            )
            if migrated:
                return ChainReport(ok=False, rows_checked=0, problems=["the inference_log table was dropped"])
            return ChainReport(ok=True, rows_checked=0, problems=[])  # never created: an empty log
        head = conn.execute("select seq, row_hash from inference_log_chain_head where id").fetchone()
        columns = ["seq", *CONTENT_FIELDS, "prev_hash", "row_hash"]
        last_seq, last_hash = 0, GENESIS_HASH
        with conn.cursor(name="riverbed_verify_chain", row_factory=psycopg.rows.dict_row) as cur:
            cur.itersize = batch_size
            cur.execute(f"select {', '.join(columns)} from inference_log order by seq")
            for row in cur:
                checked += 1
                problems.extend(_check_row(row, last_seq, last_hash))
                last_seq, last_hash = row["seq"], row["row_hash"]
        if head is None:
            problems.append("the chain head row is missing (inference_log_chain_head was tampered with)")
        else:
            head_seq, head_hash = head
            if head_seq > last_seq:
                problems.append(
                    f"deleted tail: the chain head is at seq {head_seq} but the last row is seq {last_seq} "
                    f"({head_seq - last_seq} rows missing at the end)"
                )
            elif head_seq < last_seq:
                problems.append(f"the chain head is at seq {head_seq} but rows exist up to seq {last_seq}")
            elif head_hash != last_hash:
                problems.append(f"the chain head hash does not match the row_hash of the last row (seq {last_seq})")
    return ChainReport(ok=not problems, rows_checked=checked, problems=problems)


def _check_row(row: dict[str, Any], last_seq: int, last_hash: str) -> Iterable[str]:
    seq, request_id = row["seq"], row["request_id"]
    where = f"seq {seq} (request {request_id})"
    if seq != last_seq + 1:
        missing = f"seq {last_seq + 1}" if seq == last_seq + 2 else f"seqs {last_seq + 1}..{seq - 1}"
        yield f"deleted rows: {missing} missing before {where}"
    if row["prev_hash"] != last_hash:
        yield f"{where}: prev_hash does not match the previous row's hash (a row before it was deleted or changed)"
    expected = chain_hash(row["prev_hash"], canonical_json(_content_of_row(row)))
    if expected != row["row_hash"]:
        yield f"{where}: content does not match row_hash (the row was edited)"


__all__ = [
    "AuditWriteError",
    "ChainReport",
    "Durability",
    "InferenceLogWriter",
    "InferenceRecord",
    "RequestStatus",
    "canonical_json",
    "chain_hash",
    "verify_chain",
]
