"""Grouped TreeSHAP: additivity to the margin, agreement with predict_proba, per-feature grouping."""

import numpy as np
import pandas as pd
import pytest

from riverbed.ml.training import build_pipeline, encoded_feature_groups, model_inputs
from serving.explanations import ExplanationError, FastEncoder, predict_and_explain, verified_fast_encoder
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
