"""The promotion gate: its rules in both metric directions and the fairness bound, then the default gate on a real
dataset (Adult, ``salary_band``) rejecting genuinely worse candidates while the champion keeps serving."""

import numpy as np
import pandas as pd
import pytest

from platform_assets.environments import build_resources
from platform_assets.promotion_gate import decide_promotion, gate_thresholds, run_promotion_gate
from platform_assets.runner import demo_partitions, local_instance, run_pipeline
from platform_assets.training import (
    SPLIT_COLUMN,
    SUMMARY_ATTR,
    ModelTrainingConfig,
    holdout_of,
    read_training_set,
    train_and_register,
)
from resources.versioned_io_manager import ATTR_COMMIT_ID, ATTR_URI
from riverbed.model_repository import ModelRepository
from riverbed.names import CHAMPION_ALIAS, GateVerdict, MlflowTag
from riverbed.records import ModelRecord, TrainingReason, TrainingSetSummary
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, PromotionGateSpec, load_specs

FAIR = {"sex": {"demographic_parity_difference": 0.05}}


# ------------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize(
    ("candidate", "champion", "min_improvement", "passed", "margin"),
    [
        (0.86, 0.85, 0.0, True, 0.01),
        (0.85, 0.85, 0.0, True, 0.0),  # a tie is not worse: min_improvement 0 lets it through
        (0.80, 0.85, 0.0, False, -0.05),
        (0.86, 0.85, 0.02, False, 0.01),  # better, but not by the required margin
        (0.88, 0.85, 0.02, True, 0.03),
    ],
)
def test_higher_is_better_metrics(candidate, champion, min_improvement, passed, margin) -> None:
    gate = PromotionGateSpec(metric="roc_auc", min_improvement=min_improvement, max_fairness_disparity=0.25)
    decision = decide_promotion(gate, {"roc_auc": candidate}, FAIR, {"roc_auc": champion}, champion_version=4)
    assert decision.passed is passed and decision.margin == pytest.approx(margin)
    assert "higher is better" in decision.reason and "v4" in decision.reason
    assert ("does not beat the champion" in decision.reason) is (not passed)


@pytest.mark.parametrize(
    ("candidate", "champion", "min_improvement", "passed", "margin"),
    [
        (0.30, 0.35, 0.0, True, 0.05),
        (0.40, 0.35, 0.0, False, -0.05),  # a higher log loss is worse although the number is bigger
        (0.34, 0.35, 0.02, False, 0.01),
        (0.32, 0.35, 0.02, True, 0.03),
    ],
)
def test_lower_is_better_metrics(candidate, champion, min_improvement, passed, margin) -> None:
    gate = PromotionGateSpec(metric="log_loss", min_improvement=min_improvement, max_fairness_disparity=0.25)
    decision = decide_promotion(gate, {"log_loss": candidate}, FAIR, {"log_loss": champion}, champion_version=2)
    assert decision.passed is passed and decision.margin == pytest.approx(margin)
    assert "lower is better" in decision.reason


def test_the_fairness_bound_rejects_a_more_accurate_candidate() -> None:
    gate = PromotionGateSpec()  # the defaults every spec starts from: roc_auc, margin 0, disparity <= 0.25
    groups = {
        "demographic_parity_difference": 0.40,
        **{"selection_rate[Male]": 0.45, "count[Male]": 800.0, "selection_rate[Female]": 0.05, "count[Female]": 400.0},
    }
    decision = decide_promotion(gate, {"roc_auc": 0.95}, {"sex": groups}, {"roc_auc": 0.85}, champion_version=1)
    assert not decision.passed and decision.margin == pytest.approx(0.10)
    assert decision.disparity_attribute == "sex" and decision.disparity == pytest.approx(0.40)
    assert "exceeds the bound 0.2500" in decision.reason and "'sex'" in decision.reason
    # The same candidate without a champion (first model) is still held to the bound.
    assert not decide_promotion(gate, {"roc_auc": 0.95}, {"sex": groups}, None).passed
    # Within the bound it passes.
    fair = {**groups, "selection_rate[Female]": 0.30}
    assert decide_promotion(gate, {"roc_auc": 0.95}, {"sex": fair}, {"roc_auc": 0.85}, champion_version=1).passed


def test_an_undefined_candidate_metric_never_passes() -> None:
    decision = decide_promotion(PromotionGateSpec(), {"roc_auc": float("nan")}, FAIR, None)
    assert not decision.passed and "undefined" in decision.reason


