"""Verification of the inference log against its keyed hash chain and the signed checkpoints kept outside it.

:func:`verify_chain` reads the checkpoints first, then the chain head, every row and the quarantine count inside
one ``REPEATABLE READ READ ONLY`` transaction: one snapshot, so concurrent writers can never make it see a head
that does not match the rows. Every checkpoint it read was written after its commit, so the snapshot (taken
later) contains its row: a checkpoint beyond the last row, or naming another hash, is tampering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from riverbed.settings import RiverbedSettings
from serving.inference_log.chain import (
    HASH_HMAC,
    HASH_SHA256,
    Checkpoint,
    CheckpointSink,
    chain_hash,
    checkpoint_sink,
    key_id,
    keyed_chain_hash,
    load_chain_key,
)
from serving.inference_log.quarantine import count_quarantine
from serving.inference_log.records import CONTENT_FIELDS, GENESIS_HASH, canonical_json, content_of_row


@dataclass(frozen=True)
class ChainReport:
    """Result of :func:`verify_chain`: ``ok`` is true only if no problem was found."""

    ok: bool
    rows_checked: int
    problems: list[str]
    checkpoints_checked: int = 0
    quarantined: int = 0
    keyed_rows: int = 0
    chain_id: str | None = None


@dataclass
class _Walk:
    key: bytes | None
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    keyed: int = 0
    keyed_failed: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    seen_checkpoints: set[int] = field(default_factory=set)


def verify_chain(
    dsn: str,
    *,
    key: bytes | None = None,
    checkpoint_dir: Path | None = None,
    checkpoints: CheckpointSink | None = None,
    batch_size: int = 5000,
    max_problems: int = 1000,
) -> ChainReport:
    """Walk the log in seq order, recompute every link and compare the head and the checkpoints.

    ``key``: the chain key (without it, keyed rows and checkpoints cannot be authenticated: reported). Checkpoints
    come from ``checkpoints`` or the directory ``checkpoint_dir``; those of other databases are ignored. Names
    each edited, deleted or missing row, a deleted tail (even with the head moved back), a recomputed chain, a
    wiped or dropped log. An empty log without checkpoints is intact.
    """
    sink = checkpoints if checkpoints is not None else checkpoint_sink(checkpoint_dir)
    loaded, file_problems = sink.load() if sink is not None else ([], [])  # before the snapshot: see module doc
    walk = _Walk(key=key, problems=list(file_problems))
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            first = conn.execute("select current_database()").fetchone()  # the snapshot is taken here
            database = str(first[0]) if first else ""
            mine = _authenticated([cp for cp in loaded if cp.database == database], key, walk.problems)
            report = _verify_in_snapshot(conn, walk, mine, batch_size)
    problems = report.problems
    if len(problems) > max_problems:
        problems = [*problems[:max_problems], f"... and {len(problems) - max_problems} more problems"]
    return ChainReport(
        ok=not report.problems,
        rows_checked=report.rows_checked,
        problems=problems,
        checkpoints_checked=report.checkpoints_checked,
        quarantined=report.quarantined,
        keyed_rows=report.keyed_rows,
        chain_id=report.chain_id,
    )


def verify_chain_from_settings(dsn: str, settings: RiverbedSettings) -> ChainReport:
    """:func:`verify_chain` with the key and the checkpoint directory of ``settings`` (never creates a key)."""
    return verify_chain(dsn, key=load_chain_key(settings, create=False), checkpoint_dir=settings.audit_checkpoint_path)


def _authenticated(found: list[Checkpoint], key: bytes | None, problems: list[str]) -> list[Checkpoint]:
    """The checkpoints that may be trusted (all of them, reported as unauthenticated, without a key)."""
    if key is None:
        if found:
            problems.append(f"{len(found)} checkpoints cannot be authenticated: no chain key was given")
        return found
    expected_id = key_id(key)
    trusted: list[Checkpoint] = []
    for checkpoint in found:
        if checkpoint.key_id != expected_id:
            problems.append(
                f"{checkpoint.describe()} is signed with key {checkpoint.key_id}, not with the given key {expected_id}"
            )
        elif not checkpoint.is_signed_by(key):
            problems.append(f"{checkpoint.describe()}: its signature does not match (the checkpoint was forged)")
        else:
            trusted.append(checkpoint)
    return trusted


def _verify_in_snapshot(
    conn: psycopg.Connection[Any], walk: _Walk, checkpoints: list[Checkpoint], batch_size: int
) -> ChainReport:
    if not _exists(conn, "inference_log"):
        if checkpoints:
            latest = max(checkpoints, key=lambda cp: cp.seq)
            walk.problems.append(
                f"the inference_log table is missing but {len(checkpoints)} checkpoints exist (latest: "
                f"{latest.describe()}): the log was dropped (wiped)"
            )
        elif _was_migrated(conn):
            walk.problems.append("the inference_log table was dropped")
        return ChainReport(ok=not walk.problems, rows_checked=0, problems=walk.problems)
    keyed_schema = _has_column(conn, "inference_log", "hash_alg")
    chain_column = "chain_id::text" if _has_column(conn, "inference_log_chain_head", "chain_id") else "null"
    head = conn.execute(f"select seq, row_hash, {chain_column} from inference_log_chain_head where id").fetchone()
    chain_id = str(head[2]) if head is not None and head[2] is not None else None
    quarantined = count_quarantine(conn)

    by_seq: dict[int, list[Checkpoint]] = {}
    foreign = [cp for cp in checkpoints if chain_id is not None and cp.chain_id != chain_id]
    if foreign:
        latest = max(foreign, key=lambda cp: cp.seq)
        walk.problems.append(
            f"{len(foreign)} checkpoints (latest: {latest.describe()}) belong to chain {latest.chain_id}, but the "
            f"database holds chain {chain_id}: the log was recreated (wiped)"
        )
    for checkpoint in checkpoints:
        if chain_id is None or checkpoint.chain_id == chain_id:
            by_seq.setdefault(checkpoint.seq, []).append(checkpoint)

    columns = ["seq", *CONTENT_FIELDS, "prev_hash", "row_hash"] + (["hash_alg"] if keyed_schema else [])
    with conn.cursor(name="riverbed_verify_chain", row_factory=dict_row) as cur:
        cur.itersize = batch_size
        cur.execute(f"select {', '.join(columns)} from inference_log order by seq")
        for row in cur:
            walk.problems.extend(_check_row(row, walk))
            for checkpoint in by_seq.get(row["seq"], ()):
                walk.seen_checkpoints.add(checkpoint.seq)
                if checkpoint.row_hash != row["row_hash"]:
                    walk.problems.append(
                        f"{checkpoint.describe()} names another hash than the row at seq {row['seq']} "
                        f"(request {row['request_id']}): the chain was rewritten"
                    )
            walk.checked += 1
            walk.last_seq, walk.last_hash = row["seq"], row["row_hash"]

    _check_checkpoints_beyond(walk, by_seq)
    _check_head(walk, head)
    if walk.key is None and walk.keyed:
        walk.problems.append(
            f"{walk.keyed} rows are keyed (hmac-sha256) but no chain key was given: their content was not authenticated"
        )
    elif walk.key is not None and walk.keyed > 1 and walk.keyed_failed == walk.keyed:
        walk.problems.append(
            f"every keyed row fails its HMAC: the chain was recomputed, or key {key_id(walk.key)} is not its key"
        )
    return ChainReport(
        ok=not walk.problems,
        rows_checked=walk.checked,
        problems=walk.problems,
        checkpoints_checked=sum(len(found) for found in by_seq.values()),
        quarantined=quarantined,
        keyed_rows=walk.keyed,
        chain_id=chain_id,
    )


def _check_checkpoints_beyond(walk: _Walk, by_seq: dict[int, list[Checkpoint]]) -> None:
    beyond = [cp for seq, found in by_seq.items() if seq > walk.last_seq for cp in found]
    if beyond:
        latest = max(beyond, key=lambda cp: cp.seq)
        if walk.checked == 0:
            walk.problems.append(f"the log is empty but {latest.describe()} exists: the log was wiped")
        else:
            walk.problems.append(
                f"{latest.describe()} is beyond the last row (seq {walk.last_seq}): at least "
                f"{latest.seq - walk.last_seq} rows were deleted at the end (and the chain head moved back)"
            )
    for seq, found in sorted(by_seq.items()):
        if 0 < seq <= walk.last_seq and seq not in walk.seen_checkpoints:
            walk.problems.append(f"{found[0].describe()}: the row at seq {seq} is missing")


def _check_head(walk: _Walk, head: tuple[Any, ...] | None) -> None:
    if head is None:
        walk.problems.append("the chain head row is missing (inference_log_chain_head was tampered with)")
        return
    head_seq, head_hash = head[0], head[1]
    if head_seq > walk.last_seq:
        walk.problems.append(
            f"deleted tail: the chain head is at seq {head_seq} but the last row is seq {walk.last_seq} "
            f"({head_seq - walk.last_seq} rows missing at the end)"
        )
    elif head_seq < walk.last_seq:
        walk.problems.append(f"the chain head is at seq {head_seq} but rows exist up to seq {walk.last_seq}")
    elif head_hash != walk.last_hash:
        walk.problems.append(f"the chain head hash does not match the row_hash of the last row (seq {walk.last_seq})")


def _check_row(row: dict[str, Any], walk: _Walk) -> Iterable[str]:
    seq, request_id = row["seq"], row["request_id"]
    where = f"seq {seq} (request {request_id})"
    if seq != walk.last_seq + 1:
        missing = f"seq {walk.last_seq + 1}" if seq == walk.last_seq + 2 else f"seqs {walk.last_seq + 1}..{seq - 1}"
        yield f"deleted rows: {missing} missing before {where}"
    if row["prev_hash"] != walk.last_hash:
        yield f"{where}: prev_hash does not match the previous row's hash (a row before it was deleted or changed)"
    canonical = canonical_json(content_of_row(row))
    if row.get("hash_alg", HASH_SHA256) == HASH_HMAC:
        walk.keyed += 1
        if walk.key is not None and keyed_chain_hash(walk.key, row["prev_hash"], canonical) != row["row_hash"]:
            walk.keyed_failed += 1
            yield f"{where}: content does not match row_hash (HMAC): the row was edited or the chain recomputed"
        return
    if walk.keyed:
        yield f"{where}: an unkeyed (sha256) row after keyed rows: the chain was downgraded (rewritten)"
    if chain_hash(row["prev_hash"], canonical) != row["row_hash"]:
        yield f"{where}: content does not match row_hash (the row was edited)"


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()
    return bool(row and row[0])


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "select 1 from pg_attribute where attrelid = to_regclass(%s) and attname = %s and not attisdropped",
        (table, column),
    ).fetchone()
    return row is not None


def _was_migrated(conn: psycopg.Connection[Any]) -> bool:
    if not _exists(conn, "riverbed_schema_migrations"):
        return False
    row = conn.execute(
        "select 1 from riverbed_schema_migrations where version = %s", ("0001_inference_log",)
    ).fetchone()
    return row is not None
