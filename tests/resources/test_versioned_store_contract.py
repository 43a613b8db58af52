"""The versioned store contract, run against every backend (see ``conftest.py``): lakeFS semantics."""

import pytest

from resources.versioned_store import (
    AlreadyExistsError,
    ConflictError,
    NoChangesError,
    NotFoundError,
    VersionedStore,
    VersionedStoreError,
)


def _commit_file(store: VersionedStore, branch: str, path: str, data: bytes, message: str = "write") -> str:
    store.put_object(branch, path, data)
    return store.commit(branch, message, {"test.path": path}).id


def test_ensure_repository_is_idempotent(versioned_store: VersionedStore) -> None:
    head = versioned_store.resolve_ref(versioned_store.main_branch)
    versioned_store.ensure_repository()
    assert versioned_store.resolve_ref(versioned_store.main_branch) == head
    assert versioned_store.main_branch in versioned_store.list_branches()


def test_branches_are_created_listed_and_deleted(versioned_store: VersionedStore) -> None:
    main_head = versioned_store.resolve_ref("main")
    assert versioned_store.create_branch("feature-a", "main") == main_head
    assert "feature-a" in versioned_store.list_branches()
    with pytest.raises(AlreadyExistsError):
        versioned_store.create_branch("feature-a", "main")
    versioned_store.delete_branch("feature-a")
    assert "feature-a" not in versioned_store.list_branches()
    with pytest.raises(NotFoundError):
        versioned_store.resolve_ref("feature-a")
    with pytest.raises(NotFoundError):
        versioned_store.create_branch("feature-b", "no-such-ref")


