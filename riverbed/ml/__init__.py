"""Pure ML code shared by the Dagster code location, monitoring and the serving runtime, with no Dagster in it.

``features`` (validated records -> typed features, split), ``model_inputs`` (one framing of model inputs),
``training`` (pipeline, Optuna tuning, evaluation, fairness), ``model_card`` and ``integrity`` (the SHA-256 of
model artifacts, checked before anything unpickles them).
"""
