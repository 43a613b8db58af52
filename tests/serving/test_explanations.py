"""Grouped TreeSHAP: additivity to the margin, agreement with predict_proba, per-feature grouping."""

import numpy as np
import pandas as pd
import pytest

from riverbed.ml.training import build_pipeline, encoded_feature_groups, model_inputs
from riverbed.model_repository import integrity_parameters
from serving.explanations import (
    ExplanationError,
    FastEncoder,
    explain_encoded,
    predict_and_explain,
    verified_fast_encoder,
)
from tests.platform_assets.training.test_model_training import SPEC, _frame


@pytest.fixture(scope="module")
def fitted():
    train = _frame(800, 11)
    pipeline = build_pipeline(SPEC, {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.2})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    return pipeline, encoded_feature_groups(pipeline, SPEC)


def test_contributions_plus_base_value_equal_the_margin(fitted) -> None:
    pipeline, groups = fitted
    inputs = model_inputs(SPEC, _frame(200, 12))
    batch = predict_and_explain(pipeline, groups, inputs)
    assert batch.contributions.shape == (200, 3)
    np.testing.assert_allclose(batch.base_value + batch.contributions.sum(axis=1), batch.margin, atol=1e-5)
    np.testing.assert_allclose(batch.positive_probability, pipeline.predict_proba(inputs)[:, 1], atol=1e-6)


def test_the_feature_that_decides_gets_the_largest_contribution(fitted) -> None:
    pipeline, groups = fitted
    batch = predict_and_explain(pipeline, groups, model_inputs(SPEC, _frame(50, 13)))
    top = [batch.top_features(i, 1)[0][0] for i in range(50)]
    assert top.count("income") > 40


def test_predict_only_skips_contributions(fitted) -> None:
    pipeline, groups = fitted
    batch = predict_and_explain(pipeline, groups, model_inputs(SPEC, _frame(5, 14)), explain=False)
    assert batch.contributions.shape == (5, 0)


def test_wrong_feature_groups_are_refused(fitted) -> None:
    pipeline, groups = fitted
    broken = {**groups, "income": []}
    with pytest.raises(ExplanationError, match="cover"):
        predict_and_explain(pipeline, broken, model_inputs(SPEC, _frame(3, 15)))
    with pytest.raises(ExplanationError, match="Pipeline"):
        predict_and_explain(object(), groups, pd.DataFrame())


def test_fast_encoder_matches_the_pipeline_and_gives_identical_explanations(fitted) -> None:
    pipeline, groups = fitted
    fast = verified_fast_encoder(pipeline, SPEC.feature_names)
    assert fast is not None
    inputs = model_inputs(SPEC, _frame(300, 16))
    inputs.loc[0, "income"] = np.nan
    inputs.loc[1, "group"] = "never-seen"
    inputs.loc[2, "region"] = None
    encoder = pipeline.steps[0][1]
    np.testing.assert_array_equal(fast.transform(inputs), np.asarray(encoder.transform(inputs), dtype=np.float32))
    slow = predict_and_explain(pipeline, groups, inputs)
    quick = predict_and_explain(pipeline, groups, inputs, fast_encoder=fast)
    np.testing.assert_array_equal(slow.contributions, quick.contributions)
    np.testing.assert_array_equal(slow.positive_probability, quick.positive_probability)


def test_fast_encoder_declines_encoders_it_does_not_know(fitted) -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline, _ = fitted
    odd = Pipeline([("encode", StandardScaler()), ("classifier", pipeline.steps[-1][1])])
    assert FastEncoder.compile(odd) is None


def _hostile_inputs(rows: int, seed: int) -> pd.DataFrame:
    """Model inputs with what requests carry: missing numbers, unseen, empty and missing categories."""
    inputs = model_inputs(SPEC, _frame(rows, seed))
    inputs.loc[0, "income"] = np.nan
    inputs.loc[1, "group"] = "never-seen"
    inputs.loc[2, "region"] = None
    inputs.loc[3, "group"] = None
    return inputs


def test_framing_of_plain_columns_equals_framing_of_a_frame() -> None:
    from riverbed.ml.model_inputs import frame_model_inputs, model_input_columns

    frame = pd.DataFrame(
        {
            "number": pd.Series([1, 2.5, None, "3", b"4.5", "", "abc", np.nan, "1e3"], dtype=object),
            "category": pd.Series(["a", "", None, b"bb", np.nan, 5, 2.5, "  ", pd.NA], dtype=object),
            "text": pd.Series(["a", "", None, "bb", "c", "d", "e", "f", "g"]),  # pandas' str dtype
            "coded": pd.Categorical(["a", None, "b", "a", "", "b", None, "a", "b"]),
            "float": [1.0, np.nan, 2.5, 1e20, 0.1, 3, 4, 5, 6],
        }
    )
    frame.index = pd.Index([3, 3, 1, 2, 9, 8, 7, 6, 5])  # kept as it is, duplicates too
    features, numeric = list(frame.columns), ["number"]
    framed = frame_model_inputs(frame, features, numeric)
    assert list(framed.columns) == features and framed.index.equals(frame.index)
    assert framed["number"].dtype == np.float64 and all(framed[c].dtype == object for c in features[1:])
    np.testing.assert_array_equal(framed["number"], [1.0, 2.5, np.nan, 3.0, 4.5, np.nan, np.nan, np.nan, 1000.0])
    assert framed["category"].tolist() == ["a", None, None, "bb", None, "5", "2.5", "  ", None]
    assert framed["text"].tolist() == ["a", None, None, "bb", "c", "d", "e", "f", "g"]
    assert framed["coded"].tolist() == ["a", None, "b", "a", None, "b", None, "a", "b"]
    assert framed["float"].tolist()[:3] == ["1.0", None, "2.5"]
    columns = model_input_columns({name: frame[name].tolist() for name in features}, features, numeric)
    np.testing.assert_array_equal(columns["number"], framed["number"].to_numpy())
    for name in features[1:]:
        assert columns[name] == framed[name].tolist()


