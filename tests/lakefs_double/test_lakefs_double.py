"""The double against lakeFS's published API: status codes, bodies and behaviour a client depends on."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import lakefs
import pytest

from tests.lakefs_double import LakeFSDouble


@pytest.fixture
def repo(http: httpx.Client) -> str:
    name = f"repo-{uuid.uuid4().hex[:10]}"
    response = http.post("/repositories", json={"name": name, "storage_namespace": f"local://double/{name}"})
    assert response.status_code == 201
    return name


def upload(http: httpx.Client, repo: str, branch: str, path: str, data: bytes) -> httpx.Response:
    return http.post(
        f"/repositories/{repo}/branches/{branch}/objects",
        params={"path": path},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def commit(http: httpx.Client, repo: str, branch: str, message: str) -> str:
    response = http.post(f"/repositories/{repo}/branches/{branch}/commits", json={"message": message})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_basic_auth_is_required_except_for_health_and_setup_state(double: LakeFSDouble) -> None:
    with httpx.Client(base_url=double.api_url) as anonymous:
        assert anonymous.get("/healthcheck").status_code == 204
        assert anonymous.get("/setup_lakefs").json()["state"] == "initialized"
        response = anonymous.get("/repositories")
        assert response.status_code == 401
        assert response.json() == {"message": "error authenticating request"}
        wrong = anonymous.get("/repositories", auth=(double.access_key_id, "wrong"))
        assert wrong.status_code == 401


def test_errors_are_json_messages(http: httpx.Client, repo: str) -> None:
    # the server's router (its OpenAPI document) answers before authentication, with 400
    unknown = http.get("/no-such-route")
    assert (unknown.status_code, unknown.json()) == (400, {"message": "no matching operation was found"})
    wrong_method = httpx.patch(f"{http.base_url}repositories/{repo}")
    assert (wrong_method.status_code, wrong_method.json()) == (400, {"message": "method not allowed"})
    not_served = http.post(f"/repositories/{repo}/branches/main/cherry-pick", json={"ref": "main"})
    assert not_served.status_code == 501 and "cherryPick is not implemented" in not_served.json()["message"]
    too_many = http.get(f"/repositories/{repo}/branches", params={"amount": 5000})
    assert too_many.status_code == 400 and "amount" in too_many.json()["message"]
    no_path = http.get(f"/repositories/{repo}/refs/main/objects")
    assert no_path.status_code == 400
    bad_name = http.post("/repositories", json={"name": "No_Such", "storage_namespace": "local://x/y"})
    # RepositoryCreation.name carries the id pattern in the document: the request validator refuses it first.
    assert bad_name.status_code == 400
    assert "RepositoryCreation).name: must validate the regular expression" in bad_name.json()["message"]
    wrong_scheme = http.post("/repositories", json={"name": "abc-def", "storage_namespace": "s3://bucket/x"})
    assert wrong_scheme.status_code == 400
    assert http.get("/repositories/no-such-repo").json() == {"message": "repository not found"}


def test_create_branch_answers_the_commit_id_as_text(http: httpx.Client, repo: str) -> None:
    head = http.get(f"/repositories/{repo}/branches/main").json()["commit_id"]
    response = http.post(f"/repositories/{repo}/branches", json={"name": "feature", "source": "main"})
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == head
    again = http.post(f"/repositories/{repo}/branches", json={"name": "feature", "source": "main"})
    assert again.status_code == 409


def test_multipart_and_raw_uploads_with_user_metadata(double: LakeFSDouble, http: httpx.Client, repo: str) -> None:
    multipart = http.post(
        f"/repositories/{repo}/branches/main/objects",
        params={"path": "m.csv"},
        files={"content": ("m.csv", b"a,b\n", "text/csv")},
    )
    assert multipart.status_code == 201
    assert multipart.json()["content_type"] == "text/csv"
    raw = http.post(
        f"/repositories/{repo}/branches/main/objects",
        params={"path": "r.bin"},
        content=b"raw",
        headers={"Content-Type": "application/octet-stream", "X-Lakefs-Meta-Owner": "riverbed"},
    )
    stats = raw.json()
    assert raw.status_code == 201
    assert (stats["size_bytes"], stats["checksum"], stats["metadata"]) == (
        3,
        hashlib.md5(b"raw", usedforsecurity=False).hexdigest(),  # the local blockstore's ETag
        {"owner": "riverbed"},
    )
    client = lakefs.Client(host=double.url, username=double.access_key_id, password=double.secret_access_key)
    stored = lakefs.Repository(repo, client=client).ref("main").object("r.bin")
    assert stored.stat().metadata == {"owner": "riverbed"}
    assert stored.reader(pre_sign=False).read() == b"raw"
    exclusive = http.post(
        f"/repositories/{repo}/branches/main/objects",
        params={"path": "r.bin"},
        content=b"again",
        headers={"If-None-Match": "*"},  # no Content-Type: the server does not validate this body (raw bytes)
    )
    assert exclusive.status_code == 412


def test_range_reads(http: httpx.Client, repo: str) -> None:
    upload(http, repo, "main", "digits", b"0123456789")
    partial = http.get(
        f"/repositories/{repo}/refs/main/objects", params={"path": "digits"}, headers={"Range": "bytes=2-4"}
    )
    assert partial.status_code == 206
    assert partial.content == b"234"
    assert partial.headers["content-range"] == "bytes 2-4/10"
    beyond = http.get(
        f"/repositories/{repo}/refs/main/objects", params={"path": "digits"}, headers={"Range": "bytes=20-"}
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */10"


def test_listing_pagination_and_common_prefixes(http: httpx.Client, repo: str) -> None:
    for path in ("a/1", "a/2", "b/1", "c"):
        upload(http, repo, "main", path, b"x")
    first = http.get(f"/repositories/{repo}/refs/main/objects/ls", params={"amount": 2}).json()
    assert [r["path"] for r in first["results"]] == ["a/1", "a/2"]
    assert first["pagination"] == {"has_more": True, "next_offset": "a/2", "results": 2, "max_per_page": 1000}
    rest = http.get(f"/repositories/{repo}/refs/main/objects/ls", params={"amount": 2, "after": "a/2"}).json()
    assert [r["path"] for r in rest["results"]] == ["b/1", "c"]
    assert rest["pagination"]["has_more"] is False and rest["pagination"]["next_offset"] == ""
    grouped = http.get(f"/repositories/{repo}/refs/main/objects/ls", params={"delimiter": "/"}).json()
    assert [(r["path"], r["path_type"]) for r in grouped["results"]] == [
        ("a/", "common_prefix"),
        ("b/", "common_prefix"),
        ("c", "object"),
    ]


def test_staging_commit_and_ref_expressions(http: httpx.Client, repo: str) -> None:
    upload(http, repo, "main", "f", b"one")
    first = commit(http, repo, "main", "one")
    upload(http, repo, "main", "f", b"two")
    objects = f"/repositories/{repo}/refs/{{}}/objects"
    assert http.get(objects.format("main"), params={"path": "f"}).content == b"two"  # staged
    assert http.get(objects.format("main@"), params={"path": "f"}).content == b"one"  # committed only
    second = commit(http, repo, "main", "two")
    assert http.get(objects.format("main~1"), params={"path": "f"}).content == b"one"
    assert http.get(f"/repositories/{repo}/commits/{second[:12]}").json()["id"] == second
    log = http.get(f"/repositories/{repo}/refs/main/commits", params={"amount": 1}).json()
    assert [c["id"] for c in log["results"]] == [second]
    assert log["pagination"]["next_offset"] == second
    older = http.get(f"/repositories/{repo}/refs/main/commits", params={"after": second}).json()
    assert [c["message"] for c in older["results"]] == ["one", "Repository created"]
    assert older["results"][0]["id"] == first


def test_identical_staging_is_no_change_and_stays_dirty(http: httpx.Client, repo: str) -> None:
    upload(http, repo, "main", "f", b"same")
    commit(http, repo, "main", "first")
    http.post(f"/repositories/{repo}/branches", json={"name": "side", "source": "main"})
    upload(http, repo, "main", "f", b"same")
    refused = http.post(f"/repositories/{repo}/branches/main/commits", json={"message": "again"})
    assert refused.status_code == 400 and "no changes" in refused.json()["message"]
    upload(http, repo, "side", "g", b"g")
    commit(http, repo, "side", "g")
    dirty = http.post(f"/repositories/{repo}/refs/side/merge/main", json={})
    assert dirty.status_code == 400 and "dirty branch" in dirty.json()["message"]


def test_merge_conflicts_and_diff_types(http: httpx.Client, repo: str) -> None:
    upload(http, repo, "main", "shared", b"base")
    upload(http, repo, "main", "left-only", b"base")
    commit(http, repo, "main", "base")
    http.post(f"/repositories/{repo}/branches", json={"name": "side", "source": "main"})
    upload(http, repo, "side", "shared", b"side")
    upload(http, repo, "side", "new", b"new")
    commit(http, repo, "side", "side")
    upload(http, repo, "main", "shared", b"main")
    upload(http, repo, "main", "left-only", b"main")
    commit(http, repo, "main", "main")
    diff = f"/repositories/{repo}/refs/main/diff/side"
    three_dot = http.get(diff).json()["results"]
    assert [(d["path"], d["type"]) for d in three_dot] == [("new", "added"), ("shared", "conflict")]
    two_dot = http.get(diff, params={"type": "two_dot"}).json()["results"]
    assert [(d["path"], d["type"]) for d in two_dot] == [
        ("left-only", "changed"),
        ("new", "added"),
        ("shared", "changed"),
    ]
    conflict = http.post(f"/repositories/{repo}/refs/side/merge/main", json={})
    assert conflict.status_code == 409 and conflict.json() == {"reference": ""}
    resolved = http.post(f"/repositories/{repo}/refs/side/merge/main", json={"strategy": "source-wins"})
    assert resolved.status_code == 200
    merged = http.get(f"/repositories/{repo}/commits/{resolved.json()['reference']}").json()
    assert merged["metadata"] == {".lakefs.merge.strategy": "source-wins"}
    assert merged["message"] == "Merge 'side' into 'main'"
    read = http.get(f"/repositories/{repo}/refs/main/objects", params={"path": "shared"})
    assert read.content == b"side"


def test_branch_and_object_deletion_rules(http: httpx.Client, repo: str) -> None:
    main = http.delete(f"/repositories/{repo}/branches/main")
    assert main.status_code == 403 and main.json() == {"message": "cannot delete repository default branch"}
    missing_object = http.delete(f"/repositories/{repo}/branches/main/objects", params={"path": "never-there"})
    assert missing_object.status_code == 204
    assert http.delete(f"/repositories/{repo}/branches/nope").status_code == 404


def test_storage_namespace_cannot_be_reused_after_repository_deletion(http: httpx.Client, repo: str) -> None:
    namespace = http.get(f"/repositories/{repo}").json()["storage_namespace"]
    assert http.delete(f"/repositories/{repo}").status_code == 204
    again = http.post("/repositories", json={"name": repo, "storage_namespace": namespace})
    assert again.status_code == 400 and "already in use" in again.json()["message"]