def test_staged_objects_are_visible_on_the_branch_and_pinned_by_commits(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("work", "main")
    versioned_store.put_object("work", "tables/a/1.parquet", b"v1")
    assert versioned_store.get_object("work", "tables/a/1.parquet") == b"v1"
    with pytest.raises(NotFoundError):
        versioned_store.get_object("main", "tables/a/1.parquet")
    first = versioned_store.commit("work", "first", {"dagster.run_id": "r1"}).id
    second = _commit_file(versioned_store, "work", "tables/a/1.parquet", b"v2")
    assert versioned_store.get_object(first, "tables/a/1.parquet") == b"v1"
    assert versioned_store.get_object(second, "tables/a/1.parquet") == b"v2"
    assert versioned_store.get_object("work", "tables/a/1.parquet") == b"v2"
    listed = versioned_store.list_objects(first, prefix="tables/")
    assert [(s.path, s.size_bytes) for s in listed] == [("tables/a/1.parquet", 2)]


def test_commit_metadata_round_trips_and_empty_commits_are_refused(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("meta", "main")
    versioned_store.put_object("meta", "x.json", b"{}")
    info = versioned_store.commit(
        "meta", "with metadata", {"dagster.run_id": "abc", "dagster.partition_key": "2026-10-01"}
    )
    fetched = versioned_store.get_commit(info.id)
    assert fetched.message == "with metadata"
    assert fetched.metadata["dagster.run_id"] == "abc"
    assert fetched.metadata["dagster.partition_key"] == "2026-10-01"
    assert fetched.parents and fetched.parents[0] == versioned_store.get_commit("main").id
    with pytest.raises(NoChangesError):
        versioned_store.commit("meta", "nothing new")


def test_log_is_newest_first_and_limited(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("history", "main")
    ids = [_commit_file(versioned_store, "history", f"f{i}", str(i).encode(), f"c{i}") for i in range(3)]
    log = versioned_store.log("history", limit=3)
    assert [c.id for c in log] == list(reversed(ids))
    assert len(versioned_store.log("history", limit=2)) == 2


def test_diff_reports_added_removed_and_changed(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("d", "main")
    versioned_store.put_object("d", "keep", b"1")
    versioned_store.put_object("d", "change", b"1")
    versioned_store.put_object("d", "remove", b"1")
    before = versioned_store.commit("d", "before").id
    versioned_store.put_object("d", "change", b"2")
    versioned_store.delete_object("d", "remove")
    versioned_store.put_object("d", "add", b"1")
    after = versioned_store.commit("d", "after").id
    assert [(e.path, e.type) for e in versioned_store.diff(before, after)] == [
        ("add", "added"),
        ("change", "changed"),
        ("remove", "removed"),
    ]


def test_tags_pin_a_commit_and_are_immutable(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("t", "main")
    commit = _commit_file(versioned_store, "t", "model.json", b"v1")
    assert versioned_store.create_tag("release-1", commit) == commit
    _commit_file(versioned_store, "t", "model.json", b"v2")
    assert versioned_store.list_tags()["release-1"] == commit
    assert versioned_store.get_object("release-1", "model.json") == b"v1"
    with pytest.raises(AlreadyExistsError):
        versioned_store.create_tag("release-1", "t")


def test_merge_brings_changes_and_conflicts_leave_destination_unchanged(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("left", "main")
    versioned_store.create_branch("right", "main")
    _commit_file(versioned_store, "left", "shared", b"left")
    _commit_file(versioned_store, "left", "only-left", b"l")
    head = versioned_store.merge("left", "main", "merge left", {"why": "test"})
    assert versioned_store.resolve_ref("main") == head
    assert versioned_store.get_object("main", "only-left") == b"l"

    _commit_file(versioned_store, "right", "shared", b"right")
    before = versioned_store.resolve_ref("main")
    with pytest.raises(ConflictError):
        versioned_store.merge("right", "main")
    assert versioned_store.resolve_ref("main") == before
    assert versioned_store.get_object("main", "shared") == b"left"


def test_transaction_merges_on_success_and_leaves_no_branch(versioned_store: VersionedStore) -> None:
    with versioned_store.transaction("dagster-run-asset") as tx:
        versioned_store.put_object(tx.branch, "tables/asset/2026-10-01.parquet", b"data")
        info = versioned_store.commit_into(tx, "asset [2026-10-01]", {"dagster.run_id": "run-1"})
    assert tx.merge_commit_id == versioned_store.resolve_ref("main")
    assert versioned_store.get_object("main", "tables/asset/2026-10-01.parquet") == b"data"
    assert versioned_store.get_object(info.id, "tables/asset/2026-10-01.parquet") == b"data"
    assert tx.branch not in versioned_store.list_branches()
    assert any(c.id == info.id for c in versioned_store.log("main", limit=10))


def test_failed_transaction_leaves_main_untouched_and_no_branch(versioned_store: VersionedStore) -> None:
    before = versioned_store.resolve_ref("main")
    with pytest.raises(RuntimeError, match="boom"), versioned_store.transaction("failing") as tx:
        versioned_store.put_object(tx.branch, "half-written", b"x")
        versioned_store.commit_into(tx, "partial")
        raise RuntimeError("boom")
    assert versioned_store.resolve_ref("main") == before
    assert all(not b.startswith("failing") for b in versioned_store.list_branches())
    with pytest.raises(NotFoundError):
        versioned_store.get_object("main", "half-written")


def test_object_uri_is_pinned_to_the_ref(versioned_store: VersionedStore) -> None:
    uri = versioned_store.object_uri("abc123", "tables/x/all.parquet")
    assert uri == f"lakefs://{versioned_store.repository}/abc123/tables/x/all.parquet"


def test_unknown_objects_and_refs_raise_not_found(versioned_store: VersionedStore) -> None:
    with pytest.raises(NotFoundError):
        versioned_store.get_object("main", "does/not/exist")
    with pytest.raises(NotFoundError):
        versioned_store.get_commit("no-such-branch")


def test_staged_deletes_hide_the_path_on_the_branch_but_not_at_earlier_commits(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("del", "main")
    kept = _commit_file(versioned_store, "del", "tables/a.parquet", b"a")
    versioned_store.delete_object("del", "tables/a.parquet")
    assert versioned_store.list_objects("del") == []
    assert versioned_store.get_object(kept, "tables/a.parquet") == b"a"
    versioned_store.delete_object("del", "never/there")  # deleting a missing path is not an error
    after = versioned_store.commit("del", "remove a").id
    with pytest.raises(NotFoundError):
        versioned_store.get_object(after, "tables/a.parquet")


def test_list_objects_filters_by_prefix_and_sorts(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("ls", "main")
    for path in ("b/2", "a/1", "b/1", "bb/3"):
        versioned_store.put_object("ls", path, path.encode())
    assert [s.path for s in versioned_store.list_objects("ls")] == ["a/1", "b/1", "b/2", "bb/3"]
    assert [s.path for s in versioned_store.list_objects("ls", prefix="b/")] == ["b/1", "b/2"]
    stat = versioned_store.list_objects("ls", prefix="a/")[0]
    assert stat.size_bytes == 3 and stat.checksum


def test_unknown_refs_are_not_found_everywhere(versioned_store: VersionedStore) -> None:
    with pytest.raises(NotFoundError):
        versioned_store.delete_branch("no-such-branch")
    with pytest.raises(NotFoundError):
        versioned_store.create_tag("t-missing", "no-such-ref")
    with pytest.raises(NotFoundError):
        versioned_store.log("no-such-ref")
    with pytest.raises(NotFoundError):
        versioned_store.list_objects("no-such-ref")
    with pytest.raises(NotFoundError):
        versioned_store.put_object("no-such-branch", "x", b"x")


def test_merge_of_nothing_new_raises_and_changes_nothing(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("idle", "main")
    before = versioned_store.resolve_ref("main")
    with pytest.raises(NoChangesError):
        versioned_store.merge("idle", "main")
    assert versioned_store.resolve_ref("main") == before


def test_merge_creates_a_merge_commit_with_both_parents_and_log_follows_both(versioned_store: VersionedStore) -> None:
    main_head = versioned_store.resolve_ref("main")
    versioned_store.create_branch("feature", "main")
    feature_commit = _commit_file(versioned_store, "feature", "f", b"f")
    merged = versioned_store.merge("feature", "main", "merge feature", {"riverbed.source_branch": "feature"})
    info = versioned_store.get_commit(merged)
    assert info.parents == (main_head, feature_commit)
    assert info.metadata["riverbed.source_branch"] == "feature"
    log_ids = [c.id for c in versioned_store.log("main", limit=10)]
    assert log_ids[0] == merged
    assert {feature_commit, main_head} <= set(log_ids)
    assert log_ids.index(feature_commit) < log_ids.index(main_head)


def test_merge_combines_disjoint_changes_from_both_sides(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("base", "main")
    _commit_file(versioned_store, "base", "shared", b"0")
    _commit_file(versioned_store, "base", "doomed", b"0")
    versioned_store.merge("base", "main")
    versioned_store.create_branch("mine", "main")
    versioned_store.create_branch("theirs", "main")
    _commit_file(versioned_store, "mine", "mine", b"m")
    versioned_store.delete_object("theirs", "doomed")
    versioned_store.put_object("theirs", "shared", b"1")
    versioned_store.commit("theirs", "theirs")
    versioned_store.merge("theirs", "main")
    versioned_store.merge("mine", "main")
    assert {s.path: versioned_store.get_object("main", s.path) for s in versioned_store.list_objects("main")} == {
        "mine": b"m",
        "shared": b"1",
    }


def test_merge_into_a_dirty_branch_is_refused(versioned_store: VersionedStore) -> None:
    versioned_store.create_branch("src", "main")
    versioned_store.create_branch("dirty", "main")
    _commit_file(versioned_store, "src", "a", b"a")
    versioned_store.put_object("dirty", "staged-only", b"s")
    before = versioned_store.resolve_ref("dirty")
    with pytest.raises(VersionedStoreError):
        versioned_store.merge("src", "dirty")
    assert versioned_store.resolve_ref("dirty") == before
    assert versioned_store.get_object("dirty", "staged-only") == b"s"


def test_interleaved_transactions_on_different_paths_both_land(versioned_store: VersionedStore) -> None:
    with versioned_store.transaction("first") as first:
        versioned_store.put_object(first.branch, "tables/first.parquet", b"1")
        versioned_store.commit_into(first, "first")
        with versioned_store.transaction("second") as second:
            versioned_store.put_object(second.branch, "tables/second.parquet", b"2")
            versioned_store.commit_into(second, "second")
    assert versioned_store.get_object("main", "tables/first.parquet") == b"1"
    assert versioned_store.get_object("main", "tables/second.parquet") == b"2"
    log_ids = {c.id for c in versioned_store.log("main", limit=20)}
    assert {first.commits[0].id, second.commits[0].id, first.merge_commit_id, second.merge_commit_id} <= log_ids


def test_interleaved_transactions_on_the_same_path_conflict_and_the_loser_leaves_no_trace(
    versioned_store: VersionedStore,
) -> None:
    with pytest.raises(ConflictError), versioned_store.transaction("loser") as loser:
        versioned_store.put_object(loser.branch, "model.json", b"loser")
        versioned_store.commit_into(loser, "loser")
        with versioned_store.transaction("winner") as winner:
            versioned_store.put_object(winner.branch, "model.json", b"winner")
            versioned_store.commit_into(winner, "winner")
    assert versioned_store.get_object("main", "model.json") == b"winner"
    assert versioned_store.list_branches() == [versioned_store.main_branch]


def test_a_transaction_without_commits_changes_nothing(versioned_store: VersionedStore) -> None:
    before = versioned_store.resolve_ref("main")
    with versioned_store.transaction("idle") as tx:
        pass
    assert tx.merge_commit_id is None
    assert versioned_store.resolve_ref("main") == before
    assert versioned_store.list_branches() == [versioned_store.main_branch]
