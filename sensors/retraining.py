"""Retraining triggers: persistent drift, falling performance, enough new data, or the schedule.

The decision is a pure function of the signals and the cursor (tested for each ordering of events); the
sensor only gathers signals (monitoring results in the inference log's PostgreSQL, raw and model
materialisations in the Dagster instance) and turns a decision into a run request of the train job it was given
(``train_<dataset>``), tagged with the reason (:attr:`RunTag.REASON`) and its numbers (:attr:`RunTag.TRIGGER`).
The deployment gate still decides whether the retrained model is promoted.

A signal that cannot be read never stops the tick: its triggers are left out and the others still evaluated.
"Not set up yet" (no inference log configured, no monitoring results for the dataset) is an INFO line and says so
in the skip reason; a real failure (database unreachable, permission refused, a table missing after the migrations
ran, raw materialisations that cannot be counted) is a WARNING, counted in ``pipeline_failures``
(:func:`riverbed.pipeline_failures.report_failure`, component ``retrain_<dataset>``) and named in the skip reason.
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
from riverbed.pipeline_failures import report_failure
from riverbed.records import TrainingReason
from riverbed.specs import DatasetSpec, RetrainingSpec
from riverbed.stack_file import InferenceLogNotAvailableError

logger = logging.getLogger(__name__)

EVIDENCE_LIMIT = 4000  # characters of the evidence JSON kept in the run tag
NO_TRIGGER = "no trigger"  # the explanation when no trigger is configured or has anything to say
MONITORING_QUERY_TIMEOUT_MS = 20_000  # well inside Dagster's sensor evaluation timeout (60 s)


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
    return RetrainingDecision(None, explanation=notes or NO_TRIGGER)


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
        conn.execute("select set_config('statement_timeout', %s, false)", (f"{MONITORING_QUERY_TIMEOUT_MS}ms",))
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


@dataclass(frozen=True)
class MonitoringRead:
    """The monitoring signals of one tick, or why there are none (``note``, in words for the skip reason)."""

    days: tuple[DaySignals, ...]
    note: str = ""
    evaluated: bool = True  # False: not read at all (not set up, or a failure), drift and performance are skipped


def _failure_reason(error: psycopg.Error) -> tuple[str, str]:
    """(reason label, words) for a database error met reading monitoring results."""
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return "monitoring_permission_denied", "permission denied"
    if isinstance(error, psycopg.errors.UndefinedTable):
        # get_dsn() applied the migrations (0003 creates the table): missing now means it was dropped
        return "monitoring_table_missing", "a table is missing although the migrations were applied"
    if isinstance(error, psycopg.errors.QueryCanceled):
        return "monitoring_query_timeout", "the query timed out"
    if isinstance(error, psycopg.OperationalError):
        return "monitoring_database_unreachable", "the database is unreachable"
    return "monitoring_query", "the query failed"


def read_monitoring(inference_log: InferenceLogResource, dataset: str, metric: str, component: str) -> MonitoringRead:
    """:func:`monitoring_days` for a sensor tick: never raises for the database; real failures are reported."""
    try:
        dsn = inference_log.resolve_dsn()
    except InferenceLogNotAvailableError as error:
        note = f"drift and performance not evaluated: monitoring is not set up ({error})"
        logger.info("%s: %s", component, note)
        return MonitoringRead((), note, evaluated=False)
    try:
        days = monitoring_days(inference_log.get_dsn(), dataset, metric)
    except psycopg.Error as error:
        reason, words = _failure_reason(error)
        detail = str(error).strip() or type(error).__name__
        note = f"drift and performance not evaluated: monitoring results could not be read, {words} ({detail})"
        report_failure(component, reason, note, dsn=dsn, log=logger)
        return MonitoringRead((), note, evaluated=False)
    if not days:
        note = f"no monitoring results for {dataset} yet (the monitoring job has not analysed a chunk)"
        logger.info("%s: %s", component, note)
        return MonitoringRead((), note)
    return MonitoringRead(days)


def count_new_records(
    instance: dg.DagsterInstance,
    model_key: dg.AssetKey,
    raw_key: dg.AssetKey,
    component: str,
    inference_log: InferenceLogResource,
) -> tuple[int | None, str]:
    """:func:`new_records_since_last_training` for a sensor tick: ``(None, why)`` after reporting a failure."""
    try:
        return new_records_since_last_training(instance, model_key, raw_key), ""
    except Exception as error:  # the instance's storage, or a raw materialisation with a malformed row count
        note = f"new data not evaluated: raw materialisations could not be counted ({type(error).__name__}: {error})"
        try:
            dsn: str | None = inference_log.resolve_dsn()
        except InferenceLogNotAvailableError:
            dsn = None  # the WARNING line alone
        report_failure(component, "new_data_count", note, dsn=dsn, log=logger)
        return None, note


def build_retraining_sensor(
    spec: DatasetSpec,
    train_job: UnresolvedAssetJobDefinition | dg.JobDefinition,
    *,
    model_key: dg.AssetKey,
    raw_key: dg.AssetKey,
    interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """``retrain_<dataset>``: evaluates the triggers every ``interval_seconds`` (the code location passes
    ``RIVERBED_RETRAINING_INTERVAL_SECONDS``) and requests ``train_job`` runs.

    Monitoring results come from the ``inference_log`` resource (:func:`read_monitoring`); new data is counted
    from ``raw_key`` materialisations since the latest ``model_key`` materialisation (:func:`count_new_records`).
    A signal that cannot be read is reported and named in the skip reason, its triggers are left out of this tick,
    and the others are still evaluated.
    """
    config = spec.retraining
    sensor_name = names.retrain_sensor(spec.name)

    @dg.sensor(
        name=sensor_name,
        job=train_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrains {spec.name} on persistent drift, falling performance or enough new data.",
    )
    def retrain(
        context: dg.SensorEvaluationContext, inference_log: InferenceLogResource
    ) -> dg.SensorResult | dg.SkipReason:
        state = RetrainingState.from_cursor(context.cursor)
        monitoring = read_monitoring(inference_log, spec.name, config.performance_metric, sensor_name)
        new_records: int | None = 0
        new_data_note = ""
        if config.new_records is not None:
            new_records, new_data_note = count_new_records(
                context.instance, model_key, raw_key, sensor_name, inference_log
            )
        effective = config  # without the triggers whose signal could not be read this tick
        if not monitoring.evaluated:
            effective = effective.model_copy(update={"drift_consecutive_chunks": None, "min_performance": None})
        if new_records is None:
            effective = effective.model_copy(update={"new_records": None})
        signals = RetrainingSignals(days=monitoring.days, new_records=new_records or 0, now=dt.datetime.now(dt.UTC))
        decision = decide_retraining(effective, signals, state, spec.feature_names)
        if decision.reason is None:
            notes = [note for note in (monitoring.note, new_data_note) if note]
            if decision.explanation != NO_TRIGGER or not notes:
                notes.append(decision.explanation)
            return dg.SkipReason("; ".join(notes))
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
