"""The versioned data store interface: lakeFS semantics (repository, branch, commit, merge, tag).

Backends: ``LocalVersionedStore`` (embedded default, ``resources/local_versioned_store.py``) and
``LakeFSVersionedStore`` (the lakeFS Python SDK over HTTP, ``resources/lakefs_versioned_store.py``).
Both pass the same contract suite (``tests/resources/test_versioned_store_contract.py``).

Every write the platform makes goes through :meth:`VersionedStore.transaction`: a short-lived branch
from ``main``, the writes, one commit per logical unit, a merge back into ``main`` and the branch's
deletion. If anything fails before the merge, ``main`` is untouched and the branch is removed, so a
half-written commit is never visible.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)


class VersionedStoreError(RuntimeError):
    """Base class for every error a versioned store raises."""


class NotFoundError(VersionedStoreError):
    """A repository, branch, tag, commit or object does not exist."""


class AlreadyExistsError(VersionedStoreError):
    """A branch or tag with that name exists already."""


class ConflictError(VersionedStoreError):
    """A merge found the same path changed differently on both sides."""


class NoChangesError(VersionedStoreError):
    """A commit was asked for on a branch without uncommitted changes."""


class StoreUnavailableError(VersionedStoreError):
    """The backend could not be reached or answered with a server error."""


@dataclass(frozen=True)
class CommitInfo:
    """One commit: its id, parents, message, metadata and creation time (UTC)."""

    id: str
    parents: tuple[str, ...]
    message: str
    metadata: Mapping[str, str]
    created_at: dt.datetime


@dataclass(frozen=True)
class DiffEntry:
    """One path that differs between two refs."""

    path: str
    type: Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class ObjectStat:
    path: str
    size_bytes: int
    checksum: str


@dataclass
class TransactionResult:
    """What a transaction left behind, filled in as it runs."""

    branch: str
    commits: list[CommitInfo] = field(default_factory=list)
    merge_commit_id: str | None = None
    unchanged_commit: CommitInfo | None = None  # set when every write matched what main already held

    @property
    def last_commit_id(self) -> str:
        if not self.commits and self.unchanged_commit is not None:
            return self.unchanged_commit.id
        if not self.commits:
            raise VersionedStoreError(f"transaction on branch {self.branch!r} made no commit")
        return self.commits[-1].id


class VersionedStore(abc.ABC):
    """A repository of objects with branches, commits, merges and tags.

    Paths are ``/``-separated keys without a leading slash. A *ref* is a branch name, a tag or a
    commit id. Metadata keys and values are strings.
    """

    repository: str
    main_branch: str

    # -- repository & refs -------------------------------------------------
    @abc.abstractmethod
    def ensure_repository(self) -> None:
        """Create the repository (with its main branch and an initial commit) if it does not exist."""

    @abc.abstractmethod
    def create_branch(self, name: str, source_ref: str) -> str:
        """Create ``name`` at ``source_ref``; returns the commit id it points at."""

    @abc.abstractmethod
    def delete_branch(self, name: str) -> None: ...

    @abc.abstractmethod
    def list_branches(self) -> list[str]: ...

    @abc.abstractmethod
    def resolve_ref(self, ref: str) -> str:
        """The commit id a branch, tag or commit id points at."""

    @abc.abstractmethod
    def create_tag(self, tag: str, ref: str) -> str:
        """Tag the commit ``ref`` points at; returns that commit id."""

    @abc.abstractmethod
    def list_tags(self) -> dict[str, str]:
        """Tag name -> commit id."""

    # -- objects ------------------------------------------------------------
    @abc.abstractmethod
    def put_object(self, branch: str, path: str, data: bytes) -> ObjectStat:
        """Stage an object on a branch (visible on the branch, committed by :meth:`commit`)."""

    @abc.abstractmethod
    def delete_object(self, branch: str, path: str) -> None: ...

    @abc.abstractmethod
    def get_object(self, ref: str, path: str) -> bytes:
        """Read an object at a ref; at a branch, uncommitted changes are visible."""

    @abc.abstractmethod
    def list_objects(self, ref: str, prefix: str = "") -> list[ObjectStat]:
        """Objects under ``prefix`` at ``ref``, sorted by path."""

    # -- history -----------------------------------------------------------
    @abc.abstractmethod
    def commit(self, branch: str, message: str, metadata: Mapping[str, str] | None = None) -> CommitInfo:
        """Commit the branch's staged changes; raises :class:`NoChangesError` when there are none."""

    @abc.abstractmethod
    def get_commit(self, ref: str) -> CommitInfo: ...

    @abc.abstractmethod
    def log(self, ref: str, limit: int = 100) -> list[CommitInfo]:
        """Commits reachable from ``ref``, newest first."""

    @abc.abstractmethod
    def diff(self, left_ref: str, right_ref: str) -> list[DiffEntry]:
        """Paths that differ going from ``left_ref`` to ``right_ref``, sorted by path."""

    @abc.abstractmethod
    def merge(
        self, source_ref: str, destination_branch: str, message: str = "", metadata: Mapping[str, str] | None = None
    ) -> str:
        """Merge ``source_ref`` into ``destination_branch``; returns the resulting head commit id.

        Raises :class:`ConflictError` if a path changed differently on both sides since their common base.
        """

    # -- the one way the platform writes -------------------------------------
    def object_uri(self, ref: str, path: str) -> str:
        """A ``lakefs://`` URI pinned to ``ref`` (use a commit id to pin it for good)."""
        return f"lakefs://{self.repository}/{ref}/{path}"

    @contextlib.contextmanager
    def transaction(self, branch_prefix: str, source_ref: str | None = None) -> Iterator[TransactionResult]:
        """Writes on a short-lived branch, merged into main on success and deleted either way.

        Inside the block, call ``put_object(result.branch, ...)`` and ``commit_into(result, ...)``.
        On an exception nothing reaches main.
        """
        self.ensure_repository()
        base = source_ref or self.main_branch
        branch = f"{branch_prefix}-{uuid.uuid4().hex[:10]}"
        self.create_branch(branch, base)
        result = TransactionResult(branch=branch)
        try:
            yield result
            if result.commits:
                result.merge_commit_id = self.merge(
                    branch,
                    self.main_branch,
                    message=f"merge {branch}",
                    metadata={"riverbed.source_branch": branch},
                )
        finally:
            try:
                self.delete_branch(branch)
            except VersionedStoreError:  # cleanup must not hide the original error
                logger.warning("could not delete transaction branch %s", branch, exc_info=True)

    def commit_into(
        self, transaction: TransactionResult, message: str, metadata: Mapping[str, str] | None = None
    ) -> CommitInfo:
        info = self.commit(transaction.branch, message, metadata)
        transaction.commits.append(info)
        return info
