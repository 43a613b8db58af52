"""The keyed hash chain, its key, and signed checkpoints of the chain head kept outside PostgreSQL.

Rows written since migration ``0005_keyed_chain`` carry ``hash_alg = 'hmac-sha256'``:
``row_hash = HMAC-SHA256(key, prev_hash + canonical)`` (hex). Older rows keep ``hash_alg = 'sha256'``:
``row_hash = SHA-256(prev_hash + canonical)``. One chain continues across the switch (the first keyed row's
prev_hash is the last unkeyed row's hash); unkeyed rows are only valid *before* the first keyed row.

The key never enters the database: it comes from ``RIVERBED_AUDIT_CHAIN_KEY`` or from the key file
(``settings.audit_chain_key_path``), created 0600 (directory 0700) with 32 random bytes on first local use.
A key is given as 64+ hex digits (decoded) or as any other text of at least 16 bytes (its UTF-8 bytes).

A :class:`Checkpoint` records (chain id, database, seq, row_hash, time) signed with the key; the writer appends
one to a :class:`CheckpointSink` at start, every ``checkpoint_interval`` seconds while the head moves, and at
stop. :func:`~serving.inference_log.verify.verify_chain` checks the log against them: a deleted tail, a
recomputed or wiped log cannot match a checkpoint, and a checkpoint cannot be forged without the key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from riverbed.settings import Environment, RiverbedSettings
from serving.inference_log.records import canonical_json, format_time

logger = logging.getLogger(__name__)

HASH_SHA256 = "sha256"
HASH_HMAC = "hmac-sha256"
HASH_ALGS = (HASH_SHA256, HASH_HMAC)
KEY_BYTES = 32
MIN_KEY_BYTES = 16
CHECKPOINT_FILE = "checkpoints.jsonl"
_HEX_KEY = re.compile(r"^(?:[0-9a-fA-F]{2}){32,}$")


class ChainKeyError(ValueError):
    """The chain key is missing where it is required, malformed or too short."""


# ----------------------------------------------------------------------------------------------------- hashes
def chain_hash(prev_hash: str, canonical: str) -> str:
    """Unkeyed (legacy) link: SHA-256 of prev_hash + canonical text."""
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def keyed_chain_hash(key: bytes, prev_hash: str, canonical: str) -> str:
    """Keyed link: HMAC-SHA256 with the chain key of prev_hash + canonical text."""
    return hmac.new(key, (prev_hash + canonical).encode("utf-8"), hashlib.sha256).hexdigest()


def row_hash(hash_alg: str, key: bytes | None, prev_hash: str, canonical: str) -> str:
    if hash_alg == HASH_HMAC:
        if key is None:
            raise ChainKeyError("a keyed (hmac-sha256) row needs the chain key")
        return keyed_chain_hash(key, prev_hash, canonical)
    if hash_alg == HASH_SHA256:
        return chain_hash(prev_hash, canonical)
    raise ValueError(f"unknown hash_alg {hash_alg!r}")


def key_id(key: bytes) -> str:
    """A public fingerprint of a key (names it in checkpoints and reports; reveals nothing of it)."""
    return hmac.new(key, b"riverbed inference-log chain key id", hashlib.sha256).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- keys
def parse_chain_key(text: str | bytes) -> bytes:
    """A key from its configured text: 64+ hex digits are decoded, anything else is taken as UTF-8 bytes."""
    raw = text.decode("utf-8") if isinstance(text, bytes) else text
    raw = raw.strip()
    key = bytes.fromhex(raw) if _HEX_KEY.match(raw) else raw.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ChainKeyError(f"the chain key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required")
    return key


def read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & 0o077:
        logger.warning("chain key file %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    return parse_chain_key(path.read_text(encoding="utf-8"))


def create_key_file(path: Path) -> bytes:
    """Write a new random key to ``path`` (0600, directory 0700) unless one exists; returns the file's key.

    Safe when several processes start at once: the file appears complete (written aside, then hard-linked).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists():
        return read_key_file(path)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
        logger.info("created the inference-log chain key %s", path)
    except FileExistsError:
        pass  # another process won the race: use its key
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return read_key_file(path)


