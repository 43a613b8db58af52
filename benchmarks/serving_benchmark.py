"""Serving load benchmark: the gateway + MLServer + inference log under locust, against the physical floor.

Measured in one run on this machine (targets in :func:`targets`), on two inference-log backends in turn:
``embedded`` (what ``riverbed serve`` runs when no DSN is configured: its embedded PostgreSQL, fresh data
directory) and ``machine_postgres`` (the machine's PostgreSQL on 127.0.0.1, fresh database):

- the floor: in-process predict (+ exact TreeSHAP) of one row with the deployed pipeline, encoded as the
  runtime encodes it, and one single-row INSERT + COMMIT on the backend (synchronous_commit as configured),
  each in CPU ms (medians) and in wall ms. The **floor-limited throughput** is cores x 1000 / floor CPU ms: what
  this machine could serve if a request cost nothing beyond the floor. Every throughput is stated as a share of
  it, every latency as a multiple of the floor latency, since absolute figures move with the machine;
- locust (headless subprocess, ``benchmarks/locustfile.py``): 8 and 32 single-row clients with explanations,
  8 clients predict-only; throughput, p50/p99, failures, and CPU seconds per served request of the gateway,
  MLServer, the backend's PostgreSQL processes and locust itself, plus the CPU other processes took meanwhile;
- a mixed load: the 8-client load with explanations plus hostile requests making 5% of all requests (bodies of
  ~8 MiB, invalid records, no valid key), run between two all-clean runs of the same load (the log grows through
  the run); the clean requests' throughput as a share of the mean of those two, and the inference-log writer's
  health (``/readyz`` and ``/metrics``) polled during and after it;
- 1,000-record batches (20 sequential POSTs) with and without explanations;
- RSS of the gateway and MLServer after the load;
- audit integrity: every 2xx X-Request-ID has exactly one committed ``ok`` row, and the hash chain verifies.

Usage: ``uv run python -m benchmarks.serving_benchmark [--home DIR] [--duration 30] [--backends embedded,...]``
(``--render-only`` rewrites the Serving section of RESULTS.md from ``benchmarks/results/serving.json``).
Writes ``benchmarks/results/serving.json`` and the ``## Serving`` section of ``benchmarks/RESULTS.md``; with the
defaults the whole run takes about 8 minutes (plus training the demo's model once, if the home has none).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import machine  # noqa: E402
from tests.scratch_postgres import create_database, drop_database  # noqa: E402

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

BACKENDS = ("embedded", "machine_postgres")
BACKEND_TITLES = {
    "embedded": "embedded PostgreSQL (`riverbed serve` default)",
    "machine_postgres": "machine PostgreSQL",
}
SCENARIOS = [  # name, clients, explanations
    ("explain_8", 8, True),
    ("explain_32", 32, True),
    ("predict_only_8", 8, False),
]
MIXED = "mixed_8"  # explain_8's clean load plus hostile requests
AFTER_MIXED = "explain_8_after"  # explain_8 again, right after the mixed load
HOSTILE_SHARE = 0.05
HOSTILE_USERS = 2
SHARE_TARGET = 0.55  # of the floor-limited throughput, at 8 and 32 clients with explanations
P50_FLOOR_MULTIPLE = 4.0  # p50 at 8 clients within this multiple of the floor latency
MIXED_TARGET = 0.90  # clean throughput under the mixed load, as a share of the all-clean run
QUIET_BUSY_SHARE = 0.25  # a scenario starts once the machine is this idle (or after QUIET_WAIT_SECONDS)
QUIET_WAIT_SECONDS = 20.0


# ---------------------------------------------------------------------------------------------- process accounting
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat (0 if it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0  # fields 14 and 15 of stat


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


def wait_until_quiet(limit: float = QUIET_BUSY_SHARE, timeout: float = QUIET_WAIT_SECONDS) -> dict[str, float]:
    """Wait (at most ``timeout`` s) until the machine is at most ``limit`` busy over one second: other work on a
    2-core machine (a test suite, a build) moves every figure. Returns the wait and the last busy share."""
    began = time.monotonic()
    while True:
        busy0, total0 = _machine_jiffies()
        time.sleep(1.0)
        busy1, total1 = _machine_jiffies()
        share = (busy1 - busy0) / max(total1 - total0, 1)
        if share <= limit or time.monotonic() - began >= timeout:
            return {"waited_seconds": round(time.monotonic() - began, 1), "busy_share_before": round(share, 3)}


class PostgresServer:
    """The PostgreSQL processes serving one database: its postmaster, the auxiliary processes (WAL writer,
    checkpointer...) and the client backends of that database, found again at every snapshot (new backends
    count); backends of other databases (other work on the machine's server) do not."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute("select pg_backend_pid(), current_database()").fetchone()
            assert row is not None
            backend, self.database = int(row[0]), str(row[1])
            fields = _stat_fields(backend)  # read while the connection holds the backend open
        if fields is None:
            raise RuntimeError(f"cannot read the PostgreSQL backend {backend} in /proc")
        self.postmaster = int(fields[1])  # ppid
        self._client = re.compile(r"\(\d+\)|\[local\]")  # "user db host(port) state" or "user db [local] state"
        self._mine = re.compile(rf"\s{re.escape(self.database)}\s")

    def pids(self) -> list[int]:
        found = [self.postmaster]
        for child in _children(self.postmaster):
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if not self._client.search(title) or self._mine.search(f" {title} "):
                found.append(child)
        return found


class CpuMeter:
    """CPU seconds of the gateway, MLServer (+children), the backend's PostgreSQL (per pid, so new backends count),
    locust, this process, and the whole machine (so other processes' share is known)."""

    def __init__(self, gateway_pid: int, mlserver_pid: int, postgres: PostgresServer) -> None:
        self.gateway_pid = gateway_pid
        self.mlserver_pid = mlserver_pid
        self.postgres = postgres

    def snapshot(self, locust_pid: int | None = None) -> dict[str, Any]:
        """``locust_pid``: a running locust (read from /proc); else locust runs already waited for (rusage)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "gateway": sum(_proc_cpu_seconds(p) for p in _tree(self.gateway_pid)),
            "mlserver": sum(_proc_cpu_seconds(p) for p in _tree(self.mlserver_pid)),
            "postgres": {p: _proc_cpu_seconds(p) for p in self.postgres.pids()},
            "locust": _proc_cpu_seconds(locust_pid) if locust_pid else children.ru_utime + children.ru_stime,
            "benchmark": me.ru_utime + me.ru_stime,
            "machine": _machine_jiffies(),
            "time": time.perf_counter(),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], locust_seconds: float | None = None) -> dict[str, Any]:
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
            "other_processes": round(max(busy / CLK_TCK - accounted, 0.0), 3),
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


def _timed(function: Any, calls: int, warmup: int = 20) -> dict[str, float]:
    """Median and p99 wall ms of ``calls`` calls, and their median CPU ms (this process, every thread)."""
    for _ in range(warmup):
        function()
    walls, cpus = [], []
    for _ in range(calls):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        function()
        walls.append((time.perf_counter() - wall0) * 1000)
        cpus.append((time.process_time() - cpu0) * 1000)
    walls.sort()
    return {
        "median_ms": round(statistics.median(walls), 4),
        "p99_ms": round(walls[max(int(len(walls) * 0.99) - 1, 0)], 4),
        "cpu_median_ms": round(statistics.median(cpus), 4),
        "calls": calls,
    }


def measure_model_floor(model_dir: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """In-process model work for one row and for 1,000 rows, on one thread, encoded as the runtime encodes
    the inputs the gateway sends (the verified fast encoder on plain columns; scikit-learn if it has none)."""
    from riverbed.ml.model_inputs import frame_model_inputs, model_input_columns
    from serving.explanations import explain_encoded, predict_and_explain, verified_fast_encoder
    from serving.runtime import numeric_features, read_model_directory

    pipeline, groups, info = read_model_directory(Path(model_dir))
    features = list(groups)
    numeric = numeric_features(pipeline, info)
    fast = verified_fast_encoder(pipeline, features)

    def scorer(rows: list[dict[str, Any]], explain: bool) -> Any:
        columns = {name: [row.get(name) for row in rows] for name in features}
        if fast is None:
            import pandas as pd

            frame = frame_model_inputs(pd.DataFrame(columns), features, numeric)
            return lambda: predict_and_explain(pipeline, groups, frame, explain)

        def score() -> Any:
            encoded = fast.encode_columns(model_input_columns(columns, features, numeric), len(rows))
            return explain_encoded(pipeline, groups, encoded, explain)

        return score

    explained = _timed(scorer(records[:1], True), 1000)
    predict_only = _timed(scorer(records[:1], False), 1000)
    batch_explained = _timed(scorer(records[:1000], True), 5, warmup=1)
    batch_predict_only = _timed(scorer(records[:1000], False), 5, warmup=1)
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
    return {
        "model": model,
        "predict_explain": explained,
        "predict_only": predict_only,
        "batch_1000_predict_explain": batch_explained,
        "batch_1000_predict_only": batch_predict_only,
    }


def measure_commit(dsn: str, record: dict[str, Any]) -> dict[str, Any]:
    """One single-row INSERT + COMMIT, 500 times: wall ms, and CPU ms of the client plus the server backend."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute(
            "create table bench_commit_floor (id bigserial primary key, received_at timestamptz not null, "
            "payload jsonb not null)"
        )
        conn.commit()
        setting = conn.execute("show synchronous_commit").fetchone()
        backend_row = conn.execute("select pg_backend_pid()").fetchone()
        backend = int(backend_row[0]) if backend_row else 0
        payload = json.dumps(record)

        def insert_commit() -> None:
            conn.execute("insert into bench_commit_floor (received_at, payload) values (now(), %s::jsonb)", (payload,))
            conn.commit()

        for _ in range(20):
            insert_commit()
        server_before = _proc_cpu_seconds(backend)
        commit = _timed(insert_commit, 500, warmup=0)
        server_ms = (_proc_cpu_seconds(backend) - server_before) * 1000 / 500
        conn.execute("drop table bench_commit_floor")
        conn.commit()
    commit["client_cpu_median_ms"] = commit.pop("cpu_median_ms")
    commit["server_cpu_ms"] = round(server_ms, 4)  # mean: /proc counts in clock ticks
    commit["cpu_ms"] = round(commit["client_cpu_median_ms"] + server_ms, 4)
    commit["synchronous_commit"] = setting[0] if setting else None
    return commit


