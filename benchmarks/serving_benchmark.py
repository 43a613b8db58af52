"""Serving load benchmark: the gateway + MLServer + inference log under locust, against the physical floor.

Measured in one run on this machine (targets in ``TARGETS``):

- the floor: in-process predict (+ exact TreeSHAP) of one row with the deployed pipeline, and one PostgreSQL
  single-row INSERT + COMMIT on 127.0.0.1 (synchronous_commit as configured);
- locust (headless subprocess, ``benchmarks/locustfile.py``): 8 and 32 single-row clients with explanations,
  8 clients predict-only; throughput, p50/p99, failures, and CPU seconds per served request of the gateway,
  MLServer, the PostgreSQL server processes and locust itself;
- 1,000-record batches (20 sequential POSTs) with and without explanations;
- RSS of the gateway and MLServer after the load;
- audit integrity: every 2xx X-Request-ID has exactly one committed ``ok`` row, and the hash chain verifies.

Usage: ``uv run python -m benchmarks.serving_benchmark [--home DIR] [--duration 30]``
(``--render-only`` rewrites the Serving section of RESULTS.md from ``benchmarks/results/serving.json``).
Writes ``benchmarks/results/serving.json`` and the ``## Serving`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.report import machine
from tests.scratch_postgres import create_database, drop_database

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", module=r"dagster(\..*)?")
warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NML_DISABLE_USAGE_LOGGING": "1",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}.items():
    os.environ.setdefault(_key, _value)

RESULTS_DIR = HERE / "results"
RESULTS_JSON = RESULTS_DIR / "serving.json"
RESULTS_MD = HERE / "RESULTS.md"
DATASET = "salary_band"
SECTION = "## Serving"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = [
    ("explain_8", 8, True),
    ("explain_32", 32, True),
    ("predict_only_8", 8, False),
]


# ---------------------------------------------------------------------------------------------- process accounting
def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        stack += _children(current)
    return pids


def _postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (postmaster, backends, walwriter, checkpointer...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "postgres" or comm.startswith("postgres:"):
            pids.append(int(entry.name))
    return pids


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class CpuMeter:
    """CPU seconds of the gateway, MLServer (+children), PostgreSQL (per pid, so new backends count) and children."""

    def __init__(self, gateway_pid: int, mlserver_pid: int) -> None:
        self.gateway_pid = gateway_pid
        self.mlserver_pid = mlserver_pid

    def snapshot(self, locust_pid: int | None = None) -> dict[str, Any]:
        """``locust_pid``: a running locust (read from /proc); else locust runs already waited for (rusage)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "gateway": sum(_proc_cpu_seconds(p) for p in _tree(self.gateway_pid)),
            "mlserver": sum(_proc_cpu_seconds(p) for p in _tree(self.mlserver_pid)),
            "postgres": {p: _proc_cpu_seconds(p) for p in _postgres_pids()},
            "locust": _proc_cpu_seconds(locust_pid) if locust_pid else children.ru_utime + children.ru_stime,
            "benchmark": me.ru_utime + me.ru_stime,
            "machine": _machine_jiffies(),
            "time": time.perf_counter(),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], locust_seconds: float | None = None) -> dict[str, float]:
        if locust_seconds is not None:
            after = {**after, "locust": before["locust"] + locust_seconds}
        postgres = sum(v - before["postgres"].get(p, 0.0) for p, v in after["postgres"].items())
        busy = after["machine"][0] - before["machine"][0]
        parts = ("gateway", "mlserver", "locust", "benchmark")
        accounted = postgres + sum(after[p] - before[p] for p in parts)
        total = after["machine"][1] - before["machine"][1]
        wall = after["time"] - before["time"]
        return {
            "gateway": round(after["gateway"] - before["gateway"], 3),
            "mlserver": round(after["mlserver"] - before["mlserver"], 3),
            "postgres": round(postgres, 3),
            "locust": round(after["locust"] - before["locust"], 3),
            "benchmark": round(after["benchmark"] - before["benchmark"], 3),
            "machine_busy_seconds": round(busy / CLK_TCK, 3),
            "machine_busy_share": round(busy / total, 3) if total else None,
            "other_processes": round(busy / CLK_TCK - accounted, 3),
            "wall_seconds": round(wall, 3),
        }


