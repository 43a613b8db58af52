"""The gateway as users meet it: a real uvicorn process in front of a real MLServer, logging to real PostgreSQL."""

import io
import math
import threading
import time

import httpx
import pandas as pd
import psycopg
import pytest

from resources.mlserver_admin import MLServerAdmin
from riverbed.cli.stack import ServingStack
from riverbed.model_repository import POINTER_POLL_SECONDS, ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    api_records,
    install_trained_model,
    salary_band_features,
    salary_band_spec,
)

pytestmark = pytest.mark.slow

SPEC = salary_band_spec()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-home")
    name, dsn = create_database()
    settings = RiverbedSettings(home=home, inference_log_dsn=dsn, model_repository=home / "repository")
    repository = ModelRepository(settings.model_repository_dir)
    install_trained_model(repository, 1, trees=30, folder=home / "trained")
    serving = ServingStack(settings, ["salary_band"], ephemeral_ports=True)
    serving.start()
    try:
        yield serving
    finally:
        serving.stop()
        drop_database(name)


@pytest.fixture(scope="module")
def keys(stack: ServingStack) -> dict[str, str]:
    assert stack.dsn
    return {
        "predict": create_api_key(stack.dsn, ["predict"], "app").key,
        "audit": create_api_key(stack.dsn, ["audit"], "auditor").key,
        "both": create_api_key(stack.dsn, ["predict", "audit"], "ops").key,
    }


@pytest.fixture(scope="module")
def client(stack: ServingStack):
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
        http.riverbed_settings = stack.settings  # type: ignore[attr-defined]
        yield http


