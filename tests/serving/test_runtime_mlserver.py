"""The runtime inside a real ``mlserver start`` process, over the V2 HTTP protocol, batching on and off."""

import json

import cloudpickle
import httpx
import numpy as np
import pytest

from riverbed.cli.mlserver_process import MLServerProcess
from riverbed.ml.training import build_pipeline, encoded_feature_groups, model_inputs
from riverbed.model_repository import integrity_parameters
from serving.explanations import predict_and_explain
from serving.runtime import FEATURE_GROUPS_FILE, MODEL_FILE, MODEL_INFO_FILE
from tests.platform_assets.training.test_model_training import SPEC, _frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_directory(tmp_path_factory: pytest.TempPathFactory):
    train = _frame(600, 21)
    pipeline = build_pipeline(SPEC, {"n_estimators": 40, "max_depth": 3})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    folder = tmp_path_factory.mktemp("models") / "toy-credit"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(cloudpickle.dumps(pipeline))
    (folder / FEATURE_GROUPS_FILE).write_text(json.dumps(encoded_feature_groups(pipeline, SPEC)))
    (folder / MODEL_INFO_FILE).write_text(json.dumps({"dataset": SPEC.name, "classes": SPEC.target.classes}))
    return folder, pipeline


@pytest.fixture(scope="module", params=["batching-off", "batching-on"])
def mlserver_url(request: pytest.FixtureRequest, model_directory, tmp_path_factory: pytest.TempPathFactory):
    folder, _ = model_directory
    root = tmp_path_factory.mktemp("mlserver")
    model_settings = {
        "name": "toy-credit",
        "implementation": "serving.runtime.RiverbedModelRuntime",
        "parameters": {"uri": str(folder), "version": "1", "extra": integrity_parameters(folder)},
    }
    if request.param == "batching-on":
        model_settings.update({"max_batch_size": 16, "max_batch_time": 0.01})
    (root / "toy-credit").mkdir()
    (root / "toy-credit" / "model-settings.json").write_text(json.dumps(model_settings))
    with MLServerProcess(root, wait_for_models=["toy-credit"], log_file=root / "mlserver.log") as mlserver:
        yield mlserver.url


def _request(rows) -> dict:
    inputs = model_inputs(SPEC, rows)
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "income", "datatype": "FP64", "shape": [len(inputs)], "data": inputs["income"].tolist()},
            {
                "name": "group",
                "datatype": "BYTES",
                "shape": [len(inputs)],
                "data": inputs["group"].astype(str).tolist(),
            },
            {
                "name": "region",
                "datatype": "BYTES",
                "shape": [len(inputs)],
                "data": inputs["region"].fillna("").astype(str).tolist(),
            },
        ],
    }