# ---------------------------------------------------------------------------------------------- state and floor
def ensure_champion(settings: Any, spec: Any) -> dict[str, Any]:
    """The deployed salary_band champion; trains and deploys the demo's model first if the home has none."""
    from riverbed.model_repository import ModelRepository

    repository = ModelRepository(settings.model_repository_dir)
    deployment = repository.read_deployment(DATASET)
    trained_seconds = None
    if deployment is None or not repository.is_installed(deployment.served_model_name):
        from platform_assets.runner import demo_partitions, run_pipeline

        print(f"no deployed {DATASET} champion under {settings.home}: training the demo's model...", file=sys.stderr)
        began = time.perf_counter()
        run_pipeline(settings, DATASET, demo_partitions(spec, 30))
        trained_seconds = round(time.perf_counter() - began, 1)
        deployment = repository.read_deployment(DATASET)
        if deployment is None:
            raise SystemExit("the pipeline ran but deployed no champion (the promotion gate rejected it?)")
    return {
        "served_model_name": deployment.served_model_name,
        "model_dir": str(repository.model_dir(deployment.served_model_name)),
        "trained_now_seconds": trained_seconds,
    }


def _frame(pipeline: Any, info: dict[str, Any], groups: dict[str, list[int]], records: list[dict[str, Any]]):
    """The frame MLServer's runtime builds: numeric features as float64, categoricals as object/None."""
    import pandas as pd

    from serving.runtime import numeric_features

    numeric = numeric_features(pipeline, info)
    data = {}
    for name in groups:
        values = [record.get(name) for record in records]
        if name in numeric:
            data[name] = pd.Series([float("nan") if v is None else v for v in values], dtype="float64")
        else:
            data[name] = pd.Series([None if v is None else str(v) for v in values], dtype=object)
    return pd.DataFrame(data)[list(groups)]


def _median_ms(function: Any, calls: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        function()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
        "calls": calls,
    }


def measure_floor(model_dir: str, records: list[dict[str, Any]], dsn: str) -> dict[str, Any]:
    import psycopg

    from serving.explanations import predict_and_explain
    from serving.runtime import read_model_directory

    pipeline, groups, info = read_model_directory(Path(model_dir))
    try:  # the runtime's verified numpy encoder, when this version of serving/ has it
        from serving.explanations import verified_fast_encoder

        fast = verified_fast_encoder(pipeline, list(groups))
    except ImportError:
        fast = None

    def score(frame: Any, explain: bool) -> Any:
        if fast is None:
            return predict_and_explain(pipeline, groups, frame, explain)
        return predict_and_explain(pipeline, groups, frame, explain, fast)

    record = records[0]
    frame = _frame(pipeline, info, groups, [record])
    explained = _median_ms(lambda: score(frame, True), 1000)
    predict_only = _median_ms(lambda: score(frame, False), 1000)
    batch = _frame(pipeline, info, groups, records[:1000])
    batch_explained = _median_ms(lambda: score(batch, True), 5, warmup=1)
    batch_predict_only = _median_ms(lambda: score(batch, False), 5, warmup=1)
    booster = pipeline.steps[-1][1].get_booster()  # type: ignore[attr-defined]
    dump = booster.get_dump()
    model = {
        "trees": len(dump),
        "leaves": sum(tree.count("leaf=") for tree in dump),
        "max_depth": int(
            json.loads(booster.save_config())["learner"]["gradient_booster"]["tree_train_param"]["max_depth"]
        ),
        "encoded_columns": sum(len(v) for v in groups.values()),
        "input_features": len(groups),
        "fast_encoder": fast is not None,
    }
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "create table bench_commit_floor (id bigserial primary key, received_at timestamptz not null, "
            "payload jsonb not null)"
        )
        conn.commit()
        setting = conn.execute("show synchronous_commit").fetchone()
        payload = json.dumps(record)

        def insert_commit() -> None:
            conn.execute("insert into bench_commit_floor (received_at, payload) values (now(), %s::jsonb)", (payload,))
            conn.commit()

        commit = _median_ms(insert_commit, 500)
        conn.execute("drop table bench_commit_floor")
        conn.commit()
    commit["synchronous_commit"] = setting[0] if setting else None
    return {
        "model": model,
        "predict_explain": explained,
        "predict_only": predict_only,
        "batch_1000_predict_explain": batch_explained,
        "batch_1000_predict_only": batch_predict_only,
        "commit": commit,
        "floor_explain_ms": round(explained["median_ms"] + commit["median_ms"], 3),
        "floor_predict_only_ms": round(predict_only["median_ms"] + commit["median_ms"], 3),
    }


