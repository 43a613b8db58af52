"""The two-feature generator spec the retraining tests evaluate, with the retraining settings each test needs."""

from __future__ import annotations

from typing import Any

from riverbed.specs import DatasetSpec, parse_spec


def tiny_spec(**retraining: Any) -> DatasetSpec:
    """Dataset ``tiny`` (features age and hours, classes n/p) with ``retraining`` as its retraining section."""
    return parse_spec(
        {
            "name": "tiny",
            "description": "t",
            "source": {"kind": "generator", "function": "x.y:z"},
            "record_id": {"assign_prefix": "t-"},
            "event_time": {"assign_start": "2026-01-01", "assign_days": 1},
            "target": {"name": "y", "classes": ["n", "p"], "positive_class": "p"},
            "features": [{"name": "age", "type": "numeric"}, {"name": "hours", "type": "numeric"}],
            "retraining": retraining,
        }
    )
