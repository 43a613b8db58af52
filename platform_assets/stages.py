"""What every lifecycle stage's factory shares: asset keys (spelled by :mod:`riverbed.names`), the daily partitions.

``raw_<dataset>`` (daily partitions) -> ``features_<dataset>`` (+ blocking checks) -> ``training_set_<dataset>``
-> ``model_<dataset>`` (+ blocking gate) -> ``deployment_<dataset>`` -> ``monitoring_<dataset>`` (daily partitions).
"""

from collections.abc import Mapping

import dagster as dg

from resources.versioned_io_manager import PARTITIONS_AS_MAPPING_KEY
from riverbed.names import Stage, asset_name
from riverbed.specs import DatasetSpec

CODE_VERSION = "1"
PARTITIONS_AS_MAPPING = {PARTITIONS_AS_MAPPING_KEY: True}  # an input of several partitions arrives as a mapping


def asset_key(stage: Stage, dataset: str) -> dg.AssetKey:
    """The asset key of one stage of a dataset (``raw_salary_band``, ``model_machine_failure``...)."""
    return dg.AssetKey(asset_name(stage, dataset))


def daily_partitions(spec: DatasetSpec) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from the spec's first day up to today (``end_offset=1``: today is included)."""
    return dg.DailyPartitionsDefinition(start_date=spec.event_time.first_partition_day.isoformat(), end_offset=1)


def by_partition(context: dg.AssetExecutionContext, values: Mapping[str, object]) -> object:
    """A single-partition run returns its value; a range run returns the mapping."""
    if len(context.partition_keys) == 1:
        return values[context.partition_keys[0]]
    return values
