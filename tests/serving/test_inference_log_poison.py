"""The inference log cannot be poisoned: huge, refused or stuck rows are quarantined, no record() waits forever,
a large spool replays in the background, and text PostgreSQL cannot store (NUL, lone surrogates) round-trips."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from serving.inference_log import (
    ESCAPE_MARKER,
    AuditTimeoutError,
    Durability,
    InferenceLogWriter,
    escape_text,
    list_quarantine,
    unescape,
    unescape_text,
    verify_chain,
)
from serving.inference_log.quarantine import CONTENT_LIMIT
from serving.inference_log.records import prepare

pytestmark = pytest.mark.timeout(60)


def _logged_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("select request_id from inference_log order by seq")]


@contextmanager
def _uncommitted_row(dsn: str, request_id: str) -> Iterator[None]:
    """Another session inserts ``request_id`` and keeps its transaction open: only that row's insert must wait."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into inference_log (request_id, seq, received_at, route, status, http_status, prev_hash, "
            "row_hash) values (%s, 999999999, now(), '/x', 'ok', 200, repeat('0', 64), repeat('0', 64))",
            (request_id,),
        )
        try:
            yield
        finally:
            conn.rollback()


# ------------------------------------------------------------------------------------------------ quarantine
@pytest.mark.asyncio
async def test_a_huge_row_is_quarantined_and_the_writer_stays_healthy(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    huge = make_record(inputs=[{"blob": "x" * 50_000_000}], http_status=413, status="rejected")
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool")
    await writer.start()
    try:
        began = time.perf_counter()
        assert await writer.record(huge) is Durability.QUARANTINED
        assert time.perf_counter() - began < 5
        assert not writer.degraded and writer.ready and writer.quarantined == 1 and writer.spool_depth == 0
        later = [make_record() for _ in range(3)]
        assert await asyncio.gather(*(writer.record(r) for r in later)) == [Durability.COMMITTED] * 3
    finally:
        await writer.stop()
    assert _logged_ids(migrated_dsn) == [r.request_id for r in later]
    [entry] = list_quarantine(migrated_dsn)
    assert entry.request_id == huge.request_id and entry.source == "database"
    assert entry.reason.startswith("too large") and entry.truncated
    assert entry.content_bytes > 50_000_000 and len(entry.content.encode()) <= CONTENT_LIMIT
    assert entry.content.startswith("{") and len(entry.content_sha256) == 64
    assert list((tmp_path / "spool").glob("*.spool.jsonl")) == []
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_a_huge_row_while_unavailable_goes_to_the_local_quarantine_not_the_spool(
    unreachable_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    spool = tmp_path / "spool"
    huge = make_record(error="y" * 3_000_000)
    writer = InferenceLogWriter(unreachable_dsn, spool, connect_timeout=1.0, max_row_bytes=2**20)
    await writer.start()
    try:
        assert writer.degraded
        assert await writer.record(huge) is Durability.QUARANTINED
        assert await writer.record(make_record()) is Durability.SPOOLED
    finally:
        await writer.stop()
    lines = [json.loads(line) for line in (spool / "quarantine.jsonl").read_text().splitlines()]
    assert [line["request_id"] for line in lines] == [huge.request_id]
    assert lines[0]["content_bytes"] > 3_000_000 and lines[0]["truncated"]
    assert all(huge.request_id not in path.read_text() for path in spool.glob("*.spool.jsonl"))


@pytest.mark.asyncio
async def test_a_row_that_times_out_alone_is_quarantined_and_its_batch_commits(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    records = [make_record() for _ in range(5)]
    culprit = records[2]
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", statement_timeout_ms=300, record_timeout=10)
    await writer.start()
    try:
        with _uncommitted_row(migrated_dsn, culprit.request_id):
            outcomes = await asyncio.gather(*(writer.record(r) for r in records))
        assert outcomes == [Durability.COMMITTED] * 2 + [Durability.QUARANTINED] + [Durability.COMMITTED] * 2
        assert not writer.degraded and writer.quarantined == 1
        assert await writer.record(make_record()) is Durability.COMMITTED
    finally:
        await writer.stop()
    logged = _logged_ids(migrated_dsn)
    assert logged[:4] == [r.request_id for r in records if r is not culprit]
    [entry] = list_quarantine(migrated_dsn)
    assert entry.request_id == culprit.request_id and entry.reason.startswith("timed out alone")
    assert json.loads(entry.content)["request_id"] == culprit.request_id
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_a_giant_row_over_the_statement_timeout_is_quarantined(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    giant = make_record(inputs=[{f"feature_{i}": i for i in range(20_000)} for _ in range(40)])  # 16 MB
    others = [make_record() for _ in range(3)]
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", statement_timeout_ms=300, record_timeout=10)
    await writer.start()
    try:
        outcomes = await asyncio.gather(*(writer.record(r) for r in [others[0], giant, others[1]]))
        assert outcomes == [Durability.COMMITTED, Durability.QUARANTINED, Durability.COMMITTED]
        assert await writer.record(others[2]) is Durability.COMMITTED
        assert not writer.degraded
    finally:
        await writer.stop()
    assert _logged_ids(migrated_dsn) == [r.request_id for r in others]
    [entry] = list_quarantine(migrated_dsn)
    assert entry.request_id == giant.request_id and "timed out alone" in entry.reason
    assert verify_chain(migrated_dsn).ok


# ------------------------------------------------------------------------------------------------ timeouts
@pytest.mark.asyncio
async def test_a_locked_chain_head_ends_record_within_the_timeout(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", statement_timeout_ms=200, record_timeout=1.0)
    await writer.start()
    try:
        stuck = make_record()
        with psycopg.connect(migrated_dsn) as locker:
            locker.execute("select * from inference_log_chain_head for update")
            began = time.perf_counter()
            with pytest.raises(AuditTimeoutError, match="not recorded within 1 s") as raised:
                await writer.record(stuck)
            assert 0.9 < time.perf_counter() - began < 1.6
            assert raised.value.reason == "timeout"
            assert writer.stalled and writer.status == "stalled" and not writer.degraded
            assert "locked" in (writer.last_error or "")
            locker.rollback()
        assert await writer.record(make_record()) is Durability.COMMITTED
        assert not writer.stalled and writer.ready
    finally:
        await writer.stop()
    assert stuck.request_id not in _logged_ids(migrated_dsn)  # its caller was told: it is not written later
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_the_read_pool_has_statement_and_lock_timeouts(migrated_dsn: str, tmp_path: Path) -> None:
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", statement_timeout_ms=250)
    await writer.start()
    try:
        async with writer.pool.connection() as conn:
            cursor = await conn.execute("select current_setting('statement_timeout'), current_setting('lock_timeout')")
            assert await cursor.fetchone() == ("250ms", "250ms")
        with psycopg.connect(migrated_dsn) as locker:
            locker.execute("lock table api_keys in access exclusive mode")
            began = time.perf_counter()
            with pytest.raises((psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
                async with writer.pool.connection() as conn:
                    await conn.execute("select count(*) from api_keys")
            assert time.perf_counter() - began < 2
            locker.rollback()
        async with writer.pool.connection() as conn:
            with pytest.raises(psycopg.errors.QueryCanceled):
                await conn.execute("select pg_sleep(2)")
    finally:
        await writer.stop()


# ------------------------------------------------------------------------------------------------ spool replay
def _write_spool(
    spool: Path, records: list[Any], name: str = "inference-log-00000000000000000001-1.spool.jsonl"
) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / name).write_text("".join(prepare(r).canonical + "\n" for r in records), encoding="utf-8")


@pytest.mark.asyncio
async def test_a_large_spool_replays_in_the_background_without_loss_or_duplicates(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    spool = tmp_path / "spool"
    template = prepare(make_record(request_id="@ID@")).canonical
    spooled = [f"spooled-{i:05d}" for i in range(20_000)]
    spool.mkdir()
    lines = "".join(template.replace('"@ID@"', f'"{request_id}"') + "\n" for request_id in spooled)
    (spool / "inference-log-00000000000000000001-1.spool.jsonl").write_text(lines, encoding="utf-8")
    writer = InferenceLogWriter(migrated_dsn, spool)
    began = time.perf_counter()
    await writer.start()
    try:
        assert time.perf_counter() - began < 1.0
        assert writer.replaying and writer.degraded and writer.status == "replaying"
        fresh = [make_record() for _ in range(60)]
        outcomes = []
        for batch in (fresh[:30], fresh[30:]):  # accepted while the replay runs
            outcomes += await asyncio.gather(*(writer.record(r) for r in batch))
            await asyncio.sleep(0.05)
        assert Durability.SPOOLED in outcomes and set(outcomes) <= {Durability.SPOOLED, Durability.COMMITTED}
        assert await writer.wait_replayed(30)
        assert writer.spool_depth == 0 and not writer.degraded
        assert await writer.record(make_record(request_id="after")) is Durability.COMMITTED
    finally:
        await writer.stop()
    logged = _logged_ids(migrated_dsn)
    expected = spooled + [r.request_id for r in fresh] + ["after"]
    assert len(logged) == len(set(logged)) == 20_061
    assert logged == expected  # spooled rows first, then new ones in arrival order
    assert list(spool.glob("*.spool.jsonl")) == []
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_replay_halves_a_timed_out_chunk_and_quarantines_the_culprit(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    spool = tmp_path / "spool"
    spooled = [make_record() for _ in range(32)]
    culprit = spooled[19]
    _write_spool(spool, spooled)
    writer = InferenceLogWriter(migrated_dsn, spool, statement_timeout_ms=150, max_batch=32)
    with _uncommitted_row(migrated_dsn, culprit.request_id):
        await writer.start()
        try:
            assert await writer.wait_replayed(20)
        finally:
            await writer.stop()
    assert writer.quarantined == 1
    assert _logged_ids(migrated_dsn) == [r.request_id for r in spooled if r is not culprit]
    [entry] = list_quarantine(migrated_dsn)
    assert entry.request_id == culprit.request_id and "timed out alone" in entry.reason
    assert verify_chain(migrated_dsn).ok


@pytest.mark.asyncio
async def test_an_oversized_or_unreadable_spool_line_is_quarantined_on_replay(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    spool = tmp_path / "spool"
    small = [make_record() for _ in range(3)]
    big = make_record(error="z" * 3_000_000)
    lines = [prepare(small[0]).canonical, prepare(big).canonical, "{not json", prepare(small[1]).canonical]
    spool.mkdir()
    path = spool / "inference-log-00000000000000000001-1.spool.jsonl"
    path.write_text("\n".join(lines) + "\n" + prepare(small[2]).canonical[:40], encoding="utf-8")  # torn last line
    writer = InferenceLogWriter(migrated_dsn, spool, max_row_bytes=2**20)
    await writer.start()
    try:
        assert await writer.wait_replayed(10)
    finally:
        await writer.stop()
    assert _logged_ids(migrated_dsn) == [small[0].request_id, small[1].request_id]
    entries = sorted(list_quarantine(migrated_dsn), key=lambda e: e.content_bytes)
    assert [e.reason.split(":")[0] for e in entries] == ["unreadable spool line in " + path.name, "too large"]
    assert entries[1].content_bytes == len(prepare(big).canonical.encode())
    assert entries[1].content_sha256 == hashlib.sha256(prepare(big).canonical.encode()).hexdigest()
    assert entries[1].request_id == big.request_id
    assert not path.exists()


# ------------------------------------------------------------------------------------------------ NUL & co
@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "a\x00b",
        "\x00",
        "\\0",
        "\\",
        "\\\\0\x00",
        "lone \ud800 surrogate",
        "\udfff",
        ESCAPE_MARKER,
        ESCAPE_MARKER + "x\\0",
        "é✓ \U0001f600",
        "\\u0000",
        ESCAPE_MARKER + ESCAPE_MARKER,
    ],
)
def test_escaping_is_reversible_and_only_touches_strings_that_need_it(text: str) -> None:
    stored = escape_text(text)
    assert unescape_text(stored) == text
    stored.encode("utf-8")  # storable: no lone surrogate
    assert "\x00" not in stored
    needs = "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text) or text.startswith(ESCAPE_MARKER)
    assert (stored != text) == needs


@pytest.mark.asyncio
async def test_nul_and_lone_surrogates_round_trip_losslessly_and_verify(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    from serving.audit_queries import get_prediction

    inputs = [{"k\x00ey": "a\ud800b", "marker": ESCAPE_MARKER + "x", "bs": "back\\slash\x00", "plain": "é"}]
    record = make_record(error="bad\x00byte", inputs=inputs, labels=["l\x00"], dataset="iris")
    writer = InferenceLogWriter(migrated_dsn, tmp_path / "spool", chain_key=b"k" * 32)
    await writer.start()
    try:
        assert await writer.record(record) is Durability.COMMITTED
        shown = await get_prediction(writer.pool, record.request_id)
    finally:
        await writer.stop()
    with psycopg.connect(migrated_dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select error, inputs, labels from inference_log where request_id = %s", (record.request_id,))
        row = cur.fetchone()
    assert row is not None
    assert row["error"] == ESCAPE_MARKER + "bad\\0byte"  # stored escaped, with the marker
    assert row["inputs"][0]["plain"] == "é"  # strings that need nothing are stored as they are
    assert unescape(row["inputs"]) == inputs
    assert unescape_text(row["error"]) == "bad\x00byte" and unescape(row["labels"]) == ["l\x00"]
    # The audit queries show the original text.
    assert shown is not None
    assert (shown["error"], shown["inputs"], shown["labels"]) == ("bad\x00byte", inputs, ["l\x00"])
    report = verify_chain(migrated_dsn, key=b"k" * 32)
    assert report.ok and report.rows_checked == 1, report.problems
