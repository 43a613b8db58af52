"""The lakeFS REST API subset (base path ``/api/v1``) as a FastAPI app, written from lakeFS's ``api/swagger.yml``.

Paths, parameters, request and response schemas, status codes and ``{"message": ...}`` error bodies follow
the OpenAPI document, and :class:`~tests.lakefs_double.validation.ContractValidationMiddleware` holds every
request and response to it as ``lakefs-sdk`` carries it (``contract.py``); the enforced subset is served at
``/api/v1/openapi.json``. Behaviour follows the server (see ``state.py``). Authentication is HTTP basic with one
configured access key pair, as ``basic_auth`` in the document; ``/healthcheck`` and ``GET /setup_lakefs``
are open, like on the server.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hmac
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from tests.lakefs_double.contract import API_PREFIX, load_contract
from tests.lakefs_double.state import ApiError, Commit, Entry, LakeFSState, Repository, bad_request
from tests.lakefs_double.validation import OPENAPI_PATH, ContractValidationMiddleware, ContractViolations

API_VERSION = "1.84.0"
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
METADATA_HEADER_PREFIX = "x-lakefs-meta-"
RE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


# -- request bodies (components/schemas) -----------------------------------------
class _Body(BaseModel):
    # Unknown properties never reach these models: the contract middleware refuses them first (400).
    model_config = ConfigDict(extra="allow")


class RepositoryCreation(_Body):
    name: StrictStr
    storage_namespace: StrictStr
    default_branch: StrictStr | None = None
    sample_data: StrictBool = False
    read_only: StrictBool = False
    storage_id: StrictStr | None = None


class BranchCreation(_Body):
    name: StrictStr
    source: StrictStr
    force: StrictBool = False
    hidden: StrictBool = False


class TagCreation(_Body):
    id: StrictStr
    ref: StrictStr
    force: StrictBool = False


class CommitCreation(_Body):
    message: StrictStr
    metadata: dict[str, StrictStr] | None = None
    date: StrictInt | None = None
    allow_empty: StrictBool = False
    force: StrictBool = False


class Merge(_Body):
    message: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    strategy: StrictStr | None = None
    force: StrictBool = False
    allow_empty: StrictBool = False
    squash_merge: StrictBool = False


class PathList(_Body):
    paths: list[StrictStr]


class ResetCreation(_Body):
    type: StrictStr
    path: StrictStr | None = None
    force: StrictBool = False


# -- parameter helpers ---------------------------------------------------------
def go_bool(name: str, value: str | None, default: bool = False) -> bool:
    """Query booleans as the server parses them (Go's strconv.ParseBool: the SDK sends ``True``/``False``)."""
    if value is None:
        return default
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise bad_request(f"parameter {name!r}: value {value!r} is not a boolean")


def per_page(amount: int | None) -> int:
    """``PaginationAmount``: values up to 1000; missing or non-positive means the default page of 100."""
    if amount is None or amount <= 0:
        return DEFAULT_PER_PAGE
    return min(amount, MAX_PER_PAGE)


Amount = Annotated[int | None, Query(ge=-1, le=MAX_PER_PAGE)]
Text = Annotated[str | None, Query()]


def pagination(has_more: bool, results: list[dict[str, Any]], field: str) -> dict[str, Any]:
    next_offset = results[-1][field] if has_more and results else ""
    return {"has_more": has_more, "next_offset": next_offset, "results": len(results), "max_per_page": MAX_PER_PAGE}


def http_date(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


# -- representations (components/schemas) -------------------------------------------
def repository_json(repo: Repository) -> dict[str, Any]:
    return {
        "id": repo.id,
        "creation_date": repo.creation_date,
        "default_branch": repo.default_branch,
        "storage_id": repo.storage_id,
        "storage_namespace": repo.storage_namespace,
        "read_only": repo.read_only,
    }


def commit_json(commit: Commit) -> dict[str, Any]:
    return {
        "id": commit.id,
        "parents": list(commit.parents),
        "committer": commit.committer,
        "message": commit.message,
        "creation_date": commit.creation_date,
        "meta_range_id": commit.meta_range_id,
        "metadata": dict(commit.metadata),
        "generation": commit.generation,
        "version": 1,
    }


def object_stats_json(entry: Entry, user_metadata: bool = True) -> dict[str, Any]:
    return {
        "path": entry.path,
        "path_type": "object",
        "physical_address": entry.physical_address,
        "checksum": entry.checksum,
        "size_bytes": entry.size,
        "mtime": entry.mtime,
        "metadata": dict(entry.metadata) if user_metadata else {},
        "content_type": entry.content_type,
    }


def diff_json(kind: str, path: str, entry: Entry) -> dict[str, Any]:
    return {"type": kind, "path": path, "path_type": "object", "size_bytes": entry.size}


def storage_config() -> dict[str, Any]:
    # What a lakeFS server on the local blockstore reports (pkg/block/local/adapter.go).
    return {
        "blockstore_id": "",
        "blockstore_type": "local",
        "blockstore_description": "",
        "blockstore_namespace_example": "local://example-bucket/",
        "blockstore_namespace_ValidityRegex": "^local://",
        "default_namespace_prefix": "local://",
        "pre_sign_support": False,
        "pre_sign_support_ui": False,
        "import_support": False,
        "import_validity_regex": "^local://",
        "pre_sign_multipart_upload": False,
    }


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def served_operations(app: FastAPI) -> list[str]:
    """The contract's operation ids the app has a route for; raises if a route is not a lakeFS operation."""
    contract = load_contract()
    served = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith(f"{API_PREFIX}/") or path == OPENAPI_PATH:
            continue
        for method in sorted(getattr(route, "methods", ())):
            found = [
                op.operation_id
                for op in contract.operations
                if op.method == method and f"{API_PREFIX}{op.path}" == path
            ]
            if not found:
                raise RuntimeError(f"the double serves {method} {path}, which lakefs-sdk does not know")
            served.extend(found)
    return sorted(set(served))


def create_app(
    state: LakeFSState,
    access_key_id: str,
    secret_access_key: str,
    violations: ContractViolations | None = None,
) -> FastAPI:
    """The API app over ``state``, accepting one access key pair, validated against the published API.

    Responses that break the contract are recorded in ``violations`` (and answered ``500``).
    """
    app = FastAPI(title="lakeFS API test double", docs_url=None, redoc_url=None, openapi_url=None)
    contract = load_contract()
    served: set[str] = set()  # filled below, once every route is defined
    app.add_middleware(
        ContractValidationMiddleware,
        contract=contract,
        violations=violations if violations is not None else ContractViolations(),
        served=served,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        # The server validates requests against the OpenAPI document and answers 400 with an Error body.
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in exc.errors())
        return error(400, f"request validation failed: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error(exc.status_code, str(exc.detail))

    def authenticated(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(401, "error authenticating request")
        try:
            key, _, secret = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(401, "error authenticating request") from exc
        key_ok = hmac.compare_digest(key.encode(), access_key_id.encode())
        secret_ok = hmac.compare_digest(secret.encode(), secret_access_key.encode())
        if not (key_ok and secret_ok):
            raise ApiError(401, "error authenticating request")

    api = "/api/v1"
    auth = [Depends(authenticated)]

    def locked(fn: Callable[[], Any]) -> Any:
        with state.lock:
            return fn()

    # -- health, setup, config ------------------------------------------------------
    @app.get(f"{api}/healthcheck", status_code=204)
    def health_check() -> Response:
        return Response(status_code=204)

    @app.get(f"{api}/setup_lakefs")
    def get_setup_state() -> dict[str, Any]:
        return {"state": "initialized", "comm_prefs_missing": False}

    @app.get(f"{api}/config", dependencies=auth)
    def get_config() -> dict[str, Any]:
        return {
            "version_config": {"version": API_VERSION, "version_context": "lakefs-api-test-double"},
            "storage_config": storage_config(),
            "storage_config_list": [],
            "ui_config": {"custom_viewers": []},
            "capabilities_config": {},
        }

    @app.get(f"{api}/config/version", dependencies=auth)
    def get_lakefs_version() -> dict[str, Any]:
        return {"version": API_VERSION, "version_context": "lakefs-api-test-double"}

    @app.get(f"{api}/config/storage", dependencies=auth)
    def get_storage_config() -> dict[str, Any]:
        return storage_config()

    # -- repositories -----------------------------------------------------------------
    @app.get(f"{api}/repositories", dependencies=auth)
    def list_repositories(prefix: Text = None, after: Text = None, amount: Amount = None, search: Text = None):
        def run() -> dict[str, Any]:
            repos = sorted(state.repositories.values(), key=lambda repo: repo.id)
            repos = [r for r in repos if r.id.startswith(prefix or "") and (search or "") in r.id]
            selected = [r for r in repos if r.id > after] if after else repos
            limit = per_page(amount)
            results = [repository_json(r) for r in selected[:limit]]
            return {"pagination": pagination(len(selected) > limit, results, "id"), "results": results}

        return locked(run)

    @app.post(f"{api}/repositories", dependencies=auth, status_code=201)
    def create_repository(body: RepositoryCreation, bare: Text = None) -> dict[str, Any]:
        if body.sample_data:
            raise ApiError(501, "Not Implemented")  # sample data is out of the double's scope
        if body.storage_id:  # a single-blockstore server knows only the default storage id ""
            raise ApiError(400, "storage id: invalid value: validation error")
        is_bare = go_bool("bare", bare)
        repo = locked(
            lambda: state.create_repository(
                body.name, body.storage_namespace, body.default_branch, is_bare, body.read_only
            )
        )
        return repository_json(repo)

    @app.get(f"{api}/repositories/{{repository}}", dependencies=auth)
    def get_repository(repository: str) -> dict[str, Any]:
        return locked(lambda: repository_json(state.repository(repository)))

    @app.delete(f"{api}/repositories/{{repository}}", dependencies=auth, status_code=204)
    def delete_repository(repository: str, force: Text = None) -> Response:
        go_bool("force", force)
        locked(lambda: state.delete_repository(repository))
        return Response(status_code=204)

    # -- branches ---------------------------------------------------------------------
    @app.get(f"{api}/repositories/{{repository}}/branches", dependencies=auth)
    def list_branches(
        repository: str, prefix: Text = None, after: Text = None, amount: Amount = None, show_hidden: Text = None
    ) -> dict[str, Any]:
        hidden = go_bool("show_hidden", show_hidden)

        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            branches = sorted(
                (b for b in repo.branches.values() if b.name.startswith(prefix or "") and (hidden or not b.hidden)),
                key=lambda b: b.name,
            )
            selected = [b for b in branches if b.name > after] if after else branches
            limit = per_page(amount)
            results = [{"id": b.name, "commit_id": b.commit_id} for b in selected[:limit]]
            return {"pagination": pagination(len(selected) > limit, results, "id"), "results": results}

        return locked(run)

    @app.post(f"{api}/repositories/{{repository}}/branches", dependencies=auth)
    def create_branch(repository: str, body: BranchCreation) -> Response:
        commit_id = locked(
            lambda: state.create_branch(state.repository(repository), body.name, body.source, body.hidden)
        )
        # 201 text/html: the commit id the new branch points at
        return Response(content=commit_id, status_code=201, media_type="text/html")

    @app.get(f"{api}/repositories/{{repository}}/branches/{{branch}}", dependencies=auth)
    def get_branch(repository: str, branch: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            found = state.branch(state.repository(repository), branch)
            return {"id": found.name, "commit_id": found.commit_id}

        return locked(run)

    @app.delete(f"{api}/repositories/{{repository}}/branches/{{branch}}", dependencies=auth, status_code=204)
    def delete_branch(repository: str, branch: str, force: Text = None) -> Response:
        go_bool("force", force)
        locked(lambda: state.delete_branch(state.repository(repository), branch))
        return Response(status_code=204)

    @app.put(f"{api}/repositories/{{repository}}/branches/{{branch}}", dependencies=auth, status_code=204)
    def reset_branch(repository: str, branch: str, body: ResetCreation) -> Response:
        locked(lambda: state.reset_branch(state.repository(repository), branch, body.type, body.path))
        return Response(status_code=204)

    @app.get(f"{api}/repositories/{{repository}}/branches/{{branch}}/diff", dependencies=auth)
    def diff_branch(
        repository: str,
        branch: str,
        after: Text = None,
        amount: Amount = None,
        prefix: Text = None,
        delimiter: Text = None,
    ) -> dict[str, Any]:
        def run() -> list[tuple[str, str, Entry]]:
            return state.diff_branch(state.repository(repository), branch)

        return diff_page(locked(run), after, amount, prefix, delimiter)

    # -- commits ----------------------------------------------------------------------
    @app.post(f"{api}/repositories/{{repository}}/branches/{{branch}}/commits", dependencies=auth, status_code=201)
    def commit(repository: str, branch: str, body: CommitCreation, source_metarange: Text = None) -> dict[str, Any]:
        if source_metarange is not None:
            raise ApiError(501, "Not Implemented")  # committing a prepared metarange is out of scope
        created = locked(
            lambda: state.commit(
                state.repository(repository), branch, body.message, body.metadata or {}, body.date, body.allow_empty
            )
        )
        return commit_json(created)

    @app.get(f"{api}/repositories/{{repository}}/commits/{{commitId}}", dependencies=auth)
    def get_commit(repository: str, commitId: str) -> Response:
        def run() -> Response:
            try:
                repo = state.repository(repository)
            except ApiError as exc:
                if exc.status == 404:
                    return error(404, "repository not found")
                raise
            try:
                return JSONResponse(commit_json(state.resolve_commit(repo, commitId)))
            except ApiError as exc:
                if exc.status == 404:
                    return error(404, "commit not found")
                return error(500, exc.message)  # the server reports other dereference errors as 500

        return locked(run)

    @app.get(f"{api}/repositories/{{repository}}/refs/{{ref}}/commits", dependencies=auth)
    def log_commits(
        repository: str,
        ref: str,
        after: Text = None,
        amount: Amount = None,
        objects: Annotated[list[str] | None, Query()] = None,
        prefixes: Annotated[list[str] | None, Query()] = None,
        limit: Text = None,
        first_parent: Text = None,
        since: Text = None,
        stop_at: Text = None,
    ) -> dict[str, Any]:
        if objects or prefixes or since:
            raise ApiError(501, "Not Implemented")  # path-filtered and time-bounded logs are out of scope
        page_size = per_page(amount)

        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            try:
                commits, has_more = state.log(
                    repo,
                    ref,
                    after or "",
                    page_size,
                    go_bool("limit", limit),
                    go_bool("first_parent", first_parent),
                    stop_at or "",
                )
            except ApiError as exc:
                raise ApiError(exc.status, f"ref: {exc.message}") from exc
            results = [commit_json(c) for c in commits]
            return {"pagination": pagination(has_more, results, "id"), "results": results}

        return locked(run)

    # -- refs: merge, diff ------------------------------------------------------------
    @app.post(f"{api}/repositories/{{repository}}/refs/{{sourceRef}}/merge/{{destinationBranch}}", dependencies=auth)
    def merge_into_branch(
        repository: str,
        sourceRef: str,
        destinationBranch: str,
        body: Merge | None = None,
    ) -> Response:
        body = body or Merge()

        def run() -> Response:
            repo = state.repository(repository)
            try:
                merged = state.merge(
                    repo,
                    sourceRef,
                    destinationBranch,
                    body.message or "",
                    body.metadata or {},
                    body.strategy or "",
                    body.allow_empty,
                    body.force,
                    body.squash_merge,
                )
            except ApiError as exc:
                if exc.status == 409:
                    # The document's 409 for this operation is a MergeResult, not an Error.
                    return JSONResponse({"reference": ""}, status_code=409)
                raise
            return JSONResponse({"reference": merged.id})

        return locked(run)

    @app.get(f"{api}/repositories/{{repository}}/refs/{{sourceRef}}/merge/{{destinationBranch}}", dependencies=auth)
    def find_merge_base(repository: str, sourceRef: str, destinationBranch: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            source = state.resolve_commit(repo, sourceRef)
            destination = state.resolve_commit(repo, destinationBranch)
            base = state.merge_base(repo, source.id, destination.id)
            if base is None:
                raise ApiError(500, "find merge base: no merge base")
            return {
                "source_commit_id": source.id,
                "destination_commit_id": destination.id,
                "base_commit_id": base.id,
            }

        return locked(run)

    @app.get(f"{api}/repositories/{{repository}}/refs/{{leftRef}}/diff/{{rightRef}}", dependencies=auth)
    def diff_refs(
        repository: str,
        leftRef: str,
        rightRef: str,
        after: Text = None,
        amount: Amount = None,
        prefix: Text = None,
        delimiter: Text = None,
        type: Annotated[str, Query(pattern="^(two_dot|three_dot)$")] = "three_dot",
        include_right_stats: Text = None,
    ) -> dict[str, Any]:
        go_bool("include_right_stats", include_right_stats)
        changes = locked(lambda: state.diff_refs(state.repository(repository), leftRef, rightRef, type))
        return diff_page(changes, after, amount, prefix, delimiter)

    def diff_page(
        changes: list[tuple[str, str, Entry]],
        after: str | None,
        amount: int | None,
        prefix: str | None,
        delimiter: str | None,
    ) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for kind, path, entry in changes:
            if not path.startswith(prefix or ""):
                continue
            cut = path.find(delimiter, len(prefix or "")) if delimiter else -1
            if cut >= 0:
                common = path[: cut + len(delimiter or "")]
                if common not in seen:
                    seen.add(common)
                    rows.append({"type": "prefix_changed", "path": common, "path_type": "common_prefix"})
                continue
            rows.append(diff_json(kind, path, entry))
        selected = [row for row in rows if row["path"] > after] if after else rows
        limit = per_page(amount)
        results = selected[:limit]
        return {"pagination": pagination(len(selected) > limit, results, "path"), "results": results}

    # -- objects --------------------------------------------------------------------------
    @app.post(f"{api}/repositories/{{repository}}/branches/{{branch}}/objects", dependencies=auth, status_code=201)
    async def upload_object(
        request: Request,
        repository: str,
        branch: str,
        path: Annotated[str, Query()],
        storageClass: Text = None,
        force: Text = None,
        if_none_match: Annotated[str | None, Header()] = None,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        go_bool("force", force)
        content_type = request.headers.get("content-type") or "application/octet-stream"
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            form = await request.form()
            part = form.get("content")
            if part is None or isinstance(part, str):
                return error(500, "multipart upload missing key 'content': http: no such file")
            data = await part.read()
            content_type = part.content_type or "application/octet-stream"
        else:
            data = await request.body()
        metadata = {
            key.lower()[len(METADATA_HEADER_PREFIX) :]: value
            for key, value in request.headers.items()
            if key.lower().startswith(METADATA_HEADER_PREFIX)
        }

        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            entry = state.put_object(repo, branch, path, data, content_type, metadata, if_none_match, if_match)
            return object_stats_json(entry)

        return JSONResponse(locked(run), status_code=201)

    @app.delete(f"{api}/repositories/{{repository}}/branches/{{branch}}/objects", dependencies=auth, status_code=204)
    def delete_object(
        repository: str, branch: str, path: Annotated[str, Query()], force: Text = None, no_tombstone: Text = None
    ) -> Response:
        go_bool("force", force)
        go_bool("no_tombstone", no_tombstone)
        locked(lambda: state.delete_object(state.repository(repository), branch, path))
        return Response(status_code=204)

    @app.post(f"{api}/repositories/{{repository}}/branches/{{branch}}/objects/delete", dependencies=auth)
    def delete_objects(
        repository: str, branch: str, body: PathList, force: Text = None, no_tombstone: Text = None
    ) -> dict[str, Any]:
        go_bool("force", force)
        go_bool("no_tombstone", no_tombstone)

        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            state.branch(repo, branch)
            errors = []
            for path in body.paths:
                if not path:
                    continue  # the server ignores empty paths here (lakeFS issue #1706)
                try:
                    state.delete_object(repo, branch, path)
                except ApiError as exc:
                    errors.append({"status_code": exc.status, "message": exc.message, "path": path})
            return {"errors": errors}

        return locked(run)

    def entry_headers(entry: Entry) -> dict[str, str]:
        return {
            "ETag": f'"{entry.checksum}"',
            "Last-Modified": http_date(entry.mtime),
            "Content-Type": entry.content_type,
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-store, must-revalidate",
        }

    def byte_range(header: str, size: int) -> tuple[int, int] | None:
        match = RE_RANGE.match(header.strip())
        if match is None or match.group(0) == "bytes=-":
            return None
        start_text, end_text = match.groups()
        if not start_text:  # suffix range: the last N bytes
            length = int(end_text)
            if length == 0 or size == 0:
                return None
            return max(size - length, 0), size - 1
        start = int(start_text)
        end = min(int(end_text), size - 1) if end_text else size - 1
        if start >= size or start > end:
            return None
        return start, end

    @app.get(f"{api}/repositories/{{repository}}/refs/{{ref}}/objects", dependencies=auth)
    def get_object(
        repository: str,
        ref: str,
        path: Annotated[str, Query()],
        presign: Text = None,
        range: Annotated[str | None, Header()] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        if go_bool("presign", presign):
            raise ApiError(400, "presigned URLs are not supported by the local blockstore")

        def run() -> tuple[Entry, bytes]:
            repo = state.repository(repository)
            entry = state.get_entry(repo, ref, path)
            return entry, repo.blobs[entry.physical_address]

        entry, data = locked(run)
        headers = entry_headers(entry)
        if if_none_match is not None and if_none_match == headers["ETag"]:
            return Response(status_code=304)
        headers["Content-Disposition"] = "attachment"
        if range is None:
            return Response(content=data, headers=headers, media_type=entry.content_type)
        bounds = byte_range(range, entry.size)
        if bounds is None:
            return JSONResponse(
                {"message": "Requested Range Not Satisfiable"},
                status_code=416,
                headers={"Content-Range": f"bytes */{entry.size}"},
            )
        start, end = bounds
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        return Response(content=data[start : end + 1], status_code=206, headers=headers, media_type=entry.content_type)

    @app.head(f"{api}/repositories/{{repository}}/refs/{{ref}}/objects", dependencies=auth)
    def head_object(
        repository: str,
        ref: str,
        path: Annotated[str, Query()],
        range: Annotated[str | None, Header()] = None,
    ) -> Response:
        try:
            entry = locked(lambda: state.get_entry(state.repository(repository), ref, path))
        except ApiError as exc:
            return Response(status_code=exc.status)  # HEAD answers carry no body
        headers = entry_headers(entry)
        if range is None:
            headers["Content-Length"] = str(entry.size)
            return Response(status_code=200, headers=headers)
        bounds = byte_range(range, entry.size)
        if bounds is None:
            return Response(status_code=416)
        start, end = bounds
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        headers["Content-Length"] = str(end - start + 1)
        return Response(status_code=206, headers=headers)

    @app.get(f"{api}/repositories/{{repository}}/refs/{{ref}}/objects/stat", dependencies=auth)
    def stat_object(
        repository: str,
        ref: str,
        path: Annotated[str, Query()],
        user_metadata: Text = None,
        presign: Text = None,
    ) -> dict[str, Any]:
        if go_bool("presign", presign):
            raise ApiError(400, "presigned URLs are not supported by the local blockstore")
        with_metadata = go_bool("user_metadata", user_metadata, default=True)
        entry = locked(lambda: state.get_entry(state.repository(repository), ref, path))
        return object_stats_json(entry, with_metadata)

    @app.get(f"{api}/repositories/{{repository}}/refs/{{ref}}/objects/ls", dependencies=auth)
    def list_objects(
        repository: str,
        ref: str,
        user_metadata: Text = None,
        presign: Text = None,
        after: Text = None,
        amount: Amount = None,
        delimiter: Text = None,
        prefix: Text = None,
    ) -> dict[str, Any]:
        if go_bool("presign", presign):
            raise ApiError(400, "presigned URLs are not supported by the local blockstore")
        with_metadata = go_bool("user_metadata", user_metadata, default=True)

        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            items, has_more = state.list_entries(
                repo, ref, prefix or "", after or "", delimiter or "", per_page(amount)
            )
            results = [
                {"path": item, "path_type": "common_prefix", "physical_address": "", "checksum": "", "mtime": 0}
                if isinstance(item, str)
                else object_stats_json(item, with_metadata)
                for item in items
            ]
            return {"pagination": pagination(has_more, results, "path"), "results": results}

        return locked(run)

    # -- tags ---------------------------------------------------------------------------------
    @app.get(f"{api}/repositories/{{repository}}/tags", dependencies=auth)
    def list_tags(repository: str, prefix: Text = None, after: Text = None, amount: Amount = None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            repo = state.repository(repository)
            tags = sorted((name, commit) for name, commit in repo.tags.items() if name.startswith(prefix or ""))
            selected = [t for t in tags if t[0] > after] if after else tags
            limit = per_page(amount)
            results = [{"id": name, "commit_id": commit} for name, commit in selected[:limit]]
            return {"pagination": pagination(len(selected) > limit, results, "id"), "results": results}

        return locked(run)

    @app.post(f"{api}/repositories/{{repository}}/tags", dependencies=auth, status_code=201)
    def create_tag(repository: str, body: TagCreation) -> dict[str, Any]:
        commit_id = locked(lambda: state.create_tag(state.repository(repository), body.id, body.ref))
        return {"id": body.id, "commit_id": commit_id}

    @app.get(f"{api}/repositories/{{repository}}/tags/{{tag}}", dependencies=auth)
    def get_tag(repository: str, tag: str) -> dict[str, Any]:
        return {"id": tag, "commit_id": locked(lambda: state.tag(state.repository(repository), tag))}

    @app.delete(f"{api}/repositories/{{repository}}/tags/{{tag}}", dependencies=auth, status_code=204)
    def delete_tag(repository: str, tag: str, force: Text = None) -> Response:
        go_bool("force", force)
        locked(lambda: state.delete_tag(state.repository(repository), tag))
        return Response(status_code=204)

    served.update(served_operations(app))
    document = contract.openapi(served)

    @app.get(OPENAPI_PATH)
    def openapi_document() -> dict[str, Any]:
        """What the double enforces: the served operations with their parameters and schemas."""
        return document

    return app
