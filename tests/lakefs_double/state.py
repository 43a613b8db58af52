"""In-memory lakeFS model behind the API test double: repositories, refs, commits, staging, merges.

The semantics follow the lakeFS server (``pkg/graveler`` and ``pkg/catalog`` in treeverse/lakeFS):
staged writes overlay the branch head; an object's identity is (size, checksum, user metadata, content
type), so re-staging identical content commits nothing ("no changes"); merges are three-way against the
best common ancestor (git-merge-base rules), always create a merge commit and fail with a conflict when
a path changed differently on both sides; ``diff`` is two-dot (head to head) or three-dot (the changes
on the right since the merge base, conflicts flagged). Errors carry the HTTP status and message the
server's error mapping would produce.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

FIRST_COMMIT_MESSAGE = "Repository created"
MERGE_STRATEGY_METADATA_KEY = ".lakefs.merge.strategy"
MERGE_STRATEGIES = {"": "default", "dest-wins": "dest-wins", "source-wins": "source-wins"}

RE_REPOSITORY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
RE_BRANCH_ID = re.compile(r"^\w[-\w]*$")
RE_REF = re.compile(r"^[^\s]+$")
RE_HASH = re.compile(r"^[a-fA-F0-9]{1,64}$")
RE_MODIFIERS = re.compile(r"(^|[~^@$])[^^~@$]*")
MAX_PATH_LENGTH = 1024


class ApiError(Exception):
    """An error response: HTTP status and the ``message`` of the lakeFS ``Error`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


INVALID_REF = "ref: invalid value: validation error"


@dataclass(frozen=True)
class Entry:
    """One object version (a catalog entry)."""

    path: str
    physical_address: str
    checksum: str
    size: int
    mtime: int
    content_type: str
    metadata: Mapping[str, str]

    @property
    def identity(self) -> str:
        # lakeFS: ident over size, ETag, user metadata and content type (pkg/catalog/entry.go)
        payload = json.dumps([self.size, self.checksum, sorted(self.metadata.items()), self.content_type])
        return hashlib.sha256(payload.encode()).hexdigest()


Tree = Mapping[str, Entry]


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    committer: str
    message: str
    creation_date: int
    creation_ns: int
    meta_range_id: str
    metadata: Mapping[str, str]
    generation: int
    tree: Tree


@dataclass
class Branch:
    name: str
    commit_id: str
    staging: dict[str, Entry | None] = field(default_factory=dict)  # None is a tombstone
    hidden: bool = False


@dataclass
class Resolved:
    """A dereferenced ref: the commit it names, and the branch whose staging it reads (if any)."""

    commit_id: str
    kind: Literal["branch", "tag", "commit"]
    branch: str | None = None
    modifier: Literal["none", "committed", "staging"] = "none"

    @property
    def reads_staging(self) -> bool:
        return self.kind == "branch" and self.modifier != "committed"


@dataclass
class Repository:
    id: str
    storage_namespace: str
    default_branch: str
    creation_date: int
    storage_id: str = ""
    read_only: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, Branch] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


def meta_range_id(tree: Tree) -> str:
    payload = json.dumps(sorted((path, entry.identity) for path, entry in tree.items()))
    return hashlib.sha256(payload.encode()).hexdigest()


def validate_repository_id(name: str, arg: str = "repository") -> None:
    if not name:
        raise bad_request(f"argument {arg}: required value: validation error")
    if not RE_REPOSITORY_ID.match(name):
        raise bad_request(f"argument {arg}: repository id: invalid value: validation error")


def validate_branch_id(name: str, arg: str = "branch") -> None:
    if not name:
        raise bad_request(f"argument {arg}: required value: validation error")
    if not RE_BRANCH_ID.match(name):
        raise bad_request(
            f"argument {arg}: branch id: invalid value: validation error: branch id must consist of letters, "
            "digits, underscores and dashes, and cannot start with a dash"
        )


def validate_tag_id(name: str) -> None:
    invalid = (
        not name
        or name == "@"
        or name.endswith((".", ".lock"))
        or any(part in name for part in ("..", "/", "@{"))
        or any(ch in name for ch in "^:?*[\\")
        or any(ord(ch) <= 0x20 for ch in name)
    )
    if invalid:
        raise bad_request("argument tagID: tag id: invalid value: validation error")


def validate_ref(ref: str, arg: str = "ref") -> None:
    if not ref:
        raise bad_request(f"argument {arg}: required value: validation error")
    if not RE_REF.match(ref):
        raise bad_request(f"argument {arg}: {INVALID_REF}")


def validate_path(path: str) -> None:
    if not path:
        raise bad_request("argument path: missing path: required value: validation error")
    if len(path) > MAX_PATH_LENGTH:
        raise bad_request(f"argument path: invalid value: validation error: {len(path)} is above maximum length")


def page(items: list, after: str, amount: int, key) -> tuple[list, bool]:
    """Items strictly after ``after`` (by ``key``), at most ``amount`` of them, and whether more follow."""
    selected = [item for item in items if key(item) > after] if after else list(items)
    return selected[:amount], len(selected) > amount


class LakeFSState:
    """Every repository the double holds. Callers hold :attr:`lock` around each operation."""

    def __init__(self, committer: str) -> None:
        self.lock = threading.RLock()
        self.committer = committer
        self.repositories: dict[str, Repository] = {}
        self.used_namespaces: set[str] = set()
        self._sequence = itertools.count()

    # -- repositories -----------------------------------------------------
    def repository(self, name: str) -> Repository:
        validate_repository_id(name)
        repo = self.repositories.get(name)
        if repo is None:
            raise not_found("repository not found")
        return repo

    def create_repository(
        self, name: str, storage_namespace: str, default_branch: str | None, bare: bool, read_only: bool
    ) -> Repository:
        if name in self.repositories:
            raise ApiError(409, "error creating repository: not unique")
        validate_repository_id(name, "name")
        if not re.match(r"^local://", storage_namespace):
            raise bad_request("failed to match required regex ^local://: invalid namespace")
        namespace_key = storage_namespace.rstrip("/")
        if not bare and not read_only and namespace_key in self.used_namespaces:
            # lakeFS leaves a marker object in the namespace, so a namespace cannot be reused, even after
            # its repository was deleted.
            raise bad_request(
                f"failed to create repository: found lakeFS objects in the storage (:{storage_namespace}) "
                "key(_lakefs/dummy): storage namespace already in use"
            )
        default_branch = default_branch or "main"
        validate_branch_id(default_branch, "default_branch")
        repo = Repository(
            id=name,
            storage_namespace=storage_namespace,
            default_branch=default_branch,
            creation_date=int(time.time()),
            read_only=read_only,
        )
        if not bare:
            first = self._new_commit(
                repo, parents=(), committer="", message=FIRST_COMMIT_MESSAGE, metadata={}, tree={}, generation=1
            )
            repo.branches[default_branch] = Branch(default_branch, first.id)
        self.repositories[name] = repo
        self.used_namespaces.add(namespace_key)
        return repo

    def delete_repository(self, name: str) -> None:
        self.repository(name)
        del self.repositories[name]

    # -- commits & refs ---------------------------------------------------
    def _new_commit(
        self,
        repo: Repository,
        *,
        parents: tuple[str, ...],
        committer: str,
        message: str,
        metadata: Mapping[str, str],
        tree: Tree,
        generation: int,
        date: int | None = None,
    ) -> Commit:
        now_ns = time.time_ns()
        creation_date = date if date is not None else now_ns // 1_000_000_000
        range_id = meta_range_id(tree) if tree or parents else ""
        # Content-addressed like lakeFS; the sequence number only guards against same-nanosecond twins.
        address = json.dumps(
            [list(parents), committer, message, creation_date, now_ns, range_id, sorted(metadata.items()), generation]
        )
        address += f"#{next(self._sequence)}"
        commit_id = hashlib.sha256(address.encode()).hexdigest()
        commit = Commit(
            id=commit_id,
            parents=parents,
            committer=committer,
            message=message,
            creation_date=creation_date,
            creation_ns=now_ns,
            meta_range_id=range_id,
            metadata=dict(metadata),
            generation=generation,
            tree=dict(tree),
        )
        repo.commits[commit_id] = commit
        return commit

    def _commit_by_prefix(self, repo: Repository, prefix: str) -> str | None:
        matches = [commit_id for commit_id in repo.commits if commit_id.startswith(prefix.lower())]
        return matches[0] if len(matches) == 1 else None

    def resolve(self, repo: Repository, ref: str) -> Resolved:
        """Dereference a ref expression: commit id (or unique prefix), branch, tag, plus ~N ^N @ $ modifiers."""
        validate_ref(ref)
        tokens = [match.group(0) for match in RE_MODIFIERS.finditer(ref)]
        if not tokens or not tokens[0]:
            raise bad_request(INVALID_REF)
        base, modifiers = tokens[0], tokens[1:]
        resolved: Resolved | None = None
        if len(base) == 64 and RE_HASH.match(base) and base.lower() in repo.commits:
            resolved = Resolved(base.lower(), "commit")
        elif base in repo.branches:
            resolved = Resolved(repo.branches[base].commit_id, "branch", branch=base)
        elif base in repo.tags:
            resolved = Resolved(repo.tags[base], "tag")
        elif RE_HASH.match(base):
            found = self._commit_by_prefix(repo, base)
            if found is not None:
                resolved = Resolved(found, "commit")
        if resolved is None:
            raise not_found()
        if not modifiers:
            return resolved
        commit_id = resolved.commit_id
        for modifier in modifiers:
            kind, value = modifier[0], modifier[1:]
            if kind in "@$":
                if value or resolved.kind != "branch" or len(modifiers) != 1:
                    raise bad_request(INVALID_REF)
                resolved.modifier = "committed" if kind == "@" else "staging"
                return resolved
            try:
                amount = int(value) if value else 1
            except ValueError as exc:
                raise bad_request(f"could not parse modifier {modifier}: {INVALID_REF}") from exc
            if kind == "~":
                for _ in range(amount):
                    parents = repo.commits[commit_id].parents
                    if not parents:
                        raise not_found()
                    commit_id = parents[0]
            elif amount:  # ^N: the N-th parent (^0 is the commit itself)
                parents = repo.commits[commit_id].parents
                if amount > len(parents):
                    raise bad_request(INVALID_REF)
                commit_id = parents[amount - 1]
        return Resolved(commit_id, "commit")

    def resolve_commit(self, repo: Repository, ref: str) -> Commit:
        resolved = self.resolve(repo, ref)
        if resolved.modifier == "staging":
            raise bad_request("reference to staging area with $ is not a commit")
        return repo.commits[resolved.commit_id]

    def view(self, repo: Repository, ref: str) -> Tree:
        """The objects visible at a ref: a branch shows its staged changes over its head commit."""
        resolved = self.resolve(repo, ref)
        tree = dict(repo.commits[resolved.commit_id].tree)
        if resolved.reads_staging and resolved.branch is not None:
            apply_staging(tree, repo.branches[resolved.branch].staging)
        return tree

    def branch(self, repo: Repository, name: str) -> Branch:
        validate_branch_id(name)
        branch = repo.branches.get(name)
        if branch is None:
            raise not_found("branch not found")
        return branch

    def create_branch(self, repo: Repository, name: str, source: str, hidden: bool) -> str:
        validate_branch_id(name)
        validate_ref(source)
        if len(name) == 64 and name.lower() in repo.commits:
            raise ApiError(409, f"commit ID {name}: not unique")
        if name in repo.tags:
            raise ApiError(409, f"tag ID {name}: conflict found")
        try:
            resolved = self.resolve(repo, source)
        except ApiError as exc:
            raise ApiError(exc.status, f"source reference '{source}': {exc.message}") from exc
        if resolved.modifier == "staging":
            raise bad_request(f"source reference '{source}': can't create a branch without commit")
        if name in repo.branches:
            raise ApiError(409, "branch already exists: not unique")
        repo.branches[name] = Branch(name, resolved.commit_id, hidden=hidden)
        return resolved.commit_id

    def delete_branch(self, repo: Repository, name: str) -> None:
        validate_branch_id(name, "name")
        if name == repo.default_branch:
            raise ApiError(403, "cannot delete repository default branch")
        self.branch(repo, name)
        del repo.branches[name]

    def reset_branch(self, repo: Repository, name: str, kind: str, path: str | None) -> None:
        branch = self.branch(repo, name)
        if kind == "reset":
            branch.staging.clear()
        elif kind == "object":
            validate_path(path or "")
            branch.staging.pop(path or "", None)
        elif kind == "common_prefix":
            for key in [key for key in branch.staging if key.startswith(path or "")]:
                del branch.staging[key]
        else:
            raise bad_request(f"unknown reset type {kind}")

    def create_tag(self, repo: Repository, tag: str, ref: str) -> str:
        validate_tag_id(tag)
        if tag in repo.branches:
            raise ApiError(409, f"branch name {tag}: conflict found")
        if len(tag) == 64 and tag.lower() in repo.commits:
            raise ApiError(409, f"commit ID {tag}: not unique")
        commit = self.resolve_commit(repo, ref)
        if tag in repo.tags:
            raise ApiError(409, "tag already exists: not unique")
        repo.tags[tag] = commit.id
        return commit.id

    def tag(self, repo: Repository, tag: str) -> str:
        if tag not in repo.tags:
            raise not_found("tag not found")
        return repo.tags[tag]

    def delete_tag(self, repo: Repository, tag: str) -> None:
        self.tag(repo, tag)
        del repo.tags[tag]

    # -- objects ------------------------------------------------------------
    def put_object(
        self,
        repo: Repository,
        branch_name: str,
        path: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str],
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> Entry:
        validate_path(path)
        if branch_name not in repo.branches:
            raise not_found(f"branch '{branch_name}' not found")
        validate_branch_id(branch_name)
        if repo.read_only:
            raise ApiError(403, "read-only repository")
        branch = repo.branches[branch_name]
        current = self.view(repo, branch_name).get(path)
        if if_none_match is not None:
            if if_none_match != "*":
                raise bad_request("If-None-Match only supports '*': invalid value: validation error")
            if current is not None:
                raise ApiError(412, "path already exists")
        if if_match is not None and (current is None or f'"{current.checksum}"' != _quote_etag(if_match)):
            raise ApiError(412, "Precondition failed")
        address = f"{repo.storage_namespace.rstrip('/')}/data/{uuid.uuid4().hex}"
        entry = Entry(
            path=path,
            physical_address=address,
            checksum=hashlib.md5(data, usedforsecurity=False).hexdigest(),  # the local blockstore's ETag
            size=len(data),
            mtime=int(time.time()),
            content_type=content_type,
            metadata=dict(metadata),
        )
        repo.blobs[address] = data
        branch.staging[path] = entry
        return entry

    def get_entry(self, repo: Repository, ref: str, path: str) -> Entry:
        validate_path(path)
        entry = self.view(repo, ref).get(path)
        if entry is None:
            raise not_found()
        return entry

    def delete_object(self, repo: Repository, branch_name: str, path: str) -> None:
        validate_path(path)
        branch = self.branch(repo, branch_name)
        if repo.read_only:
            raise ApiError(403, "read-only repository")
        committed = repo.commits[branch.commit_id].tree
        if path in committed or branch.staging.get(path) is not None:
            branch.staging[path] = None  # tombstone
        # a path found nowhere: nothing to do, and not an error

    def list_entries(
        self, repo: Repository, ref: str, prefix: str, after: str, delimiter: str, amount: int
    ) -> tuple[list[Entry | str], bool]:
        """Entries (or common prefixes, as strings) under ``prefix``, sorted by path."""
        tree = self.view(repo, ref)
        paths = sorted(path for path in tree if path.startswith(prefix))
        items: list[Entry | str] = []
        seen_prefixes: set[str] = set()
        for path in paths:
            if delimiter:
                cut = path.find(delimiter, len(prefix))
                if cut >= 0:
                    common = path[: cut + len(delimiter)]
                    if common not in seen_prefixes:
                        seen_prefixes.add(common)
                        items.append(common)
                    continue
            items.append(tree[path])
        return page(items, after, amount, key=lambda item: item if isinstance(item, str) else item.path)

    # -- history --------------------------------------------------------------
    def commit(
        self,
        repo: Repository,
        branch_name: str,
        message: str,
        metadata: Mapping[str, str],
        date: int | None,
        allow_empty: bool,
    ) -> Commit:
        validate_branch_id(branch_name)
        branch = self.branch(repo, branch_name)
        if repo.read_only:
            raise ApiError(403, "read-only repository")
        if not branch.staging and not allow_empty:
            raise bad_request("no changes")
        head = repo.commits[branch.commit_id]
        tree = dict(head.tree)
        changed = apply_staging(tree, branch.staging)
        if not changed and not allow_empty:
            # The staged values equal what is committed: lakeFS refuses and keeps them staged.
            raise bad_request("commit: no changes")
        commit = self._new_commit(
            repo,
            parents=(head.id,),
            committer=self.committer,
            message=message,
            metadata=metadata,
            tree=tree,
            generation=head.generation + 1,
            date=date,
        )
        branch.commit_id = commit.id
        branch.staging.clear()
        return commit

    def log(
        self, repo: Repository, ref: str, after: str, amount: int, limit: bool, first_parent: bool, stop_at: str
    ) -> tuple[list[Commit], bool]:
        """Commits reachable from ``ref`` by generation (then creation time), newest first."""
        start = self.resolve_commit(repo, ref)
        stop_id = self.resolve_commit(repo, stop_at).id if stop_at else ""
        after_id = self.resolve_commit(repo, after).id if after else ""
        commits = list(self._iterate_log(repo, start.id, first_parent))
        if after_id:
            ids = [commit.id for commit in commits]
            commits = commits[ids.index(after_id) + 1 :] if after_id in ids else []
        selected: list[Commit] = []
        for commit in commits:
            selected.append(commit)
            if (limit and len(selected) >= amount) or len(selected) >= amount + 1 or commit.id == stop_id:
                break
        return selected[:amount], len(selected) > amount

    @staticmethod
    def _iterate_log(repo: Repository, start: str, first_parent: bool) -> Iterable[Commit]:
        def key(commit: Commit) -> tuple[int, int, str]:
            return (-commit.generation, -commit.creation_ns, commit.id)

        queue = [(key(repo.commits[start]), start)]
        queued = {start}
        while queue:
            _, commit_id = heapq.heappop(queue)
            commit = repo.commits[commit_id]
            yield commit
            parents = commit.parents[:1] if first_parent else commit.parents
            for parent in parents:
                if parent not in queued:
                    queued.add(parent)
                    heapq.heappush(queue, (key(repo.commits[parent]), parent))

    @staticmethod
    def merge_base(repo: Repository, left: str, right: str) -> Commit | None:
        """The best common ancestor (pkg/graveler/ref/merge_base_finder.go)."""
        from_left, from_right = 1, 2
        reached: dict[str, int] = {right: from_right}
        reached[left] = reached.get(left, 0) | from_left
        if left == right:
            return repo.commits[left]

        def key(commit_id: str) -> tuple[int, int, str]:
            commit = repo.commits[commit_id]
            return (-commit.generation, -commit.creation_ns, commit_id)

        queue = [(key(left), left), (key(right), right)]
        heapq.heapify(queue)
        while queue:
            _, commit_id = heapq.heappop(queue)
            flags = reached[commit_id]
            for parent in repo.commits[commit_id].parents:
                if parent not in reached:
                    heapq.heappush(queue, (key(parent), parent))
                reached[parent] = reached.get(parent, 0) | flags
                if reached[parent] == from_left | from_right:
                    return repo.commits[parent]
        return None

    def merge(
        self,
        repo: Repository,
        source: str,
        destination: str,
        message: str,
        metadata: Mapping[str, str],
        strategy: str,
        allow_empty: bool,
        force: bool,
        squash: bool,
    ) -> Commit:
        validate_branch_id(destination, "destination")
        validate_ref(source, "source")
        if strategy not in MERGE_STRATEGIES:
            raise bad_request("invalid merge strategy")
        dest_branch = self.branch(repo, destination)
        if repo.read_only and not force:
            raise ApiError(403, "read-only repository")
        if dest_branch.staging:
            raise bad_request(f"update branch {destination}: uncommitted changes (dirty branch)")
        try:
            from_commit = self.resolve_commit(repo, source)
        except ApiError as exc:
            message = f"update branch {destination}: get commit by ref {source}: {exc.message}"
            raise ApiError(exc.status, message) from exc
        to_commit = repo.commits[dest_branch.commit_id]
        base = self.merge_base(repo, from_commit.id, to_commit.id)
        if base is None:
            raise ApiError(500, f"update branch {destination}: no merge base")
        if from_commit.meta_range_id == base.meta_range_id and not allow_empty and not force:
            raise bad_request("no changes")
        if to_commit.meta_range_id == base.meta_range_id:
            tree = dict(from_commit.tree)
        else:
            tree = three_way(base.tree, from_commit.tree, to_commit.tree, strategy)
        merged_metadata = {**metadata, MERGE_STRATEGY_METADATA_KEY: MERGE_STRATEGIES[strategy]}
        parents = (to_commit.id,) if squash else (to_commit.id, from_commit.id)
        commit = self._new_commit(
            repo,
            parents=parents,
            committer=self.committer,
            message=message or f"Merge '{source}' into '{destination}'",
            metadata=merged_metadata,
            tree=tree,
            generation=max(to_commit.generation, from_commit.generation) + 1,
        )
        dest_branch.commit_id = commit.id
        return commit

    def diff_refs(self, repo: Repository, left: str, right: str, kind: str) -> list[tuple[str, str, Entry]]:
        """(type, path, entry) sorted by path; ``entry`` is the right side's, or the left's when removed."""
        if kind == "two_dot":
            left_tree = self.resolve_commit(repo, left).tree
            right_tree = self.view(repo, right) if self.resolve(repo, right).modifier == "staging" else None
            if right_tree is None:
                right_tree = self.resolve_commit(repo, right).tree
            return two_dot(left_tree, right_tree)
        left_commit = self.resolve_commit(repo, left)
        right_commit = self.resolve_commit(repo, right)
        base = self.merge_base(repo, right_commit.id, left_commit.id)
        if base is None:
            raise ApiError(500, "find merge base: no merge base")
        return three_dot(base.tree, left_commit.tree, right_commit.tree)

    def diff_branch(self, repo: Repository, branch_name: str) -> list[tuple[str, str, Entry]]:
        branch = self.branch(repo, branch_name)
        committed = repo.commits[branch.commit_id].tree
        staged = dict(committed)
        apply_staging(staged, branch.staging)
        return two_dot(committed, staged)


def _quote_etag(value: str) -> str:
    value = value.strip()
    return value if value.startswith('"') else f'"{value}"'


def apply_staging(tree: dict[str, Entry], staging: Mapping[str, Entry | None]) -> int:
    """Overlay staged values on a tree in place; returns how many paths actually changed."""
    changed = 0
    for path, entry in staging.items():
        current = tree.get(path)
        if entry is None:
            if current is not None:
                del tree[path]
                changed += 1
        elif current is None or current.identity != entry.identity:
            tree[path] = entry
            changed += 1
    return changed


def two_dot(left: Tree, right: Tree) -> list[tuple[str, str, Entry]]:
    result = []
    for path in sorted(set(left) | set(right)):
        before, after = left.get(path), right.get(path)
        if before is None and after is not None:
            result.append(("added", path, after))
        elif after is None and before is not None:
            result.append(("removed", path, before))
        elif before is not None and after is not None and before.identity != after.identity:
            result.append(("changed", path, after))
    return result


def _identity(entry: Entry | None) -> str | None:
    return entry.identity if entry is not None else None


def three_dot(base: Tree, left: Tree, right: Tree) -> list[tuple[str, str, Entry]]:
    """Changes on ``right`` since the merge base; paths changed differently on both sides are conflicts."""
    result = []
    for path in sorted(set(base) | set(left) | set(right)):
        b, lft, r = _identity(base.get(path)), _identity(left.get(path)), _identity(right.get(path))
        if lft == r or r == b:
            continue
        entry = right.get(path) or left.get(path) or base[path]
        if lft != b:
            result.append(("conflict", path, entry))
        elif lft is None:
            result.append(("added", path, entry))
        elif r is None:
            result.append(("removed", path, left[path]))
        else:
            result.append(("changed", path, entry))
    return result


def three_way(base: Tree, source: Tree, destination: Tree, strategy: str) -> dict[str, Entry]:
    merged: dict[str, Entry] = {}
    conflicts = []
    for path in sorted(set(base) | set(source) | set(destination)):
        b, s, d = _identity(base.get(path)), _identity(source.get(path)), _identity(destination.get(path))
        if s in (b, d):
            chosen = destination.get(path)
        elif d == b:
            chosen = source.get(path)
        elif strategy == "dest-wins":
            chosen = destination.get(path)
        elif strategy == "source-wins":
            chosen = source.get(path)
        else:
            conflicts.append(path)
            continue
        if chosen is not None:
            merged[path] = chosen
    if conflicts:
        raise ApiError(409, "conflict found")
    return merged