# ---------------------------------------------------------------------------------------------- load
def run_locust(
    gateway_url: str,
    key: str,
    records_path: Path,
    ids_path: Path,
    prefix: Path,
    users: int,
    seconds: int,
    explain: bool,
    meter: CpuMeter | None = None,
) -> dict[str, Any]:
    """One headless locust run; with ``meter``, CPU is measured from the first request the gateway serves
    (locust's own start-up, ~1 CPU s of imports, is excluded) to locust's exit."""
    env = {
        **os.environ,
        "RIVERBED_BENCH_KEY": key,
        "RIVERBED_BENCH_DATASET": DATASET,
        "RIVERBED_BENCH_RECORDS": str(records_path),
        "RIVERBED_BENCH_EXPLAIN": "1" if explain else "0",
        "RIVERBED_BENCH_IDS": str(ids_path),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", gateway_url,
        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    cpu = None
    with open(f"{prefix}.log", "wb") as log:
        rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        before = None
        if meter is not None:
            idle = _proc_cpu_seconds(meter.gateway_pid)
            while process.poll() is None and _proc_cpu_seconds(meter.gateway_pid) - idle < 0.02:
                time.sleep(0.02)
            before = meter.snapshot(process.pid)
        returncode = process.wait()
        if before is not None and meter is not None:
            after = meter.snapshot()
            rusage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            locust_total = (rusage_after.ru_utime + rusage_after.ru_stime) - (
                rusage_before.ru_utime + rusage_before.ru_stime
            )
            cpu = CpuMeter.delta(before, after, locust_seconds=locust_total - before["locust"])
    if returncode not in (0, 1):  # 1: some requests failed (reported below)
        raise SystemExit(f"locust exited with {returncode}; see {prefix}.log")
    stats = parse_stats(Path(f"{prefix}_stats.csv"))
    if cpu is not None:
        stats["cpu_seconds"] = cpu
    return stats


def parse_stats(path: Path) -> dict[str, Any]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    (row,) = [r for r in rows if r["Name"] == "Aggregated"]

    def number(name: str) -> float:
        value = row.get(name, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    return {
        "requests": int(number("Request Count")),
        "failures": int(number("Failure Count")),
        "rps": round(number("Requests/s"), 1),
        "p50_ms": number("50%"),
        "p90_ms": number("90%"),
        "p99_ms": number("99%"),
        "max_ms": round(number("Max Response Time"), 1),
        "avg_ms": round(number("Average Response Time"), 2),
    }


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def run_batches(gateway_url: str, key: str, records: list[dict[str, Any]], explain: bool, posts: int = 20):
    import httpx

    body = json.dumps({"records": records, "explain": explain}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies, ids = [], []
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=120) as client:
        client.post(f"/v1/{DATASET}/predict", content=body).raise_for_status()  # warm-up, not timed
        for _ in range(posts):
            began = time.perf_counter()
            response = client.post(f"/v1/{DATASET}/predict", content=body)
            latencies.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
            ids.append(response.headers["X-Request-ID"])
    return {
        "records": len(records),
        "posts": posts,
        "p50_ms": round(statistics.median(latencies), 1),
        "max_ms": round(max(latencies), 1),
        "min_ms": round(min(latencies), 1),
    }, ids


# ---------------------------------------------------------------------------------------------- audit
def audit_integrity(dsn: str, ids_by_scenario: dict[str, list[str]]) -> dict[str, Any]:
    """Every 2xx id has exactly one ``ok`` row; plus per-scenario server-side timings from ``timings_ms``."""
    import psycopg

    from serving.inference_log import verify_chain

    result: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("create temp table bench_ids (request_id text not null, scenario text not null)")
        with conn.cursor().copy("copy bench_ids (request_id, scenario) from stdin") as copy:
            for scenario, ids in ids_by_scenario.items():
                for request_id in ids:
                    copy.write_row((request_id, scenario))
        total, distinct = conn.execute("select count(*), count(distinct request_id) from bench_ids").fetchone()
        counts = conn.execute(
            "select n, count(*) from (select b.request_id, "
            "(select count(*) from inference_log l where l.request_id = b.request_id and l.status = 'ok') as n "
            "from (select distinct request_id from bench_ids) b) t group by n order by n"
        ).fetchall()
        by_count = {int(n): int(c) for n, c in counts}
        result.update(
            responses_2xx=int(total),
            distinct_ids=int(distinct),
            repeated_ids_in_responses=int(total - distinct),
            exactly_one_row=by_count.get(1, 0),
            missing=by_count.get(0, 0),
            duplicates=sum(c for n, c in by_count.items() if n > 1),
            log_rows_total=conn.execute("select count(*) from inference_log").fetchone()[0],
            log_rows_ok=conn.execute("select count(*) from inference_log where status = 'ok'").fetchone()[0],
        )
        timings = {}
        for scenario in ids_by_scenario:
            row = conn.execute(
                """
                select count(*),
                  percentile_cont(0.5) within group (order by (l.timings_ms->>'validate_ms')::float8),
                  percentile_cont(0.5) within group (order by (l.timings_ms->>'score_ms')::float8),
                  percentile_cont(0.99) within group (order by (l.timings_ms->>'score_ms')::float8),
                  percentile_cont(0.5) within group (order by (l.timings_ms->>'total_ms')::float8),
                  percentile_cont(0.99) within group (order by (l.timings_ms->>'total_ms')::float8),
                  percentile_cont(0.5) within group (order by extract(epoch from l.logged_at - l.received_at) * 1000),
                  percentile_cont(0.99) within group (order by extract(epoch from l.logged_at - l.received_at) * 1000),
                  count(distinct l.logged_at)
                from inference_log l join bench_ids b using (request_id)
                where b.scenario = %s and l.status = 'ok'
                """,
                (scenario,),
            ).fetchone()
            if row[0]:
                names = ["rows", "validate_p50_ms", "score_p50_ms", "score_p99_ms", "total_p50_ms", "total_p99_ms",
                         "received_to_write_txn_p50_ms", "received_to_write_txn_p99_ms", "write_transactions"]  # fmt: skip
                timings[scenario] = {
                    n: (round(float(v), 3) if v is not None else None) for n, v in zip(names, row, strict=True)
                }
                timings[scenario]["rows_per_write_transaction"] = round(row[0] / max(row[8], 1), 1)
        result["server_timings"] = timings
    report = verify_chain(dsn)
    result["chain"] = {"ok": report.ok, "rows_checked": report.rows_checked, "problems": list(report.problems)[:5]}
    return result


# ---------------------------------------------------------------------------------------------- orchestration
def run(home: Path, duration: int, warmup: int) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from riverbed.cli.demo_serving import sample_records
    from riverbed.cli.stack import ServingStack
    from riverbed.settings import RiverbedSettings
    from riverbed.specs import load_specs
    from serving.api_keys import create_api_key

    result: dict[str, Any] = {"machine": machine(), "duration_seconds": duration, "warmup_seconds": warmup}
    db_name, dsn = create_database("riverbed_bench")
    result["database"] = db_name
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        settings = RiverbedSettings(home=home, inference_log_dsn=dsn)
        spec = load_specs(settings.specs_dirs)[DATASET]
        result["model"] = ensure_champion(settings, spec)
        records = sample_records(spec, 2000)
        records_path = work / "records.json"
        records_path.write_text(json.dumps(records))
        print("measuring the floor...", file=sys.stderr)
        result["floor"] = measure_floor(result["model"]["model_dir"], records, dsn)

        print("starting the stack...", file=sys.stderr)
        stack = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
        try:
            assert stack.dsn is not None and stack.gateway_pid and stack.mlserver_pid
            key = create_api_key(stack.dsn, ["predict", "audit"], "serving-benchmark").key
            meter = CpuMeter(stack.gateway_pid, stack.mlserver_pid)
            ids_by_scenario: dict[str, list[str]] = {}
            result["rss_mb_idle"] = {"gateway": round(_rss_mb(stack.gateway_pid), 1),
                                     "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1)}  # fmt: skip
            scenarios = {}
            for name, users, explain in SCENARIOS:
                print(f"locust {name}: warm-up {warmup} s, then {duration} s...", file=sys.stderr)
                warm_ids = work / f"{name}-warmup-ids.txt"
                run_locust(
                    stack.gateway_url, key, records_path, warm_ids, work / f"{name}-warmup", users, warmup, explain
                )
                ids_by_scenario[f"{name}-warmup"] = _read_ids(warm_ids)
                ids_path = work / f"{name}-ids.txt"
                stats = run_locust(
                    stack.gateway_url, key, records_path, ids_path, work / name, users, duration, explain, meter
                )
                cpu = stats.pop("cpu_seconds")
                ids = _read_ids(ids_path)
                ids_by_scenario[name] = ids
                served = max(len(ids), 1)
                per_request = {
                    part: round(cpu[part] / served * 1000, 3) for part in ("gateway", "mlserver", "postgres", "locust")
                }
                per_request["total_stack"] = round(
                    per_request["gateway"] + per_request["mlserver"] + per_request["postgres"], 3
                )
                scenarios[name] = {
                    "users": users,
                    "explain": explain,
                    **stats,
                    "served_2xx": len(ids),
                    "cpu_seconds": cpu,
                    "cpu_ms_per_request": per_request,
                }
                print(f"  {name}: {json.dumps(scenarios[name])}", file=sys.stderr)
            result["scenarios"] = scenarios
            result["rss_mb_after_load"] = {
                "gateway": round(sum(_rss_mb(p) for p in _tree(stack.gateway_pid)), 1),
                "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1),
            }
            print("batches...", file=sys.stderr)
            batch_records = records[:1000]
            result["batch_explain"], batch_ids = run_batches(stack.gateway_url, key, batch_records, True)
            ids_by_scenario["batch_explain"] = batch_ids
            result["batch_predict_only"], batch_ids = run_batches(stack.gateway_url, key, batch_records, False)
            ids_by_scenario["batch_predict_only"] = batch_ids
            result["rss_mb_after_batches"] = {
                "gateway": round(sum(_rss_mb(p) for p in _tree(stack.gateway_pid)), 1),
                "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1),
            }
        finally:
            stack.stop()  # the gateway flushes its audit writer before it exits
        print("audit integrity...", file=sys.stderr)
        result["audit"] = audit_integrity(dsn, ids_by_scenario)
        explained, plain = scenarios["explain_8"], scenarios["predict_only_8"]
        result["explanation_overhead"] = {
            "locust_p50_pct": _pct(explained["p50_ms"], plain["p50_ms"]),
            "server_total_p50_pct": _pct(
                result["audit"]["server_timings"].get("explain_8", {}).get("total_p50_ms"),
                result["audit"]["server_timings"].get("predict_only_8", {}).get("total_p50_ms"),
            ),
            "floor_pct": _pct(
                result["floor"]["predict_explain"]["median_ms"], result["floor"]["predict_only"]["median_ms"]
            ),
        }
    finally:
        drop_database(db_name)
    return result


def _pct(with_value: float | None, without: float | None) -> float | None:
    if not with_value or not without:
        return None
    return round((with_value / without - 1) * 100, 1)


# ---------------------------------------------------------------------------------------------- RESULTS.md
def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    s = r["scenarios"]
    e8, e32, p8 = s["explain_8"], s["explain_32"], s["predict_only_8"]
    audit = r["audit"]
    overhead = r["explanation_overhead"]["locust_p50_pct"]
    rss = r["rss_mb_after_batches"]
    integrity_ok = (
        audit["missing"] == 0
        and audit["duplicates"] == 0
        and audit["exactly_one_row"] == audit["distinct_ids"]
        and audit["chain"]["ok"]
    )
    return [
        ("throughput, 8 clients (explanations)", ">= 300 req/s", f"{e8['rps']} req/s", e8["rps"] >= 300),
        ("throughput, 32 clients (explanations)", ">= 300 req/s", f"{e32['rps']} req/s", e32["rps"] >= 300),
        ("p50 latency, 8 clients (explanations)", "<= 15 ms", f"{e8['p50_ms']:g} ms", e8["p50_ms"] <= 15),
        ("p99 latency, 8 clients (explanations)", "<= 60 ms", f"{e8['p99_ms']:g} ms", e8["p99_ms"] <= 60),
        (
            "1,000-row batch with explanations (p50 of 20)",
            "<= 150 ms",
            f"{r['batch_explain']['p50_ms']} ms (max {r['batch_explain']['max_ms']})",
            r["batch_explain"]["p50_ms"] <= 150,
        ),
        (
            "explanations' cost on p50 latency, 8 clients",
            "<= 30%",
            f"{overhead:+.1f}% ({e8['p50_ms']:g} vs {p8['p50_ms']:g} ms)" if overhead is not None else "n/a",
            overhead is not None and overhead <= 30,
        ),
        ("gateway RSS after the load", "<= 300 MB", f"{rss['gateway']} MB", rss["gateway"] <= 300),
        ("MLServer RSS after the load", "<= 800 MB", f"{rss['mlserver']} MB", rss["mlserver"] <= 800),
        (
            "every 2xx request id has exactly one committed row",
            "all",
            f"{audit['exactly_one_row']:,} of {audit['distinct_ids']:,} ({audit['missing']} missing, "
            f"{audit['duplicates']} duplicated); chain {'intact' if audit['chain']['ok'] else 'BROKEN'} "
            f"({audit['chain']['rows_checked']:,} rows)",
            integrity_ok,
        ),
    ]


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    floor = r["floor"]
    lines = [
        SECTION,
        "",
        f"Machine: `{m['uname']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, Python {m['python']}. "
        f"Date: {m['date']}. Command: `make bench-serving` (`uv run python -m benchmarks.serving_benchmark`).",
        "",
        f"One run: the gateway (uvicorn, one process) in front of MLServer (one process) serving the deployed "
        f"`{r['model']['served_model_name']}` (the demo's tuned XGBoost), logging every request to PostgreSQL 15 on "
        f"127.0.0.1 (fresh database). Load: locust headless (`FastHttpUser`, no think time) on the **same 2-core "
        f"machine**, {r['duration_seconds']} s per scenario after a {r['warmup_seconds']} s warm-up; single-row "
        f"requests cycling over 2,000 real records. Raw figures: `benchmarks/results/serving.json`.",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    for name, goal, measured, met in targets(r):
        lines.append(f"| {name} | {goal} | {measured} | {'met' if met else '**missed**'} |")
    lines += [
        "",
        f"**Physical floor** (same run, in-process, one row): predict + TreeSHAP "
        f"{floor['predict_explain']['median_ms']} ms, predict only {floor['predict_only']['median_ms']} ms "
        f"(medians of 1,000 calls); one single-row INSERT + COMMIT {floor['commit']['median_ms']} ms (median of 500, "
        f"synchronous_commit={floor['commit']['synchronous_commit']}). Floor per explained request: "
        f"**{floor['floor_explain_ms']} ms**; per predict-only request {floor['floor_predict_only_ms']} ms. "
        f"1,000 rows in-process: predict + TreeSHAP {floor['batch_1000_predict_explain']['median_ms']:.0f} ms, predict "
        f"only {floor['batch_1000_predict_only']['median_ms']:.1f} ms (one thread, median of 5). Model: "
        f"{floor['model']['trees']} trees, {floor['model']['leaves']:,} leaves, max depth {floor['model']['max_depth']}, "
        f"{floor['model']['input_features']} input features one-hot encoded into {floor['model']['encoded_columns']} "
        "columns.",
        "",
        "| scenario | clients | req/s | p50 ms | p99 ms | 2xx | failures | CPU ms/request: gateway | MLServer | PostgreSQL | stack total | locust | machine busy | server p50 total / score ms | rows per audit commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["scenarios"].items():
        cpu = s["cpu_ms_per_request"]
        server = r["audit"]["server_timings"].get(name, {})
        busy = s["cpu_seconds"].get("machine_busy_share")
        lines.append(
            f"| {name.replace('_', ' ')} | {s['users']} | {s['rps']} | {s['p50_ms']:g} | {s['p99_ms']:g} | "
            f"{s['served_2xx']:,} | {s['failures']} | {cpu['gateway']} | {cpu['mlserver']} | {cpu['postgres']} | "
            f"{cpu['total_stack']} | {cpu['locust']} | {'' if busy is None else f'{busy * 100:.0f}%'} | "
            f"{server.get('total_p50_ms', '')} / {server.get('score_p50_ms', '')} | "
            f"{server.get('rows_per_write_transaction', '')} |"
        )
    b, bp = r["batch_explain"], r["batch_predict_only"]
    rss, idle = r["rss_mb_after_batches"], r["rss_mb_idle"]
    lines += [
        "",
        f"Batches of {b['records']:,} records, {b['posts']} sequential POSTs: with explanations p50 {b['p50_ms']} ms "
        f"(max {b['max_ms']}); predict-only p50 {bp['p50_ms']} ms (max {bp['max_ms']}). RSS: gateway "
        f"{idle['gateway']} MB idle -> {rss['gateway']} MB after the load and batches; MLServer {idle['mlserver']} MB "
        f"-> {rss['mlserver']} MB. Explanations' cost on the gateway's own p50 (`timings_ms.total_ms`, before the "
        f"audit commit): {r['explanation_overhead']['server_total_p50_pct']}%; in-process: "
        f"{r['explanation_overhead']['floor_pct']}%.",
        "",
    ]
    lines += ["What limits the missed targets (from the CPU accounting above):", "", *limits(r), ""]
    return "\n".join(lines)


def limits(r: dict[str, Any]) -> list[str]:
    """Where the CPU of one served request goes, and the throughput ceiling that implies on this machine."""
    cpus = r["machine"]["cpus"] or 1
    floor = r["floor"]
    out = []
    for name, s in r["scenarios"].items():
        cpu = s["cpu_ms_per_request"]
        floor_ms = floor["floor_explain_ms"] if s["explain"] else floor["floor_predict_only_ms"]
        with_locust = cpu["total_stack"] + cpu["locust"]
        ceiling = cpus * 1000 / with_locust if with_locust else float("nan")
        wall = s["cpu_seconds"]["wall_seconds"] or 1
        mlserver_cores = s["cpu_seconds"]["mlserver"] / wall
        mlserver_ceiling = 1000 / cpu["mlserver"] if cpu["mlserver"] else float("nan")
        busy = s["cpu_seconds"].get("machine_busy_share")
        out.append(
            f"- {name.replace('_', ' ')}: the stack spends {cpu['total_stack']} CPU ms per request (gateway "
            f"{cpu['gateway']}, MLServer {cpu['mlserver']}, PostgreSQL {cpu['postgres']}) = "
            f"{cpu['total_stack'] / floor_ms:.1f}x the {floor_ms} ms floor; locust adds {cpu['locust']} ms. MLServer "
            f"is one process (parallel_workers 0; only XGBoost runs outside the GIL) and ran at {mlserver_cores:.2f} "
            f"cores, ~{mlserver_ceiling:.0f} req/s per core at its cost"
            f"{': the bottleneck' if mlserver_cores >= 0.85 else ''} (machine {'' if busy is None else f'{busy * 100:.0f}%'} busy; both cores would allow "
            f"~{ceiling:.0f} req/s at this CPU cost). With {s['users']} clients in a closed loop, latency is "
            f"clients / throughput = {s['users'] / max(s['rps'], 1) * 1000:.0f} ms."
        )
    batch = r["batch_explain"]["p50_ms"]
    shap_1000 = floor["batch_1000_predict_explain"]["median_ms"]
    out.append(
        f"- 1,000-row batch with explanations: {batch} ms, of which exact TreeSHAP in-process alone takes "
        f"{shap_1000:.0f} ms on one core ({shap_1000 / 150:.1f}x the 150 ms target), about {shap_1000 / 2:.0f} ms "
        f"split over both cores as MLServer does for batches of 64+ rows: the target is below this model's physical "
        f"floor on this machine (TreeSHAP grows with trees x leaves x depth^2; a shallower model would be cheaper). "
        f"Predict-only: {r['batch_predict_only']['p50_ms']} ms."
    )
    return out


def write_results_md(r: dict[str, Any]) -> None:
    """Replace (or append) the ``## Serving`` section; every other section is kept as it is.

    ``run_all.py`` keeps everything from ``## Notes`` on when it rewrites the file, so the section is appended
    after the notes to survive ``make bench``.
    """
    existing = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    section = render(r)
    if SECTION + "\n" in existing:
        start = existing.index(SECTION + "\n")
        after = existing.find("\n## ", start + len(SECTION))
        rest = existing[after + 1 :] if after != -1 else ""
        text = existing[:start] + section + ("\n" + rest if rest else "")
    else:
        text = existing.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".riverbed-bench" / "serving")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per scenario")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of uncounted load before each scenario")
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from the last JSON")
    parser.add_argument("--no-write", action="store_true", help="print the JSON only; leave RESULTS.md alone")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(exist_ok=True)
    if args.render_only:
        result = json.loads(RESULTS_JSON.read_text())
    else:
        result = run(args.home.resolve(), args.duration, args.warmup)
        RESULTS_JSON.write_text(json.dumps(result, indent=2))
    if not args.no_write:
        write_results_md(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
