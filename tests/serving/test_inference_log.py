"""The inference log on the machine's PostgreSQL: migrations, group commit, hash chain, spool and replay."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from riverbed.inference_log_schema import apply_migrations, available_migrations
from serving.inference_log import (
    GENESIS_HASH,
    AuditWriteError,
    Durability,
    InferenceLogWriter,
    InferenceRecord,
    list_quarantine,
    verify_chain,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


ALL_MIGRATIONS = [migration.version for migration in available_migrations()]


def tamper(dsn: str, *statements: str) -> list[int]:
    """Run statements as an insider with the owner's rights (the log is append-only otherwise); their row counts."""
    with psycopg.connect(dsn) as conn:
        conn.execute("set riverbed.maintenance = on")
        return [conn.execute(statement).rowcount for statement in statements]


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select seq, request_id, prev_hash, row_hash from inference_log order by seq").fetchall()


def _spooled_ids(spool_dir: Path) -> list[str]:
    ids = []
    for path in sorted(spool_dir.glob("*.spool.jsonl")):
        ids.extend(json.loads(line)["request_id"] for line in path.read_text().splitlines() if line.strip())
    return ids


async def _wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A TCP forwarder to PostgreSQL that can be taken down (refusing and cutting connections) and brought back."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        self._tasks.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._transports.update({client_writer.transport, server_writer.transport})

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


# ------------------------------------------------------------------------------------------------ migrations
def test_migrations_are_idempotent(postgres_dsn: str) -> None:
    assert apply_migrations(postgres_dsn) == ALL_MIGRATIONS
    assert "0005_keyed_chain" in ALL_MIGRATIONS
    assert apply_migrations(postgres_dsn) == []
    with psycopg.connect(postgres_dsn) as conn:
        versions = [r[0] for r in conn.execute("select version from riverbed_schema_migrations order by 1")]
        head = conn.execute("select seq, row_hash from inference_log_chain_head").fetchall()
    assert versions == ALL_MIGRATIONS
    assert head == [(0, GENESIS_HASH)]


def test_concurrent_migrations_apply_each_version_once(postgres_dsn: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: apply_migrations(postgres_dsn), range(6)))
    applied = sorted(v for result in results for v in result)
    assert applied == ALL_MIGRATIONS
    assert apply_migrations(postgres_dsn) == []


# ------------------------------------------------------------------------------------------------ writing
@pytest.mark.asyncio
async def test_group_commit_shares_transactions(migrated_dsn: str, tmp_path: Path, make_record: Callable) -> None:
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool")
    await writer.start()
    try:
        records = [make_record() for _ in range(64)]
        outcomes = await asyncio.gather(*(writer.record(r) for r in records))
        assert outcomes == [Durability.COMMITTED] * 64
        assert writer.rows_committed == 64
        assert writer.commits <= 4, f"64 concurrent records took {writer.commits} commits"
        assert not writer.degraded and writer.spool_depth == 0
        assert await writer.ping()
    finally:
        await writer.stop()
    stored = [row[1] for row in _rows(migrated_dsn)]
    assert stored == [r.request_id for r in records]  # queue order is chain order
    report = verify_chain(migrated_dsn)
    assert report.ok and report.rows_checked == 64, report.problems


@pytest.mark.asyncio
async def test_awkward_values_round_trip_and_verify(migrated_dsn: str, tmp_path: Path, make_record: Callable) -> None:
    from serving.audit_queries import get_prediction

    tricky = make_record(
        received_at=dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        inputs=[
            {"big": 1e16, "huge": 1.2345e20, "tiny": 1.5e-7, "neg_zero": -0.0, "one": 1.0, "int": 7, "s": "é\n\"'"}
        ],
        data_commit_ids={},
        error="line 1\nline 2",
    )
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", max_batch=2)
    await writer.start()
    try:
        assert await writer.record(tricky) is Durability.COMMITTED
        assert await writer.record(make_record(outputs=[], labels=[], dataset=None)) is Durability.COMMITTED
        with pytest.raises(AuditWriteError, match="not JSON"):
            await writer.record(make_record(timings_ms={"total_ms": float("nan")}))
        with pytest.raises(AuditWriteError, match="already logged") as duplicate:
            await writer.record(make_record(request_id=tricky.request_id))
        assert duplicate.value.reason == "duplicate"
        row = await get_prediction(writer.pool, tricky.request_id)
    finally:
        await writer.stop()
    assert row is not None
    assert row["received_at"] == "2024-03-01T04:59:59.999999Z"
    assert row["inputs"][0]["tiny"] == 1.5e-7 and row["inputs"][0]["one"] == 1.0
    report = verify_chain(migrated_dsn)
    assert report.ok and report.rows_checked == 2, report.problems