def test_predictions_and_exact_explanations_over_http(mlserver_url: str, model_directory) -> None:
    _, pipeline = model_directory
    rows = _frame(20, 22)
    response = httpx.post(f"{mlserver_url}/v2/models/toy-credit/infer", json=_request(rows), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "toy-credit" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(20, 2)
    contributions = np.array(outputs["contributions"]["data"]).reshape(20, 3)
    base = np.array(outputs["base_value"]["data"])
    inputs = model_inputs(SPEC, rows).assign(region=lambda f: f["region"].fillna(""))
    expected = predict_and_explain(pipeline, encoded_feature_groups(pipeline, SPEC), inputs)
    np.testing.assert_allclose(probabilities[:, 1], expected.positive_probability, atol=1e-6)
    margin = np.log(probabilities[:, 1] / probabilities[:, 0])
    np.testing.assert_allclose(base + contributions.sum(axis=1), margin, atol=1e-4)
    assert set(outputs["label"]["data"]) <= set(SPEC.target.classes)


def test_single_rows_in_parallel_are_all_answered(mlserver_url: str) -> None:
    rows = _frame(12, 23)
    with httpx.Client(timeout=30) as client:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(
                pool.map(
                    lambda i: client.post(
                        f"{mlserver_url}/v2/models/toy-credit/infer", json=_request(rows.iloc[i : i + 1])
                    ),
                    range(12),
                )
            )
    assert [a.status_code for a in answers] == [200] * 12


def test_unknown_outputs_and_missing_features_are_clear_errors(mlserver_url: str) -> None:
    request = _request(_frame(2, 24))
    bad_output = {**request, "outputs": [{"name": "shapley"}]}
    answer = httpx.post(f"{mlserver_url}/v2/models/toy-credit/infer", json=bad_output, timeout=30)
    assert answer.status_code == 400 and "unknown outputs" in answer.text
    missing = {**request, "inputs": request["inputs"][:2]}
    answer = httpx.post(f"{mlserver_url}/v2/models/toy-credit/infer", json=missing, timeout=30)
    assert answer.status_code == 400 and "region" in answer.text


def test_direct_decoding_answers_as_mlservers_codecs_do(mlserver_url: str) -> None:
    """The gateway's FP64/BYTES inputs are decoded without pandas; an input only MLServer's codecs decode (INT64)
    sends the same rows down the PandasCodec path: the answers must be the same, to the last bit."""
    rows = _frame(9, 25)
    request = _request(rows)
    request["inputs"][0]["data"][0] = None  # a missing number: FP64 null
    unused = {"name": "unused", "datatype": "INT64", "shape": [9], "data": list(range(9))}
    answers = []
    for body in (request, {**request, "inputs": [*request["inputs"], unused]}):
        response = httpx.post(f"{mlserver_url}/v2/models/toy-credit/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        answers.append({o["name"]: o["data"] for o in response.json()["outputs"]})
    assert answers[0] == answers[1]
    probabilities = np.array(answers[0]["probabilities"]).reshape(9, 2)
    margin = np.log(probabilities[:, 1] / probabilities[:, 0])
    contributions = np.array(answers[0]["contributions"]).reshape(9, 3)
    np.testing.assert_allclose(np.array(answers[0]["base_value"]) + contributions.sum(axis=1), margin, atol=1e-4)


def _v2_inputs(rows) -> list[dict]:
    return _request(rows)["inputs"]


async def _coalesced(mlserver_url: str, requests: list[list[dict]], *, max_in_flight: int) -> tuple[list, object]:
    import asyncio

    from serving.gateway.mlserver_client import MLServerClient

    client = MLServerClient(mlserver_url, max_in_flight=max_in_flight)
    await client.start()
    try:
        answers = await asyncio.gather(
            *(client.infer("toy-credit", f"r{i}", inputs, explain=True) for i, inputs in enumerate(requests)),
            return_exceptions=True,
        )
        alone = [
            await client.infer_alone("toy-credit", f"a{i}", inputs, explain=True)
            for i, inputs in enumerate(requests)
            if not isinstance(answers[i], BaseException)
        ]
    finally:
        await client.close()
    return list(zip([a for a in answers if not isinstance(a, BaseException)], alone, strict=True)), (answers, client)


def test_coalesced_requests_get_exactly_what_each_gets_alone(mlserver_url: str) -> None:
    """Concurrent small requests leave in fewer V2 calls, and each gets its own rows' answers, bit for bit."""
    import asyncio

    frame = _frame(40, 26)
    sizes = [1, 3, 1, 2, 5, 1, 1, 4, 2, 1, 3, 1, 2, 1, 1, 2, 1, 1, 3, 1]
    requests, start = [], 0
    for size in sizes:
        requests.append(_v2_inputs(frame.iloc[start : start + size]))
        start += size
    pairs, (_answers, client) = asyncio.run(_coalesced(mlserver_url, requests, max_in_flight=1))
    assert client.coalescing.requests == len(sizes)
    assert client.coalescing.calls < len(sizes)  # 20 requests queued behind one call at a time
    assert len(pairs) == len(sizes)
    for (together, alone), size in zip(pairs, sizes, strict=True):
        assert len(together.labels) == size and together.labels == alone.labels
        assert together.model_version == alone.model_version == "1"
        np.testing.assert_array_equal(together.probabilities, alone.probabilities)
        np.testing.assert_array_equal(together.contributions, alone.contributions)
        np.testing.assert_array_equal(together.base_value, alone.base_value)


def test_a_refused_request_does_not_fail_the_requests_coalesced_with_it(mlserver_url: str) -> None:
    import asyncio

    from serving.gateway.mlserver_client import MLServerAnsweredError, ScoringError

    frame = _frame(12, 27)
    requests = [_v2_inputs(frame.iloc[i : i + 1]) for i in range(12)]
    requests[5][0]["data"] = ["not a number"]  # income: a text in an FP64 input, MLServer refuses the call
    pairs, (answers, client) = asyncio.run(_coalesced(mlserver_url, requests, max_in_flight=1))
    assert isinstance(answers[5], ScoringError | MLServerAnsweredError)
    assert [i for i, a in enumerate(answers) if isinstance(a, BaseException)] == [5], answers
    assert len(pairs) == 11
    for together, alone in pairs:
        np.testing.assert_array_equal(together.probabilities, alone.probabilities)
    assert client.coalescing.split_retries >= 1


def test_inputs_whose_shapes_disagree_are_never_coalesced() -> None:
    from serving.gateway.mlserver_client import batch_rows, concatenate_inputs

    good = _v2_inputs(_frame(2, 28))
    assert batch_rows(good) == 2
    ragged = [dict(item) for item in good]
    ragged[1] = {**ragged[1], "data": [*ragged[1]["data"], "extra"]}
    assert batch_rows(ragged) == -1
    wrong_shape = [{**item, "shape": [3]} for item in good]
    assert batch_rows(wrong_shape) == -1
    combined = concatenate_inputs([good, good])
    assert [item["shape"] for item in combined] == [[4], [4], [4]]
    assert combined[0]["data"] == good[0]["data"] * 2
