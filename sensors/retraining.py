"""Retraining triggers: persistent drift, falling performance, enough new data, or the schedule.

The decision is a pure function of the signals and the cursor (tested for each ordering of events); the
sensor only gathers signals (monitoring results in the inference log's PostgreSQL, raw and model
materialisations in the Dagster instance) and turns a decision into a run request of the train job it was given
(``train_<dataset>``), tagged with the reason (:attr:`RunTag.REASON`) and its numbers (:attr:`RunTag.TRIGGER`).
The deployment gate still decides whether the retrained model is promoted.
"""

import datetime as dt
import itertools
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import psycopg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.names import RunTag
from riverbed.records import TrainingReason
from riverbed.specs import DatasetSpec, RetrainingSpec

logger = logging.getLogger(__name__)

EVIDENCE_LIMIT = 4000  # characters of the evidence JSON kept in the run tag


@dataclass(frozen=True)
class DaySignals:
    """What monitoring found for one analysed chunk: chunk ``chunk`` of the daily window ``day``."""

    day: dt.date
    drifted_features: tuple[str, ...] = ()
    estimated_performance: float | None = None
    realised_performance: float | None = None
    chunk: int = 0

    @property
    def order(self) -> tuple[dt.date, int]:
        return (self.day, self.chunk)

    @property
    def label(self) -> str:
        return self.day.isoformat() + (f"#{self.chunk}" if self.chunk else "")

    def follows(self, earlier: "DaySignals") -> bool:
        """Whether this chunk comes right after ``earlier`` (next chunk of its day, or the next day's first)."""
        if self.day == earlier.day:
            return self.chunk == earlier.chunk + 1
        return (self.day - earlier.day).days == 1 and self.chunk == 0


@dataclass(frozen=True)
class RetrainingSignals:
    days: tuple[DaySignals, ...]  # analysed days, any order
    new_records: int  # raw records landed since the last training
    now: dt.datetime


@dataclass(frozen=True)
class RetrainingState:
    """The sensor cursor: when it last asked for a run and on which evidence."""

    last_requested_at: str | None = None
    last_evidence: str | None = None

    @classmethod
    def from_cursor(cls, cursor: str | None) -> "RetrainingState":
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(data.get("last_requested_at"), data.get("last_evidence"))

    def to_cursor(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class RetrainingDecision:
    reason: TrainingReason | None
    evidence: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""


def decide_retraining(
    config: RetrainingSpec, signals: RetrainingSignals, state: RetrainingState, features: list[str]
) -> RetrainingDecision:
    """Which trigger fires now, if any: drift, then performance, then new data; never twice on one evidence."""
    if state.last_requested_at is not None and config.cooldown_minutes > 0:
        since = signals.now - dt.datetime.fromisoformat(state.last_requested_at)
        if since < dt.timedelta(minutes=config.cooldown_minutes):
            wait = dt.timedelta(minutes=config.cooldown_minutes) - since
            return RetrainingDecision(None, explanation=f"cooling down for another {wait.total_seconds():.0f} s")
    candidates = [
        _drift(config, signals, features),
        _performance(config, signals),
        _new_data(config, signals),
    ]
    for decision in candidates:
        if decision.reason is None:
            continue
        if decision.evidence == state.last_evidence:
            continue  # already acted on exactly this evidence
        return decision
    notes = "; ".join(d.explanation for d in candidates if d.explanation)
    return RetrainingDecision(None, explanation=notes or "no trigger")


def _drift(config: RetrainingSpec, signals: RetrainingSignals, features: list[str]) -> RetrainingDecision:
    needed = config.drift_consecutive_chunks
    if needed is None:
        return RetrainingDecision(None)
    watched = set(config.drift_features or features)
    days = sorted(signals.days, key=lambda d: d.order)[-needed:]
    if len(days) < needed:
        return RetrainingDecision(None, explanation=f"drift: {len(days)} analysed chunk(s), {needed} needed")
    consecutive = all(b.follows(a) for a, b in itertools.pairwise(days))
    alerting = [sorted(watched.intersection(d.drifted_features)) for d in days]
    if not consecutive or not all(alerting):
        return RetrainingDecision(None, explanation=f"drift: not alerting on {needed} consecutive chunks")
    persistent = sorted(set.intersection(*(set(a) for a in alerting))) or sorted({f for a in alerting for f in a})
    last = days[-1].label
    return RetrainingDecision(
        TrainingReason.DRIFT,
        evidence=f"drift:{last}",
        values={"drifted_features": persistent, "chunks": [d.label for d in days]},
        explanation=f"drift on {', '.join(persistent)} for {needed} consecutive chunks up to {last}",
    )


def _performance(config: RetrainingSpec, signals: RetrainingSignals) -> RetrainingDecision:
    if config.min_performance is None or not signals.days:
        return RetrainingDecision(None)
    latest = max(signals.days, key=lambda d: d.order)
    for kind, value in (("realised", latest.realised_performance), ("estimated", latest.estimated_performance)):
        if value is not None and value < config.min_performance:
            return RetrainingDecision(
                TrainingReason.PERFORMANCE,
                evidence=f"performance:{latest.label}:{kind}",
                values={f"{kind}_{config.performance_metric}": round(value, 4), "threshold": config.min_performance},
                explanation=(
                    f"{kind} {config.performance_metric} {value:.4f} < {config.min_performance} on {latest.label}"
                ),
            )
    return RetrainingDecision(None, explanation="performance above threshold")


def _new_data(config: RetrainingSpec, signals: RetrainingSignals) -> RetrainingDecision:
    if config.new_records is None:
        return RetrainingDecision(None)
    if signals.new_records < config.new_records:
        return RetrainingDecision(None, explanation=f"new data: {signals.new_records}/{config.new_records} records")
    return RetrainingDecision(
        TrainingReason.NEW_DATA,
        evidence=f"new_data:{signals.new_records}",
        values={"new_records": signals.new_records, "threshold": config.new_records},
        explanation=f"{signals.new_records} new records since the last training (>= {config.new_records})",
    )


def retraining_run_tags(dataset: str, reason: TrainingReason, evidence: dict[str, Any] | None = None) -> dict[str, str]:
    """Tags of a train run requested by the sensor (reason + evidence) or the schedule (reason only)."""
    tags = {RunTag.REASON.value: reason.value}
    if evidence is not None:
        tags[RunTag.TRIGGER.value] = json.dumps(evidence, sort_keys=True)[:EVIDENCE_LIMIT]
    tags[RunTag.DATASET.value] = dataset
    return tags


# ------------------------------------------------------------------------------------------------ signals
def new_records_since_last_training(instance: dg.DagsterInstance, model_key: dg.AssetKey, raw_key: dg.AssetKey) -> int:
    """Raw records materialised after the latest model materialisation (per run, not per partition)."""
    model = instance.fetch_materializations(model_key, limit=1)
    after = model.records[0].timestamp if model.records else None
    records_filter = dg.AssetRecordsFilter(asset_key=raw_key, after_timestamp=after)
    per_run: dict[str, int] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor)
        for record in page.records:
            materialization = record.asset_materialization
            rows = materialization.metadata.get("rows") if materialization else None
            if rows is not None and isinstance(rows.value, int | float | str):
                per_run.setdefault(record.run_id, int(rows.value))
        if not page.has_more:
            break
        cursor = page.cursor
    return sum(per_run.values())


