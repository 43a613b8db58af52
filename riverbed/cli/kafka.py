"""Event commands of the ``riverbed`` CLI: ``kafka dev-broker``, ``kafka schemas`` and ``produce``.

pandas (the replay in :mod:`riverbed.cli.producer`, drift scenarios in :mod:`riverbed.generators`) is imported
inside ``produce`` only, so ``riverbed --help`` and the other commands do not pay for it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from riverbed.event_schemas import SCHEMAS_DIR, all_schemas, schema_text, write_schemas
from riverbed.kafka_config import KafkaNotConfiguredError, client_config
from riverbed.names import TopicKind, topic_name
from riverbed.settings import get_settings
from riverbed.specs import DatasetSpec, FeatureType, load_specs

if TYPE_CHECKING:
    import pandas as pd

    from riverbed.cli.producer import ProduceReport
    from riverbed.generators import DriftScenario

kafka_app = typer.Typer(help="Kafka: the embedded dev broker and the event schemas.", no_args_is_help=True)
console = Console()


def start_mock_cluster(brokers: int = 1) -> tuple[object, str]:
    """librdkafka's mock cluster (a real Kafka-protocol broker on 127.0.0.1) and its bootstrap address.

    The cluster lives as long as the returned handle (a producer) is referenced.
    """
    handle = Producer({"test.mock.num.brokers": brokers, "log.connection.close": False})
    metadata = handle.list_topics(timeout=10)
    address = ",".join(f"{b.host}:{b.port}" for b in sorted(metadata.brokers.values(), key=lambda b: b.id))
    return handle, address


@kafka_app.command("dev-broker")
def dev_broker(
    brokers: Annotated[int, typer.Option(min=1, max=5, help="Mock brokers in the cluster.")] = 1,
) -> None:
    """Start the embedded Kafka broker (librdkafka's mock cluster), print its bootstrap address, run until stopped.

    The address is recorded in <home>/kafka.json, where every Riverbed client looks when
    RIVERBED_KAFKA_BOOTSTRAP_SERVERS is unset. Data lives in memory: it is gone when the broker stops.
    """
    settings = get_settings()
    handle, address = start_mock_cluster(brokers)
    record = settings.kafka_dev_broker_file
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"bootstrap_servers": address, "pid": os.getpid()}))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    status = Console(stderr=True)  # stdout carries the address alone
    status.print(f"Kafka dev broker (mock cluster, {brokers} broker(s)) listening; Ctrl-C stops it", style="dim")
    typer.echo(address)
    try:
        while not stop.wait(0.5):
            handle.poll(0)  # type: ignore[attr-defined]
    finally:
        try:
            if json.loads(record.read_text()).get("pid") == os.getpid():
                record.unlink()
        except (OSError, ValueError):
            pass
        status.print("Kafka dev broker stopped", style="dim")


@kafka_app.command("schemas")
def schemas(
    check: Annotated[bool, typer.Option("--check", help="Only report stale files; exit 1 if any.")] = False,
) -> None:
    """Rewrite the versioned JSON Schema files under schemas/ from the dataset specs and event models."""
    specs = load_specs(get_settings().specs_dirs)
    if check:
        stale = [
            name
            for name, schema in all_schemas(specs).items()
            if not (SCHEMAS_DIR / name).exists() or (SCHEMAS_DIR / name).read_text() != schema_text(schema)
        ]
        for name in stale:
            typer.echo(f"stale: schemas/{name}")
        raise typer.Exit(1 if stale else 0)
    changed = write_schemas(specs)
    typer.echo(f"{len(changed)} schema file(s) written under {SCHEMAS_DIR}")


def _day_option(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=f"'{option}'") from None


def _assignment(text: str, option: str, value_name: str) -> tuple[str, float]:
    """``FEATURE=NUMBER`` -> (feature, number), BadParameter naming ``option`` otherwise."""
    feature, sep, number = text.partition("=")
    feature = feature.strip()
    if not sep or not feature:
        raise typer.BadParameter(f"{text!r} is not FEATURE={value_name}", param_hint=f"'{option}'")
    try:
        value = float(number)
    except ValueError:
        raise typer.BadParameter(f"{number.strip()!r} in {text!r} is not a number", param_hint=f"'{option}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter(f"{text!r}: {value_name} must be a finite number", param_hint=f"'{option}'")
    return feature, value


def _drift_option(
    spec: DatasetSpec, drift_from: str | None, shifts: list[str], label_flip: str | None
) -> DriftScenario | None:
    """The drift scenario the options describe (None without any), validated against the spec."""
    # pandas (through riverbed.generators): ~1.1 s to import; only `produce --drift-from` needs it
    from riverbed.generators import DriftScenario

    if drift_from is None:
        if shifts or label_flip:
            option = "--shift" if shifts else "--label-flip"
            raise typer.BadParameter("needs --drift-from (when the drift starts)", param_hint=f"'{option}'")
        return None
    try:
        start = dt.datetime.fromisoformat(drift_from)
    except ValueError:
        raise typer.BadParameter(
            f"{drift_from!r} is not an ISO 8601 date-time (e.g. 2026-10-15T00:00:00Z)", param_hint="'--drift-from'"
        ) from None
    if not shifts and not label_flip:
        raise typer.BadParameter("give --shift and/or --label-flip (what drifts)", param_hint="'--drift-from'")
    features = spec.feature_names
    feature_shifts: dict[str, float] = {}
    for text in shifts:
        feature, value = _assignment(text, "--shift", "STD_SHIFT")
        if feature not in features:
            raise typer.BadParameter(
                f"{feature!r} is not a feature of {spec.name} (features: {', '.join(features)})", param_hint="'--shift'"
            )
        if feature in feature_shifts:
            raise typer.BadParameter(f"{feature!r} is given more than once", param_hint="'--shift'")
        if spec.feature(feature).type is FeatureType.CATEGORY and not 0.0 <= value <= 1.0:
            raise typer.BadParameter(
                f"{feature!r} is a category feature: the value is the fraction (0 to 1) of records moved to its "
                f"rarest category, not {value:g}",
                param_hint="'--shift'",
            )
        feature_shifts[feature] = value
    flip_feature: str | None = None
    flip_probability = 0.0
    if label_flip is not None:
        flip_feature, flip_probability = _assignment(label_flip, "--label-flip", "PROBABILITY")
        if flip_feature not in features:
            raise typer.BadParameter(
                f"{flip_feature!r} is not a feature of {spec.name} (features: {', '.join(features)})",
                param_hint="'--label-flip'",
            )
        if not 0.0 <= flip_probability <= 1.0:
            raise typer.BadParameter(
                f"probability {flip_probability:g} is not within [0, 1]", param_hint="'--label-flip'"
            )
    try:
        drift = DriftScenario(
            start=start,
            feature_shifts=feature_shifts,
            label_flip_feature=flip_feature,
            label_flip_probability=flip_probability,
        )
        drift.validate(spec)
    except ValueError as error:  # the checks above cover the known rules; keep any other one readable
        raise typer.BadParameter(str(error), param_hint="'--shift' / '--label-flip'") from None
    return drift


def _known_spec(dataset: str) -> DatasetSpec:
    specs = load_specs(get_settings().specs_dirs)
    if dataset not in specs:
        known = ", ".join(sorted(specs)) or "none (check RIVERBED_SPECS_DIRS)"
        raise typer.BadParameter(f"unknown dataset {dataset!r}; known datasets: {known}", param_hint="'DATASET'")
    return specs[dataset]


def _checked_options(
    rate: float | None,
    limit: int | None,
    labels_after: float | None,
    labels_for: float | None,
    from_day: str | None,
    to_day: str | None,
) -> tuple[dt.date | None, dt.date | None]:
    """BadParameter naming the option for a value ``produce`` cannot use; else the days to replay."""
    if rate is not None and rate < 0:
        raise typer.BadParameter(
            f"{rate:g} is negative; give records per second (0 or no --rate: as fast as possible)",
            param_hint="'--rate'",
        )
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"{limit} is not a positive number of records", param_hint="'--limit'")
    if labels_after is not None and labels_after < 0:
        raise typer.BadParameter(f"{labels_after:g} is negative", param_hint="'--labels-after'")
    if labels_for is not None:
        if labels_after is None:
            raise typer.BadParameter("only applies with --labels-after", param_hint="'--labels-for'")
        if labels_for <= 0:
            raise typer.BadParameter(f"{labels_for:g} is not a positive number of seconds", param_hint="'--labels-for'")
    start_day = _day_option(from_day, "--from")
    end_day = _day_option(to_day, "--to")
    if start_day and end_day and end_day < start_day:
        raise typer.BadParameter(f"{end_day} is before --from {start_day}", param_hint="'--to'")
    return start_day, end_day


def _fail(err: Console, message: object) -> NoReturn:
    err.print(f"[red]{message}[/red]")
    raise typer.Exit(1) from None


def _progress_bar(err: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _report_line(report: ProduceReport, topic: str, drift: DriftScenario | None) -> str:
    window = f"event times {report.first_event_time:%Y-%m-%d %H:%M} to {report.last_event_time:%Y-%m-%d %H:%M} UTC"
    drifted = f", {report.drifted} drifted" if drift else ""
    failed = f", {report.failed} FAILED" if report.failed else ""
    return (
        f"sent {report.sent} record(s) to {topic} in {report.seconds:.1f} s "
        f"({report.rate:.0f} records/s){failed}{drifted}; {window}"
    )


def _true_labels(spec: DatasetSpec, frame: pd.DataFrame) -> dict[str, str]:
    """Sample id -> true label of the replayed records that have one."""
    target = spec.target.name
    known = frame[frame[target].notna()]
    return dict(zip(known[spec.record_id.name].astype(str), known[target].astype(str), strict=True))


DatasetArg = Annotated[str, typer.Argument(metavar="DATASET", help="Dataset to replay (see `riverbed specs list`).")]
RateOpt = Annotated[
    float | None, typer.Option("--rate", metavar="N", help="Records per second (default: as fast as possible).")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", metavar="N", help="Send at most this many records.")]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from", metavar="YYYY-MM-DD", help="First day to replay, YYYY-MM-DD (default: the dataset's first)."
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option("--to", metavar="YYYY-MM-DD", help="Last day to replay, inclusive (default: the dataset's last)."),
]
DriftFromOpt = Annotated[
    str | None,
    typer.Option(
        "--drift-from", metavar="ISO-DATETIME", help="Drift records at/after this ISO date-time (naive = UTC)."
    ),
]
ShiftOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--shift",
        metavar="FEATURE=STD_SHIFT",
        help="Shift a numeric feature by this many standard deviations; for a category feature, the fraction "
        "of records moved to its rarest category. Repeatable.",
    ),
]
LabelFlipOpt = Annotated[
    str | None,
    typer.Option(
        "--label-flip",
        metavar="FEATURE=PROBABILITY",
        help="Flip labels with this probability in the group above the feature's median (numeric) or in "
        "its most common category.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the drift's random draws.")]
LabelsAfterOpt = Annotated[
    float | None,
    typer.Option(
        "--labels-after",
        metavar="SECONDS",
        help="Then act as the labeller: publish each replayed record's true label this many seconds after "
        "its prediction event appears.",
    ),
]
LabelsForOpt = Annotated[
    float | None, typer.Option("--labels-for", metavar="SECONDS", help="How long to keep labelling (default 60).")
]


def produce(
    dataset: DatasetArg,
    rate: RateOpt = None,
    limit: LimitOpt = None,
    from_day: FromOpt = None,
    to_day: ToOpt = None,
    drift_from: DriftFromOpt = None,
    shift: ShiftOpt = None,
    label_flip: LabelFlipOpt = None,
    seed: SeedOpt = 0,
    labels_after: LabelsAfterOpt = None,
    labels_for: LabelsForOpt = None,
) -> None:
    """Simulate a data provider: replay DATASET's records onto its raw topic, optionally drifted and paced.

    Records are sent in event-time order, keyed by sample id. With --labels-after, their true labels follow
    their prediction events on the labels topic, like a delayed ground-truth feed.
    """
    start_day, end_day = _checked_options(rate, limit, labels_after, labels_for, from_day, to_day)
    spec = _known_spec(dataset)
    drift = _drift_option(spec, drift_from, shift or [], label_flip)
    # pandas (through riverbed.cli.producer): ~1.1 s to import; only this command needs it, not `riverbed --help`
    from riverbed.cli.producer import (
        KafkaUnavailableError,
        produce_records,
        publish_labels_for_predictions,
        replay_frame,
    )

    settings = get_settings()
    err = Console(stderr=True)
    try:
        kafka = client_config(settings)
    except KafkaNotConfiguredError as error:
        _fail(err, error)
    frame = replay_frame(spec, start_day, end_day, drift, seed, limit)
    if frame.empty:
        _fail(err, f"no records of {spec.name} between {start_day or 'its start'} and {end_day or 'its end'}")
    topic = topic_name(spec.name, TopicKind.RAW, prefix=settings.kafka_topic_prefix)
    try:
        with _progress_bar(err) as bar:
            task = bar.add_task(f"{spec.name} -> {topic}", total=len(frame))
            report = produce_records(
                spec,
                frame,
                kafka,
                topic,
                rate,
                progress=lambda queued: bar.update(task, completed=queued),
                drift_start=drift.start if drift else None,
            )
        typer.echo(_report_line(report, topic, drift))
        if report.failed:
            raise typer.Exit(1)
        if labels_after is None:
            return
        truth = _true_labels(spec, frame)
        duration = labels_for if labels_for is not None else 60.0
        err.print(
            f"labelling predictions of the {len(truth)} record(s) {labels_after:g} s after they appear, "
            f"for up to {duration:g} s",
            style="dim",
        )
        labelled = publish_labels_for_predictions(
            spec, kafka, truth, labels_after, duration, settings.kafka_topic_prefix
        )
    except KafkaUnavailableError as error:
        _fail(err, error)
    labels_topic = topic_name(spec.name, TopicKind.LABELS, prefix=settings.kafka_topic_prefix)
    typer.echo(f"published {labelled} label(s) of {len(truth)} record(s) to {labels_topic}")


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
    app.command("produce")(produce)
