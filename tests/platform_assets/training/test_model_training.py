"""Training functions without Dagster: pipeline, feature groups, seeded tuning, metrics, fairness, card."""

import numpy as np
import pandas as pd
import pytest

from riverbed.ml.model_card import build_model_card, render_markdown
from riverbed.ml.training import (
    TrainingDataError,
    TrainingParams,
    build_pipeline,
    encoded_feature_groups,
    evaluate,
    fairness_report,
    model_inputs,
    tune_and_train,
)
from riverbed.records import DataLineage
from riverbed.specs import parse_spec

SPEC = parse_spec(
    {
        "name": "toy_credit",
        "description": "Toy credit decisions from a 1994 survey.",
        "license": "CC BY 4.0 (toy)",
        "source": {"kind": "generator", "function": "x.y:z"},
        "record_id": {"assign_prefix": "t-"},
        "event_time": {"assign_start": "2026-01-01", "assign_days": 1},
        "target": {"name": "approved", "classes": ["no", "yes"], "positive_class": "yes"},
        "protected_attributes": ["group"],
        "features": [
            {"name": "income", "type": "numeric", "minimum": 0, "maximum": 1000},
            {"name": "group", "type": "category", "categories": ["a", "b"]},
            {"name": "region", "type": "category", "categories": ["north", "south", "east"], "nullable": True},
        ],
    }
)

PARAMS = TrainingParams(optuna_trials=2, seed=5, max_estimators=30)


def _frame(n: int, seed: int, biased: bool = False) -> pd.DataFrame:
    """Features and target only (the serving tests use this shape)."""
    rng = np.random.default_rng(seed)
    income = rng.uniform(0, 1000, n)
    group = rng.choice(["a", "b"], n)
    region = rng.choice(["north", "south", "east", None], n)
    label = (income > 500).astype("int8")
    if biased:
        label = np.where(group == "b", 0, label).astype("int8")
    return pd.DataFrame(
        {
            "income": income,
            "group": pd.Categorical(group, categories=["a", "b"]),
            "region": pd.Categorical(region, categories=["north", "south", "east"]),
            "approved": label,
        }
    )


def _featurised(n: int, seed: int, biased: bool = False) -> pd.DataFrame:
    """A frame shaped like ``build_features`` output: record id, event time, features, int8 target."""
    frame = _frame(n, seed, biased)
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "income"] = np.nan
    ids = pd.Series([f"t-{seed}-{i}" for i in range(n)], name="record_id")
    times = pd.Series(pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"), name="event_time")
    return pd.concat([ids, times, frame], axis=1)


def test_pipeline_handles_missing_values_and_unseen_categories() -> None:
    train = _featurised(300, 1)
    pipeline = build_pipeline(SPEC, {"n_estimators": 20, "max_depth": 3})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    odd = pd.DataFrame({"income": [np.nan, 700.0, 10.0], "group": ["a", "zzz", None], "region": [None, "west", "east"]})
    probabilities = pipeline.predict_proba(model_inputs(SPEC, odd))
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "as_given",
    [
        lambda s: s,  # pandas Categorical with NaN, as build_features makes it
        lambda s: s.astype("object"),  # objects with NaN
        lambda s: s.astype("str"),  # pandas string dtype
    ],
    ids=["categorical", "object", "string"],
)
def test_pipeline_takes_category_columns_in_any_string_form(as_given) -> None:
    train = _featurised(300, 2)
    inputs = model_inputs(SPEC, train)
    pipeline = build_pipeline(SPEC, {"n_estimators": 10}).fit(inputs, train["approved"])
    raw = train[SPEC.feature_names].assign(group=as_given(train["group"]), region=as_given(train["region"]))
    np.testing.assert_allclose(pipeline.predict_proba(raw), pipeline.predict_proba(inputs))


def test_missing_and_unknown_categories_encode_as_all_zeros() -> None:
    train = _featurised(100, 3)
    pipeline = build_pipeline(SPEC, {"n_estimators": 5}).fit(model_inputs(SPEC, train), train["approved"])
    rows = pd.DataFrame({"income": [1.0, 2.0], "group": ["a", "a"], "region": [None, "atlantis"]})
    encoded = pipeline.named_steps["encode"].transform(model_inputs(SPEC, rows))
    region = encoded_feature_groups(pipeline, SPEC)["region"]
    assert not encoded[:, region].any()


