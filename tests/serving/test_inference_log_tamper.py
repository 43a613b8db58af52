"""Tamper evidence against insiders: the keyed chain, signed checkpoints outside PostgreSQL, one-snapshot verify.

An insider here has the database owner's rights (``set riverbed.maintenance = on`` lifts the append-only trigger)
but not the chain key, which lives outside the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import SecretStr

from riverbed.inference_log_schema import MIGRATIONS_DIR
from riverbed.settings import Environment, RiverbedSettings
from serving.inference_log import (
    CHECKPOINT_FILE,
    CONTENT_FIELDS,
    GENESIS_HASH,
    ChainKeyError,
    Checkpoint,
    Durability,
    FileCheckpointSink,
    InferenceLogWriter,
    canonical_json,
    chain_hash,
    create_key_file,
    key_id,
    load_chain_key,
    verify_chain,
    verify_chain_from_settings,
)
from serving.inference_log.records import content_of_row

pytestmark = pytest.mark.timeout(60)
KEY = bytes(range(32))


async def _write(dsn: str, tmp: Path, records: list[Any], *, key: bytes | None = KEY, **options: Any) -> None:
    writer = InferenceLogWriter(dsn, tmp / "spool", chain_key=key, checkpoints=tmp / "checkpoints", **options)
    await writer.start()
    try:
        for record in records:
            assert await writer.record(record) is Durability.COMMITTED
    finally:
        await writer.stop()


def _insider(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("set riverbed.maintenance = on")
        for statement in statements:
            conn.execute(statement)


def _recompute_with_sha256(dsn: str, *, mark_unkeyed: bool) -> None:
    """What an insider without the key can do: re-link every row with plain SHA-256 and move the head."""
    with psycopg.connect(dsn) as conn:
        conn.execute("set riverbed.maintenance = on")
        rows = conn.cursor(row_factory=dict_row).execute(
            f"select seq, {', '.join(CONTENT_FIELDS)} from inference_log order by seq"
        )
        prev = GENESIS_HASH
        for row in rows.fetchall():
            link = chain_hash(prev, canonical_json(content_of_row(row)))
            alg = ", hash_alg = 'sha256'" if mark_unkeyed else ""
            conn.execute(
                f"update inference_log set prev_hash = %s, row_hash = %s{alg} where seq = %s", (prev, link, row["seq"])
            )
            prev = link
        conn.execute("update inference_log_chain_head set row_hash = %s", (prev,))


def _verify(dsn: str, tmp: Path, key: bytes | None = KEY) -> Any:
    return verify_chain(dsn, key=key, checkpoint_dir=tmp / "checkpoints")


# ------------------------------------------------------------------------------------------------ keyed chain
@pytest.mark.asyncio
async def test_a_keyed_chain_verifies_only_with_its_key(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(10)])
    report = _verify(migrated_dsn, tmp_path)
    assert report.ok and report.rows_checked == 10 and report.keyed_rows == 10, report.problems
    assert report.checkpoints_checked >= 2 and report.quarantined == 0 and report.chain_id

    without_key = verify_chain(migrated_dsn)
    assert not without_key.ok and "no chain key was given" in "\n".join(without_key.problems)

    wrong = _verify(migrated_dsn, tmp_path, key=b"w" * 32)
    text = "\n".join(wrong.problems)
    assert (
        not wrong.ok
        and "every keyed row fails its HMAC" in text
        and f"not with the given key {key_id(b'w' * 32)}" in text
    )


@pytest.mark.asyncio
async def test_an_edited_row_fails_its_hmac(migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(5)])
    _insider(migrated_dsn, "update inference_log set labels = array['virginica'] where seq = 3")
    report = _verify(migrated_dsn, tmp_path)
    assert not report.ok and any(p.startswith("seq 3 ") and "HMAC" in p for p in report.problems), report.problems


@pytest.mark.asyncio
async def test_deleting_the_newest_rows_and_moving_the_head_back_is_caught_by_the_checkpoint(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(10)])
    _insider(
        migrated_dsn,
        "delete from inference_log where seq > 7",
        "update inference_log_chain_head set seq = 7, row_hash = (select row_hash from inference_log where seq = 7)",
    )
    # The database alone is consistent again: only the checkpoint outside it tells.
    assert verify_chain(migrated_dsn, key=KEY).ok
    report = _verify(migrated_dsn, tmp_path)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "checkpoint of" in text and "(seq 10) is beyond the last row (seq 7)" in text, text


@pytest.mark.parametrize("mark_unkeyed", [False, True], ids=["hash-alg-kept", "hash-alg-downgraded"])
@pytest.mark.asyncio
async def test_a_chain_recomputed_with_plain_sha256_is_detected(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any], mark_unkeyed: bool
) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(6)])
    _recompute_with_sha256(migrated_dsn, mark_unkeyed=mark_unkeyed)
    report = _verify(migrated_dsn, tmp_path)
    assert not report.ok
    text = "\n".join(report.problems)
    if mark_unkeyed:  # a consistent unkeyed chain: the signed checkpoints name other hashes
        assert "names another hash than the row at seq 6" in text and "rewritten" in text, text
    else:
        assert "every keyed row fails its HMAC" in text, text


@pytest.mark.asyncio
async def test_a_wiped_log_is_detected(migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(4)])
    _insider(
        migrated_dsn,
        "truncate inference_log",
        "update inference_log_chain_head set seq = 0, row_hash = repeat('0', 64)",
    )
    report = _verify(migrated_dsn, tmp_path)
    assert not report.ok and report.rows_checked == 0
    assert any("the log is empty but checkpoint of" in p and "wiped" in p for p in report.problems), report.problems


@pytest.mark.asyncio
async def test_a_dropped_or_recreated_log_is_detected(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(3)])
    _insider(migrated_dsn, "drop table inference_log cascade", "drop table inference_log_chain_head")
    dropped = _verify(migrated_dsn, tmp_path)
    assert not dropped.ok and "missing but" in dropped.problems[0] and "dropped (wiped)" in dropped.problems[0]

    with psycopg.connect(migrated_dsn) as conn:  # recreated empty, as a fresh migration would
        for name in ("0001_inference_log.sql", "0005_keyed_chain.sql"):
            conn.execute((MIGRATIONS_DIR / name).read_text().encode())
    recreated = _verify(migrated_dsn, tmp_path)
    assert not recreated.ok and any("the log was recreated (wiped)" in p for p in recreated.problems)


@pytest.mark.asyncio
async def test_an_empty_log_is_intact_with_or_without_checkpoints(migrated_dsn: str, tmp_path: Path) -> None:
    assert _verify(migrated_dsn, tmp_path).ok  # no checkpoints at all
    await _write(migrated_dsn, tmp_path, [])  # a writer started and stopped: one checkpoint at seq 0
    checkpoints, problems = FileCheckpointSink(tmp_path / "checkpoints").load()
    assert [cp.seq for cp in checkpoints] == [0] and problems == []
    report = _verify(migrated_dsn, tmp_path)
    assert report.ok and report.rows_checked == 0 and report.checkpoints_checked == 1


@pytest.mark.asyncio
async def test_forged_or_edited_checkpoints_are_reported(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    await _write(migrated_dsn, tmp_path, [make_record() for _ in range(3)])
    path = tmp_path / "checkpoints" / CHECKPOINT_FILE
    last = json.loads(path.read_text().splitlines()[-1])
    with path.open("a") as handle:
        handle.write(json.dumps({**last, "seq": 2}) + "\n")  # re-pointed without the key
        handle.write("not a checkpoint\n")
    report = _verify(migrated_dsn, tmp_path)
    text = "\n".join(report.problems)
    assert not report.ok and "(seq 2): its signature does not match (the checkpoint was forged)" in text
    assert f"{CHECKPOINT_FILE} line" in text and "not a checkpoint" in text


def test_checkpoints_of_another_database_are_ignored(migrated_dsn: str, tmp_path: Path) -> None:
    FileCheckpointSink(tmp_path / "checkpoints").append(
        Checkpoint.sign(
            KEY, chain_id="00000000-0000-0000-0000-000000000000", database="other", seq=9, row_hash="a" * 64
        )
    )
    report = _verify(migrated_dsn, tmp_path)
    assert report.ok and report.checkpoints_checked == 0, report.problems


# ------------------------------------------------------------------------------------------------ consistency
@pytest.mark.asyncio
async def test_verify_never_raises_a_false_alarm_under_concurrent_writes(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    checkpoints = tmp_path / "checkpoints"
    writers = [
        InferenceLogWriter(
            migrated_dsn, tmp_path / f"spool-{i}", chain_key=KEY, checkpoints=checkpoints, checkpoint_interval=0.02
        )
        for i in range(4)
    ]
    for writer in writers:
        await writer.start()
    stop = asyncio.Event()

    async def produce(writer: InferenceLogWriter) -> int:
        sent = 0
        while not stop.is_set():
            outcomes = await asyncio.gather(*(writer.record(make_record()) for _ in range(4)))
            assert outcomes == [Durability.COMMITTED] * 4
            sent += 4
        return sent

    producers = [asyncio.create_task(produce(writer)) for writer in writers]
    try:
        await asyncio.sleep(0.1)
        reports = [
            await asyncio.to_thread(verify_chain, migrated_dsn, key=KEY, checkpoint_dir=checkpoints) for _ in range(20)
        ]
    finally:
        stop.set()
        sent = sum(await asyncio.gather(*producers))
        for writer in writers:
            await writer.stop()
    assert [r.problems for r in reports if not r.ok] == []
    assert reports[-1].rows_checked > reports[0].rows_checked > 0  # rows were being written meanwhile
    assert max(r.checkpoints_checked for r in reports) > 0
    final = _verify(migrated_dsn, tmp_path)
    assert final.ok and final.rows_checked == sent, final.problems


# ------------------------------------------------------------------------------------------------ compatibility
@pytest.mark.asyncio
async def test_unkeyed_rows_continue_into_a_keyed_chain_and_never_after_it(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    old = [make_record() for _ in range(3)]
    await _write(migrated_dsn, tmp_path, old, key=None)  # as written before the keyed chain
    new = [make_record() for _ in range(3)]
    await _write(migrated_dsn, tmp_path, new)
    report = _verify(migrated_dsn, tmp_path)
    assert report.ok and report.rows_checked == 6 and report.keyed_rows == 3, report.problems

    # A writer without the key does not extend a keyed chain: it spools, degraded, saying why.
    late = make_record()
    unkeyed = InferenceLogWriter(migrated_dsn, tmp_path / "spool", connect_timeout=1.0)
    await unkeyed.start()
    try:
        assert unkeyed.degraded and "no chain key" in (unkeyed.last_error or "")
        assert await unkeyed.record(late) is Durability.SPOOLED
    finally:
        await unkeyed.stop()
    keyed = InferenceLogWriter(migrated_dsn, tmp_path / "spool", chain_key=KEY, checkpoints=tmp_path / "checkpoints")
    await keyed.start()
    assert await keyed.wait_replayed(10)
    await keyed.stop()
    report = _verify(migrated_dsn, tmp_path)
    assert report.ok and report.rows_checked == 7 and report.keyed_rows == 4, report.problems

    # Re-linking the newest row with plain SHA-256 is a downgrade.
    with psycopg.connect(migrated_dsn) as conn:
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(f"select seq, prev_hash, {', '.join(CONTENT_FIELDS)} from inference_log order by seq desc limit 1")
            .fetchone()
        )
    assert row is not None
    link = chain_hash(row["prev_hash"], canonical_json(content_of_row(row)))
    _insider(
        migrated_dsn,
        f"update inference_log set hash_alg = 'sha256', row_hash = '{link}' where seq = {row['seq']}",
        f"update inference_log_chain_head set row_hash = '{link}'",
    )
    report = verify_chain(migrated_dsn, key=KEY)
    assert not report.ok and any("downgraded" in p for p in report.problems), report.problems


# ------------------------------------------------------------------------------------------------ the key
def test_the_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = RiverbedSettings(home=tmp_path / "home")
    key = load_chain_key(settings)  # local environment: created on first use
    assert key is not None and len(key) == 32
    path = settings.audit_chain_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_chain_key(settings) == key

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:  # racing first starts agree on one key
        keys = set(pool.map(lambda _: create_key_file(tmp_path / "race" / "k.key"), range(8)))
    assert len(keys) == 1

    configured = RiverbedSettings(home=tmp_path / "home", audit_chain_key=SecretStr("ab" * 32))
    assert load_chain_key(configured) == bytes.fromhex("ab" * 32)
    with pytest.raises(ChainKeyError):
        load_chain_key(RiverbedSettings(home=tmp_path / "home", audit_chain_key=SecretStr("short")))

    production = RiverbedSettings(home=tmp_path / "prod", env=Environment.PRODUCTION)
    assert load_chain_key(production) is None and not production.audit_chain_key_path.exists()
    with pytest.raises(ChainKeyError, match="RIVERBED_AUDIT_CHAIN_KEY"):
        InferenceLogWriter.from_settings("dbname=x", production)


@pytest.mark.asyncio
async def test_a_writer_from_settings_is_keyed_and_checkpoints_privately(
    migrated_dsn: str, tmp_path: Path, make_record: Callable[..., Any]
) -> None:
    settings = RiverbedSettings(home=tmp_path / "home", audit_checkpoint_interval_seconds=0.05)
    writer = InferenceLogWriter.from_settings(migrated_dsn, settings)
    assert writer.keyed and writer.key_id == key_id(load_chain_key(settings) or b"")
    await writer.start()
    try:
        assert await writer.record(make_record()) is Durability.COMMITTED
        await asyncio.sleep(0.2)
        assert writer.checkpoints_written >= 2 and writer.checkpoint_error is None
    finally:
        await writer.stop()
    directory = settings.audit_checkpoint_path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / CHECKPOINT_FILE).stat().st_mode) == 0o600
    report = verify_chain_from_settings(migrated_dsn, settings)
    assert report.ok and report.rows_checked == 1 and report.checkpoints_checked >= 2, report.problems
