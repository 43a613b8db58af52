"""The local spool: fsynced JSON-lines files holding records PostgreSQL has not taken yet, replayed in order."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from serving.inference_log.chain import fsync_dir

SPOOL_PREFIX = "inference-log-"
SPOOL_SUFFIX = ".spool.jsonl"


class Spool:
    """Fsynced JSON-lines spool files in one directory; this process appends to its own, locked, file.

    Files are replayed in name order (creation time); a file whose lock another live process holds is skipped.
    ``depth`` counts the records waiting (this process's appends plus what :meth:`count_lines` found).
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

    @staticmethod
    def count_lines(files: list[Path]) -> int:
        """Complete non-empty lines in ``files`` (blocking: run it in a thread for a large spool)."""
        total = 0
        for path in files:
            with contextlib.suppress(OSError), path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    total += block.count(b"\n")
        return total

    def append(self, lines: list[str]) -> None:
        """Append one line per record and fsync once; raises OSError if the disk refuses."""
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{SPOOL_PREFIX}{time.time_ns():020d}-{os.getpid()}{SPOOL_SUFFIX}"
            handle = path.open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fsync_dir(self.directory)
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
        fsync_dir(self.directory)
        if path == self._own and self._handle is not None:
            self._handle.close()
            self._own, self._handle = None, None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._own = None