def test_encoded_feature_groups_cover_every_column_exactly_once() -> None:
    train = _featurised(200, 2)
    pipeline = build_pipeline(SPEC, {"n_estimators": 10})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    groups = encoded_feature_groups(pipeline, SPEC)
    assert list(groups) == SPEC.feature_names
    assert len(groups["group"]) == 2 and len(groups["region"]) == 3 and len(groups["income"]) == 1
    indices = sorted(i for cols in groups.values() for i in cols)
    assert indices == list(range(6))


def test_feature_groups_do_not_confuse_names_that_prefix_each_other() -> None:
    spec = parse_spec(
        {
            **SPEC.model_dump(mode="json", exclude={"features", "protected_attributes"}),
            "features": [
                {"name": "size", "type": "category", "categories": ["big_x", "small"]},
                {"name": "size_big", "type": "category", "categories": ["x", "y", "z"]},
                {"name": "size_n", "type": "numeric"},
            ],
        }
    )
    frame = pd.DataFrame(
        {
            "size": ["big_x", "small"] * 10,
            "size_big": ["x", "y", "z", "x"] * 5,
            "size_n": np.arange(20.0),
            "approved": [0, 1] * 10,
        }
    )
    pipeline = build_pipeline(spec, {"n_estimators": 5}).fit(model_inputs(spec, frame), frame["approved"])
    assert encoded_feature_groups(pipeline, spec) == {"size": [0, 1], "size_big": [2, 3, 4], "size_n": [5]}


def test_feature_groups_need_a_fitted_pipeline() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        encoded_feature_groups(build_pipeline(SPEC, {}), SPEC)


def test_tuning_is_deterministic_for_a_seed_and_respects_the_trial_count() -> None:
    train = _featurised(400, 3)
    first = tune_and_train(SPEC, train, PARAMS)
    second = tune_and_train(SPEC, train, PARAMS)
    assert first.best_params == second.best_params
    assert first.best_validation_score == second.best_validation_score
    assert first.trials == 2 and len(first.trial_table) == 2
    assert set(first.best_params) == {
        "n_estimators",
        "max_depth",
        "learning_rate",
        "subsample",
        "colsample_bytree",
        "min_child_weight",
        "reg_lambda",
    }
    assert first.best_params["n_estimators"] == 30  # searched over min(50, max_estimators)..max_estimators
    assert all(row["state"] == "COMPLETE" for row in first.trial_table)
    test = _featurised(300, 4)
    np.testing.assert_array_equal(
        first.pipeline.predict_proba(model_inputs(SPEC, test)), second.pipeline.predict_proba(model_inputs(SPEC, test))
    )
    other_seed = tune_and_train(SPEC, train, PARAMS.model_copy(update={"seed": 6}))
    assert other_seed.best_params != first.best_params


def test_evaluate_gives_sane_metrics_on_a_separable_problem() -> None:
    outcome = tune_and_train(SPEC, _featurised(400, 3), PARAMS)
    metrics = evaluate(SPEC, outcome.pipeline, _featurised(300, 4))
    assert metrics["roc_auc"] > 0.9 and metrics["accuracy"] > 0.85 and metrics["f1"] > 0.85
    assert 0 < metrics["log_loss"] < 0.5
    assert 0.3 < metrics["positive_rate"] < 0.7 and 0.3 < metrics["prevalence"] < 0.7
    assert metrics["n_test"] == 300


def test_fairness_report_shows_the_bias_of_a_biased_model() -> None:
    fair = tune_and_train(SPEC, _featurised(600, 5), PARAMS)
    biased = tune_and_train(SPEC, _featurised(600, 5, biased=True), PARAMS)
    test = _featurised(600, 6)
    fair_report = fairness_report(SPEC, fair.pipeline, test)
    biased_report = fairness_report(SPEC, biased.pipeline, test)
    assert set(fair_report) == set(biased_report) == {"group"}
    for report in (fair_report, biased_report):
        assert {"demographic_parity_difference", "equalized_odds_difference"} <= set(report["group"])
    assert biased_report["group"]["demographic_parity_difference"] > (
        fair_report["group"]["demographic_parity_difference"] + 0.2
    )
    assert biased_report["group"]["selection_rate[b]"] < 0.05
    assert {"accuracy[a]", "accuracy[b]", "count[a]", "count[b]"} <= set(biased_report["group"])
    assert biased_report["group"]["count[a]"] + biased_report["group"]["count[b]"] == 600


