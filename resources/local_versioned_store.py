"""The embedded versioned store: lakeFS semantics in a local directory, safe under concurrent writers.

Layout under ``<metadata_dir>/<repository>/``: ``commits/<id>.json`` and ``trees/<id>.json``
(content-addressed, immutable), ``branches/<name>.json`` (head commit + staged changes), ``tags/<name>``.
Object bytes live in an :class:`~resources.object_store.ObjectStore` under ``<repository>/objects/<sha256>``,
stored once per content. Every read-modify-write of refs holds a per-repository file lock, and every
file is written atomically (temp file, fsync, rename), so a crash never leaves a half-written commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

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

REF_NAME = re.compile(r"^\w[-\w]{0,127}$")
COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")
EMPTY_TREE: dict[str, list[Any]] = {}


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
        self._tree_cache: dict[str, dict[str, list[Any]]] = {}

    # -- plumbing -------------------------------------------------------------
    def _lock(self) -> FileLock:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self._lock_path), timeout=120)

    def _exists(self) -> bool:
        return (self.root / "branches" / f"{self.main_branch}.json").exists()

    def _require_repository(self) -> None:
        if not self._exists():
            raise NotFoundError(f"repository {self.repository!r} does not exist (call ensure_repository first)")

    def _branch_file(self, name: str) -> Path:
        return self.root / "branches" / f"{name}.json"

    def _read_branch(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._branch_file(name).read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"branch {name!r} not found in repository {self.repository!r}") from None

    def _write_branch(self, name: str, head: str, staging: Mapping[str, Any]) -> None:
        write_atomic(self._branch_file(name), _canonical({"head": head, "staging": dict(staging)}))

    def _store_tree(self, tree: Mapping[str, list[Any]]) -> str:
        data = _canonical(tree)
        tree_id = hashlib.sha256(data).hexdigest()
        path = self.root / "trees" / f"{tree_id}.json"
        if not path.exists():
            write_atomic(path, data)
        self._tree_cache[tree_id] = dict(tree)
        return tree_id

    def _load_tree(self, tree_id: str) -> dict[str, list[Any]]:
        cached = self._tree_cache.get(tree_id)
        if cached is None:
            cached = json.loads((self.root / "trees" / f"{tree_id}.json").read_bytes())
            self._tree_cache[tree_id] = cached
        return cached

    def _read_commit(self, commit_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.root / "commits" / f"{commit_id}.json").read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"commit {commit_id!r} not found in repository {self.repository!r}") from None

    def _write_commit(
        self, tree: Mapping[str, list[Any]], parents: list[str], message: str, metadata: Mapping[str, str]
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

    def _commit_tree(self, commit_id: str) -> dict[str, list[Any]]:
        return self._load_tree(self._read_commit(commit_id)["tree"])

    def _view(self, ref: str) -> dict[str, list[Any]]:
        """The tree seen at a ref; at a branch, staged changes included."""
        self._require_repository()
        if self._branch_file(ref).exists() if REF_NAME.match(ref) else False:
            branch = self._read_branch(ref)
            tree = dict(self._commit_tree(branch["head"]))
            for path, entry in branch["staging"].items():
                if entry is None:
                    tree.pop(path, None)
                else:
                    tree[path] = entry
            return tree
        return self._commit_tree(self.resolve_ref(ref))

    def _object_key(self, digest: str) -> str:
        return f"{self.repository}/objects/{digest}"

    # -- repository & refs ------------------------------------------------------
    def ensure_repository(self) -> None:
        if self._exists():
            return
        with self._lock():
            if self._exists():
                return
            initial = self._write_commit(EMPTY_TREE, [], "Repository created", {})
            self._write_branch(self.main_branch, initial, {})

    def create_branch(self, name: str, source_ref: str) -> str:
        _check_ref_name("branch", name)
        with self._lock():
            self._require_repository()
            if self._branch_file(name).exists():
                raise AlreadyExistsError(f"branch {name!r} already exists in repository {self.repository!r}")
            head = self.resolve_ref(source_ref)
            self._write_branch(name, head, {})
            return head

    def delete_branch(self, name: str) -> None:
        if name == self.main_branch:
            raise VersionedStoreError(f"the main branch {name!r} cannot be deleted")
        with self._lock():
            path = self._branch_file(name)
            if not path.exists():
                raise NotFoundError(f"branch {name!r} not found in repository {self.repository!r}")
            path.unlink()

    def list_branches(self) -> list[str]:
        self._require_repository()
        return sorted(p.stem for p in (self.root / "branches").glob("*.json"))

    def resolve_ref(self, ref: str) -> str:
        self._require_repository()
        if REF_NAME.match(ref):
            branch_file = self._branch_file(ref)
            if branch_file.exists():
                return self._read_branch(ref)["head"]
            tag_file = self.root / "tags" / ref
            if tag_file.exists():
                return tag_file.read_text().strip()
        if COMMIT_ID.match(ref) and (self.root / "commits" / f"{ref}.json").exists():
            return ref
        raise NotFoundError(f"ref {ref!r} not found in repository {self.repository!r}")

    def create_tag(self, tag: str, ref: str) -> str:
        _check_ref_name("tag", tag)
        with self._lock():
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
        _check_path(path)
        digest = hashlib.sha256(data).hexdigest()
        try:
            if not self.objects.exists(self._object_key(digest)):
                self.objects.put(self._object_key(digest), data)
        except ObjectStoreError as error:
            raise StoreUnavailableError(f"could not store {path!r}: {error}") from error
        with self._lock():
            state = self._read_branch(branch)
            state["staging"][path] = [digest, len(data)]
            self._write_branch(branch, state["head"], state["staging"])
        return ObjectStat(path=path, size_bytes=len(data), checksum=digest)

    def delete_object(self, branch: str, path: str) -> None:
        _check_path(path)
        with self._lock():
            state = self._read_branch(branch)
            if path not in self._view(branch):
                raise NotFoundError(f"object {path!r} not found on branch {branch!r}")
            state["staging"][path] = None
            self._write_branch(branch, state["head"], state["staging"])

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
        with self._lock():
            state = self._read_branch(branch)
            base = self._commit_tree(state["head"])
            tree = dict(base)
            for path, entry in state["staging"].items():
                if entry is None:
                    tree.pop(path, None)
                else:
                    tree[path] = entry
            if tree == base:
                raise NoChangesError(f"branch {branch!r} has no uncommitted changes")
            commit_id = self._write_commit(tree, [state["head"]], message, metadata or {})
            self._write_branch(branch, commit_id, {})
        return self._commit_info(commit_id)

    def get_commit(self, ref: str) -> CommitInfo:
        return self._commit_info(self.resolve_ref(ref))

    def log(self, ref: str, limit: int = 100) -> list[CommitInfo]:
        start = self.resolve_ref(ref)
        seen = {start}
        queue = deque([start])
        found: list[CommitInfo] = []
        while queue:
            info = self._commit_info(queue.popleft())
            found.append(info)
            for parent in info.parents:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        found.sort(key=lambda c: c.created_at, reverse=True)
        return found[:limit]

    def diff(self, left_ref: str, right_ref: str) -> list[DiffEntry]:
        left = self._commit_tree(self.resolve_ref(left_ref))
        right = self._commit_tree(self.resolve_ref(right_ref))
        return _tree_diff(left, right)

    def _ancestors(self, commit_id: str) -> dict[str, int]:
        distance = {commit_id: 0}
        queue = deque([commit_id])
        while queue:
            current = queue.popleft()
            for parent in self._read_commit(current)["parents"]:
                if parent not in distance:
                    distance[parent] = distance[current] + 1
                    queue.append(parent)
        return distance

    def _merge_base(self, left: str, right: str) -> str:
        left_ancestors = self._ancestors(left)
        right_ancestors = self._ancestors(right)
        common = set(left_ancestors) & set(right_ancestors)
        if not common:
            raise VersionedStoreError(f"{left[:12]} and {right[:12]} share no history")
        return min(common, key=lambda c: (left_ancestors[c] + right_ancestors[c], c))

    def merge(
        self, source_ref: str, destination_branch: str, message: str = "", metadata: Mapping[str, str] | None = None
    ) -> str:
        with self._lock():
            destination = self._read_branch(destination_branch)
            if destination["staging"]:
                raise VersionedStoreError(
                    f"branch {destination_branch!r} has uncommitted changes; commit them before merging into it"
                )
            source_head = self.resolve_ref(source_ref)
            dest_head = destination["head"]
            base_tree = self._commit_tree(self._merge_base(source_head, dest_head))
            source_tree = self._commit_tree(source_head)
            dest_tree = self._commit_tree(dest_head)
            source_changes = _changes(base_tree, source_tree)
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
            merged = dict(dest_tree)
            for path, entry in source_changes.items():
                if entry is None:
                    merged.pop(path, None)
                else:
                    merged[path] = entry
            commit_id = self._write_commit(
                merged,
                [dest_head, source_head],
                message or f"Merge {source_ref} into {destination_branch}",
                metadata or {},
            )
            self._write_branch(destination_branch, commit_id, {})
            return commit_id


def _changes(base: Mapping[str, list[Any]], other: Mapping[str, list[Any]]) -> dict[str, list[Any] | None]:
    """Paths changed from ``base`` to ``other``: new entry, or None for removed."""
    changed: dict[str, list[Any] | None] = {}
    for path, entry in other.items():
        if base.get(path) != entry:
            changed[path] = entry
    for path in base.keys() - other.keys():
        changed[path] = None
    return changed


def _tree_diff(left: Mapping[str, list[Any]], right: Mapping[str, list[Any]]) -> list[DiffEntry]:
    entries = []
    for path in sorted(left.keys() | right.keys()):
        if path not in left:
            entries.append(DiffEntry(path=path, type="added"))
        elif path not in right:
            entries.append(DiffEntry(path=path, type="removed"))
        elif left[path] != right[path]:
            entries.append(DiffEntry(path=path, type="changed"))
    return entries
