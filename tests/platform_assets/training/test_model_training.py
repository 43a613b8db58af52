"""Training functions without Dagster: pipeline, feature groups, seeded tuning, metrics, fairness, card."""

import numpy as np
import pandas as pd
import pytest

from platform_assets.training.model_card import build_model_card, render_markdown
from platform_assets.training.model_training import (
    TrainingParams,
    build_pipeline,
    encoded_feature_groups,
    evaluate,
    fairness_report,
    model_inputs,
    tune_and_train,
)
from riverbed.specs import parse_spec

SPEC = parse_spec(
    {
        "name": "toy_credit",
        "description": "Toy credit decisions.",
        "source": {"kind": "generator", "function": "x.y:z"},
        "record_id": {"assign_prefix": "t-"},
        "event_time": {"assign_start": "2026-01-01", "assign_days": 1},
        "target": {"name": "approved", "classes": ["0", "1"], "positive_class": "1"},
        "protected_attributes": ["group"],
        "features": [
            {"name": "income", "type": "numeric", "minimum": 0, "maximum": 1000},
            {"name": "group", "type": "category", "categories": ["a", "b"]},
            {"name": "region", "type": "category", "categories": ["north", "south", "east"], "nullable": True},
        ],
    }
)


def _frame(n: int, seed: int, biased: bool = False) -> pd.DataFrame:
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


PARAMS = TrainingParams(optuna_trials=2, seed=5, max_estimators=30)


def test_pipeline_handles_missing_values_and_unseen_categories() -> None:
    train = _frame(300, 1)
    pipeline = build_pipeline(SPEC, {"n_estimators": 20, "max_depth": 3})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    odd = pd.DataFrame({"income": [np.nan, 700.0], "group": ["a", "zzz"], "region": [None, "west"]})
    probabilities = pipeline.predict_proba(model_inputs(SPEC, odd))
    assert probabilities.shape == (2, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_encoded_feature_groups_cover_every_column_exactly_once() -> None:
    train = _frame(200, 2)
    pipeline = build_pipeline(SPEC, {"n_estimators": 10})
    pipeline.fit(model_inputs(SPEC, train), train["approved"])
    groups = encoded_feature_groups(pipeline, SPEC)
    assert set(groups) == {"income", "group", "region"}
    assert len(groups["group"]) == 2 and len(groups["region"]) == 3 and len(groups["income"]) == 1
    indices = sorted(i for cols in groups.values() for i in cols)
    assert indices == list(range(6))


def test_tuning_is_deterministic_for_a_seed_and_respects_the_trial_count() -> None:
    train = _frame(400, 3)
    first = tune_and_train(SPEC, train, PARAMS)
    second = tune_and_train(SPEC, train, PARAMS)
    assert first.best_params == second.best_params
    assert first.trials == 2
    test = _frame(300, 4)
    assert evaluate(SPEC, first.pipeline, test)["roc_auc"] > 0.9


def test_fairness_report_shows_the_bias_of_a_biased_model() -> None:
    fair = tune_and_train(SPEC, _frame(600, 5), PARAMS)
    biased = tune_and_train(SPEC, _frame(600, 5, biased=True), PARAMS)
    test = _frame(600, 6)
    fair_dp = fairness_report(SPEC, fair.pipeline, test)["group"]["demographic_parity_difference"]
    biased_report = fairness_report(SPEC, biased.pipeline, test)["group"]
    assert biased_report["demographic_parity_difference"] > fair_dp + 0.2
    assert {"equalized_odds_difference", "selection_rate[a]", "selection_rate[b]"} <= set(biased_report)


def test_model_card_carries_lineage_metrics_and_fairness() -> None:
    card = build_model_card(
        SPEC,
        model_name="riverbed-toy_credit",
        version=3,
        mlflow_run_id="run123",
        training_data_uri="lakefs://riverbed/abc/tables/training_set_toy_credit/all.parquet",
        data_commit_ids=["abc", "def"],
        partitions=["2026-01-01"],
        train_rows=80,
        test_rows=20,
        positive_rate=0.25,
        metrics={"roc_auc": 0.91},
        fairness={"group": {"demographic_parity_difference": 0.1, "equalized_odds_difference": 0.2}},
        hyperparameters={"max_depth": 3},
        dagster_run_id="dagster-run",
    )
    markdown = render_markdown(card)
    for expected in ("riverbed-toy_credit v3", "`abc`", "`def`", "| roc_auc | 0.9100 |", "| group | 0.1000 | 0.2000 |"):
        assert expected in markdown
    assert "Decision support only" in card.intended_use


@pytest.mark.parametrize("metric", ["f1", "accuracy", "log_loss"])
def test_every_primary_metric_can_drive_tuning(metric: str) -> None:
    outcome = tune_and_train(
        SPEC, _frame(300, 7), PARAMS.model_copy(update={"primary_metric": metric, "optuna_trials": 1})
    )
    assert np.isfinite(outcome.best_validation_score)