# ------------------------------------------------------------------------------------ a real, worse candidate
def _train_candidate(
    settings: RiverbedSettings, spec: DatasetSpec, champion: ModelRecord, training_set: pd.DataFrame
) -> ModelRecord:
    """Train and register a candidate on ``training_set`` (same commit and holdout as the champion)."""
    frame = training_set.copy()
    train, test = frame[frame[SPLIT_COLUMN] == "train"], frame[frame[SPLIT_COLUMN] == "test"]
    target = spec.target.name
    frame.attrs = {
        ATTR_COMMIT_ID: champion.training_set_commit_id,
        ATTR_URI: champion.training_set_uri,
        SUMMARY_ATTR: TrainingSetSummary(
            dataset=spec.name,
            partitions=sorted(champion.data_commit_ids),
            partition_commit_ids=champion.data_commit_ids,
            train_rows=len(train),
            test_rows=len(test),
            positive_rate_train=float(train[target].mean()),
            positive_rate_test=float(test[target].mean()),
        ).model_dump_json(),
    }
    config = ModelTrainingConfig(optuna_trials=1, max_estimators=40, seed=7)
    mlflow = build_resources(settings)["mlflow"]
    return train_and_register(spec, config, frame, mlflow, TrainingReason.MANUAL, "gate-test")


def test_the_default_gate_rejects_genuinely_worse_candidates_and_the_champion_keeps_serving(
    local_settings: RiverbedSettings,
) -> None:
    settings = local_settings
    spec = load_specs(settings.specs_dirs)["salary_band"]
    # The champion: the real pipeline on three days of Adult (fairness bound lifted for this first model only:
    # three days is a small sample, and what is tested is how later candidates are judged).
    first = run_pipeline(
        settings,
        "salary_band",
        demo_partitions(spec, 3),
        train_config={"optuna_trials": 1, "max_estimators": 40},
        instance=local_instance(settings),
        gate_config={"max_fairness_disparity": 1.0},
    )
    assert first.deployment is not None and first.deployment.version == 1
    champion = first.model
    repository = ModelRepository(settings.model_repository_dir)
    pointer = repository.read_deployment("salary_band")
    training_set = read_training_set(
        build_resources(settings)["data_store"].get_store(), champion.training_set_commit_id, "salary_band"
    )
    holdout = holdout_of(training_set)
    is_train = training_set[SPLIT_COLUMN] == "train"
    target = spec.target.name
    rng = np.random.default_rng(11)

    # 1. Shuffled labels: the features say nothing about the target any more.
    shuffled = training_set.copy()
    shuffled.loc[is_train, target] = rng.permutation(shuffled.loc[is_train, target].to_numpy())
    # 2. Two of the features: every other input missing (all zeros after encoding, NaN for numbers).
    fraction = training_set.copy()
    for name in spec.feature_names[2:]:
        fraction.loc[is_train, name] = np.nan if name in spec.numeric_features else None

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.resolved_mlflow_tracking_uri)
    scores = {}
    for expected_version, frame in ((2, shuffled), (3, fraction)):
        candidate = _train_candidate(settings, spec, champion, frame)
        assert candidate.version == expected_version
        decision = run_promotion_gate(
            spec, gate_thresholds(spec), candidate, holdout, settings.resolved_mlflow_tracking_uri
        )
        assert not decision.passed, decision.reason
        assert decision.metric == "roc_auc" and decision.min_improvement == 0.0  # the spec's default gate
        assert decision.champion_version == 1 and decision.candidate_score < decision.champion_score - 0.02
        assert "does not beat the champion" in decision.reason
        scores[expected_version] = (decision.candidate_score, decision.champion_score)
        tags = client.get_model_version(champion.registered_model_name, str(candidate.version)).tags
        assert (
            tags[MlflowTag.GATE] == GateVerdict.FAILED and "does not beat the champion" in tags[MlflowTag.GATE_REASON]
        )
        # The champion keeps serving: alias, pointer and installed files as they were.
        aliases = client.get_registered_model(champion.registered_model_name).aliases
        assert {alias: str(v) for alias, v in aliases.items()} == {CHAMPION_ALIAS: "1"}
        assert repository.read_deployment("salary_band") == pointer
        assert repository.installed_models() == ["salary_band-v1"]
    # Both are far below a good champion (measured: shuffled 0.62, two features 0.74, champion 0.92 ROC AUC).
    assert scores[2][1] > 0.8 and scores[2][0] < 0.7 and scores[3][0] < scores[3][1] - 0.05, scores
