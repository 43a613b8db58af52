"""Event commands of the ``riverbed`` CLI: ``kafka dev-broker``, ``kafka schemas`` and ``produce``.

Imports of confluent-kafka and pandas happen inside the commands.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Annotated

import typer
from rich.console import Console

from riverbed.settings import get_settings

kafka_app = typer.Typer(help="Kafka: the embedded dev broker and the event schemas.", no_args_is_help=True)
console = Console()


def start_mock_cluster(brokers: int = 1) -> tuple[object, str]:
    """librdkafka's mock cluster (a real Kafka-protocol broker on 127.0.0.1) and its bootstrap address.

    The cluster lives as long as the returned handle (a producer) is referenced.
    """
    from confluent_kafka import Producer

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
    console.print(f"Kafka dev broker (mock cluster, {brokers} broker(s)) listening; Ctrl-C stops it", style="dim")
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
        console.print("Kafka dev broker stopped", style="dim")


@kafka_app.command("schemas")
def schemas(
    check: Annotated[bool, typer.Option("--check", help="Only report stale files; exit 1 if any.")] = False,
) -> None:
    """Rewrite the versioned JSON Schema files under schemas/ from the dataset specs and event models."""
    from riverbed.event_schemas import SCHEMAS_DIR, all_schemas, schema_text, write_schemas
    from riverbed.specs import load_specs

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


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
