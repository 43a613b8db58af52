"""The lakeFS store over HTTP against the lakeFS API test double: error mapping and lakeFS-specific behaviour."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from resources import lakefs_versioned_store
from resources.lakefs_versioned_store import LakeFSAuthenticationError, LakeFSVersionedStore
from resources.versioned_store import (
    AlreadyExistsError,
    ConflictError,
    NoChangesError,
    NotFoundError,
    StoreUnavailableError,
    VersionedStoreError,
)
from tests.lakefs_double import LakeFSDouble, run_lakefs_double
from tests.resources.lakefs_fixture import make_lakefs_store


@pytest.fixture(scope="module")
def double() -> Iterator[LakeFSDouble]:
    with run_lakefs_double() as running:
        yield running


@pytest.fixture
def store(double: LakeFSDouble) -> LakeFSVersionedStore:
    created = make_lakefs_store(double)
    created.ensure_repository()
    return created


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- connection and credentials ----------------------------------------------------------
def test_wrong_credentials_give_a_clear_error_without_the_secret(double: LakeFSDouble) -> None:
    store = LakeFSVersionedStore(double.url, double.access_key_id, "not-the-secret-XYZ", repository="creds-check")
    with pytest.raises(LakeFSAuthenticationError) as caught:
        store.ensure_repository()
    message = str(caught.value)
    assert "rejected the access key pair" in message
    assert double.url in message
    assert "not-the-secret-XYZ" not in message
    assert not isinstance(caught.value, StoreUnavailableError)  # retrying will not help


def test_unknown_access_key_is_rejected_too(double: LakeFSDouble) -> None:
    store = LakeFSVersionedStore(double.url, "AKIAUNKNOWN", double.secret_access_key, repository="creds-check")
    with pytest.raises(LakeFSAuthenticationError):
        store.list_branches()


def test_unreachable_endpoint_fails_fast_as_unavailable() -> None:
    endpoint = f"http://riverbed:hunter2@127.0.0.1:{closed_port()}"
    store = LakeFSVersionedStore(endpoint, "AKIAEXAMPLE", "secret-never-shown", repository="unreachable")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        store.ensure_repository()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "cannot reach lakeFS at http://127.0.0.1:" in message
    assert "hunter2" not in message and "secret-never-shown" not in message
    assert "hunter2" not in repr(store)


def test_unreachable_endpoint_fails_every_operation_as_unavailable() -> None:
    store = LakeFSVersionedStore(f"http://127.0.0.1:{closed_port()}", "AKIAEXAMPLE", "secret", repository="gone")
    with pytest.raises(StoreUnavailableError):
        store.put_object("main", "a.txt", b"x")
    with pytest.raises(StoreUnavailableError):
        store.get_object("main", "a.txt")


def _answering(status: int, message: str) -> type[BaseHTTPRequestHandler]:
    """A stand-in server answering every request with ``status`` and lakeFS's Error body."""

    class Answering(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = json.dumps({"message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Answering


@contextlib.contextmanager
def _answering_server(status: int, message: str) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _answering(status, message))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_server_errors_are_unavailable_with_the_server_message() -> None:
    with _answering_server(503, "kv store unavailable") as url:
        store = LakeFSVersionedStore(url, "AKIAEXAMPLE", "secret", repository="failing")
        with pytest.raises(StoreUnavailableError, match="HTTP 503 kv store unavailable"):
            store.ensure_repository()


@pytest.mark.parametrize(
    ("status", "message", "error", "unavailable", "text"),
    [
        (429, "too many requests", StoreUnavailableError, True, "HTTP 429 too many requests"),
        (403, "read-only repository", VersionedStoreError, False, "lakeFS forbids committing on branch 'main'"),
        (412, "precondition failed", VersionedStoreError, False, "precondition failed while committing"),
        (400, "commit: no changes", NoChangesError, False, "branch 'main' has no uncommitted changes"),
        # a 400 about something else is a refusal, even if its text mentions changes
        (400, "no changes allowed on a tag: invalid value", VersionedStoreError, False, "lakeFS refused committing"),
        (404, "branch not found", NotFoundError, False, "branch 'main' not found"),
        (418, "teapot", VersionedStoreError, False, "unexpected lakeFS answer while committing"),
    ],
)
def test_errors_map_by_status_first(
    status: int, message: str, error: type[VersionedStoreError], unavailable: bool, text: str
) -> None:
    with _answering_server(status, message) as url:
        store = LakeFSVersionedStore(url, "AKIAEXAMPLE", "secret", repository="answering")
        with pytest.raises(error, match=re.escape(text)) as caught:
            store.commit("main", "m")
    assert type(caught.value) is error
    assert isinstance(caught.value, StoreUnavailableError) is unavailable


def test_missing_settings_are_named() -> None:
    with pytest.raises(VersionedStoreError, match="endpoint, secret_access_key"):
        LakeFSVersionedStore("", "AKIAEXAMPLE", "")


# -- missing things --------------------------------------------------------------------------
def test_missing_refs_are_not_found(store: LakeFSVersionedStore) -> None:
    with pytest.raises(NotFoundError, match="'no-such-branch'"):
        store.get_commit("no-such-branch")
    with pytest.raises(NotFoundError):
        store.resolve_ref("0" * 64)
    with pytest.raises(NotFoundError):
        store.log("no-such-branch")
    with pytest.raises(NotFoundError):
        store.create_branch("feature", "no-such-branch")
    with pytest.raises(NotFoundError):
        store.create_tag("v1", "no-such-branch")
    with pytest.raises(NotFoundError):
        store.list_objects("no-such-branch")
    with pytest.raises(NotFoundError):
        store.delete_branch("no-such-branch")
    with pytest.raises(NotFoundError, match="branch 'no-such-branch'"):
        store.put_object("no-such-branch", "a.txt", b"x")


def test_missing_object_is_not_found_naming_path_and_ref(store: LakeFSVersionedStore) -> None:
    with pytest.raises(NotFoundError, match=r"object 'a/missing\.txt' not found at 'main'"):
        store.get_object("main", "a/missing.txt")


def test_missing_repository_is_not_found(double: LakeFSDouble) -> None:
    store = make_lakefs_store(double, "never-created")
    with pytest.raises(NotFoundError, match="never-created"):
        store.get_commit("main")


# -- repository ----------------------------------------------------------------------------------
def test_ensure_repository_creates_main_with_an_initial_commit_once(double: LakeFSDouble) -> None:
    store = make_lakefs_store(double)
    store.ensure_repository()
    make_lakefs_store(double, store.repository).ensure_repository()  # a second store finds it
    assert store.list_branches() == ["main"]
    (initial,) = store.log("main")
    assert initial.parents == ()
    assert double.state.repositories[store.repository].storage_namespace == store.storage_namespace


def test_storage_namespace_defaults_to_a_local_dev_namespace(double: LakeFSDouble) -> None:
    store = LakeFSVersionedStore(double.url, double.access_key_id, double.secret_access_key, repository="dev-default")
    assert store.storage_namespace == "local://riverbed/dev-default"
    store.ensure_repository()
    assert store.get_commit("main").parents == ()


def test_a_storage_namespace_in_use_is_refused(double: LakeFSDouble, store: LakeFSVersionedStore) -> None:
    other = LakeFSVersionedStore(
        double.url,
        double.access_key_id,
        double.secret_access_key,
        repository="other-repo-same-namespace",
        storage_namespace=store.storage_namespace,
    )
    with pytest.raises(VersionedStoreError, match="storage namespace already in use"):
        other.ensure_repository()


# -- lakeFS semantics through the store ----------------------------------------------------------------
def test_write_commit_read_pinned(store: LakeFSVersionedStore) -> None:
    stat = store.put_object("main", "tables/a.parquet", b"v1")
    assert (stat.path, stat.size_bytes) == ("tables/a.parquet", 2)
    first = store.commit("main", "first", {"dagster.run_id": "r1"})
    store.put_object("main", "tables/a.parquet", b"v2")
    assert store.get_object("main", "tables/a.parquet") == b"v2"  # staged changes are visible on the branch
    second = store.commit("main", "second")
    assert store.get_object(first.id, "tables/a.parquet") == b"v1"
    assert store.get_object(second.id, "tables/a.parquet") == b"v2"
    assert store.get_commit(first.id).metadata == {"dagster.run_id": "r1"}
    assert [c.id for c in store.log("main", limit=2)] == [second.id, first.id]
    assert store.resolve_ref("main") == second.id


def test_empty_objects_round_trip(store: LakeFSVersionedStore) -> None:
    assert store.put_object("main", "empty.bin", b"").size_bytes == 0
    store.commit("main", "empty file")
    assert store.get_object("main", "empty.bin") == b""


def test_identical_rewrite_commits_nothing(store: LakeFSVersionedStore) -> None:
    store.put_object("main", "a.txt", b"same")
    store.commit("main", "first")
    with pytest.raises(NoChangesError, match="'main'"):
        store.commit("main", "nothing staged")
    store.put_object("main", "a.txt", b"same")
    with pytest.raises(NoChangesError):
        store.commit("main", "identical bytes")


def test_existing_branch_and_tag_names_are_refused(store: LakeFSVersionedStore) -> None:
    store.create_branch("feature", "main")
    with pytest.raises(AlreadyExistsError):
        store.create_branch("feature", "main")
    store.create_tag("v1", "main")
    with pytest.raises(AlreadyExistsError):
        store.create_tag("v1", "main")
    with pytest.raises(AlreadyExistsError):
        store.create_branch("v1", "main")  # lakeFS keeps branch and tag names apart


def test_merge_conflict_is_a_conflict_error(store: LakeFSVersionedStore) -> None:
    store.put_object("main", "a.txt", b"base")
    store.commit("main", "base")
    store.create_branch("left", "main")
    store.put_object("left", "a.txt", b"left")
    store.commit("left", "left")
    store.put_object("main", "a.txt", b"main")
    store.commit("main", "main")
    head = store.resolve_ref("main")
    with pytest.raises(ConflictError, match="'left' into 'main'"):
        store.merge("left", "main")
    assert store.resolve_ref("main") == head


def test_merge_commit_records_both_parents_and_user_metadata_only(store: LakeFSVersionedStore) -> None:
    store.create_branch("feature", "main")
    store.put_object("feature", "b.txt", b"b")
    feature_head = store.commit("feature", "add b").id
    main_head = store.resolve_ref("main")
    merged = store.merge("feature", "main", message="merge feature", metadata={"riverbed.source_branch": "feature"})
    info = store.get_commit(merged)
    assert info.parents == (main_head, feature_head)
    assert info.message == "merge feature"
    assert info.metadata == {"riverbed.source_branch": "feature"}  # lakeFS's own ".lakefs.*" keys are hidden
    assert store.diff(main_head, merged)[0].path == "b.txt"


def test_nothing_to_merge_is_no_changes(store: LakeFSVersionedStore) -> None:
    store.create_branch("idle", "main")
    with pytest.raises(NoChangesError):
        store.merge("idle", "main")


def test_diff_is_head_to_head(store: LakeFSVersionedStore) -> None:
    store.put_object("main", "keep.txt", b"k")
    store.put_object("main", "gone.txt", b"g")
    store.commit("main", "base")
    store.create_branch("feature", "main")
    store.put_object("feature", "new.txt", b"n")
    store.put_object("feature", "keep.txt", b"k2")
    store.delete_object("feature", "gone.txt")
    store.commit("feature", "change")
    store.put_object("main", "main-only.txt", b"m")
    store.commit("main", "main moves on")
    assert [(d.path, d.type) for d in store.diff("main", "feature")] == [
        ("gone.txt", "removed"),
        ("keep.txt", "changed"),
        ("main-only.txt", "removed"),  # two-dot: main's own change shows too
        ("new.txt", "added"),
    ]


def test_listings_and_log_follow_pagination(store: LakeFSVersionedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lakefs_versioned_store, "PAGE_SIZE", 3)
    for index in range(10):
        store.put_object("main", f"many/{index:02d}.txt", b"x")
        store.commit("main", f"commit {index}")
        store.create_branch(f"b{index}", "main")
        store.create_tag(f"t{index}", "main")
    assert [stat.path for stat in store.list_objects("main", "many/")] == [f"many/{i:02d}.txt" for i in range(10)]
    assert len(store.log("main", limit=8)) == 8
    assert len(store.log("main")) == 11  # ten commits and the repository's first
    assert len(store.list_branches()) == 11
    assert len(store.list_tags()) == 10
    assert len(store.diff(store.log("main")[-1].id, "main")) == 10


def test_transaction_merges_into_main_and_removes_its_branch(store: LakeFSVersionedStore) -> None:
    with store.transaction("dagster-run") as tx:
        store.put_object(tx.branch, "x.txt", b"x")
        store.commit_into(tx, "write x", {"dagster.run_id": "run-1"})
    assert tx.merge_commit_id == store.resolve_ref("main")
    assert store.get_object(tx.last_commit_id, "x.txt") == b"x"
    assert store.list_branches() == ["main"]


def test_failed_transaction_leaves_main_untouched(store: LakeFSVersionedStore) -> None:
    head = store.resolve_ref("main")
    with pytest.raises(RuntimeError, match="boom"), store.transaction("dagster-run") as tx:
        store.put_object(tx.branch, "x.txt", b"x")
        store.commit_into(tx, "write x")
        raise RuntimeError("boom")
    assert store.resolve_ref("main") == head
    assert store.list_branches() == ["main"]


def test_invalid_names_are_refused_with_the_rule(double: LakeFSDouble, store: LakeFSVersionedStore) -> None:
    with pytest.raises(VersionedStoreError, match="invalid lakeFS repository name 'Riverbed_Data'"):
        LakeFSVersionedStore(double.url, double.access_key_id, double.secret_access_key, repository="Riverbed_Data")
    with pytest.raises(VersionedStoreError, match="letters, digits, underscores and dashes") as caught:
        store.create_branch("feature/x y", "main")
    assert not isinstance(caught.value, StoreUnavailableError)


def test_the_data_store_resource_builds_the_lakefs_backend(double: LakeFSDouble) -> None:
    from resources.data_store_resource import VersionedDataStoreResource

    resource = VersionedDataStoreResource(
        backend="lakefs",
        repository="from-resource",
        lakefs_endpoint=double.url,
        lakefs_access_key_id=double.access_key_id,
        lakefs_secret_access_key=double.secret_access_key,
        lakefs_storage_namespace="local://riverbed-tests/from-resource",
    )
    store = resource.get_store()
    assert isinstance(store, LakeFSVersionedStore)
    with store.transaction("resource-check") as tx:
        store.put_object(tx.branch, "hello.txt", b"hello")
        store.commit_into(tx, "hello")
    assert store.get_object("main", "hello.txt") == b"hello"
