"""Model training, evaluation, fairness, MLflow logging and model cards: plain functions, no Dagster."""
