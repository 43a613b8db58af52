"""Kafka ingestion benchmark: 1,000,000 raw machine_failure records through the ingestion sensor.

One run, embedded parts: librdkafka's mock cluster (in this process), the local versioned store and an
ephemeral Dagster instance in a fresh temporary home. Records come from the dataset's generator (30 days),
are encoded with ``riverbed.event_schemas.raw_message`` (not timed) and produced with lz4 compression. The
mock cluster keeps only about 5 MB per partition (older segments are dropped), so production is interleaved
with ingestion: produce a chunk, then tick the real sensor (``build_sensor_context``) until it is caught up.
Only the ticks are timed: consume + parse + dead-letter + land (Parquet, one commit on main per tick).
Afterwards the raw asset materialises the 30 affected partitions from the landing zone in one run.

Usage: ``uv run python -m benchmarks.ingestion_benchmark [--records 1000000] [--chunk 100000]``; ``--quick``
(smoke tests): 20,000 records in chunks of 5,000. Writes ``<results-dir>/kafka_ingestion.json`` (default
``benchmarks/results``) and re-renders ``RESULTS.md`` beside it.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
SECTION = "## Kafka ingestion"
COMMAND = "uv run python -m benchmarks.ingestion_benchmark"
QUICK = {"records": 20_000, "chunk": 5_000}
TARGET_RECORDS_PER_SECOND = 20_000


def run(records: int, chunk: int, home: Path) -> dict[str, Any]:
    import dagster as dg
    from confluent_kafka import Producer

    from platform_assets.dataset_assets import build_dataset_definitions
    from platform_assets.definitions import build_definitions
    from platform_assets.environments import build_resources
    from platform_assets.stages import asset_key
    from resources import landing_zone
    from riverbed.event_schemas import raw_message
    from riverbed.names import Stage, TopicKind, topic_name
    from riverbed.settings import PROJECT_ROOT, RiverbedSettings
    from riverbed.sources import load_source_records
    from riverbed.specs import load_specs
    from sensors.kafka_ingestion import IngestionLimits, build_kafka_ingestion_sensor, parse_cursor

    cluster = Producer({"test.mock.num.brokers": 1})
    brokers = cluster.list_topics(timeout=10).brokers.values()
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
    settings = RiverbedSettings(
        home=home,
        specs_dirs=[PROJECT_ROOT / "datasets"],
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
    )
    spec = load_specs(settings.specs_dirs)["machine_failure"]
    topic = topic_name(spec.name, TopicKind.RAW, prefix=settings.kafka_topic_prefix)
    limits = IngestionLimits()
    resources = build_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_kafka_ingestion_sensor(spec, build_dataset_definitions(spec).ingest_job, limits)

    t0 = time.perf_counter()
    frame = load_source_records(spec, rows=records, seed=11)
    rows = frame.to_dict("records")
    generate_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = [(str(row[spec.record_id.name]).encode(), raw_message(spec, row)) for row in rows]
    encode_seconds = time.perf_counter() - t0
    del rows
    value_bytes = sum(len(v) for _, v in encoded)

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4", "batch.num.messages": 10_000}
    )
    cursor: str | None = None
    ticks: list[dict[str, Any]] = []
    produce_seconds = 0.0
    requested_days: set[str] = set()
    for start in range(0, len(encoded), chunk):
        t0 = time.perf_counter()
        for key, value in encoded[start : start + chunk]:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)
        produce_seconds += time.perf_counter() - t0
        while True:
            t0 = time.perf_counter()
            with dg.build_sensor_context(
                cursor=cursor, instance=instance, resources={k: resources[k] for k in ("data_store", "kafka")}
            ) as context:
                result = sensor(context)
            seconds = time.perf_counter() - t0
            if isinstance(result, dg.SkipReason):
                break
            before = sum(parse_cursor(cursor).values())
            cursor = result.cursor
            consumed = sum(parse_cursor(cursor).values()) - before
            requested_days |= {r.partition_key for r in result.run_requests}
            ticks.append({"seconds": round(seconds, 4), "consumed": consumed, "runs": len(result.run_requests)})
            logging.getLogger("bench").warning("tick: %d records in %.2f s", consumed, seconds)
    tick_seconds = sum(t["seconds"] for t in ticks)
    consumed_total = sum(t["consumed"] for t in ticks)

    store = resources["data_store"].get_store()
    commit = landing_zone.main_commit(store)
    landed = landing_zone.landed_days(store, commit, spec.name)
    landed_objects = sum(len(paths) for paths in landed.values())

    # Materialise every affected raw partition from the landing zone in one run (as a backfill would).
    days = sorted(requested_days)
    defs = build_definitions(settings)
    raw = defs.resolve_assets_def(asset_key(Stage.RAW, spec.name))
    t0 = time.perf_counter()
    outcome = dg.materialize(
        [raw],
        instance=instance,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    raw_seconds = time.perf_counter() - t0
    metadata = outcome.asset_materializations_for_node(raw.node_def.name)[0].metadata
    raw_rows = int(metadata["valid_records"].value) + int(metadata["rejected_records"].value)

    return {
        "machine": machine(),
        "records": records,
        "chunk": chunk,
        "limits": {"max_records": limits.max_records, "max_seconds": limits.max_seconds},
        "value_bytes_mean": round(value_bytes / len(encoded), 1),
        "generate_seconds": round(generate_seconds, 2),
        "encode_seconds": round(encode_seconds, 2),
        "produce_seconds": round(produce_seconds, 2),
        "ticks": ticks,
        "tick_count": len(ticks),
        "tick_seconds": round(tick_seconds, 3),
        "consumed": consumed_total,
        "records_per_second": round(consumed_total / tick_seconds) if tick_seconds else None,
        "landed_days": len(landed),
        "landed_objects": landed_objects,
        "raw_partitions": len(days),
        "raw_materialise_seconds": round(raw_seconds, 2),
        "raw_rows": raw_rows,
        "raw_valid": int(metadata["valid_records"].value),
    }


def render_results(results: dict[str, Any]) -> str:
    r = results["kafka_ingestion.json"]
    met = r["records_per_second"] is not None and r["records_per_second"] >= TARGET_RECORDS_PER_SECOND
    slowest = max(r["ticks"], key=lambda t: t["seconds"])
    return "\n".join(
        [
            SECTION,
            "",
            machine_line(r["machine"], " ".join([COMMAND, *r.get("arguments", [])])),
            "",
            *scale_note(r, COMMAND),
            f"{r['records']:,} generated `machine_failure` records (30 days, {r['value_bytes_mean']} bytes of JSON "
            "each) on librdkafka's mock cluster (4 partitions, lz4), landed by the real sensor "
            f"(`kafka_ingest_machine_failure`, max {r['limits']['max_records']:,} records / "
            f"{r['limits']['max_seconds']} s per tick) into the local versioned store. The mock cluster keeps "
            f"only ~5 MB per partition, so production is interleaved: {r['chunk']:,} records, then ticks until "
            "caught up. Only ticks are timed (consume + parse + land as Parquet + one commit on main).",
            "",
            "| measure | goal | measured | |",
            "|---|---|---|---|",
            f"| ingestion into committed landing objects | >= {TARGET_RECORDS_PER_SECOND:,} records/s | "
            f"{r['records_per_second']:,} records/s ({r['consumed']:,} records in {r['tick_seconds']} s, "
            f"{r['tick_count']} ticks; slowest tick {slowest['seconds']} s for {slowest['consumed']:,}) | "
            f"{'met' if met else 'missed'} |",
            f"| raw asset, {r['raw_partitions']} partitions from the landing zone (one run) | - | "
            f"{r['raw_materialise_seconds']} s ({r['raw_rows']:,} rows, {r['raw_valid']:,} valid) | |",
            "",
            f"Not timed: generating the records {r['generate_seconds']} s, encoding them with `raw_message` "
            f"{r['encode_seconds']} s, producing {r['produce_seconds']} s. Landing zone afterwards: "
            f"{r['landed_objects']} objects over {r['landed_days']} days. Raw figures: "
            "`benchmarks/results/kafka_ingestion.json`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help=f"smoke scale: {QUICK}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.records, args.chunk = QUICK["records"], QUICK["chunk"]
    with tempfile.TemporaryDirectory(prefix="ingestion-bench-") as home:
        result = run(args.records, args.chunk, Path(home))
    result.update(scale="quick" if args.quick else "full", arguments=arguments(sys.argv[1:]))
    print(publish("kafka_ingestion.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
