"""The double's contract validation can fail: bad requests get lakeFS's 400, bad responses are caught and recorded."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import lakefs_sdk
import pytest
from lakefs_sdk.models.commit_creation import CommitCreation
from lakefs_sdk.models.commit_list import CommitList

from resources.versioned_store import StoreUnavailableError
from tests.lakefs_double import LakeFSDouble, app, run_lakefs_double
from tests.lakefs_double.contract import SDK_VERSION, ContractError, check_model, load_contract, nullable_fields
from tests.lakefs_double.state import ApiError, LakeFSState
from tests.resources.lakefs_fixture import make_lakefs_store


@pytest.fixture
def repo(http: httpx.Client) -> str:
    name = f"repo-{uuid.uuid4().hex[:10]}"
    response = http.post("/repositories", json={"name": name, "storage_namespace": f"local://contract/{name}"})
    assert response.status_code == 201, response.text
    upload = http.post(
        f"/repositories/{name}/branches/main/objects",
        params={"path": "a.txt"},
        content=b"a",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert upload.status_code == 201, upload.text
    return name


def _commit_count(double: LakeFSDouble, repo: str) -> int:
    return len(double.state.repositories[repo].commits)


def test_the_contract_is_the_pinned_sdk() -> None:
    contract = load_contract()
    assert lakefs_sdk.__version__ == SDK_VERSION == "1.84.0"
    commit = contract.by_id["commit"]
    assert (commit.method, commit.path) == ("POST", "/repositories/{repository}/branches/{branch}/commits")
    assert commit.body_schema is CommitCreation and commit.body_required
    assert commit.responses[201] == "Commit" and commit.responses[412] == "Error"
    log = contract.by_id["logCommits"]
    assert {p.name for p in log.parameters if p.location == "query"} >= {"after", "amount", "limit", "stop_at"}
    assert contract.match("GET", "/api/v1/repositories/r/refs/main/objects/ls")[0].operation_id == "listObjects"  # type: ignore[index]
    assert contract.match("GET", "/api/v1/repositories/r/refs/main/objects")[0].operation_id == "getObject"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"message": "m", "surprise": 1}, "request body (CommitCreation).surprise: unknown field"),
        (
            {"metadata": {"k": "v"}},
            "request body (CommitCreation).message: required field of CommitCreation is missing",
        ),
        ({"message": 5}, "request body (CommitCreation).message: must be a string, got integer"),
        ({"message": "m", "metadata": {"k": 1}}, "request body (CommitCreation).metadata.k: must be a string"),
        ({"message": "m", "allow_empty": "yes"}, "request body (CommitCreation).allow_empty: must be a boolean"),
        ({"message": "m", "date": None}, "request body (CommitCreation).date: must not be null"),
        ({"message": "m", "date": 1_700_000_000, "force": False}, None),  # optional fields may be given
    ],
)
def test_request_bodies_are_held_to_their_schema(
    double: LakeFSDouble, http: httpx.Client, repo: str, body: dict[str, Any], problem: str | None
) -> None:
    before = _commit_count(double, repo)
    response = http.post(f"/repositories/{repo}/branches/main/commits", json=body)
    if problem is None:
        assert response.status_code == 201, response.text
        assert _commit_count(double, repo) == before + 1
        return
    assert response.status_code == 400
    assert set(response.json()) == {"message"}  # lakeFS's Error body
    assert problem in response.json()["message"]
    assert _commit_count(double, repo) == before  # refused before the handler ran


def test_nested_unknown_fields_and_enums_are_refused(http: httpx.Client, repo: str) -> None:
    reset = http.put(f"/repositories/{repo}/branches/main", json={"type": "everything"})
    assert reset.status_code == 400 and "ResetCreation).type: must be one of enum values" in reset.json()["message"]
    merge = http.post(f"/repositories/{repo}/refs/main/merge/main", json={"strategy": "dest-wins", "extra": True})
    assert merge.status_code == 400 and "Merge).extra: unknown field" in merge.json()["message"]


def test_parameters_are_held_to_the_operation(http: httpx.Client, repo: str) -> None:
    unknown = http.get(f"/repositories/{repo}/branches", params={"limit": "5"})
    assert unknown.status_code == 400
    assert "query parameter 'limit': not a parameter of listBranches" in unknown.json()["message"]
    too_many = http.get(f"/repositories/{repo}/branches", params={"amount": "1001"})
    assert too_many.status_code == 400 and "query parameter 'amount': must be <= 1000" in too_many.json()["message"]
    not_int = http.get(f"/repositories/{repo}/branches", params={"amount": "ten"})
    assert "query parameter 'amount': value 'ten' is not an integer" in not_int.json()["message"]
    not_bool = http.get(f"/repositories/{repo}/refs/main/commits", params={"limit": "maybe"})
    assert "query parameter 'limit': value 'maybe' is not a boolean" in not_bool.json()["message"]
    no_path = http.get(f"/repositories/{repo}/refs/main/objects/stat")
    assert "query parameter 'path': required by statObject, missing" in no_path.json()["message"]
    wrong_type = http.post(f"/repositories/{repo}/tags", content=b"id=x", headers={"Content-Type": "text/plain"})
    assert "createTag accepts ['application/json']" in wrong_type.json()["message"]
    no_body = http.post(f"/repositories/{repo}/tags")
    assert "request body: required by createTag (TagCreation), missing" in no_body.json()["message"]


def test_a_malformed_response_is_caught_recorded_and_never_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_commit(commit: Any) -> dict[str, Any]:
        body = app_commit_json(commit)
        del body["committer"]
        body["surprise"] = "not in the schema"
        return body

    app_commit_json = app.commit_json
    monkeypatch.setattr(app, "commit_json", broken_commit)
    with (
        pytest.raises(AssertionError, match="broke the published API 1 time") as failed,
        run_lakefs_double() as broken,
    ):
        store = make_lakefs_store(broken)
        store.ensure_repository()
        with pytest.raises(StoreUnavailableError, match="contract violation"):
            store.get_commit("main")
        (violation,) = broken.violations.snapshot()
        assert (violation.method, violation.status) == ("GET", 200)
        assert violation.path.endswith("/commits/main")
        assert "Commit.surprise: unknown field (not a property of Commit)" in violation.problem
        assert "Commit.committer: required field of Commit is missing" in violation.problem
    assert "response 200 of getCommit" in str(failed.value)


def test_an_undeclared_status_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def conflicting_tag(self: LakeFSState, repo: Any, tag: str) -> str:
        raise ApiError(409, "getTag declares no 409")

    monkeypatch.setattr(LakeFSState, "tag", conflicting_tag)
    with pytest.raises(AssertionError, match="status 409 is not declared"), run_lakefs_double() as broken:
        store = make_lakefs_store(broken)
        store.ensure_repository()
        auth = (broken.access_key_id, broken.secret_access_key)
        response = httpx.get(f"{broken.api_url}/repositories/{store.repository}/tags/v1", auth=auth)
        assert response.status_code == 500
        assert "lakeFS API double contract violation" in response.json()["message"]


def test_nullable_comes_from_the_document() -> None:
    from lakefs_sdk.models.commit import Commit
    from lakefs_sdk.models.underlying_object_properties import UnderlyingObjectProperties

    assert nullable_fields(UnderlyingObjectProperties) == {"storage_class"}  # nullable: true in swagger.yml
    assert nullable_fields(Commit) == frozenset()
    assert check_model({"storage_class": None}, UnderlyingObjectProperties, "P") == []
    problems = check_model({"metadata": None, "id": "c"}, Commit, "C")
    assert "C.metadata: must not be null (not nullable in Commit)" in problems


def test_listing_schemas_are_checked_item_by_item() -> None:
    page = {
        "pagination": {"has_more": False, "next_offset": "", "results": 1, "max_per_page": 1000},
        "results": [
            {
                "id": "c1",
                "parents": [],
                "committer": "",
                "message": "m",
                "creation_date": "yesterday",
                "meta_range_id": "",
                "stray": 1,
            }
        ],
    }
    problems = check_model(page, CommitList, "CommitList")
    assert problems == [
        "CommitList.results[0].stray: unknown field (not a property of Commit)",
        "CommitList.results[0].creation_date: must be an integer, got string",
    ]
    with pytest.raises(ContractError, match="status 418 is not declared"):
        load_contract().check_response(load_contract().by_id["getCommit"], "GET", 418, "application/json", b"{}")


def test_the_enforced_contract_is_served_as_openapi(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["info"]["version"] == "1.84.0"
    commit = document["paths"]["/repositories/{repository}/branches/{branch}/commits"]["post"]
    assert commit["operationId"] == "commit"
    assert commit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CommitCreation"
    }
    assert set(commit["responses"]) >= {"201", "400", "401", "404", "default"}
    schemas = document["components"]["schemas"]
    assert schemas["CommitCreation"]["required"] == ["message"]
    assert set(schemas["Error"]["properties"]) == {"message"}
    served = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert {"uploadObject", "getObject", "headObject", "mergeIntoBranch", "logCommits", "diffRefs"} <= served
    assert len(served) == 32


def test_every_exchange_of_a_store_is_checked(double: LakeFSDouble) -> None:
    before = double.violations.checked
    store = make_lakefs_store(double)
    store.ensure_repository()  # getRepository (404), createRepository
    with store.transaction("checked") as tx:  # createBranch, (uploadObject, statObject), commit, merge, deleteBranch
        store.put_object(tx.branch, "x.txt", b"x")
        store.commit_into(tx, "x")
    assert store.get_object("main", "x.txt") == b"x"  # getObject
    assert double.violations.checked - before == 9
