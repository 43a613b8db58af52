"""Local store specifics: content dedup, concurrent writers in several processes, crash safety."""

import multiprocessing
from pathlib import Path

import pytest

from resources.local_versioned_store import LocalVersionedStore
from resources.object_store import LocalObjectStore
from resources.versioned_store import VersionedStoreError


def _store(root: Path) -> LocalVersionedStore:
    return LocalVersionedStore(root / "meta", LocalObjectStore(root / "objects"))


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    with store.transaction("dedup") as tx:
        store.put_object(tx.branch, "a/one.parquet", b"same bytes")
        store.put_object(tx.branch, "b/two.parquet", b"same bytes")
        store.commit_into(tx, "two paths, one blob")
    assert len(store.objects.list_keys(f"{store.repository}/objects/")) == 1


def _writer(root: str, worker: int, count: int) -> None:
    store = _store(Path(root))
    for i in range(count):
        with store.transaction(f"w{worker}") as tx:
            store.put_object(tx.branch, f"tables/w{worker}/{i}.parquet", f"{worker}-{i}".encode())
            store.commit_into(tx, f"worker {worker} item {i}", {"worker": str(worker)})


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    _store(tmp_path).ensure_repository()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 8)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = _store(tmp_path)
    paths = {s.path for s in store.list_objects("main", prefix="tables/")}
    assert paths == {f"tables/w{w}/{i}.parquet" for w in range(3) for i in range(8)}
    worker_commits = [c for c in store.log("main", limit=1000) if "worker" in c.metadata]
    assert len(worker_commits) == 24
    assert store.list_branches() == ["main"]


def test_a_crash_before_commit_leaves_main_unchanged(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    before = store.resolve_ref("main")
    with pytest.raises(KeyboardInterrupt), store.transaction("crash") as tx:
        store.put_object(tx.branch, "partial.parquet", b"x")
        raise KeyboardInterrupt
    assert store.resolve_ref("main") == before
    assert store.list_objects("main") == []


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b"])
def test_invalid_paths_are_refused(tmp_path: Path, bad: str) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    with pytest.raises(VersionedStoreError, match="invalid object path"):
        store.put_object("main", bad, b"x")