def floor_of(model_floor: dict[str, Any], commit: dict[str, Any], cpus: int) -> dict[str, Any]:
    """Floor CPU and latency per request (model work + one commit) and the floor-limited throughput."""
    out: dict[str, Any] = {}
    for kind, part in (("explain", "predict_explain"), ("predict_only", "predict_only")):
        cpu = model_floor[part]["cpu_median_ms"] + commit["cpu_ms"]
        out[f"{kind}_cpu_ms"] = round(cpu, 4)
        out[f"{kind}_latency_ms"] = round(model_floor[part]["median_ms"] + commit["median_ms"], 4)
        out[f"{kind}_limited_rps"] = round(cpus * 1000 / cpu, 1)
    return out


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
    hostile_rps: float = 0.0,
) -> dict[str, Any]:
    """One headless locust run; with ``meter``, CPU is measured from the first request the gateway serves
    (locust's own start-up, ~1 CPU s of imports, is excluded) to locust's exit. ``hostile_rps`` > 0 adds
    :data:`HOSTILE_USERS` hostile users sending that many requests per second in all."""
    env = {
        **os.environ,
        "RIVERBED_BENCH_KEY": key,
        "RIVERBED_BENCH_DATASET": DATASET,
        "RIVERBED_BENCH_RECORDS": str(records_path),
        "RIVERBED_BENCH_EXPLAIN": "1" if explain else "0",
        "RIVERBED_BENCH_IDS": str(ids_path),
        "RIVERBED_BENCH_HOSTILE_RPS": str(hostile_rps),
        "RIVERBED_BENCH_HOSTILE_USERS": str(HOSTILE_USERS),
    }
    total_users = users + (HOSTILE_USERS if hostile_rps > 0 else 0)
    classes = ["SingleRowClient", *(["HostileClient"] if hostile_rps > 0 else [])]
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "-u",
        str(total_users),
        "-r",
        str(total_users),
        "-t",
        f"{seconds}s",
        "--host",
        gateway_url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *classes,
    ]
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
    rows = read_stats(Path(f"{prefix}_stats.csv"))
    stats = rows["predict"] if "predict" in rows else rows["Aggregated"]
    if hostile_rps > 0:
        stats["hostile"] = {name: row for name, row in rows.items() if name.startswith("hostile")}
        stats["aggregated"] = rows["Aggregated"]
    if cpu is not None:
        stats["cpu_seconds"] = cpu
    return stats