# ------------------------------------------------------------------------------------------------ hash chain
@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("update inference_log set labels = array['virginica'] where seq = 3", ["seq 3 ", "edited"]),
        ("update inference_log set received_at = received_at + interval '1 microsecond' where seq = 5", ["seq 5 "]),
        ("delete from inference_log where seq = 4", ["seq 4 missing", "seq 5 "]),
        ("delete from inference_log where seq = 8", ["deleted tail", "seq 8"]),
    ],
    ids=["edited-label", "edited-time", "deleted-middle", "deleted-last"],
)
@pytest.mark.asyncio
async def test_verify_chain_detects_tampering(
    migrated_dsn: str, tmp_path: Path, make_record: Callable, statement: str, expected: list[str]
) -> None:
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool")
    await writer.start()
    for _ in range(8):
        await writer.record(make_record())
    await writer.stop()
    intact = verify_chain(migrated_dsn)
    assert intact.ok and intact.rows_checked == 8 and intact.problems == []

    assert tamper(migrated_dsn, statement) == [1]
    report = verify_chain(migrated_dsn)
    assert not report.ok
    text = "\n".join(report.problems)
    for fragment in expected:
        assert fragment in text, text


# ------------------------------------------------------------------------------------------------ spool
@pytest.mark.asyncio
async def test_unreachable_database_spools_then_replays_without_duplicates(
    migrated_dsn: str, unreachable_dsn: str, tmp_path: Path, make_record: Callable
) -> None:
    spool = tmp_path / "spool"
    down = InferenceLogWriter(unreachable_dsn, spool, connect_timeout=1.0)
    await down.start()
    records = [make_record(label=f"l{i % 3}") for i in range(12)]
    try:
        assert down.degraded
        assert down.last_error
        outcomes = await asyncio.gather(*(down.record(r) for r in records[:6]))
        for record in records[6:]:
            outcomes.append(await down.record(record))
        assert outcomes == [Durability.SPOOLED] * 12
        assert down.spool_depth == 12
        assert not await down.ping()
    finally:
        await down.stop()
    assert _spooled_ids(spool) == [r.request_id for r in records]
    saved = {path.name: path.read_bytes() for path in spool.glob("*.spool.jsonl")}

    up = InferenceLogWriter(migrated_dsn, spool)
    await up.start()
    try:
        assert up.replaying and up.degraded  # replayed in the background, never inside start()
        assert await up.wait_replayed(10)
        assert not up.degraded and up.spool_depth == 0
        assert await up.record(make_record()) is Durability.COMMITTED
    finally:
        await up.stop()
    assert [row[1] for row in _rows(migrated_dsn)][:12] == [r.request_id for r in records]
    assert list(spool.glob("*.spool.jsonl")) == []

    # A crash between the commit and the spool's removal: the same spool replayed again adds nothing.
    for name, content in saved.items():
        (spool / name).write_bytes(content)
    again = InferenceLogWriter(migrated_dsn, spool)
    await again.start()
    assert await again.wait_replayed(10)
    await again.stop()
    assert again.rows_committed == 0
    assert len(_rows(migrated_dsn)) == 13
    assert list(spool.glob("*.spool.jsonl")) == []
    report = verify_chain(migrated_dsn)
    assert report.ok and report.rows_checked == 13, report.problems


@pytest.mark.asyncio
async def test_live_writer_survives_database_going_down_and_up(
    migrated_dsn: str, tmp_path: Path, make_record: Callable
) -> None:
    proxy = TcpProxy()
    await proxy.up()
    port = proxy.port
    await proxy.down()  # down at start
    dsn = migrated_dsn.replace("port=5432", f"port={port}")
    writer = InferenceLogWriter(dsn, tmp_path / "spool", max_batch=20, connect_timeout=1.0)
    await writer.start()
    sent: list[str] = []

    async def send(n: int) -> list[Durability]:
        out = []
        for _ in range(n):
            record = make_record()
            sent.append(record.request_id)
            out.append(await writer.record(record))
        return out

    try:
        assert writer.degraded
        first = await asyncio.gather(*(writer.record(make_record()) for _ in range(150)))
        assert set(first) == {Durability.SPOOLED}
        sent[:0] = _spooled_ids(tmp_path / "spool")  # their spool (and chain) order
        assert await send(3) == [Durability.SPOOLED] * 3

        # Back up while a producer keeps writing: spooled rows first, then new ones, in call order.
        await proxy.up()
        producer = asyncio.create_task(send(40))
        await _wait_until(lambda: not writer.degraded)
        await producer
        assert writer.spool_depth == 0
        assert await send(2) == [Durability.COMMITTED] * 2

        # Down again mid-flight: the failing commit is spooled, nothing is lost.
        await proxy.down()
        assert await send(2) == [Durability.SPOOLED] * 2
        assert writer.degraded and writer.spool_depth == 2
        await proxy.up()
        await _wait_until(lambda: not writer.degraded)
        assert await send(1) == [Durability.COMMITTED]
    finally:
        await writer.stop()
        await proxy.down()
    assert [row[1] for row in _rows(migrated_dsn)] == sent
    assert list((tmp_path / "spool").glob("*.spool.jsonl")) == []
    report = verify_chain(migrated_dsn)
    assert report.ok and report.rows_checked == len(sent) == 198, report.problems


