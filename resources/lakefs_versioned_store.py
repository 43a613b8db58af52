"""The production versioned store: lakeFS through its official Python SDK (``lakefs`` over ``lakefs_sdk``).

One :class:`lakefs.Client` per store; metadata calls go through the generated ``lakefs_sdk`` API classes
(the client's ``sdk_client``) with explicit timeouts, uploads through the high-level ``lakefs`` object
writer (it streams the body as ``application/octet-stream``, which the generated ``upload_object`` cannot do
for an empty object). Data always flows through the lakeFS server (``pre_sign=False``), so clients need
no route to the underlying bucket.

SDK and transport errors become the store's typed errors, with messages naming the repository, ref or
path and the lakeFS endpoint, never the credentials.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import lakefs
import lakefs_sdk
import urllib3
from lakefs.exceptions import LakeFSException, ServerException, api_exception_handler
from lakefs_sdk.client import LakeFSClient
from lakefs_sdk.models.branch_creation import BranchCreation
from lakefs_sdk.models.commit import Commit
from lakefs_sdk.models.commit_creation import CommitCreation
from lakefs_sdk.models.merge import Merge
from lakefs_sdk.models.repository_creation import RepositoryCreation
from lakefs_sdk.models.tag_creation import TagCreation

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

T = TypeVar("T")

PAGE_SIZE = 1000  # the API's maximum page
INTERNAL_METADATA_PREFIX = ".lakefs."  # keys lakeFS adds itself, e.g. ".lakefs.merge.strategy" on merges
DIFF_TYPES = ("added", "removed", "changed")
REPOSITORY_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")  # RepositoryCreation.name in the API
NO_CHANGES_MESSAGE = "no changes"  # graveler.ErrNoChanges, answered as a plain 400 (see _translate)

# The lakefs_sdk request models are pydantic.v1 models whose optional fields are declared as
# ``Field(<default>, description=...)``. mypy reads pydantic.v1 models through ``dataclass_transform``, which
# only recognises ``Field(default=...)``, so it takes those fields for required ones: the constructor calls
# in this module carry ``# type: ignore[call-arg]`` for that library typing gap (the fields do have defaults).


class LakeFSAuthenticationError(VersionedStoreError):
    """lakeFS rejected the access key pair (HTTP 401)."""


ErrorFactory = Callable[[str], VersionedStoreError]


def _public_endpoint(endpoint: str) -> str:
    """The endpoint without any ``user:password@`` part, for messages."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class LakeFSVersionedStore(VersionedStore):
    """A lakeFS repository reached over HTTP.

    ``storage_namespace`` is where lakeFS keeps the repository's data (``s3://bucket/prefix`` on MinIO / S3).
    When it is ``None`` the store uses ``local://riverbed/<repository>``, which only a lakeFS running on its
    local blockstore accepts: a development default, never a production setting.
    """

    def __init__(
        self,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        repository: str = "riverbed",
        main_branch: str = "main",
        storage_namespace: str | None = None,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 60.0,
        connect_retries: int = 2,
    ) -> None:
        missing = [name for name, value in (("endpoint", endpoint), ("access_key_id", access_key_id)) if not value]
        if not secret_access_key:
            missing.append("secret_access_key")
        if missing:
            raise VersionedStoreError(f"the lakeFS store needs {', '.join(missing)}")
        if not REPOSITORY_NAME.match(repository):
            raise VersionedStoreError(
                f"invalid lakeFS repository name {repository!r}: use 3-63 lowercase letters, digits and dashes, "
                "starting with a letter or digit"
            )
        self.repository = repository
        self.main_branch = main_branch
        self.storage_namespace = storage_namespace or f"local://riverbed/{repository}"
        self.endpoint = _public_endpoint(endpoint)
        # lakefs.Client.__init__(**kwargs) is unannotated
        self._client = lakefs.Client(  # type: ignore[no-untyped-call]
            host=endpoint, username=access_key_id, password=secret_access_key
        )
        self._api: LakeFSClient = self._client.sdk_client
        self._timeout = (connect_timeout_seconds, read_timeout_seconds)
        # Every generated API call gets ``_request_timeout``; the object writer talks to the pool directly, so
        # the pool's defaults carry the same timeouts. Only connection failures are retried (quickly): a
        # request that reached the server is never sent twice.
        pool = self._api.objects_api.api_client.rest_client.pool_manager
        pool.connection_pool_kw["timeout"] = urllib3.Timeout(connect=connect_timeout_seconds, read=read_timeout_seconds)
        pool.connection_pool_kw["retries"] = urllib3.Retry(
            total=connect_retries, connect=connect_retries, read=0, status=0, other=0, redirect=0, backoff_factor=0.1
        )
        self._repository_ready = False

    def __repr__(self) -> str:
        return f"LakeFSVersionedStore(endpoint={self.endpoint!r}, repository={self.repository!r})"

    # -- plumbing ------------------------------------------------------------
    def _where(self) -> str:
        return f"lakeFS repository {self.repository!r} at {self.endpoint}"

    def _call(
        self,
        action: str,
        fn: Callable[[], T],
        *,
        not_found: ErrorFactory | None = None,
        conflict: ErrorFactory | None = None,
        no_changes: ErrorFactory | None = None,
    ) -> T:
        """Run one SDK call, turning SDK and transport failures into the store's typed errors."""
        try:
            with api_exception_handler():
                return fn()
        except ServerException as exc:
            raise self._translate(action, exc, not_found, conflict, no_changes) from exc
        except LakeFSException as exc:
            raise VersionedStoreError(f"lakeFS SDK error while {action} in {self._where()}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StoreUnavailableError(
                f"cannot reach lakeFS at {self.endpoint} while {action}: {type(reason).__name__}"
            ) from exc
        except (lakefs_sdk.exceptions.ApiTypeError, ValueError) as exc:  # pydantic rejected a value
            raise VersionedStoreError(f"invalid request or response while {action} in {self._where()}: {exc}") from exc

    def _translate(
        self,
        action: str,
        exc: ServerException,
        not_found: ErrorFactory | None,
        conflict: ErrorFactory | None,
        no_changes: ErrorFactory | None,
    ) -> VersionedStoreError:
        """Map a lakeFS error response by its status, as the API documents each operation's responses.

        lakeFS answers errors with an ``Error`` body (``{"message": ...}``; the 409 of ``mergeIntoBranch`` is a
        ``MergeResult``); the message is only carried into ours, except for "no changes" (see below).
        """
        status = exc.status_code or 0
        body = exc.body if isinstance(exc.body, dict) else {}
        message = str(body.get("message") or exc.reason or "").strip()
        if status == 401:
            return LakeFSAuthenticationError(
                f"lakeFS at {self.endpoint} rejected the access key pair while {action}: check the lakeFS access "
                "key id and secret access key"
            )
        if status == 404:
            if not_found is not None:
                return not_found(message)
            return NotFoundError(f"not found while {action} in {self._where()}: {message}")
        if status == 409:
            if conflict is not None:
                return conflict(message)
            return VersionedStoreError(f"conflict while {action} in {self._where()}: {message}")
        if status == 400:
            # A commit or merge with nothing to record is graveler's ErrNoChanges, which lakeFS's error mapping
            # (handleApiErrorCallback in pkg/api/controller.go) answers with the same 400 as a dirty branch, an
            # invalid ref or value, and the document gives it no distinct status or error code. Only the text of
            # that error ("no changes", possibly wrapped, e.g. "commit: no changes") tells it apart.
            if no_changes is not None and message.endswith(NO_CHANGES_MESSAGE):
                return no_changes(message)
            return VersionedStoreError(f"lakeFS refused {action} in {self._where()}: {message} (HTTP 400)")
        if status == 403:
            return VersionedStoreError(
                f"lakeFS forbids {action} in {self._where()} (read-only repository, protected or default branch, "
                f"missing permission): {message} (HTTP 403)"
            )
        if status == 412:
            return VersionedStoreError(f"lakeFS precondition failed while {action} in {self._where()}: {message}")
        detail = f"HTTP {status} {message}".strip() if status else message or type(exc).__name__
        if status == 429 or status >= 500 or not status:
            # Too many requests (lakeFS: too many tries), server errors (e.g. a locked branch, KV throttling) or no
            # status at all: nothing says the request is wrong, a later attempt may succeed.
            return StoreUnavailableError(f"lakeFS at {self.endpoint} failed while {action}: {detail}")
        return VersionedStoreError(f"unexpected lakeFS answer while {action} in {self._where()}: {detail}")

    def _pages(self, action: str, fetch: Callable[[str | None], Any], **errors: ErrorFactory) -> Iterator[Any]:
        """All results of a paginated listing, following ``pagination.next_offset``."""
        after: str | None = None
        while True:
            page = self._call(action, functools.partial(fetch, after), **errors)
            yield from page.results
            if not page.pagination.has_more or not page.pagination.next_offset:
                return
            after = page.pagination.next_offset

    def _missing_ref(self, ref: str) -> ErrorFactory:
        return lambda _: NotFoundError(f"ref {ref!r} not found in {self._where()}")

    def _missing_branch(self, branch: str) -> ErrorFactory:
        return lambda _: NotFoundError(f"branch {branch!r} not found in {self._where()}")

    @staticmethod
    def _commit_info(commit: Commit) -> CommitInfo:
        metadata = {
            key: value for key, value in (commit.metadata or {}).items() if not key.startswith(INTERNAL_METADATA_PREFIX)
        }
        return CommitInfo(
            id=commit.id,
            parents=tuple(commit.parents),
            message=commit.message,
            metadata=metadata,
            created_at=dt.datetime.fromtimestamp(commit.creation_date, tz=dt.UTC),
        )

    # -- repository & refs -------------------------------------------------------
    def ensure_repository(self) -> None:
        if self._repository_ready:
            return
        repositories = self._api.repositories_api
        try:
            found = self._call(
                "reading the repository",
                lambda: repositories.get_repository(self.repository, _request_timeout=self._timeout),
            )
        except NotFoundError:
            try:
                self._call(
                    f"creating the repository on {self.storage_namespace!r}",
                    lambda: repositories.create_repository(
                        RepositoryCreation(  # type: ignore[call-arg]  # SDK model defaults, see above
                            name=self.repository,
                            storage_namespace=self.storage_namespace,
                            default_branch=self.main_branch,
                        ),
                        _request_timeout=self._timeout,
                    ),
                    conflict=lambda m: AlreadyExistsError(m),
                )
                logger.info("created lakeFS repository %s on %s", self.repository, self.storage_namespace)
            except AlreadyExistsError:
                pass  # created concurrently by another process
        else:
            if found.default_branch != self.main_branch:
                self._call(
                    "reading the main branch",
                    lambda: self._api.branches_api.get_branch(
                        self.repository, self.main_branch, _request_timeout=self._timeout
                    ),
                    not_found=lambda _: NotFoundError(
                        f"{self._where()} has no branch {self.main_branch!r} (its default branch is "
                        f"{found.default_branch!r})"
                    ),
                )
        self._repository_ready = True

    def create_branch(self, name: str, source_ref: str) -> str:
        commit_id = self._call(
            f"creating branch {name!r} from {source_ref!r}",
            lambda: self._api.branches_api.create_branch(
                self.repository,
                BranchCreation(  # type: ignore[call-arg]  # SDK model defaults, see above
                    name=name, source=source_ref
                ),
                _request_timeout=self._timeout,
            ),
            not_found=lambda m: NotFoundError(f"cannot create branch {name!r}: {m} in {self._where()}"),
            conflict=lambda _: AlreadyExistsError(
                f"cannot create branch {name!r}: a branch or tag with that name exists in {self._where()}"
            ),
        )
        return str(commit_id).strip()

    def delete_branch(self, name: str) -> None:
        self._call(
            f"deleting branch {name!r}",
            lambda: self._api.branches_api.delete_branch(self.repository, name, _request_timeout=self._timeout),
            not_found=self._missing_branch(name),
        )

    def list_branches(self) -> list[str]:
        branches = self._api.branches_api
        refs = self._pages(
            "listing branches",
            lambda after: branches.list_branches(
                self.repository, after=after, amount=PAGE_SIZE, _request_timeout=self._timeout
            ),
        )
        return sorted(ref.id for ref in refs)

    def resolve_ref(self, ref: str) -> str:
        return self.get_commit(ref).id

    def create_tag(self, tag: str, ref: str) -> str:
        created = self._call(
            f"creating tag {tag!r} at {ref!r}",
            lambda: self._api.tags_api.create_tag(
                self.repository, TagCreation(id=tag, ref=ref), _request_timeout=self._timeout
            ),
            not_found=self._missing_ref(ref),
            conflict=lambda _: AlreadyExistsError(
                f"cannot create tag {tag!r}: a tag or branch with that name exists in {self._where()}"
            ),
        )
        return created.commit_id

    def list_tags(self) -> dict[str, str]:
        tags = self._api.tags_api
        refs = self._pages(
            "listing tags",
            lambda after: tags.list_tags(
                self.repository, after=after, amount=PAGE_SIZE, _request_timeout=self._timeout
            ),
        )
        return {ref.id: ref.commit_id for ref in refs}

    # -- objects -----------------------------------------------------------------
    def put_object(self, branch: str, path: str, data: bytes) -> ObjectStat:
        target = lakefs.Branch(self.repository, branch, client=self._client).object(path)
        self._call(
            f"uploading {path!r} to branch {branch!r}",
            lambda: target.upload(data, mode="wb", pre_sign=False),
            not_found=self._missing_branch(branch),
        )
        return self._stat(branch, path)

    def _stat(self, ref: str, path: str) -> ObjectStat:
        stats = self._call(
            f"reading the stats of {path!r} at {ref!r}",
            lambda: self._api.objects_api.stat_object(
                self.repository, ref, path, user_metadata=False, _request_timeout=self._timeout
            ),
            not_found=lambda _: NotFoundError(f"object {path!r} not found at {ref!r} in {self._where()}"),
        )
        return ObjectStat(path=stats.path, size_bytes=stats.size_bytes or 0, checksum=stats.checksum)

    def delete_object(self, branch: str, path: str) -> None:
        self._call(
            f"deleting {path!r} on branch {branch!r}",
            lambda: self._api.objects_api.delete_object(self.repository, branch, path, _request_timeout=self._timeout),
            not_found=self._missing_branch(branch),
        )

    def get_object(self, ref: str, path: str) -> bytes:
        data = self._call(
            f"reading {path!r} at {ref!r}",
            lambda: self._api.objects_api.get_object(self.repository, ref, path, _request_timeout=self._timeout),
            not_found=lambda _: NotFoundError(f"object {path!r} not found at {ref!r} in {self._where()}"),
        )
        return bytes(data)

    def list_objects(self, ref: str, prefix: str = "") -> list[ObjectStat]:
        objects = self._api.objects_api
        listing = self._pages(
            f"listing objects under {prefix!r} at {ref!r}",
            lambda after: objects.list_objects(
                self.repository,
                ref,
                user_metadata=False,
                after=after,
                amount=PAGE_SIZE,
                prefix=prefix or None,
                _request_timeout=self._timeout,
            ),
            not_found=self._missing_ref(ref),
        )
        stats = [
            ObjectStat(path=item.path, size_bytes=item.size_bytes or 0, checksum=item.checksum)
            for item in listing
            if item.path_type == "object"
        ]
        return sorted(stats, key=lambda stat: stat.path)

    # -- history -------------------------------------------------------------------
    def commit(self, branch: str, message: str, metadata: Mapping[str, str] | None = None) -> CommitInfo:
        created = self._call(
            f"committing on branch {branch!r}",
            lambda: self._api.commits_api.commit(
                self.repository,
                branch,
                CommitCreation(  # type: ignore[call-arg]  # SDK model defaults, see above
                    message=message, metadata=dict(metadata) if metadata else None
                ),
                _request_timeout=self._timeout,
            ),
            not_found=self._missing_branch(branch),
            no_changes=lambda _: NoChangesError(f"branch {branch!r} has no uncommitted changes in {self._where()}"),
        )
        return self._commit_info(created)

    def get_commit(self, ref: str) -> CommitInfo:
        commit = self._call(
            f"reading commit {ref!r}",
            lambda: self._api.commits_api.get_commit(self.repository, ref, _request_timeout=self._timeout),
            not_found=self._missing_ref(ref),
        )
        return self._commit_info(commit)

    def log(self, ref: str, limit: int = 100) -> list[CommitInfo]:
        if limit <= 0:
            return []
        refs = self._api.refs_api
        commits: list[CommitInfo] = []
        listing = self._pages(
            f"reading the log of {ref!r}",
            lambda after: refs.log_commits(
                self.repository, ref, after=after, amount=min(limit, PAGE_SIZE), _request_timeout=self._timeout
            ),
            not_found=self._missing_ref(ref),
        )
        for commit in listing:
            commits.append(self._commit_info(commit))
            if len(commits) >= limit:
                break
        return commits

    def diff(self, left_ref: str, right_ref: str) -> list[DiffEntry]:
        refs = self._api.refs_api
        # two_dot: head against head (the API's default, three_dot, shows only the right side's changes
        # since the merge base)
        listing = self._pages(
            f"diffing {left_ref!r} against {right_ref!r}",
            lambda after: refs.diff_refs(
                self.repository,
                left_ref,
                right_ref,
                after=after,
                amount=PAGE_SIZE,
                type="two_dot",
                _request_timeout=self._timeout,
            ),
            not_found=lambda _: NotFoundError(f"ref {left_ref!r} or {right_ref!r} not found in {self._where()}"),
        )
        entries = [
            DiffEntry(path=item.path, type=item.type)
            for item in listing
            if item.path_type == "object" and item.type in DIFF_TYPES
        ]
        return sorted(entries, key=lambda entry: entry.path)

    def merge(
        self, source_ref: str, destination_branch: str, message: str = "", metadata: Mapping[str, str] | None = None
    ) -> str:
        result = self._call(
            f"merging {source_ref!r} into {destination_branch!r}",
            lambda: self._api.refs_api.merge_into_branch(
                self.repository,
                source_ref,
                destination_branch,
                merge=Merge(  # type: ignore[call-arg]  # SDK model defaults, see above
                    message=message or None, metadata=dict(metadata) if metadata else None
                ),
                _request_timeout=self._timeout,
            ),
            not_found=lambda _: NotFoundError(
                f"ref {source_ref!r} or branch {destination_branch!r} not found in {self._where()}"
            ),
            conflict=lambda _: ConflictError(
                f"merging {source_ref!r} into {destination_branch!r} conflicts in {self._where()}: paths changed "
                "differently on both sides since their common base"
            ),
            no_changes=lambda _: NoChangesError(
                f"{source_ref!r} has nothing to merge into {destination_branch!r} in {self._where()}"
            ),
        )
        return result.reference
