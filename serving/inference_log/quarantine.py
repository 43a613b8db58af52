"""Quarantine: rows PostgreSQL refused, kept verbatim outside the hash chain so they can never block it.

A quarantined row is one row of ``inference_log_quarantine`` (migration ``0005_keyed_chain``): its request id and
time, the reason, its canonical JSON text (escaped like the log; cut at :data:`CONTENT_LIMIT` bytes on a
character boundary if larger, with the full size and SHA-256 kept), and when it was quarantined. If even that
insert fails, the entry goes to a local fsynced JSON-lines file (``<spool dir>/quarantine.jsonl``) instead.
:func:`list_quarantine` reads both, newest first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

from serving.inference_log.chain import fsync_dir
from serving.inference_log.records import Prepared, format_time, parse_time

logger = logging.getLogger(__name__)

CONTENT_LIMIT = 1 << 20  # bytes of content kept per quarantined row
# The request id of a spooled line too large to parse (canonical JSON: a top-level key near the end; best effort).
_SPOOLED_ID = re.compile(rb'"request_id":("(?:[^"\\]|\\.){1,1000}")')
_TAIL_BYTES = 1 << 16
REASON_LIMIT = 2000
LOCAL_QUARANTINE_FILE = "quarantine.jsonl"

INSERT_SQL = (
    "insert into inference_log_quarantine "
    "(request_id, received_at, reason, content, content_bytes, content_sha256, truncated) "
    "values (%s, %s, %s, %s, %s, %s, %s)"
)
# The same, unless that content of that request is already quarantined (a replay repeated after a failure).
INSERT_ONCE_SQL = (
    INSERT_SQL.replace(" values (%s, %s, %s, %s, %s, %s, %s)", " select %s, %s, %s, %s, %s, %s, %s")
    + " where not exists (select 1 from inference_log_quarantine"
    " where request_id is not distinct from %s and content_sha256 = %s)"
)


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined row. ``source`` is ``database`` or ``local`` (the fallback file); ``id`` is None there."""

    id: int | None
    request_id: str | None
    received_at: dt.datetime | None
    reason: str
    content: str
    content_bytes: int
    content_sha256: str
    truncated: bool
    quarantined_at: dt.datetime
    source: str = "database"


def truncate_utf8(text: str, limit: int) -> tuple[str, int, str, bool]:
    """(kept text, full size in bytes, SHA-256 of the full text, truncated?) cutting on a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) <= limit:
        return text, len(data), digest, False
    return data[:limit].decode("utf-8", "ignore"), len(data), digest, True


def entry_for(
    prepared: Prepared | None, reason: str, *, raw: str | None = None, limit: int = CONTENT_LIMIT
) -> QuarantineEntry:
    """The entry of a prepared record, or of a raw spool line that is not one (``prepared`` None)."""
    text = prepared.canonical if prepared is not None else (raw or "")
    kept, size, digest, truncated = truncate_utf8(text, limit)
    request_id = prepared.request_id if prepared is not None else None
    if request_id is not None and len(request_id) > 1000:
        request_id = request_id[:1000]
    return QuarantineEntry(
        id=None,
        request_id=request_id,
        received_at=prepared.received_at if prepared is not None else None,
        reason=reason[:REASON_LIMIT],
        content=kept,
        content_bytes=size,
        content_sha256=digest,
        truncated=truncated,
        quarantined_at=dt.datetime.now(dt.UTC),
        source="local",
    )


def insert_params(entry: QuarantineEntry) -> tuple[Any, ...]:
    return (
        entry.request_id,
        entry.received_at,
        entry.reason,
        entry.content,
        entry.content_bytes,
        entry.content_sha256,
        entry.truncated,
    )


class LocalQuarantine:
    """The fallback file: one fsynced JSON line per entry, appended under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: QuarantineEntry) -> None:
        """Raises OSError if the disk refuses."""
        record = asdict(entry)
        record["received_at"] = format_time(entry.received_at) if entry.received_at else None
        record["quarantined_at"] = format_time(entry.quarantined_at)
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)

    def entries(self) -> list[QuarantineEntry]:
        found: list[QuarantineEntry] = []
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return found
        for line in lines:
            try:
                data = json.loads(line)
                found.append(
                    QuarantineEntry(
                        id=None,
                        request_id=data.get("request_id"),
                        received_at=parse_time(data["received_at"]) if data.get("received_at") else None,
                        reason=str(data["reason"]),
                        content=str(data["content"]),
                        content_bytes=int(data["content_bytes"]),
                        content_sha256=str(data["content_sha256"]),
                        truncated=bool(data["truncated"]),
                        quarantined_at=parse_time(data["quarantined_at"]),
                        source="local",
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("%s: skipping an unreadable line (%s)", self.path, error)
        return found


def list_quarantine(
    dsn: str, *, limit: int = 100, local_file: Path | None = None, connect_timeout: float = 5.0
) -> list[QuarantineEntry]:
    """Quarantined rows, newest first (at most ``limit``): the table's, plus the local file's if given."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    entries: list[QuarantineEntry] = []
    with psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout))) as conn:
        exists = conn.execute("select to_regclass('inference_log_quarantine') is not null").fetchone()
        if exists and exists[0]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    "select id, request_id, received_at, reason, content, content_bytes, content_sha256, truncated, "
                    "quarantined_at from inference_log_quarantine order by quarantined_at desc, id desc limit %s",
                    (limit,),
                )
                entries.extend(QuarantineEntry(**row, source="database") for row in cur.fetchall())
    if local_file is not None:
        entries.extend(LocalQuarantine(local_file).entries())
        entries.sort(key=lambda entry: entry.quarantined_at, reverse=True)
    return entries[:limit]


def count_quarantine(conn: psycopg.Connection[Any]) -> int:
    """Rows in ``inference_log_quarantine`` (0 if the table does not exist)."""
    exists = conn.execute("select to_regclass('inference_log_quarantine') is not null").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("select count(*) from inference_log_quarantine").fetchone()
    return int(row[0]) if row else 0


def entry_for_oversized_line(handle: IO[bytes], start: bytes, limit: int) -> QuarantineEntry | None:
    """Read the rest of a spool line longer than ``limit`` without holding it: its quarantine entry (None if torn).

    Its request id is looked for near the end (canonical JSON sorts keys: only route, status, timings_ms and
    training_set_commit_id follow it), best effort.
    """
    digest = hashlib.sha256(start)
    size = len(start)
    tail = start[-_TAIL_BYTES:]
    while True:
        part = handle.readline(1 << 20)
        if not part:
            logger.warning("spool: ignoring a partial last line of %d bytes", size)
            return None
        body = part[:-1] if part.endswith(b"\n") else part
        digest.update(body)
        size += len(body)
        tail = (tail + body)[-_TAIL_BYTES:]
        if part.endswith(b"\n"):
            break
    matches = list(_SPOOLED_ID.finditer(tail))  # the last one is the top-level key
    request_id: str | None = None
    if matches:
        with contextlib.suppress(ValueError):
            request_id = str(json.loads(matches[-1].group(1)))
    return QuarantineEntry(
        id=None,
        request_id=request_id,
        received_at=None,
        reason=f"too large: {size:,} bytes of spooled JSON, over the writer's limit of {limit:,} bytes",
        content=start[:CONTENT_LIMIT].decode("utf-8", "ignore"),
        content_bytes=size,
        content_sha256=digest.hexdigest(),
        truncated=True,
        quarantined_at=dt.datetime.now(dt.UTC),
        source="local",
    )