def read_stats(path: Path) -> dict[str, dict[str, Any]]:
    """locust's stats CSV: one row per request name, and ``Aggregated``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    def parsed(row: dict[str, str]) -> dict[str, Any]:
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

    return {row["Name"]: parsed(row) for row in rows}


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


class WriterWatch:
    """Polls the gateway's ``/readyz`` (every 0.5 s) and ``/metrics`` (every 2 s) in a thread: whether the
    inference-log writer ever degraded (database unreachable, requests spooled) while hostile traffic ran."""

    def __init__(self, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self.polls: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer-watch", daemon=True)

    def poll(self) -> dict[str, Any]:
        import httpx

        seen: dict[str, Any] = {"at": round(time.monotonic(), 2)}
        try:
            ready = httpx.get(f"{self.gateway_url}/readyz", timeout=5)
            body = ready.json()
            seen.update(
                http_status=ready.status_code,
                status=body.get("status"),
                database=body.get("database"),
                spool_depth=body.get("audit_spool_depth"),
            )
            if len(self.polls) % 4 == 0:
                text = httpx.get(f"{self.gateway_url}/metrics", timeout=5).text
                for name in ("riverbed_audit_degraded", "riverbed_audit_spool_depth"):
                    found = re.search(rf"^{name} (\S+)$", text, re.M)
                    seen[name] = float(found.group(1)) if found else None
        except Exception as error:  # a failed poll is itself a finding
            seen["error"] = f"{type(error).__name__}: {error}"
        self.polls.append(seen)
        return seen

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def __enter__(self) -> WriterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self, after: dict[str, Any]) -> dict[str, Any]:
        def degraded(p: dict[str, Any]) -> bool:
            return bool(
                p.get("error")
                or p.get("http_status") != 200
                or p.get("status") != "ready"
                or (p.get("spool_depth") or 0) > 0
                or (p.get("riverbed_audit_degraded") or 0) > 0
                or (p.get("riverbed_audit_spool_depth") or 0) > 0
            )

        bad = [p for p in self.polls if degraded(p)]
        return {
            "polls_during": len(self.polls),
            "metrics_reads_during": sum(1 for p in self.polls if "riverbed_audit_degraded" in p),
            "degraded_polls_during": len(bad),
            "first_degraded": bad[0] if bad else None,
            "max_spool_depth": max([p.get("spool_depth") or 0 for p in self.polls] + [0]),
            "after": after,
            "degraded_after": degraded(after),
            "never_degraded": not bad and not degraded(after) and bool(self.polls),
        }


# ---------------------------------------------------------------------------------------------- audit
def audit_integrity(dsn: str, ids_by_scenario: dict[str, list[str]], settings: Any) -> dict[str, Any]:
    """Every 2xx id has exactly one ``ok`` row; plus per-scenario server-side timings from ``timings_ms``."""
    import psycopg

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
                names = [
                    "rows",
                    "validate_p50_ms",
                    "score_p50_ms",
                    "score_p99_ms",
                    "total_p50_ms",
                    "total_p99_ms",
                    "received_to_write_txn_p50_ms",
                    "received_to_write_txn_p99_ms",
                    "write_transactions",
                ]
                timings[scenario] = {
                    n: (round(float(v), 3) if v is not None else None) for n, v in zip(names, row, strict=True)
                }
                timings[scenario]["rows_per_write_transaction"] = round(row[0] / max(row[8], 1), 1)
        result["server_timings"] = timings
    from serving import inference_log

    verify = getattr(inference_log, "verify_chain_from_settings", None)
    report = verify(dsn, settings) if verify is not None else inference_log.verify_chain(dsn)
    result["chain"] = {"ok": report.ok, "rows_checked": report.rows_checked, "problems": list(report.problems)[:5]}
    return result


# ---------------------------------------------------------------------------------------------- orchestration
def checkpoints(dsn: str) -> int | None:
    """Checkpoints the server has made so far (timed + requested): one during a scenario stalls its commits.
    On a shared server other databases' CREATE/DROP DATABASE each force one."""
    import psycopg

    queries = (
        "select num_timed + num_requested from pg_stat_checkpointer",  # PostgreSQL 17+
        "select checkpoints_timed + checkpoints_req from pg_stat_bgwriter",
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for query in queries:
                try:
                    row = conn.execute(query).fetchone()
                except psycopg.Error:
                    continue
                return int(row[0]) if row else None
    except psycopg.Error:
        return None
    return None


def _scenario(
    stack: Any,
    key: str,
    meter: CpuMeter,
    work: Path,
    records_path: Path,
    name: str,
    users: int,
    explain: bool,
    duration: int,
    warmup: int,
    hostile_rps: float = 0.0,
) -> tuple[dict[str, Any], list[str], list[str]]:
    quiet = wait_until_quiet()
    print(f"  locust {name}: warm-up {warmup} s, then {duration} s ({quiet})...", file=sys.stderr)
    warm_ids = work / f"{name}-warmup-ids.txt"
    run_locust(stack.gateway_url, key, records_path, warm_ids, work / f"{name}-warmup", users, warmup, explain)
    ids_path = work / f"{name}-ids.txt"
    checkpoints_before = checkpoints(stack.dsn)
    stats = run_locust(
        stack.gateway_url, key, records_path, ids_path, work / name, users, duration, explain, meter, hostile_rps
    )
    checkpoints_after = checkpoints(stack.dsn)
    cpu = stats.pop("cpu_seconds")
    ids = _read_ids(ids_path)
    served = max(len(ids), 1)
    per_request = {part: round(cpu[part] / served * 1000, 3) for part in ("gateway", "mlserver", "postgres", "locust")}
    per_request["total_stack"] = round(per_request["gateway"] + per_request["mlserver"] + per_request["postgres"], 3)
    # the rate locust reports counts the requests it timed; served 2xx over the metered time is the same load
    return (
        {
            "users": users,
            "explain": explain,
            **stats,
            "served_2xx": len(ids),
            "cpu_seconds": cpu,
            "cpu_ms_per_request": per_request,
            "quiet_before": quiet,
            "checkpoints_during": (
                checkpoints_after - checkpoints_before
                if checkpoints_before is not None and checkpoints_after is not None
                else None
            ),
        },
        _read_ids(warm_ids),
        ids,
    )


def run_backend(
    backend: str, home: Path, records: list[dict[str, Any]], model_floor: dict[str, Any], duration: int, warmup: int
) -> dict[str, Any]:
    """Start the stack on one inference-log backend, measure the commit floor there, then every scenario."""
    from riverbed.cli.stack import ServingStack
    from riverbed.settings import RiverbedSettings
    from serving.api_keys import create_api_key

    cpus = os.cpu_count() or 1
    db_name = None
    if backend == "machine_postgres":
        db_name, dsn = create_database("riverbed_bench")
        settings = RiverbedSettings(home=home, inference_log_dsn=dsn)
    else:  # what `riverbed serve` does with no DSN configured: the embedded server under <home>, fresh
        settings = RiverbedSettings(home=home, inference_log_dsn=None)
        shutil.rmtree(settings.embedded_postgres_dir, ignore_errors=True)
        shutil.rmtree(settings.audit_checkpoint_path, ignore_errors=True)  # they describe the wiped chain
    shutil.rmtree(settings.audit_spool_path, ignore_errors=True)  # the benchmark's home: nothing to replay
    out: dict[str, Any] = {"backend": backend, "database": db_name or "embedded"}
    work = Path(tempfile.mkdtemp(prefix=f"serving-bench-{backend}-"))
    records_path = work / "records.json"
    records_path.write_text(json.dumps(records))
    try:
        print(f"[{backend}] starting the stack...", file=sys.stderr)
        began = time.perf_counter()
        stack = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
        out["stack_start_seconds"] = round(time.perf_counter() - began, 1)
        try:
            assert stack.dsn is not None and stack.gateway_pid and stack.mlserver_pid
            out["commit"] = measure_commit(stack.dsn, records[0])
            out["floor"] = floor_of(model_floor, out["commit"], cpus)
            key = create_api_key(stack.dsn, ["predict", "audit"], "serving-benchmark").key
            meter = CpuMeter(stack.gateway_pid, stack.mlserver_pid, PostgresServer(stack.dsn))
            ids_by_scenario: dict[str, list[str]] = {}
            out["rss_mb_idle"] = {
                "gateway": round(_rss_mb(stack.gateway_pid), 1),
                "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1),
            }
            scenarios: dict[str, Any] = {}

            def clean(name: str, users: int, explain: bool) -> None:
                scenarios[name], ids_by_scenario[f"{name}-warmup"], ids_by_scenario[name] = _scenario(
                    stack, key, meter, work, records_path, name, users, explain, duration, warmup
                )
                print(f"  {name}: {json.dumps(scenarios[name])}", file=sys.stderr)

            # The mixed load is bracketed by two all-clean runs of the same load (explain_8 before, explain_8_after
            # after): the log grows through the run, and the hostile requests' effect is told apart from that.
            clean("explain_8", 8, True)
            clean_rps = scenarios["explain_8"]["rps"]  # hostile users add 5% of all requests at this rate
            hostile_rps = round(clean_rps * HOSTILE_SHARE / (1 - HOSTILE_SHARE), 2)
            with WriterWatch(stack.gateway_url) as watch:
                scenarios[MIXED], ids_by_scenario[f"{MIXED}-warmup"], ids_by_scenario[MIXED] = _scenario(
                    stack, key, meter, work, records_path, MIXED, 8, True, duration, warmup, hostile_rps
                )
            time.sleep(1.0)
            scenarios[MIXED]["hostile_rps_asked"] = hostile_rps
            scenarios[MIXED]["writer"] = watch.summary(after=watch.poll())
            print(f"  {MIXED}: {json.dumps(scenarios[MIXED])}", file=sys.stderr)
            clean(AFTER_MIXED, 8, True)
            for name, users, explain in SCENARIOS[1:]:
                clean(name, users, explain)
            out["scenarios"] = scenarios
            out["rss_mb_after_load"] = {
                "gateway": round(sum(_rss_mb(p) for p in _tree(stack.gateway_pid)), 1),
                "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1),
            }
            print(f"[{backend}] batches...", file=sys.stderr)
            batch_records = records[:1000]
            out["batch_explain"], ids_by_scenario["batch_explain"] = run_batches(
                stack.gateway_url, key, batch_records, True
            )
            out["batch_predict_only"], ids_by_scenario["batch_predict_only"] = run_batches(
                stack.gateway_url, key, batch_records, False
            )
            out["rss_mb_after_batches"] = {
                "gateway": round(sum(_rss_mb(p) for p in _tree(stack.gateway_pid)), 1),
                "mlserver": round(sum(_rss_mb(p) for p in _tree(stack.mlserver_pid)), 1),
            }
            dsn = stack.dsn
        finally:
            stack.stop()  # the gateway flushes its audit writer before it exits
        print(f"[{backend}] audit integrity...", file=sys.stderr)
        if backend == "embedded":  # stopped with the stack: attach to its data directory again to read it
            from serving.embedded_postgres import start_embedded_postgres

            embedded = start_embedded_postgres(settings.embedded_postgres_dir)
            try:
                out["audit"] = audit_integrity(embedded.dsn, ids_by_scenario, settings)
            finally:
                embedded.stop()
        else:
            out["audit"] = audit_integrity(dsn, ids_by_scenario, settings)
        explained, plain = out["scenarios"]["explain_8"], out["scenarios"]["predict_only_8"]
        out["explanation_overhead"] = {
            "locust_p50_pct": _pct(explained["p50_ms"], plain["p50_ms"]),
            "server_total_p50_pct": _pct(
                out["audit"]["server_timings"].get("explain_8", {}).get("total_p50_ms"),
                out["audit"]["server_timings"].get("predict_only_8", {}).get("total_p50_ms"),
            ),
            "floor_pct": _pct(model_floor["predict_explain"]["median_ms"], model_floor["predict_only"]["median_ms"]),
        }
    finally:
        if db_name is not None:
            drop_database(db_name)
        shutil.rmtree(work, ignore_errors=True)
    return out


def run(home: Path, duration: int, warmup: int, backends: list[str]) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from riverbed.cli.demo_serving import sample_records
    from riverbed.settings import RiverbedSettings
    from riverbed.specs import load_specs

    began = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "duration_seconds": duration, "warmup_seconds": warmup}
    settings = RiverbedSettings(home=home, inference_log_dsn=None)
    spec = load_specs(settings.specs_dirs)[DATASET]
    result["model"] = ensure_champion(settings, spec)
    records = sample_records(spec, 2000)
    print("measuring the floor...", file=sys.stderr)
    result["model_floor"] = measure_model_floor(result["model"]["model_dir"], records)
    result["backends"] = {
        backend: run_backend(backend, home, records, result["model_floor"], duration, warmup) for backend in backends
    }
    result["run_seconds"] = round(time.perf_counter() - began, 1)
    return result