def test_encoding_plain_columns_equals_the_pipeline_encoder(fitted) -> None:
    from riverbed.ml.model_inputs import model_input_columns

    pipeline, groups = fitted
    fast = verified_fast_encoder(pipeline, SPEC.feature_names)
    assert fast is not None
    inputs = _hostile_inputs(300, 17)
    columns = {name: inputs[name].tolist() for name in SPEC.feature_names}
    framed = model_input_columns(columns, SPEC.feature_names, SPEC.numeric_features)
    encoded = fast.encode_columns(framed, len(inputs))
    expected = np.asarray(pipeline.steps[0][1].transform(inputs), dtype=np.float32)
    np.testing.assert_array_equal(encoded, expected)
    slow = predict_and_explain(pipeline, groups, inputs)
    quick = explain_encoded(pipeline, groups, encoded)
    np.testing.assert_array_equal(slow.contributions, quick.contributions)
    np.testing.assert_array_equal(slow.positive_probability, quick.positive_probability)
    np.testing.assert_allclose(quick.base_value + quick.contributions.sum(axis=1), quick.margin, atol=1e-5)


def _runtime(pipeline, tmp_path):
    import asyncio
    import json

    import cloudpickle
    from mlserver.settings import ModelParameters, ModelSettings

    from serving.runtime import FEATURE_GROUPS_FILE, MODEL_FILE, MODEL_INFO_FILE, RiverbedModelRuntime

    (tmp_path / MODEL_FILE).write_bytes(cloudpickle.dumps(pipeline))
    (tmp_path / FEATURE_GROUPS_FILE).write_text(json.dumps(encoded_feature_groups(pipeline, SPEC)))
    info = {"dataset": SPEC.name, "classes": SPEC.target.classes, "numeric_features": SPEC.numeric_features}
    (tmp_path / MODEL_INFO_FILE).write_text(json.dumps(info))
    settings = ModelSettings(
        name="toy",
        implementation=RiverbedModelRuntime,
        parameters=ModelParameters(uri=str(tmp_path), version="1", extra=integrity_parameters(tmp_path)),
    )
    runtime = RiverbedModelRuntime(settings)
    asyncio.run(runtime.load())
    return runtime


def _v2_request(inputs: pd.DataFrame, extra: list[dict] | None = None):
    """The V2 request the gateway sends (serving.gateway.mlserver_client.encode_inputs), plus ``extra`` inputs."""
    from mlserver.types import InferenceRequest

    from serving.gateway.mlserver_client import encode_inputs

    columns = {
        name: [None if pd.isna(v) else v for v in inputs[name].astype(object).tolist()] for name in SPEC.feature_names
    }
    encoded = encode_inputs(SPEC.feature_names, set(SPEC.numeric_features), columns)
    return InferenceRequest.model_validate({"id": "r", "inputs": encoded + (extra or [])})


def test_the_runtime_decodes_gateway_requests_directly_with_identical_answers(fitted, tmp_path) -> None:
    import asyncio

    pipeline, _ = fitted
    runtime = _runtime(pipeline, tmp_path)
    for rows, seed in ((1, 30), (5, 31), (70, 32)):
        inputs = _hostile_inputs(max(rows, 4), seed).iloc[:rows] if rows >= 4 else model_inputs(SPEC, _frame(1, seed))
        direct = _v2_request(inputs)
        assert runtime._encoded(direct) is not None  # the direct path
        # an input MLServer's codecs must decode (INT64) sends the whole request down the pandas path
        pandas_path = _v2_request(
            inputs, [{"name": "unused", "datatype": "INT64", "shape": [rows], "data": [1] * rows}]
        )
        assert runtime._encoded(pandas_path) is None
        answers = [asyncio.run(runtime.predict(request)).model_dump() for request in (direct, pandas_path)]
        assert answers[0] == answers[1]


def test_the_runtime_leaves_unusual_requests_to_mlservers_codecs(fitted, tmp_path) -> None:
    from mlserver.types import InferenceRequest

    pipeline, _ = fitted
    runtime = _runtime(pipeline, tmp_path)
    request = _v2_request(model_inputs(SPEC, _frame(3, 33))).model_dump()

    def variant(change) -> InferenceRequest:
        body = {**request, "inputs": [dict(i) for i in request["inputs"]]}
        change(body["inputs"])
        return InferenceRequest.model_validate(body)

    assert runtime._encoded(variant(lambda inputs: None)) is not None
    unusual = [
        lambda inputs: inputs[0].update(datatype="FP32"),  # float32 values: PandasCodec rounds them
        lambda inputs: inputs[1].update(parameters={"content_type": "pd_json"}),
        lambda inputs: inputs[1].update(data=inputs[1]["data"][:2]),  # ragged columns
        lambda inputs: inputs[0].update(data=[[v] for v in inputs[0]["data"]], shape=[3, 1]),  # nested data
        lambda inputs: inputs[1].update(datatype="FP64", data=[1.0, 2.0, 3.0]),  # numbers for a category
    ]
    for change in unusual:
        assert runtime._encoded(variant(change)) is None
