"""Asset group names: one per lifecycle stage. Jobs select assets by these."""

RAW_GROUP = "raw"
FEATURES_GROUP = "features"
TRAINING_GROUP = "training"
DEPLOYMENT_GROUP = "deployment"
MONITORING_GROUP = "monitoring"