def test_fairness_report_copes_with_a_one_class_group_and_missing_values() -> None:
    outcome = tune_and_train(SPEC, _featurised(400, 7), PARAMS)
    test = _featurised(60, 8)
    test["group"] = pd.Categorical(["a"] * 40 + ["b"] * 15 + [None] * 5, categories=["a", "b"])
    test.loc[40:54, "approved"] = 0  # group b: negatives only, so its true positive rate is undefined
    report = fairness_report(SPEC, outcome.pipeline, test)["group"]
    assert np.isfinite(report["demographic_parity_difference"])
    assert np.isfinite(report["equalized_odds_difference"])
    assert report["count[missing]"] == 5 and report["count[b]"] == 15


def test_bad_frames_fail_with_a_named_reason() -> None:
    train = _featurised(50, 9)
    with pytest.raises(TrainingDataError, match=r"lacks feature column\(s\) \['region'\]"):
        tune_and_train(SPEC, train.drop(columns=["region"]), PARAMS)
    with pytest.raises(TrainingDataError, match="one class only"):
        tune_and_train(SPEC, train.assign(approved=np.int8(1)), PARAMS)
    with pytest.raises(TrainingDataError, match="must be 0/1"):
        tune_and_train(SPEC, train.assign(approved=2), PARAMS)
    with pytest.raises(TrainingDataError, match="no rows"):
        evaluate(SPEC, build_pipeline(SPEC, {}), train.iloc[:0])


@pytest.mark.parametrize("metric", ["f1", "accuracy", "log_loss"])
def test_every_primary_metric_can_drive_tuning(metric: str) -> None:
    outcome = tune_and_train(
        SPEC, _featurised(300, 7), PARAMS.model_copy(update={"primary_metric": metric, "optuna_trials": 1})
    )
    assert np.isfinite(outcome.best_validation_score)
    if metric == "log_loss":
        assert outcome.best_validation_score < 0  # negated so that higher is better


def test_training_params_reject_an_unknown_metric() -> None:
    with pytest.raises(ValueError, match="primary_metric"):
        TrainingParams(primary_metric="precision")


def _card():
    lineage = DataLineage(
        training_data_uri="lakefs://riverbed/abc123/tables/training_set_toy_credit/train.parquet",
        test_data_uri="lakefs://riverbed/abc123/tables/training_set_toy_credit/test.parquet",
        data_commit_ids=["abc123", "def456"],
        partitions=["2026-01-01", "2026-01-02"],
        train_rows=80,
        test_rows=20,
        dagster_run_id="dagster-run-1",
    )
    return build_model_card(
        SPEC,
        model_name="riverbed-toy_credit",
        version=3,
        mlflow_run_id="run123",
        lineage=lineage,
        metrics={"roc_auc": 0.91, "accuracy": 0.85, "n_test": 20.0},
        fairness={
            "group": {
                "demographic_parity_difference": 0.3,
                "equalized_odds_difference": 0.2,
                "selection_rate[a]": 0.5,
                "accuracy[a]": 0.9,
                "count[a]": 12.0,
                "selection_rate[b]": 0.2,
                "accuracy[b]": 0.8,
                "count[b]": 8.0,
            }
        },
        hyperparameters={"max_depth": 3, "learning_rate": 0.0123456789},
        train_positive_rate=0.25,
    )


def test_model_card_markdown_carries_lineage_metrics_and_fairness() -> None:
    markdown = render_markdown(_card())
    for expected in (
        "# Model card: riverbed-toy_credit v3",
        "`run123`",
        "`dagster-run-1`",
        "`abc123`",
        "`def456`",
        "lakefs://riverbed/abc123/tables/training_set_toy_credit/test.parquet",
        "2026-01-01, 2026-01-02",
        "| roc_auc | 0.9100 |",
        "| n_test | 20 |",
        "| group | 0.3000 | 0.2000 |",
        "| b | 8 | 0.2000 | 0.8000 |",
        "| learning_rate | 0.0123457 |",
        "Decision support only",
    ):
        assert expected in markdown, expected


def test_model_card_limitations_are_written_from_the_spec_and_the_results() -> None:
    card = _card()
    text = " ".join(card.limitations)
    assert "25.0% of the 80 training records" in text and "'yes'" in text
    assert "2026-01-01 to 2026-01-02" in text
    assert "1994" in text and "CC BY 4.0 (toy)" in text
    assert "Protected attributes (group) are model inputs" in text
    assert "differ by 0.30" in text and "fewer than 30 test records" in text
    assert "generated" in text
    assert "without human review" in card.intended_use
    restored = type(card).model_validate_json(card.model_dump_json())
    assert restored == card