def _pct(with_value: float | None, without: float | None) -> float | None:
    if not with_value or not without:
        return None
    return round((with_value / without - 1) * 100, 1)


# ---------------------------------------------------------------------------------------------- RESULTS.md
def share(b: dict[str, Any], name: str) -> float:
    """A scenario's throughput as a share of the floor-limited throughput measured in the same run."""
    s = b["scenarios"][name]
    limited = b["floor"]["explain_limited_rps" if s["explain"] else "predict_only_limited_rps"]
    return float(s["rps"]) / limited


def clean_reference(b: dict[str, Any]) -> float:
    """The all-clean rate the mixed load is compared with: the mean of the clean runs just before and after it."""
    runs = [b["scenarios"][name]["rps"] for name in ("explain_8", AFTER_MIXED) if name in b["scenarios"]]
    return float(sum(runs)) / max(len(runs), 1)


def mixed_share(b: dict[str, Any]) -> float:
    return float(b["scenarios"][MIXED]["rps"]) / max(clean_reference(b), 1e-9)


def targets(b: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, goal, measured, met) for one backend."""
    s = b["scenarios"]
    e8, e32, p8, mixed = s["explain_8"], s["explain_32"], s["predict_only_8"], s[MIXED]
    floor = b["floor"]
    audit = b["audit"]
    overhead = b["explanation_overhead"]["locust_p50_pct"]
    rss = b["rss_mb_after_batches"]
    writer = mixed["writer"]
    hostile = mixed["hostile"]
    hostile_requests = sum(h["requests"] for h in hostile.values())
    hostile_bad = sum(h["failures"] for h in hostile.values())
    integrity_ok = (
        audit["missing"] == 0
        and audit["duplicates"] == 0
        and audit["exactly_one_row"] == audit["distinct_ids"]
        and audit["chain"]["ok"]
    )
    p50_multiple = e8["p50_ms"] / floor["explain_latency_ms"]
    limited = floor["explain_limited_rps"]
    return [
        (
            "throughput, 8 clients (explanations)",
            f">= {SHARE_TARGET:.0%} of floor-limited",
            f"{e8['rps']} req/s = {share(b, 'explain_8'):.0%} of {limited:.0f}",
            share(b, "explain_8") >= SHARE_TARGET,
        ),
        (
            "throughput, 32 clients (explanations)",
            f">= {SHARE_TARGET:.0%} of floor-limited",
            f"{e32['rps']} req/s = {share(b, 'explain_32'):.0%} of {limited:.0f}",
            share(b, "explain_32") >= SHARE_TARGET,
        ),
        (
            "p50 latency, 8 clients (explanations)",
            f"<= {P50_FLOOR_MULTIPLE:g}x floor latency",
            f"{e8['p50_ms']:g} ms = {p50_multiple:.1f}x {floor['explain_latency_ms']:.2f} ms",
            p50_multiple <= P50_FLOOR_MULTIPLE,
        ),
        (
            "mixed load (5% hostile): clean throughput",
            f">= {MIXED_TARGET:.0%} of all-clean",
            f"{mixed['rps']} vs {clean_reference(b):.1f} req/s (clean before / after: {e8['rps']} / "
            f"{s[AFTER_MIXED]['rps'] if AFTER_MIXED in s else '-'}) = {mixed_share(b):.0%}; {hostile_requests} hostile, "
            f"{hostile_bad} not refused as owed",
            mixed_share(b) >= MIXED_TARGET and hostile_bad == 0 and mixed["failures"] == 0,
        ),
        (
            "mixed load: inference-log writer never degraded",
            "never",
            f"{writer['polls_during']} /readyz polls ({writer['metrics_reads_during']} /metrics) during, "
            f"{writer['degraded_polls_during']} degraded; after: "
            f"{'degraded' if writer['degraded_after'] else 'ready, spool empty'}",
            writer["never_degraded"],
        ),
        (
            "throughput, 8 and 32 clients (earlier target)",
            ">= 300 req/s",
            f"{e8['rps']} / {e32['rps']} req/s",
            e8["rps"] >= 300 and e32["rps"] >= 300,
        ),
        (
            "p50 / p99 latency, 8 clients (earlier target)",
            "<= 15 / 60 ms",
            f"{e8['p50_ms']:g} / {e8['p99_ms']:g} ms",
            e8["p50_ms"] <= 15 and e8["p99_ms"] <= 60,
        ),
        (
            "1,000-row batch with explanations (p50 of 20)",
            "<= 150 ms",
            f"{b['batch_explain']['p50_ms']} ms (max {b['batch_explain']['max_ms']})",
            b["batch_explain"]["p50_ms"] <= 150,
        ),
        (
            "explanations' cost on p50 latency, 8 clients",
            "<= 30%",
            f"{overhead:+.1f}% ({e8['p50_ms']:g} vs {p8['p50_ms']:g} ms)" if overhead is not None else "n/a",
            overhead is not None and overhead <= 30,
        ),
        (
            "gateway / MLServer RSS after the load",
            "<= 300 / 800 MB",
            f"{rss['gateway']} / {rss['mlserver']} MB",
            rss["gateway"] <= 300 and rss["mlserver"] <= 800,
        ),
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
    mf = r["model_floor"]
    backends: dict[str, Any] = r["backends"]
    names = list(backends)
    lines = [
        SECTION,
        "",
        f"Machine: `{m['uname']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, Python {m['python']}. "
        f"Date: {m['date']}. Command: `make bench-serving` (`uv run python -m benchmarks.serving_benchmark`), "
        f"{r.get('run_seconds', 0) / 60:.1f} minutes.",
        "",
        f"One run, on each inference-log backend in turn ({', '.join(BACKEND_TITLES[n] for n in names)}; fresh "
        f"database each): the gateway (uvicorn, one process) in front of MLServer (one process) serving the deployed "
        f"`{r['model']['served_model_name']}` (the demo's tuned XGBoost), logging every request before answering. "
        f"Load: locust headless (`FastHttpUser`, no think time) on the **same {m['cpus']}-core machine**, "
        f"{r['duration_seconds']} s per scenario after a {r['warmup_seconds']} s warm-up; single-row requests "
        "cycling over 2,000 real records. **Floor-limited throughput** = cores x 1000 / floor CPU ms per request "
        "(the in-process floor below, measured in the same run): what the machine could serve if a request cost "
        "nothing beyond the model's work and one commit. Raw figures: `benchmarks/results/serving.json`.",
        "",
        "| target | goal | " + " | ".join(BACKEND_TITLES[n] for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    rows = {n: targets(backends[n]) for n in names}
    for index, (target, goal, _, _) in enumerate(rows[names[0]]):
        cells = [f"{rows[n][index][2]} ({'met' if rows[n][index][3] else '**missed**'})" for n in names]
        lines.append(f"| {target} | {goal} | " + " | ".join(cells) + " |")
    pe, po = mf["predict_explain"], mf["predict_only"]
    floor_lines = []
    for n in names:
        c, f = backends[n]["commit"], backends[n]["floor"]
        floor_lines.append(
            f"{BACKEND_TITLES[n]}: INSERT + COMMIT {c['median_ms']} ms wall, {c['cpu_ms']} ms CPU (client "
            f"{c['client_cpu_median_ms']}, server {c['server_cpu_ms']}; synchronous_commit={c['synchronous_commit']}), "
            f"so **{f['explain_cpu_ms']} ms CPU** per explained request (latency {f['explain_latency_ms']} ms) and "
            f"**{f['explain_limited_rps']:.0f} req/s floor-limited** on {m['cpus']} cores; predict-only "
            f"{f['predict_only_cpu_ms']} ms, {f['predict_only_limited_rps']:.0f} req/s"
        )
    lines += [
        "",
        f"**Physical floor** (same run, in-process, one thread, one row encoded as the runtime encodes it): predict + "
        f"TreeSHAP {pe['cpu_median_ms']} ms CPU ({pe['median_ms']} ms wall), predict only {po['cpu_median_ms']} ms "
        f"CPU ({po['median_ms']} ms wall), medians of 1,000 calls. One commit (median of 500) on "
        + "; on ".join(floor_lines)
        + f". 1,000 rows in-process: predict + TreeSHAP {mf['batch_1000_predict_explain']['median_ms']:.0f} ms, "
        f"predict only {mf['batch_1000_predict_only']['median_ms']:.1f} ms (median of 5). Model: "
        f"{mf['model']['trees']} trees, {mf['model']['leaves']:,} leaves, max depth {mf['model']['max_depth']}, "
        f"{mf['model']['input_features']} input features one-hot encoded into {mf['model']['encoded_columns']} "
        "columns.",
        "",
        "| backend | scenario | clients | req/s | share of floor-limited | p50 ms | p50 / floor | p99 ms | 2xx | "
        "failures | CPU ms/request: gateway | MLServer | PostgreSQL | stack total | locust | machine busy | "
        "other processes' CPU s | checkpoints | server p50 total / score ms | rows per audit commit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        b = backends[n]
        for name, s in b["scenarios"].items():
            cpu = s["cpu_ms_per_request"]
            server = b["audit"]["server_timings"].get(name, {})
            busy = s["cpu_seconds"].get("machine_busy_share")
            latency = b["floor"]["explain_latency_ms" if s["explain"] else "predict_only_latency_ms"]
            lines.append(
                f"| {n.replace('_', ' ')} | {name.replace('_', ' ')} | {s['users']} | {s['rps']} | "
                f"{share(b, name):.0%} | {s['p50_ms']:g} | {s['p50_ms'] / latency:.1f}x | {s['p99_ms']:g} | "
                f"{s['served_2xx']:,} | {s['failures']} | {cpu['gateway']} | {cpu['mlserver']} | {cpu['postgres']} | "
                f"{cpu['total_stack']} | {cpu['locust']} | {'' if busy is None else f'{busy * 100:.0f}%'} | "
                f"{s['cpu_seconds']['other_processes']} | {s.get('checkpoints_during', '')} | "
                f"{server.get('total_p50_ms', '')} / {server.get('score_p50_ms', '')} | "
                f"{server.get('rows_per_write_transaction', '')} |"
            )
    lines += ["", "**Mixed load** (`mixed 8` above: the 8-client clean load plus hostile requests):", ""]
    for n in names:
        b = backends[n]
        mixed = b["scenarios"][MIXED]
        hostile = mixed["hostile"]
        total = mixed["aggregated"]["requests"]
        kinds = ", ".join(
            f"{name.removeprefix('hostile ')} {h['requests']} (p50 {h['p50_ms']:g} ms, {h['failures']} not refused)"
            for name, h in hostile.items()
        )
        writer = mixed["writer"]
        lines.append(
            f"- {BACKEND_TITLES[n]}: {sum(h['requests'] for h in hostile.values())} hostile of {total:,} requests "
            f"({sum(h['requests'] for h in hostile.values()) / max(total, 1):.1%}; asked {mixed['hostile_rps_asked']} "
            f"req/s): {kinds}. Clean: {mixed['rps']} req/s ({mixed_share(b):.0%} of the all-clean {clean_reference(b):.1f}, the "
            "mean of the clean runs just before and after), "
            f"p50 {mixed['p50_ms']:g} ms, p99 {mixed['p99_ms']:g} ms, {mixed['failures']} failed. Writer: "
            f"{writer['polls_during']} polls during, {writer['degraded_polls_during']} degraded, largest spool "
            f"{writer['max_spool_depth']}; after: {writer['after'].get('status')}."
        )
    lines += [""]
    for n in names:
        b, bp = backends[n]["batch_explain"], backends[n]["batch_predict_only"]
        rss, idle = backends[n]["rss_mb_after_batches"], backends[n]["rss_mb_idle"]
        overhead = backends[n]["explanation_overhead"]
        lines.append(
            f"{BACKEND_TITLES[n]}: batches of {b['records']:,} records, {b['posts']} sequential POSTs: with "
            f"explanations p50 {b['p50_ms']} ms (max {b['max_ms']}); predict-only p50 {bp['p50_ms']} ms (max "
            f"{bp['max_ms']}). RSS: gateway {idle['gateway']} MB idle -> {rss['gateway']} MB after the load and "
            f"batches; MLServer {idle['mlserver']} MB -> {rss['mlserver']} MB. Explanations' cost on the gateway's "
            f"own p50 (`timings_ms.total_ms`, before the audit commit): {overhead['server_total_p50_pct']}%; "
            f"in-process: {overhead['floor_pct']}%."
        )
        lines.append("")
    lines += ["What limits the missed targets (from the CPU accounting above):", "", *limits(r), ""]
    return "\n".join(lines)


def limits(r: dict[str, Any]) -> list[str]:
    """Where the CPU of one served request goes, and the throughput ceiling that implies on this machine."""
    cpus = r["machine"]["cpus"] or 1
    mf = r["model_floor"]
    out = []
    for n, b in r["backends"].items():
        for name, s in b["scenarios"].items():
            cpu = s["cpu_ms_per_request"]
            floor_ms = b["floor"]["explain_cpu_ms" if s["explain"] else "predict_only_cpu_ms"]
            with_locust = cpu["total_stack"] + cpu["locust"]
            ceiling = cpus * 1000 / with_locust if with_locust else float("nan")
            wall = s["cpu_seconds"]["wall_seconds"] or 1
            mlserver_cores = s["cpu_seconds"]["mlserver"] / wall
            other = s["cpu_seconds"]["other_processes"] / wall
            busy = s["cpu_seconds"].get("machine_busy_share")
            out.append(
                f"- {n.replace('_', ' ')}, {name.replace('_', ' ')}: {cpu['total_stack']} CPU ms per request in the "
                f"stack (gateway {cpu['gateway']}, MLServer {cpu['mlserver']}, PostgreSQL {cpu['postgres']}) = "
                f"{cpu['total_stack'] / floor_ms:.1f}x the {floor_ms} ms floor, and locust {cpu['locust']} ms: "
                f"{with_locust:.2f} ms per request caps {cpus} fully busy cores at ~{ceiling:.0f} req/s "
                f"({ceiling / b['floor']['explain_limited_rps' if s['explain'] else 'predict_only_limited_rps']:.0%} "
                f"of floor-limited). MLServer ran at {mlserver_cores:.2f} cores; the machine was "
                f"{'' if busy is None else f'{busy * 100:.0f}%'} busy, other processes taking {other:.2f} cores. "
                f"With {s['users']} clients in a closed loop, latency is clients / throughput = "
                f"{s['users'] / max(s['rps'], 1) * 1000:.0f} ms."
            )
    for n, b in r["backends"].items():
        floor = b["floor"]
        budget = floor["explain_cpu_ms"] / SHARE_TARGET
        spent = []
        for name in ("explain_8", "explain_32"):
            cpu = b["scenarios"][name]["cpu_ms_per_request"]
            spent.append(f"{name.replace('_', ' ')}: {cpu['total_stack'] + cpu['locust']:.2f} ms")
        out.append(
            f"- {n.replace('_', ' ')}: {SHARE_TARGET:.0%} of the floor-limited throughput "
            f"({SHARE_TARGET * floor['explain_limited_rps']:.0f} req/s) leaves {budget:.2f} CPU ms per request for every "
            f"process together (floor / {SHARE_TARGET}), locust included, and needs both cores busy all the time; "
            f"measured {', '.join(spent)}. MLServer is one Python process: HTTP, pydantic, adaptive batching and the "
            "runtime's decoding hold its GIL and only XGBoost runs outside it, so it cannot use much more than one "
            "core, and 8 closed-loop clients leave the cores partly idle while each request waits its turn there."
        )
    first = next(iter(r["backends"].values()))
    floor = first["floor"]
    out.append(
        f"- p50 at 8 clients within {P50_FLOOR_MULTIPLE:g}x the floor latency ({floor['explain_latency_ms']} ms): "
        f"8 closed-loop clients with no think time wait 8 / throughput per request, so a p50 of "
        f"{P50_FLOOR_MULTIPLE * floor['explain_latency_ms']:.1f} ms needs ~"
        f"{8 / (P50_FLOOR_MULTIPLE * floor['explain_latency_ms']) * 1000:.0f} req/s, "
        f"{8 / (P50_FLOOR_MULTIPLE * floor['explain_latency_ms']) * 1000 / floor['explain_limited_rps']:.0%} of the "
        "floor-limited throughput: on this machine the latency target is the throughput target at ~100%."
    )
    shap_1000 = mf["batch_1000_predict_explain"]["median_ms"]
    out.append(
        f"- 1,000-row batch with explanations: exact TreeSHAP in-process alone takes {shap_1000:.0f} ms on one core "
        f"({shap_1000 / 150:.1f}x the 150 ms target), about {shap_1000 / cpus:.0f} ms split over {cpus} cores as "
        "MLServer does for batches of 64+ rows: the target is below this model's physical floor on this machine "
        "(TreeSHAP grows with trees x leaves x depth^2; a shallower model would be cheaper)."
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
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated inference-log backends ({', '.join(BACKENDS)})"
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from the last JSON")
    parser.add_argument("--no-write", action="store_true", help="print the JSON only; write neither results file")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.render_only:
        result = json.loads(RESULTS_JSON.read_text())
    else:
        result = run(args.home.resolve(), args.duration, args.warmup, backends)
        if not args.no_write:
            RESULTS_DIR.mkdir(exist_ok=True)
            RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_write:
        write_results_md(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
