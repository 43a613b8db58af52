"""The embedded versioned store: lakeFS semantics in a local directory, safe under concurrent writers.

Layout under ``<metadata_dir>/<repository>/``: ``commits/<id>.json`` and ``trees/<id>.json``
(content-addressed, immutable), ``branches/<name>.json`` (head commit + the id of its staging journal),
``staging/<id>.jsonl`` (one appended line per put or delete, last line for a path wins) and ``tags/<name>``.
Object bytes live in an :class:`~resources.object_store.ObjectStore` under ``<repository>/objects/<sha256>``,
stored once per content. Every read-modify-write of refs holds a per-repository file lock, and every
file except the journal is written atomically (temp file, fsync, rename); a journal line that a crash
cut short is ignored. A commit switches the branch to a new head and an empty journal in one rename, so
a crash never leaves a half-written commit, and readers (who take no lock) re-check the branch file to
never see a staging journal applied to the wrong head.

Semantics that follow lakeFS: a commit id is the sha256 of the commit's canonical JSON (tree, parents,
message, metadata, time); committing or merging nothing raises :class:`NoChangesError`; a merge is
three-way against the newest common ancestor and always creates a merge commit; :meth:`diff` compares
committed content (staged changes are not part of a diff); a merge into a branch with uncommitted
changes is refused (:class:`VersionedStoreError`); deleting a path that does not exist is not an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import heapq
import json
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from filelock import FileLock, Timeout

from resources.object_store import ObjectNotFoundError, ObjectStore, ObjectStoreError, write_atomic
from resources.versioned_store import (
    AlreadyExistsError,
    CommitInfo,
    ConflictError,
    DiffEntry,
    NoChangesError,
    NotFoundError,
    ObjectStat,
    StoreUnavailableError,
    VersionedStore,
    VersionedStoreError,
)

logger = logging.getLogger(__name__)

REF_NAME = re.compile(r"^\w[-\w]{0,127}$")
COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")
LOCK_TIMEOUT_SECONDS = 120.0
TREE_CACHE_SIZE = 8
COMMIT_CACHE_SIZE = 4096
STAGING_CACHE_SIZE = 8

# A tree maps a path to ``[sha256, size]``; a staged change is such an entry, or None for a delete.
Entry = list[Any]
Tree = dict[str, Entry]
Staging = dict[str, Entry | None]


def _check_path(path: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/") or "//" in path:
        raise VersionedStoreError(f"invalid object path {path!r}: must be relative, non-empty and without '..'")
    return path


def _check_ref_name(kind: str, name: str) -> str:
    if not REF_NAME.match(name):
        raise VersionedStoreError(f"invalid {kind} name {name!r}: letters, digits, '_' and '-' only")
    return name


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _apply(tree: Mapping[str, Entry], staging: Mapping[str, Entry | None]) -> Tree:
    result = dict(tree)
    for path, entry in staging.items():
        if entry is None:
            result.pop(path, None)
        else:
            result[path] = entry
    return result


_V = TypeVar("_V")


class _LRU(Generic[_V]):
    """A small thread-safe least-recently-used cache (content-addressed values never go stale)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, _V] = OrderedDict()
        self._guard = threading.Lock()

    def lookup(self, key: str) -> _V | None:
        with self._guard:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def store(self, key: str, value: _V) -> None:
        with self._guard:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._guard:
            self._items.pop(key, None)


@dataclass
class _Branch:
    head: str
    journal: str | None = None  # id of the staging journal, created by the first put after a commit
    inline: Staging = field(default_factory=dict)  # staging kept in the branch file by earlier versions

    def encode(self) -> bytes:
        return _canonical({"head": self.head, "journal": self.journal})