def monitoring_days(dsn: str, dataset: str, metric: str, limit_days: int = 30) -> tuple[DaySignals, ...]:
    """Per analysed chunk: alerting features, estimated and realised performance (from ``monitoring_results``)."""
    query = """
        SELECT day, chunk, kind, name, value, alert FROM monitoring_results
        WHERE dataset = %s AND day >= (SELECT max(day) FROM monitoring_results WHERE dataset = %s) - %s
    """
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        rows = conn.execute(query, (dataset, dataset, limit_days)).fetchall()
    by_chunk: dict[tuple[dt.date, int], dict[str, Any]] = {}
    for day, chunk, kind, name, value, alert in rows:
        entry = by_chunk.setdefault((day, chunk), {"drifted": set(), "estimated": None, "realised": None})
        if kind == "univariate_drift" and alert:
            entry["drifted"].add(name)
        elif kind == "cbpe" and name == metric:
            entry["estimated"] = value
        elif kind == "realised" and name == metric:
            entry["realised"] = value
    return tuple(
        DaySignals(day, tuple(sorted(e["drifted"])), e["estimated"], e["realised"], chunk)
        for (day, chunk), e in sorted(by_chunk.items())
    )


def build_retraining_sensor(
    spec: DatasetSpec,
    train_job: UnresolvedAssetJobDefinition | dg.JobDefinition,
    *,
    model_key: dg.AssetKey,
    raw_key: dg.AssetKey,
) -> dg.SensorDefinition:
    """``retrain_<dataset>``: evaluates the triggers every minute and requests ``train_job`` runs.

    Monitoring results come from the ``inference_log`` resource; new data is counted from ``raw_key``
    materialisations since the latest ``model_key`` materialisation.
    """
    config = spec.retraining
    sensor_name = names.retrain_sensor(spec.name)

    @dg.sensor(
        name=sensor_name,
        job=train_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrains {spec.name} on persistent drift, falling performance or enough new data.",
    )
    def retrain(
        context: dg.SensorEvaluationContext, inference_log: InferenceLogResource
    ) -> dg.SensorResult | dg.SkipReason:
        state = RetrainingState.from_cursor(context.cursor)
        try:
            days = monitoring_days(inference_log.get_dsn(), spec.name, config.performance_metric)
        except Exception as error:  # database down or monitoring not set up yet: the other triggers still work
            logger.info("%s: no monitoring results (%s)", sensor_name, error)
            days = ()
        signals = RetrainingSignals(
            days=days,
            new_records=new_records_since_last_training(context.instance, model_key, raw_key),
            now=dt.datetime.now(dt.UTC),
        )
        decision = decide_retraining(config, signals, state, spec.feature_names)
        if decision.reason is None:
            return dg.SkipReason(decision.explanation)
        new_state = RetrainingState(signals.now.isoformat(), decision.evidence)
        request = dg.RunRequest(
            run_key=f"{spec.name}:{decision.evidence}",
            tags=retraining_run_tags(spec.name, decision.reason, decision.values),
        )
        context.log.info(f"retrain {spec.name}: {decision.explanation}")
        return dg.SensorResult(run_requests=[request], cursor=new_state.to_cursor())

    return retrain


def build_retraining_schedule(
    spec: DatasetSpec, train_job: UnresolvedAssetJobDefinition | dg.JobDefinition
) -> dg.ScheduleDefinition | None:
    """Periodic retraining (reason ``schedule``), stopped by default."""
    if spec.retraining.schedule_cron is None:
        return None
    return dg.ScheduleDefinition(
        name=names.retrain_schedule(spec.name),
        cron_schedule=spec.retraining.schedule_cron,
        job=train_job,
        tags=retraining_run_tags(spec.name, TrainingReason.SCHEDULE),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        execution_timezone="UTC",
    )
