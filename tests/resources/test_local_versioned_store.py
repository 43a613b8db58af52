"""Local store specifics: content dedup, concurrent writers in several processes, crash safety."""

import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from filelock import FileLock

import resources.local_versioned_store as local_module
from resources.local_versioned_store import LocalVersionedStore
from resources.object_store import LocalObjectStore
from resources.versioned_store import StoreUnavailableError, VersionedStoreError


def _store(root: Path) -> LocalVersionedStore:
    return LocalVersionedStore(root / "meta", LocalObjectStore(root / "objects"))


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    with store.transaction("dedup") as tx:
        store.put_object(tx.branch, "a/one.parquet", b"same bytes")
        store.put_object(tx.branch, "b/two.parquet", b"same bytes")
        store.commit_into(tx, "two paths, one blob")
    store.create_branch("other", "main")
    store.put_object("other", "c/three.parquet", b"same bytes")
    assert len(store.objects.list_keys(f"{store.repository}/objects/")) == 1


def _writer(root: str, worker: int, count: int) -> None:
    store = _store(Path(root))
    for i in range(count):
        with store.transaction(f"w{worker}") as tx:
            store.put_object(tx.branch, f"tables/w{worker}/{i}.parquet", f"{worker}-{i}".encode())
            store.commit_into(tx, f"worker {worker} item {i}", {"worker": str(worker)})


def _run_processes(target: object, args: list[tuple[object, ...]]) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=target, args=a) for a in args]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    _store(tmp_path).ensure_repository()
    _run_processes(_writer, [(str(tmp_path), w, 8) for w in range(3)])
    store = _store(tmp_path)
    paths = {s.path for s in store.list_objects("main", prefix="tables/")}
    assert paths == {f"tables/w{w}/{i}.parquet" for w in range(3) for i in range(8)}
    worker_commits = [c for c in store.log("main", limit=1000) if "worker" in c.metadata]
    assert len(worker_commits) == 24
    assert store.list_branches() == ["main"]


def _stager(root: str, worker: int, count: int) -> None:
    store = _store(Path(root))
    for i in range(count):
        store.put_object("shared", f"s/{worker}/{i}", f"{worker}-{i}".encode())


def test_concurrent_puts_on_one_branch_all_reach_the_commit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("shared", "main")
    _run_processes(_stager, [(str(tmp_path), w, 40) for w in range(3)])
    commit = store.commit("shared", "everything staged")
    assert len(store.list_objects(commit.id)) == 120
    assert store.get_object(commit.id, "s/2/39") == b"2-39"


def test_readers_never_see_a_branch_half_switched_by_a_commit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("busy", "main")
    done = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not done.is_set():  # a fresh store each time: no cached journal to paper over a torn read
            seen.append(len(_store(tmp_path).list_objects("busy")))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(150):
            store.put_object("busy", f"f/{i}", b"x")
            store.commit("busy", f"c{i}")
    finally:
        done.set()
        thread.join()
    assert seen and seen == sorted(seen)  # the view only grows: never old head without its staged files


def test_a_crash_before_commit_leaves_main_unchanged(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    before = store.resolve_ref("main")
    with pytest.raises(KeyboardInterrupt), store.transaction("crash") as tx:
        store.put_object(tx.branch, "partial.parquet", b"x")
        raise KeyboardInterrupt
    assert store.resolve_ref("main") == before
    assert store.list_objects("main") == []


def test_a_crash_inside_commit_keeps_the_branch_and_its_staged_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("c", "main")
    head = store.resolve_ref("c")
    store.put_object("c", "a", b"a")

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(store, "_reset_branch", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.commit("c", "never lands")
    monkeypatch.undo()
    assert store.resolve_ref("c") == head
    assert store.get_object("c", "a") == b"a"
    assert store.get_object(store.commit("c", "lands").id, "a") == b"a"


def test_a_journal_line_cut_short_is_ignored_and_repaired(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("j", "main")
    store.put_object("j", "whole", b"w")
    journal = next((store.root / "staging").glob("*.jsonl"))
    with journal.open("ab") as handle:
        handle.write(b'["cut", ["abc')  # a writer died mid-line
    assert [s.path for s in store.list_objects("j")] == ["whole"]
    store.put_object("j", "after", b"a")
    assert [s.path for s in store.list_objects("j")] == ["after", "whole"]
    assert [s.path for s in store.list_objects(store.commit("j", "c").id)] == ["after", "whole"]


def test_branches_written_by_the_earlier_format_are_read_and_upgraded(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("old", "main")
    digest = store.put_object("old", "staged-before", b"s").checksum
    head = store.resolve_ref("main")
    store._branch_file("old").write_text(json.dumps({"head": head, "staging": {"inline": [digest, 1]}}))
    assert [s.path for s in store.list_objects("old")] == ["inline"]
    store.put_object("old", "new", b"n")
    assert [s.path for s in store.list_objects("old")] == ["inline", "new"]
    assert "staging" not in json.loads(store._branch_file("old").read_text())


def test_a_repository_locked_too_long_fails_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("b", "main")
    monkeypatch.setattr(local_module, "LOCK_TIMEOUT_SECONDS", 0.2)
    with FileLock(str(store._lock_path)), pytest.raises(StoreUnavailableError, match="locked"):
        store.put_object("b", "x", b"x")


def test_merge_base_is_the_newest_common_ancestor_after_criss_cross_merges(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    store.create_branch("a", "main")
    store.create_branch("b", "main")
    store.put_object("a", "a1", b"1")
    store.commit("a", "a1")
    store.put_object("b", "b1", b"1")
    store.commit("b", "b1")
    store.merge("a", "b")
    store.merge("b", "a")  # a now holds b's merge: a and b share it as their newest common ancestor
    store.put_object("b", "a1", b"changed on b")
    store.commit("b", "b2")
    store.put_object("a", "a2", b"2")
    store.commit("a", "a2")
    store.merge("b", "a")  # no conflict: a1 changed only on b since the common base
    assert store.get_object("a", "a1") == b"changed on b"
    assert store.get_object("a", "a2") == b"2"


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b"])
def test_invalid_paths_are_refused(tmp_path: Path, bad: str) -> None:
    store = _store(tmp_path)
    store.ensure_repository()
    with pytest.raises(VersionedStoreError, match="invalid object path"):
        store.put_object("main", bad, b"x")