_CRASHING_WRITER = """
import asyncio, datetime as dt, sys, uuid
from pathlib import Path
from serving.inference_log import InferenceLogWriter, InferenceRecord, RequestStatus

async def main():
    writer = InferenceLogWriter(sys.argv[1], Path(sys.argv[2]), connect_timeout=1.0)
    await writer.start()
    for i in range(5):
        rid = str(uuid.uuid4())
        rec = InferenceRecord(request_id=rid, received_at=dt.datetime.now(dt.UTC), dataset="iris",
                              route="/v1/iris/predict", status=RequestStatus.OK, http_status=200, labels=["x"])
        print(rid, (await writer.record(rec)).value, flush=True)
    print("READY", flush=True)
    await asyncio.sleep(60)  # killed here: never stopped

asyncio.run(main())
"""


def _run_and_kill_a_writer(dsn: str, spool: Path) -> list[list[str]]:
    """Run a writer in a subprocess, let it spool five records, then SIGKILL it; returns (request id, outcome)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, dsn, str(spool)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    lines: list[list[str]] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "READY":
                break
            lines.append(line.split())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    return lines


@pytest.mark.asyncio
async def test_spool_survives_a_crash(
    migrated_dsn: str, unreachable_dsn: str, tmp_path: Path, make_record: Callable
) -> None:
    spool = tmp_path / "spool"
    lines = _run_and_kill_a_writer(unreachable_dsn, spool)
    assert [outcome for _, outcome in lines] == ["spooled"] * 5
    crashed_ids = [rid for rid, _ in lines]

    writer = InferenceLogWriter(migrated_dsn, spool)
    assert writer.spool_depth == 0
    await writer.start()
    try:
        assert await writer.wait_replayed(10)
        assert await writer.record(make_record()) is Durability.COMMITTED
    finally:
        await writer.stop()
    assert [row[1] for row in _rows(migrated_dsn)][:5] == crashed_ids
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_record_before_start_is_refused(migrated_dsn: str, tmp_path: Path, make_record: Callable) -> None:
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool")
    with pytest.raises(AuditWriteError, match="not running"):
        await writer.record(make_record())
    record: InferenceRecord = make_record()
    await writer.start()
    await writer.stop()
    with pytest.raises(AuditWriteError):
        await writer.record(record)


@pytest.mark.asyncio
async def test_a_record_postgres_refuses_is_quarantined_alone(
    migrated_dsn: str, unreachable_dsn: str, tmp_path: Path, make_record: Callable
) -> None:
    spool = tmp_path / "spool"
    good = [make_record() for _ in range(3)]
    bad = make_record(http_status=2**40)  # out of range for the integer column: a DataError in PostgreSQL

    writer = InferenceLogWriter(migrated_dsn, spool)
    await writer.start()
    try:
        outcomes = await asyncio.gather(*(writer.record(r) for r in [good[0], bad, good[1]]))
        assert outcomes == [Durability.COMMITTED, Durability.QUARANTINED, Durability.COMMITTED]
        assert not writer.degraded and writer.quarantined == 1
    finally:
        await writer.stop()
    [entry] = list_quarantine(migrated_dsn)
    assert entry.request_id == bad.request_id and "refused" in entry.reason and "out of range" in entry.reason
    assert json.loads(entry.content)["http_status"] == 2**40 and not entry.truncated

    # Spooled while down, the refused record is quarantined on replay instead of blocking the others.
    down = InferenceLogWriter(unreachable_dsn, spool, connect_timeout=1.0)
    await down.start()
    assert [await down.record(r) for r in [bad, good[2]]] == [Durability.SPOOLED] * 2
    await down.stop()
    up = InferenceLogWriter(migrated_dsn, spool)
    await up.start()
    assert await up.wait_replayed(10)
    await up.stop()
    assert not up.degraded and up.quarantined == 1
    assert [row[1] for row in _rows(migrated_dsn)] == [good[0].request_id, good[1].request_id, good[2].request_id]
    assert len(list_quarantine(migrated_dsn)) == 1  # the same row is not quarantined twice
    assert list(spool.glob("*.spool.jsonl")) == []
    assert verify_chain(migrated_dsn).ok