class LocalVersionedStore(VersionedStore):
    """Repository, branches, commits, merges and tags in a directory (see the module docstring)."""

    def __init__(
        self, metadata_dir: Path | str, objects: ObjectStore, repository: str = "riverbed", main_branch: str = "main"
    ) -> None:
        self.repository = _check_ref_name("repository", repository)
        self.main_branch = _check_ref_name("branch", main_branch)
        self.objects = objects
        self.root = Path(metadata_dir) / repository
        self._lock_path = Path(metadata_dir) / f".{repository}.lock"
        self._trees: _LRU[Tree] = _LRU(TREE_CACHE_SIZE)
        self._commits: _LRU[dict[str, Any]] = _LRU(COMMIT_CACHE_SIZE)
        self._journals: _LRU[tuple[int, Staging]] = _LRU(STAGING_CACHE_SIZE)  # journal id -> (bytes parsed, staging)

    # -- plumbing -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The repository's write lock (never taken twice by one call: a fresh FileLock is not re-entrant)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self._lock_path))
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        except Timeout:
            raise StoreUnavailableError(
                f"repository {self.repository!r} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f} s ({self._lock_path})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _exists(self) -> bool:
        return self._branch_file(self.main_branch).exists()

    def _require_repository(self) -> None:
        if not self._exists():
            raise NotFoundError(f"repository {self.repository!r} does not exist (call ensure_repository first)")

    def _branch_file(self, name: str) -> Path:
        return self.root / "branches" / f"{name}.json"

    def _journal_file(self, journal: str) -> Path:
        return self.root / "staging" / f"{journal}.jsonl"

    def _is_branch(self, ref: str) -> bool:
        return bool(REF_NAME.match(ref)) and self._branch_file(ref).exists()

    def _read_branch_bytes(self, name: str) -> bytes:
        try:
            return self._branch_file(name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"branch {name!r} not found in repository {self.repository!r}") from None

    @staticmethod
    def _decode_branch(raw: bytes) -> _Branch:
        body = json.loads(raw)
        legacy = body.get("staging")
        return _Branch(head=body["head"], journal=body.get("journal"), inline=dict(legacy or {}))

    def _read_branch(self, name: str) -> _Branch:
        return self._decode_branch(self._read_branch_bytes(name))

    def _write_branch(self, name: str, branch: _Branch) -> None:
        write_atomic(self._branch_file(name), branch.encode())

    def _read_staging(self, branch: _Branch) -> Staging:
        """The branch's staged changes: earlier inline staging, then the journal's complete lines in order."""
        staging: Staging = dict(branch.inline)
        if branch.journal is None:
            return staging
        parsed, cached = self._journals.lookup(branch.journal) or (0, {})
        try:
            with self._journal_file(branch.journal).open("rb") as handle:
                handle.seek(parsed)
                tail = handle.read()
        except FileNotFoundError:
            tail = b""
        complete = tail[: tail.rfind(b"\n") + 1]  # a line without its newline is still being written (or was cut)
        if complete:
            cached = dict(cached)
            for line in complete.splitlines():
                path, entry = json.loads(line)
                cached[path] = entry
            parsed += len(complete)
            self._journals.store(branch.journal, (parsed, cached))
        staging.update(cached)
        return staging

    def _branch_state(self, name: str) -> tuple[_Branch, Staging]:
        """A consistent (head, staging) pair read without the lock: retried if a commit switched the branch."""
        for _ in range(20):
            raw = self._read_branch_bytes(name)
            branch = self._decode_branch(raw)
            staging = self._read_staging(branch)
            if self._read_branch_bytes(name) == raw:
                return branch, staging
        with self._locked():
            branch = self._read_branch(name)
            return branch, self._read_staging(branch)

    def _stage(self, name: str, changes: Mapping[str, Entry | None]) -> None:
        """Append staged changes to the branch's journal; the caller holds the lock."""
        branch = self._read_branch(name)
        if branch.journal is None or branch.inline:
            changes = {**branch.inline, **changes}
            branch = _Branch(head=branch.head, journal=uuid.uuid4().hex)
            self._write_branch(name, branch)
        assert branch.journal is not None
        path = self._journal_file(branch.journal)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = b"".join(json.dumps([p, e], separators=(",", ":")).encode() + b"\n" for p, e in changes.items())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer crashed mid-line: drop the fragment
                content = os.pread(fd, size, 0)
                os.ftruncate(fd, content.rfind(b"\n") + 1)
            # No fsync: staged changes only matter to a later commit, which writes (and syncs) the tree.
            os.write(fd, lines)
        finally:
            os.close(fd)

    def _reset_branch(self, name: str, old: _Branch, head: str) -> None:
        """Point the branch at ``head`` with nothing staged (one atomic rename), then drop the old journal."""
        self._write_branch(name, _Branch(head=head))
        if old.journal is not None:
            self._journal_file(old.journal).unlink(missing_ok=True)
            self._journals.drop(old.journal)

    def _store_tree(self, tree: Mapping[str, Entry]) -> str:
        data = _canonical(tree)
        tree_id = hashlib.sha256(data).hexdigest()
        path = self.root / "trees" / f"{tree_id}.json"
        if not path.exists():
            write_atomic(path, data)
        self._trees.store(tree_id, dict(tree))
        return tree_id

    def _load_tree(self, tree_id: str) -> Tree:
        """The tree with that id; the returned dict is shared: copy it before changing it."""
        tree = self._trees.lookup(tree_id)
        if tree is None:
            tree = json.loads((self.root / "trees" / f"{tree_id}.json").read_bytes())
            self._trees.store(tree_id, tree)
        return tree

    def _read_commit(self, commit_id: str) -> dict[str, Any]:
        body = self._commits.lookup(commit_id)
        if body is None:
            try:
                body = json.loads((self.root / "commits" / f"{commit_id}.json").read_bytes())
            except FileNotFoundError:
                raise NotFoundError(f"commit {commit_id!r} not found in repository {self.repository!r}") from None
            self._commits.store(commit_id, body)
        return body

    def _write_commit(
        self, tree: Mapping[str, Entry], parents: list[str], message: str, metadata: Mapping[str, str]
    ) -> str:
        body = {
            "tree": self._store_tree(tree),
            "parents": parents,
            "message": message,
            "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        data = _canonical(body)
        commit_id = hashlib.sha256(data).hexdigest()
        write_atomic(self.root / "commits" / f"{commit_id}.json", data)
        self._commits.store(commit_id, body)
        return commit_id

    def _commit_info(self, commit_id: str) -> CommitInfo:
        body = self._read_commit(commit_id)
        return CommitInfo(
            id=commit_id,
            parents=tuple(body["parents"]),
            message=body["message"],
            metadata=dict(body["metadata"]),
            created_at=dt.datetime.fromisoformat(body["created_at"]),
        )

    def _commit_tree(self, commit_id: str) -> Tree:
        return self._load_tree(self._read_commit(commit_id)["tree"])

    def _view(self, ref: str) -> Tree:
        """The tree seen at a ref (shared: do not change it); at a branch, staged changes included."""
        self._require_repository()
        if self._is_branch(ref):
            branch, staging = self._branch_state(ref)
            tree = self._commit_tree(branch.head)
            return _apply(tree, staging) if staging else tree
        return self._commit_tree(self.resolve_ref(ref))

    def _object_key(self, digest: str) -> str:
        return f"{self.repository}/objects/{digest}"

    def _sort_key(self, commit_id: str) -> tuple[float, str]:
        """Newest first in a min-heap (ties broken by id, so the order is the same in every process)."""
        created = dt.datetime.fromisoformat(self._read_commit(commit_id)["created_at"])
        return (-created.timestamp(), commit_id)

    # -- repository & refs ------------------------------------------------------
    def ensure_repository(self) -> None:
        if self._exists():
            return
        with self._locked():
            if self._exists():
                return
            initial = self._write_commit({}, [], "Repository created", {})
            self._write_branch(self.main_branch, _Branch(head=initial))
            logger.info("created repository %s in %s", self.repository, self.root)

    def create_branch(self, name: str, source_ref: str) -> str:
        _check_ref_name("branch", name)
        with self._locked():
            self._require_repository()
            if self._branch_file(name).exists():
                raise AlreadyExistsError(f"branch {name!r} already exists in repository {self.repository!r}")
            head = self.resolve_ref(source_ref)
            self._write_branch(name, _Branch(head=head))
            return head

    def delete_branch(self, name: str) -> None:
        if name == self.main_branch:
            raise VersionedStoreError(f"the main branch {name!r} cannot be deleted")
        with self._locked():
            branch = self._read_branch(name)
            self._branch_file(name).unlink()
            if branch.journal is not None:
                self._journal_file(branch.journal).unlink(missing_ok=True)

    def list_branches(self) -> list[str]:
        self._require_repository()
        return sorted(p.stem for p in (self.root / "branches").glob("*.json"))

    def resolve_ref(self, ref: str) -> str:
        self._require_repository()
        if REF_NAME.match(ref):
            if self._branch_file(ref).exists():
                return self._read_branch(ref).head
            tag_file = self.root / "tags" / ref
            if tag_file.exists():
                return tag_file.read_text().strip()
        if COMMIT_ID.match(ref) and (self.root / "commits" / f"{ref}.json").exists():
            return ref
        raise NotFoundError(f"ref {ref!r} not found in repository {self.repository!r}")

    def create_tag(self, tag: str, ref: str) -> str:
        _check_ref_name("tag", tag)
        with self._locked():
            commit_id = self.resolve_ref(ref)
            path = self.root / "tags" / tag
            if path.exists():
                raise AlreadyExistsError(f"tag {tag!r} already exists in repository {self.repository!r}")
            write_atomic(path, commit_id.encode())
            return commit_id

    def list_tags(self) -> dict[str, str]:
        self._require_repository()
        tags_dir = self.root / "tags"
        if not tags_dir.exists():
            return {}
        return {p.name: p.read_text().strip() for p in sorted(tags_dir.iterdir()) if not p.name.startswith(".")}

    # -- objects --------------------------------------------------------------
    def put_object(self, branch: str, path: str, data: bytes) -> ObjectStat:
        """Store the bytes once per content (outside the lock), then append one journal line under it."""
        _check_path(path)
        self._require_repository()
        self._read_branch(branch)  # fail on an unknown branch before storing anything
        digest = hashlib.sha256(data).hexdigest()
        try:
            if not self.objects.exists(self._object_key(digest)):
                self.objects.put(self._object_key(digest), data)
        except ObjectStoreError as error:
            raise StoreUnavailableError(f"could not store {path!r}: {error}") from error
        with self._locked():
            self._stage(branch, {path: [digest, len(data)]})
        return ObjectStat(path=path, size_bytes=len(data), checksum=digest)

    def delete_object(self, branch: str, path: str) -> None:
        """Stage a delete; a path the branch does not hold is left alone (as in lakeFS and S3)."""
        _check_path(path)
        self._require_repository()
        with self._locked():
            state = self._read_branch(branch)
            if path in _apply(self._commit_tree(state.head), self._read_staging(state)):
                self._stage(branch, {path: None})

    def get_object(self, ref: str, path: str) -> bytes:
        _check_path(path)
        entry = self._view(ref).get(path)
        if entry is None:
            raise NotFoundError(f"object {path!r} not found at {ref!r} in repository {self.repository!r}")
        try:
            return self.objects.get(self._object_key(entry[0]))
        except ObjectNotFoundError:
            raise NotFoundError(f"object data of {path!r} is missing from the object store") from None
        except ObjectStoreError as error:
            raise StoreUnavailableError(f"could not read {path!r}: {error}") from error

    def list_objects(self, ref: str, prefix: str = "") -> list[ObjectStat]:
        tree = self._view(ref)
        return [
            ObjectStat(path=path, size_bytes=entry[1], checksum=entry[0])
            for path, entry in sorted(tree.items())
            if path.startswith(prefix)
        ]

    # -- history ----------------------------------------------------------------
    def commit(self, branch: str, message: str, metadata: Mapping[str, str] | None = None) -> CommitInfo:
        self._require_repository()
        with self._locked():
            state = self._read_branch(branch)
            base = self._commit_tree(state.head)
            tree = _apply(base, self._read_staging(state))
            if tree == base:
                raise NoChangesError(f"branch {branch!r} has no uncommitted changes")
            commit_id = self._write_commit(tree, [state.head], message, metadata or {})
            self._reset_branch(branch, state, commit_id)
        return self._commit_info(commit_id)

    def get_commit(self, ref: str) -> CommitInfo:
        return self._commit_info(self.resolve_ref(ref))

    def log(self, ref: str, limit: int = 100) -> list[CommitInfo]:
        """Newest first by commit time, reading only as much history as ``limit`` needs."""
        start = self.resolve_ref(ref)
        seen = {start}
        heap = [(self._sort_key(start), start)]
        found: list[CommitInfo] = []
        while heap and len(found) < limit:
            _, commit_id = heapq.heappop(heap)
            info = self._commit_info(commit_id)
            found.append(info)
            for parent in info.parents:
                if parent not in seen:
                    seen.add(parent)
                    heapq.heappush(heap, (self._sort_key(parent), parent))
        return found

    def diff(self, left_ref: str, right_ref: str) -> list[DiffEntry]:
        """Committed content only, as lakeFS's ref diff: at a branch, its head commit is compared."""
        left = self._commit_tree(self.resolve_ref(left_ref))
        right = self._commit_tree(self.resolve_ref(right_ref))
        return _tree_diff(left, right)

    def _merge_base(self, left: str, right: str) -> str:
        """The newest common ancestor: walk both histories newest first and stop at the first shared commit.

        A commit is written after its parents, so when a commit leaves the queue every descendant that
        reaches it from either side has already passed it on; the cost is the history since the base.
        """
        if left == right:
            return left
        sides: dict[str, int] = {left: 1, right: 2}
        heap = [(self._sort_key(left), left), (self._sort_key(right), right)]
        heapq.heapify(heap)
        while heap:
            _, commit_id = heapq.heappop(heap)
            side = sides[commit_id]
            if side == 3:
                return commit_id
            for parent in self._read_commit(commit_id)["parents"]:
                known = sides.get(parent, 0)
                if known | side != known:
                    sides[parent] = known | side
                    heapq.heappush(heap, (self._sort_key(parent), parent))
        raise VersionedStoreError(f"{left[:12]} and {right[:12]} share no history")

    def merge(
        self, source_ref: str, destination_branch: str, message: str = "", metadata: Mapping[str, str] | None = None
    ) -> str:
        """Three-way merge into a clean ``destination_branch``; see the module docstring for the rules."""
        self._require_repository()
        with self._locked():
            destination = self._read_branch(destination_branch)
            dest_head = destination.head
            dest_tree = self._commit_tree(dest_head)
            if self._read_staging(destination):  # lakeFS refuses a dirty destination too
                raise VersionedStoreError(
                    f"branch {destination_branch!r} has uncommitted changes; commit them before merging into it"
                )
            source_head = self.resolve_ref(source_ref)
            base_tree = self._commit_tree(self._merge_base(source_head, dest_head))
            source_changes = _changes(base_tree, self._commit_tree(source_head))
            if not source_changes:
                raise NoChangesError(f"{source_ref!r} has nothing to merge into {destination_branch!r}")
            dest_changes = _changes(base_tree, dest_tree)
            conflicts = sorted(
                path
                for path in source_changes.keys() & dest_changes.keys()
                if source_changes[path] != dest_changes[path]
            )
            if conflicts:
                raise ConflictError(
                    f"merging {source_ref!r} into {destination_branch!r} conflicts on {len(conflicts)} path(s): "
                    + ", ".join(conflicts[:10])
                )
            commit_id = self._write_commit(
                _apply(dest_tree, source_changes),
                [dest_head, source_head],
                message or f"Merge {source_ref} into {destination_branch}",
                metadata or {},
            )
            self._reset_branch(destination_branch, destination, commit_id)
            return commit_id


def _changes(base: Mapping[str, Entry], other: Mapping[str, Entry]) -> Staging:
    """Paths changed from ``base`` to ``other``: new entry, or None for removed."""
    changed: Staging = {}
    for path, entry in other.items():
        if base.get(path) != entry:
            changed[path] = entry
    for path in base.keys() - other.keys():
        changed[path] = None
    return changed


def _tree_diff(left: Mapping[str, Entry], right: Mapping[str, Entry]) -> list[DiffEntry]:
    entries = []
    for path in sorted(left.keys() | right.keys()):
        if path not in left:
            entries.append(DiffEntry(path=path, type="added"))
        elif path not in right:
            entries.append(DiffEntry(path=path, type="removed"))
        elif left[path] != right[path]:
            entries.append(DiffEntry(path=path, type="changed"))
    return entries