def stack_settings(client: httpx.Client) -> RiverbedSettings:
    return client.riverbed_settings  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return api_records(salary_band_features(200), SPEC)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_single_prediction_is_explained_exactly_and_on_record(client, keys, records) -> None:
    response = client.post("/v1/salary_band/predict", json={**records[0], "top_k": 3}, headers=_auth(keys["predict"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == body["request_id"]
    assert body["model"]["version"] == 1 and body["model"]["name"] == "riverbed-salary_band"
    (prediction,) = body["predictions"]
    assert prediction["label"] in SPEC.target.classes
    probabilities = prediction["probabilities"]
    assert set(probabilities) == set(SPEC.target.classes)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-5)
    explanation = prediction["explanation"]
    assert set(explanation["contributions"]) == set(SPEC.feature_names)
    positive = probabilities[SPEC.target.positive_class]
    margin = math.log(positive / (1 - positive))
    assert math.isclose(explanation["base_value"] + sum(explanation["contributions"].values()), margin, abs_tol=1e-4)
    top = explanation["top_features"]
    assert len(top) == 3
    magnitudes = [abs(t["contribution"]) for t in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert magnitudes[0] == max(abs(v) for v in explanation["contributions"].values())
    assert top[0]["value"] == records[0][top[0]["feature"]]

    audit = client.get(f"/v1/audit/predictions/{body['request_id']}", headers=_auth(keys["audit"]))
    assert audit.status_code == 200, audit.text
    row, lineage = audit.json()["request"], audit.json()["lineage"]
    assert row["status"] == "ok" and row["http_status"] == 200
    assert row["outputs"][0]["label"] == prediction["label"]
    assert row["inputs"][0]["age"] == records[0]["age"]
    deployed = ModelRepository(stack_settings(client).model_repository_dir).read_deployment("salary_band")
    assert deployed is not None and deployed.version == 1
    assert lineage["model"] == {"name": "riverbed-salary_band", "version": "1"}
    assert lineage["mlflow_run_id"] == deployed.mlflow_run_id == row["mlflow_run_id"]
    assert lineage["dagster_run_id"] == deployed.dagster_run_id
    assert lineage["training_set_commit_id"] == deployed.training_set_commit_id
    assert lineage["data_commit_ids"] == deployed.data_commit_ids and len(deployed.data_commit_ids) == 2


def test_batch_keeps_sample_ids_and_can_skip_explanations(client, keys, records) -> None:
    batch = [{**record, "sample_id": f"s-{i}"} for i, record in enumerate(records[:50])]
    response = client.post(
        "/v1/salary_band/predict", json={"records": batch, "explain": False}, headers=_auth(keys["both"])
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["sample_id"] for p in predictions] == [f"s-{i}" for i in range(50)]
    assert all(p["explanation"] is None for p in predictions)
    explained = client.post("/v1/salary_band/predict", json={"records": batch[:5]}, headers=_auth(keys["both"]))
    assert [p["label"] for p in explained.json()["predictions"]] == [p["label"] for p in predictions[:5]]


def test_invalid_records_get_422_naming_record_field_value_and_rule(client, keys, records) -> None:
    bad = [records[0], {**records[1], "age": 300, "sex": "robot"}, {"age": 40}]
    response = client.post("/v1/salary_band/predict", json={"records": bad}, headers=_auth(keys["both"]))
    assert response.status_code == 422
    body = response.json()
    problems = {(p["record"], p["field"]): p for p in body["problems"]}
    assert problems[(1, "age")]["value"] == 300 and "100" in problems[(1, "age")]["rule"]
    assert problems[(1, "sex")]["value"] == "robot" and "Female" in problems[(1, "sex")]["rule"]
    assert problems[(2, "education")]["rule"] == "is required"
    assert (0, "age") not in problems
    row = client.get(f"/v1/audit/predictions/{body['request_id']}", headers=_auth(keys["audit"])).json()["request"]
    assert row["status"] == "rejected" and row["http_status"] == 422 and row["error"]


@pytest.mark.parametrize(
    ("path", "body", "key", "status"),
    [
        ("/v1/salary_band/predict", "oversized", "predict", 413),
        ("/v1/no_such_dataset/predict", "one", "predict", 404),
        ("/v1/salary_band/predict", "one", None, 401),
        ("/v1/salary_band/predict", "one", "rb_wrong_key", 401),
        ("/v1/salary_band/predict", "one", "audit", 403),
        ("/v1/salary_band/predict", "not json", "predict", 422),
    ],
)
def test_bad_requests_get_plain_errors_never_500(client, keys, records, path, body, key, status) -> None:
    payload = {"oversized": {"records": [records[0]] * 1001}, "one": records[0]}.get(body)
    headers = _auth(keys.get(key, key)) if key else {}
    if body == "not json":
        response = client.post(path, content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    else:
        response = client.post(path, json=payload, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert error["error"] and "Traceback" not in response.text


def test_audit_routes_need_the_audit_role(client, keys) -> None:
    assert client.get("/v1/audit/predictions", headers=_auth(keys["predict"])).status_code == 403
    assert client.get("/v1/audit/predictions").status_code == 401


def test_models_lists_the_deployment_with_lineage(stack, client, keys) -> None:
    models = client.get("/v1/models", headers=_auth(keys["predict"])).json()["models"]
    (model,) = [m for m in models if m["dataset"] == "salary_band"]
    deployed = ModelRepository(stack.settings.model_repository_dir).read_deployment("salary_band")
    assert deployed is not None and model["version"] == deployed.version == 1
    assert model["mlflow_run_id"] == deployed.mlflow_run_id
    assert model["data_commit_ids"] == deployed.data_commit_ids


def test_keyset_pages_return_every_request_once(client, keys, records) -> None:
    ids = set()
    for record in records[:7]:
        response = client.post("/v1/salary_band/predict", json=record, headers=_auth(keys["predict"]))
        ids.add(response.headers["X-Request-ID"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"dataset": "salary_band", "status": "ok", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/audit/predictions", params=params, headers=_auth(keys["audit"])).json()
        seen.extend(row["request_id"] for row in page["predictions"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert ids <= set(seen)
    bad = client.get(
        "/v1/audit/predictions",
        params={"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        headers=_auth(keys["audit"]),
    )
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "since"


def test_export_streams_csv_and_parquet(client, keys) -> None:
    listed = client.get(
        "/v1/audit/predictions", params={"status": "ok", "limit": 1000}, headers=_auth(keys["audit"])
    ).json()
    csv = client.get("/v1/audit/export", params={"format": "csv", "status": "ok"}, headers=_auth(keys["audit"]))
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(csv.text))
    assert set(frame["request_id"]) == {row["request_id"] for row in listed["predictions"]}
    parquet = client.get("/v1/audit/export", params={"format": "parquet", "status": "ok"}, headers=_auth(keys["audit"]))
    assert parquet.status_code == 200
    assert set(pd.read_parquet(io.BytesIO(parquet.content))["request_id"]) == set(frame["request_id"])


def test_health_readiness_metrics_and_docs(stack, client, keys, records) -> None:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:  # what the monitoring asset writes
        for chunk, (value, alert) in enumerate([(0.02, False), (0.31, True)]):
            conn.execute(
                "insert into monitoring_results (dataset, day, chunk, kind, name, value, alert) values "
                "('salary_band', current_date, %s, 'univariate_drift', 'age', %s, %s), "
                "('salary_band', current_date, %s, 'cbpe', 'roc_auc', %s, false)",
                (chunk, value, alert, chunk, 0.9 - chunk / 10),
            )
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["salary_band"]["ready"] is True
    client.post("/v1/salary_band/predict", json=records[0], headers=_auth(keys["predict"]))
    metrics = client.get("/metrics").text
    assert 'riverbed_gateway_requests_total{route="/v1/salary_band/predict",status="200"}' in metrics
    assert 'riverbed_predictions_total{dataset="salary_band"' in metrics
    assert "riverbed_audit_write_seconds_bucket" in metrics and "riverbed_audit_spool_depth 0.0" in metrics
    assert 'riverbed_monitoring_drift_alert{dataset="salary_band",feature="age"} 1.0' in metrics  # latest chunk
    assert 'riverbed_monitoring_drift{dataset="salary_band",feature="age"} 0.31' in metrics
    assert 'riverbed_monitoring_estimated_performance{dataset="salary_band",metric="roc_auc"} 0.8' in metrics
    document = client.get("/openapi.json").json()
    record = document["components"]["schemas"]["SalaryBandRecord"]
    assert record["properties"]["age"]["minimum"] == 17 and record["properties"]["age"]["maximum"] == 100
    assert "Bachelors" in str(record["properties"]["education"])
    assert client.get("/docs").status_code == 200


def test_hot_swap_to_a_new_version_fails_no_request(stack, client, keys, records) -> None:
    repository = ModelRepository(stack.settings.model_repository_dir)
    v2 = install_trained_model(repository, 2, trees=20, folder=stack.settings.home / "trained", point=False)
    outcomes: list[tuple[int, int | None]] = []
    per_thread: list[list[int | None]] = [[] for _ in range(3)]
    stop = threading.Event()

    def fire(seen: list[int | None]) -> None:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                response = http.post(
                    "/v1/salary_band/predict", json=records[i % len(records)], headers=_auth(keys["predict"])
                )
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                outcomes.append((response.status_code, version))
                seen.append(version)
                i += 1

    threads = [threading.Thread(target=fire, args=(seen,)) for seen in per_thread]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    with MLServerAdmin(stack.mlserver_url) as admin:
        admin.load(v2.served_model_name)
        admin.wait_ready(v2.served_model_name)
        repository.set_deployment(v2.model_copy(update={"previous_version": 1}))
        time.sleep(2 * POINTER_POLL_SECONDS + 0.5)
        admin.unload("salary_band-v1")
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = [status for status, _ in outcomes]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    versions = [version for _, version in outcomes]
    assert versions[0] == 1 and versions[-1] == 2
    assert versions.index(2) > 0
    for seen in per_thread:  # once a client has been served v2, it is never served v1 again
        assert seen == sorted(seen), seen


def test_no_2xx_leaves_before_its_row_commits(stack, client, keys, records) -> None:
    """Hold the chain-head lock: the request must not be answered until the lock is released and its row committed."""
    answered: dict[str, httpx.Response] = {}

    def call() -> None:
        answered["response"] = client.post("/v1/salary_band/predict", json=records[3], headers=_auth(keys["predict"]))

    assert stack.dsn
    with psycopg.connect(stack.dsn) as holder:
        holder.execute("select seq from inference_log_chain_head where id for update")
        before = holder.execute("select count(*) from inference_log").fetchone()
        worker = threading.Thread(target=call)
        worker.start()
        worker.join(timeout=2.0)
        assert worker.is_alive() and "response" not in answered  # no answer while the row cannot commit
        holder.rollback()  # releases the lock
    worker.join(timeout=30)
    response = answered["response"]
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Request-ID"]
    with psycopg.connect(stack.dsn) as conn:
        row = conn.execute("select status, http_status from inference_log where request_id = %s", (request_id,))
        assert row.fetchone() == ("ok", 200)
        after = conn.execute("select count(*) from inference_log").fetchone()
    assert before is not None and after is not None and after[0] == before[0] + 1


def test_hot_swap_under_explained_1000_row_batches_fails_nothing(stack, client, keys, records) -> None:
    repository = ModelRepository(stack.settings.model_repository_dir)
    current = repository.read_deployment("salary_band")
    assert current is not None
    new_version = current.version + 1
    new = install_trained_model(repository, new_version, trees=25, folder=stack.settings.home / "trained", point=False)
    batch = {"records": [records[i % len(records)] for i in range(1000)], "explain": True}
    per_thread: list[list[tuple[int, int | None]]] = [[] for _ in range(2)]
    stop = threading.Event()

    def fire(seen: list[tuple[int, int | None]]) -> None:
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/v1/salary_band/predict", json=batch, headers=_auth(keys["predict"]))
                ok = response.status_code == 200
                body = response.json() if ok else {}
                if ok:
                    assert len(body["predictions"]) == 1000
                    assert all(p["explanation"]["contributions"] for p in body["predictions"])
                seen.append((response.status_code, body["model"]["version"] if ok else None))

    threads = [threading.Thread(target=fire, args=(seen,)) for seen in per_thread]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    with MLServerAdmin(stack.mlserver_url) as admin:
        admin.load(new.served_model_name)
        admin.wait_ready(new.served_model_name)
        repository.set_deployment(new.model_copy(update={"previous_version": current.version}))
        time.sleep(2 * POINTER_POLL_SECONDS + 0.5)
        admin.unload(current.served_model_name)
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    outcomes = [outcome for seen in per_thread for outcome in seen]
    assert [status for status, _ in outcomes].count(200) == len(outcomes), outcomes
    for seen in per_thread:
        versions = [version for _, version in seen]
        assert versions == sorted(versions), versions  # no flapping back to the old version
        assert versions[-1] == new_version
    assert any(version == current.version for _, version in outcomes)


def test_mlserver_down_gives_503_and_an_error_row(stack, client, keys, records) -> None:
    assert stack._mlserver is not None
    stack._mlserver.stop()
    response = client.post("/v1/salary_band/predict", json=records[0], headers=_auth(keys["both"]))
    assert response.status_code == 503
    assert "unavailable" in response.json()["error"] and "Traceback" not in response.text
    row = client.get(f"/v1/audit/predictions/{response.headers['X-Request-ID']}", headers=_auth(keys["audit"])).json()[
        "request"
    ]
    assert row["status"] == "failed" and row["http_status"] == 503
    assert client.get("/readyz").status_code == 503