def load_chain_key(settings: RiverbedSettings, *, create: bool | None = None) -> bytes | None:
    """The chain key: ``settings.audit_chain_key`` if set, else the key file's key.

    A missing key file is created when ``create`` is true (default: in the ``local`` environment only);
    otherwise None is returned. Raises :class:`ChainKeyError` for a malformed key.
    """
    if settings.audit_chain_key is not None:
        return parse_chain_key(settings.audit_chain_key.get_secret_value())
    path = settings.audit_chain_key_path
    if path.exists():
        return read_key_file(path)
    if create is None:
        create = settings.env is Environment.LOCAL
    return create_key_file(path) if create else None


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "chain ``chain_id`` of database ``database`` had head (seq, row_hash) at ``written_at``"."""

    chain_id: str
    database: str
    seq: int
    row_hash: str
    written_at: str
    key_id: str
    mac: str = ""

    def _signed_text(self) -> str:
        body = asdict(self)
        body.pop("mac")
        body["v"] = 1
        return canonical_json(body)

    @classmethod
    def sign(
        cls, key: bytes, *, chain_id: str, database: str, seq: int, row_hash: str, at: dt.datetime | None = None
    ) -> Checkpoint:
        unsigned = cls(
            chain_id=chain_id,
            database=database,
            seq=seq,
            row_hash=row_hash,
            written_at=format_time(at or dt.datetime.now(dt.UTC)),
            key_id=key_id(key),
        )
        mac = hmac.new(key, unsigned._signed_text().encode("utf-8"), hashlib.sha256).hexdigest()
        return cls(**{**asdict(unsigned), "mac": mac})

    def is_signed_by(self, key: bytes) -> bool:
        expected = hmac.new(key, self._signed_text().encode("utf-8"), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.mac)

    def describe(self) -> str:
        return f"checkpoint of {self.written_at} (seq {self.seq})"

    def to_json(self) -> str:
        return canonical_json(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        try:
            return cls(
                chain_id=str(data["chain_id"]),
                database=str(data["database"]),
                seq=int(data["seq"]),
                row_hash=str(data["row_hash"]),
                written_at=str(data["written_at"]),
                key_id=str(data["key_id"]),
                mac=str(data["mac"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a checkpoint: {error}") from error


class CheckpointSink(Protocol):
    """Where checkpoints go: append-only, durable when :meth:`append` returns (a file, an object store...)."""

    def append(self, checkpoint: Checkpoint) -> None: ...

    def load(self) -> tuple[list[Checkpoint], list[str]]:
        """Every stored checkpoint, in write order, and a description of each unreadable entry."""
        ...


class FileCheckpointSink:
    """One JSON-lines file ``checkpoints.jsonl`` in ``directory`` (0700; file 0600), appended under a lock, fsynced."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_FILE

    def append(self, checkpoint: Checkpoint) -> None:
        created = not self.path.exists()
        if created:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (checkpoint.to_json() + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)

    def load(self) -> tuple[list[Checkpoint], list[str]]:
        found: list[Checkpoint] = []
        problems: list[str] = []
        try:
            with self.path.open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return found, problems
        torn = lines.pop()  # after the last newline: empty, or a write torn by a crash (never acknowledged)
        if torn.strip():
            logger.warning("%s: ignoring a partial last line", self.path)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                found.append(Checkpoint.from_json(line))
            except ValueError as error:
                problems.append(f"{self.path.name} line {number} is not a checkpoint ({error}): the file was edited")
        return found, problems


def checkpoint_sink(value: CheckpointSink | Path | str | None) -> CheckpointSink | None:
    """A sink from a sink or a directory."""
    if value is None:
        return None
    if isinstance(value, Path | str):
        return FileCheckpointSink(Path(value))
    return value


class Checkpointer:
    """Signs chain heads and appends them to a sink, skipping a head that is already the last checkpoint."""

    def __init__(self, key: bytes, sink: CheckpointSink) -> None:
        self._key = key
        self._sink = sink
        self._last: tuple[str, str, int, str] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.error: str | None = None  # the last failure (None once one succeeds)

    async def write(self, *, database: str, chain_id: str, seq: int, row_hash: str) -> None:
        """Append a checkpoint of this head (in a thread: the sink fsyncs); a failure is logged and kept."""
        head = (database, chain_id, seq, row_hash)
        async with self._lock:
            if head == self._last:
                return
            checkpoint = Checkpoint.sign(self._key, chain_id=chain_id, database=database, seq=seq, row_hash=row_hash)
            try:
                await asyncio.to_thread(self._sink.append, checkpoint)
            except Exception as error:
                self.error = f"{type(error).__name__}: {error}"
                logger.error("cannot write the inference-log checkpoint: %s", self.error)
                return
            self._last = head
            self.written += 1
            self.error = None
