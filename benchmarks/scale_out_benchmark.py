"""Scale-out benchmark: throughput of one and of two gateway processes behind HAProxy, writing one inference log.

One MLServer process serves a freshly trained salary_band model (200 trees, depth 3); one inference log on the
machine's PostgreSQL (127.0.0.1:5432, fresh database). Three configurations, each under 8 and 32 locust clients
(``benchmarks/locustfile.py`` run headless through the serving benchmark's ``run_locust``) sending single-row
predictions with explanations, no think time:

- ``direct_1``: the clients talk to one gateway (uvicorn, one process) directly: the baseline;
- ``haproxy_1``: the same gateway behind HAProxy (round robin, health checks on ``/readyz``);
- ``haproxy_2``: two gateway processes behind HAProxy, both appending to the one keyed hash chain (the chain-head
  row lock in PostgreSQL serialises their commits).

Per scenario: requests per second, p50/p99 latency, failures, how many requests each gateway answered (from each
gateway's own ``/metrics``), and the CPU seconds per request of the gateways, MLServer, HAProxy and locust.
Everything runs on the same machine, so a second gateway can only add throughput while a core is idle. After the
run every 2xx request id must have exactly one committed row and the chain must verify (else the script fails).

Usage: ``uv run python -m benchmarks.scale_out_benchmark [--quick] [--duration 30] [--warmup 3] [--results-dir DIR]``
(``make bench-scale-out``, about 7 minutes). Needs HAProxy (``make system-packages`` as root). Writes
``<results-dir>/scale_out.json`` and re-renders ``RESULTS.md`` beside it.

The process helpers (:class:`ExtraGateway`, :class:`HAProxy`) and :func:`fire` (an asyncio client that keeps each
answer's ``X-Served-By``) are also what ``tests/serving/test_two_gateways.py`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note  # noqa: E402
from benchmarks.serving_benchmark import (  # noqa: E402
    _proc_cpu_seconds,
    _read_ids,
    _tree,
    run_locust,
    wait_until_quiet,
)
from riverbed.cli import processes  # noqa: E402
from riverbed.cli.mlserver_process import free_port  # noqa: E402
from riverbed.cli.stack import ServingStack  # noqa: E402
from riverbed.settings import PROJECT_ROOT  # noqa: E402

logger = logging.getLogger(__name__)

RESULT_FILE = "scale_out.json"
SECTION = "## Scale-out (gateways behind HAProxy)"
COMMAND = "make bench-scale-out"
DATASET = "salary_band"
PREDICT_PATH = f"/v1/{DATASET}/predict"
SERVED_BY = "X-Served-By"  # set by HAProxy: the name of the backend server that answered
CONFIGURATIONS = {  # name -> (gateways, behind HAProxy)
    "direct_1": (1, False),
    "haproxy_1": (1, True),
    "haproxy_2": (2, True),
}
CLIENTS = (8, 32)
TREES = 200
START_SECONDS = 60.0


# ------------------------------------------------------------------------------------------------ processes
class ExtraGateway:
    """One more gateway process for a running :class:`ServingStack`: same home (chain key, checkpoints), database,
    MLServer and model repository; its own port, audit spool and log file (a spool belongs to one writer).

    The environment is the one ``ServingStack`` gives its own gateway (``riverbed/cli/stack.py``), with the spool
    directory and the port changed.
    """

    def __init__(self, stack: ServingStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.stack.settings.gateway_host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.stack.logs_dir / f"gateway-{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> ExtraGateway:
        settings, dsn = self.stack.settings, self.stack.gateway_dsn
        if dsn is None:
            raise RuntimeError("the serving stack is not started: it has no inference-log DSN yet")
        env = {
            **os.environ,
            "RIVERBED_HOME": str(settings.home),
            "RIVERBED_INFERENCE_LOG_DSN": dsn,
            "RIVERBED_MLSERVER_URL": self.stack.mlserver_url,
            "RIVERBED_MODEL_REPOSITORY": str(self.stack.repository.root),
            "RIVERBED_AUDIT_SPOOL_DIR": str(settings.home / f"audit-spool-{self.name}"),
            "RIVERBED_SPECS_DIRS": json.dumps([str(path) for path in settings.specs_dirs]),
            "RIVERBED_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
            **(
                {"RIVERBED_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers}
                if settings.kafka_bootstrap_servers
                else {}
            ),
            "OMP_NUM_THREADS": "1",
            **self.stack.gateway_env,
        }
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "serving.gateway.main:create_app",
            "--host", settings.gateway_host, "--port", str(self.port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        self.stack.logs_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = processes.spawn(command, env=env, cwd=PROJECT_ROOT, stdout=self._log)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the gateway {self.name} exited at start-up (see {self.log_path})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the gateway {self.name} was not ready in {START_SECONDS:g} s (see {self.log_path})")

    def stop(self) -> None:
        """SIGTERM (the gateway flushes its audit writer), then SIGKILL after the stack's grace period."""
        if self.process is not None:
            processes.stop(self.process, f"the gateway {self.name}", 30.0)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ExtraGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def haproxy_config(port: int, servers: list[tuple[str, int]], host: str = "127.0.0.1") -> str:
    """HAProxy's configuration: one HTTP frontend on ``host:port``, round robin over ``servers`` (name, port), each
    health-checked on ``/readyz`` every 500 ms (out after 2 failures, back after 1 success); every response names
    the server that answered in ``X-Served-By``."""
    if not servers:
        raise ValueError("servers: at least one (name, port) is needed")
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 30s",
        "frontend gateways",
        f"    bind {host}:{port}",
        "    default_backend riverbed_gateways",
        "backend riverbed_gateways",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        f"    http-response set-header {SERVED_BY} %[srv_name]",
        *(f"    server {name} {host}:{server_port} check inter 500ms fall 2 rise 1" for name, server_port in servers),
    ]
    return "\n".join(lines) + "\n"


class HAProxy:
    """HAProxy (the Debian package's ``haproxy``) in the foreground with a generated configuration in ``directory``;
    started, it has answered through every server (so every health check passed at least once)."""

    def __init__(self, directory: Path, servers: list[tuple[str, int]], *, program: str | Path = "haproxy") -> None:
        self.directory = Path(directory)
        self.servers = servers
        self.program = str(program)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> HAProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, self.servers))
        checked = subprocess.run([self.program, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"HAProxy rejects {config}: {(checked.stderr or checked.stdout).strip()}")
        log_path = self.directory / "haproxy.log"
        self._log = log_path.open("ab")
        command = [self.program, "-db", "-f", str(config)]  # -db: stay in the foreground, a child of this process
        self.process = processes.spawn(command, env=os.environ, cwd=self.directory, stdout=self._log)
        wanted, seen = {name for name, _ in self.servers}, set[str]()
        deadline = time.monotonic() + START_SECONDS
        while seen != wanted:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"HAProxy exited at start-up (see {log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"HAProxy did not answer through {sorted(wanted - seen)} in {START_SECONDS:g} s")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.url}/readyz", timeout=2)
                if response.status_code == 200 and SERVED_BY in response.headers:
                    seen.add(response.headers[SERVED_BY])
                    continue
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process, "HAProxy", 10.0)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Answer:
    status: int
    request_id: str | None
    served_by: str | None
    seconds: float


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    def served_by(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for answer in self.answers:
            if 200 <= answer.status < 300:
                name = answer.served_by or "(no header)"
                counts[name] = counts.get(name, 0) + 1
        return counts


async def fire(
    url: str,
    key: str,
    records: list[dict[str, Any]],
    *,
    clients: int,
    requests: int | None = None,
    seconds: float | None = None,
    explain: bool = True,
) -> LoadResult:
    """``clients`` concurrent clients posting single-row predictions (cycling over ``records``) until ``requests``
    have been sent in all, or for ``seconds``; each client keeps its connection open."""
    if (requests is None) == (seconds is None):
        raise ValueError("fire: give exactly one of requests (a count) or seconds (a duration)")
    if clients < 1 or not records:
        raise ValueError("fire: clients must be at least 1 and records non-empty")
    result = LoadResult()
    sent = 0
    began = time.perf_counter()
    deadline = began + seconds if seconds is not None else None
    headers = {"Authorization": f"Bearer {key}"}
    path = PREDICT_PATH if explain else f"{PREDICT_PATH}?explain=false"

    def take() -> int | None:
        nonlocal sent
        if requests is not None and sent >= requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        sent += 1
        return sent - 1

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while (index := take()) is not None:
                started = time.perf_counter()
                try:
                    response = await http.post(path, json=records[index % len(records)])
                except httpx.HTTPError as error:
                    result.transport_errors.append(f"{type(error).__name__}: {error}")
                    continue
                result.answers.append(
                    Answer(
                        response.status_code,
                        response.headers.get("X-Request-ID"),
                        response.headers.get(SERVED_BY),
                        time.perf_counter() - started,
                    )
                )

    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall_seconds = time.perf_counter() - began
    return result


def rows_per_request_id(dsn: str) -> dict[str, int]:
    """request id -> the number of committed rows carrying it (counted in the database, not de-duplicated)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select request_id, count(*) from inference_log group by request_id").fetchall()
    return {str(request_id): int(count) for request_id, count in rows}


# ------------------------------------------------------------------------------------------------ benchmark
def predictions_answered(gateway_url: str) -> int:
    """2xx prediction responses one gateway process has counted (its own ``/metrics``, not through a proxy)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "riverbed_gateway_requests_total"
            and sample.labels.get("route", "").endswith("/predict")
            and sample.labels.get("status", "").startswith("2")
        )
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {part: sum(_proc_cpu_seconds(pid) for root in roots for pid in _tree(root)) for part, roots in pids.items()}


def measure(
    url: str,
    key: str,
    records_path: Path,
    work: Path,
    clients: int,
    seconds: int,
    warmup: int,
    pids: dict[str, list[int]],
    gateways: dict[str, str],
) -> tuple[dict[str, Any], list[str]]:
    """One scenario: a locust warm-up, then ``seconds`` of locust load (``benchmarks/locustfile.py``, headless, as
    the serving benchmark runs it); its figures and the 2xx request ids of both runs.

    Throughput and CPU per request are server-side, over one window: from the first request the gateways serve
    (locust's start-up excluded) to locust's exit, counted by each gateway's own request counter (``gateways``:
    name -> URL); latencies and failures are locust's."""
    ids_path = work / "ids.txt"
    run_locust(url, key, records_path, ids_path, work / "warmup", clients, warmup, True)
    quiet = wait_until_quiet(timeout=5.0 if seconds < 10 else 20.0)
    idle = _cpu({"gateways": pids["gateways"]})["gateways"]
    stats: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: stats.update(run_locust(url, key, records_path, ids_path, work / "load", clients, seconds, True))
    )
    load.start()
    while load.is_alive() and _cpu({"gateways": pids["gateways"]})["gateways"] - idle < 0.02:
        time.sleep(0.02)
    began, answered_before, before = time.perf_counter(), _answered(gateways), _cpu(pids)
    locust_before = _children_cpu()
    load.join()
    wall, answered_after, after = time.perf_counter() - began, _answered(gateways), _cpu(pids)
    locust_cpu = _children_cpu() - locust_before
    if not stats:
        raise RuntimeError(f"locust did not run (see {work / 'load.log'})")
    answered = {name: answered_after[name] - answered_before[name] for name in gateways}
    total = max(sum(answered.values()), 1)
    cpu = {part: after[part] - before[part] for part in pids}
    locust_ok = max(stats["requests"] - stats["failures"], 1)
    figures = {
        "clients": clients,
        "window_seconds": round(wall, 2),
        "answered": sum(answered.values()),
        "requests_per_second": round(sum(answered.values()) / wall, 1),
        "answered_by": answered,
        "locust_requests": stats["requests"],
        "failures": stats["failures"],
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "cpu_ms_per_request": {part: round(value * 1000 / total, 2) for part, value in cpu.items()}
        | {"locust": round(locust_cpu * 1000 / locust_ok, 2)},
        "cpu_busy_share_before": quiet["busy_share_before"],
    }
    return figures, _read_ids(ids_path)


def _answered(gateways: dict[str, str]) -> dict[str, int]:
    return {name: predictions_answered(gateway) for name, gateway in gateways.items()}


def run(duration: int, warmup: int, quick: bool) -> dict[str, Any]:
    from riverbed.model_repository import ModelRepository
    from riverbed.settings import RiverbedSettings
    from serving.api_keys import create_api_key
    from serving.inference_log import verify_chain_from_settings
    from tests.scratch_postgres import create_database, drop_database
    from tests.serving.gateway_fixtures import (
        api_records,
        install_trained_model,
        salary_band_features,
        salary_band_spec,
    )

    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("haproxy is not installed (Debian package haproxy): run `sudo make system-packages`")
    records = api_records(salary_band_features(2000), salary_band_spec())
    db_name, dsn = create_database("riverbed_scale_out")
    work = Path(tempfile.mkdtemp(prefix="riverbed-scale-out-"))
    began = time.perf_counter()
    out: dict[str, Any] = {
        "machine": machine(),
        "scale": "quick" if quick else "full",
        "duration_seconds": duration,
        "warmup_seconds": warmup,
        "model": {"dataset": DATASET, "trees": TREES, "max_depth": 3},
        "haproxy": " ".join(subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split()[:3]),
        "records": len(records),
        "scenarios": {},
    }
    records_path = work / "records.json"
    records_path.write_text(json.dumps(records))
    try:
        settings = RiverbedSettings(home=work / "home", inference_log_dsn=dsn)
        install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=TREES, folder=work / "model")
        with contextlib.ExitStack() as running:
            stack = running.enter_context(ServingStack(settings, [DATASET], ephemeral_ports=True))
            assert stack.gateway_pid is not None and stack.mlserver_pid is not None
            key = create_api_key(dsn, ["predict"], "scale-out-benchmark").key
            second = running.enter_context(ExtraGateway(stack, "gw2"))
            assert second.pid is not None
            one = running.enter_context(HAProxy(work / "haproxy-1", [("gw1", stack.gateway_port)], program=haproxy))
            two = running.enter_context(
                HAProxy(work / "haproxy-2", [("gw1", stack.gateway_port), ("gw2", second.port)], program=haproxy)
            )
            assert one.pid is not None and two.pid is not None
            urls = {"direct_1": stack.gateway_url, "haproxy_1": one.url, "haproxy_2": two.url}
            first_only = {"gw1": stack.gateway_url}
            gateways = {"direct_1": first_only, "haproxy_1": first_only, "haproxy_2": {**first_only, "gw2": second.url}}
            pids = {
                "direct_1": {"gateways": [stack.gateway_pid], "mlserver": [stack.mlserver_pid]},
                "haproxy_1": {"gateways": [stack.gateway_pid], "mlserver": [stack.mlserver_pid], "haproxy": [one.pid]},
                "haproxy_2": {
                    "gateways": [stack.gateway_pid, second.pid],
                    "mlserver": [stack.mlserver_pid],
                    "haproxy": [two.pid],
                },
            }
            served_ids: list[str] = []
            for name in CONFIGURATIONS:
                for clients in CLIENTS:
                    label = f"{name}_{clients}"
                    print(f"[scale-out] {label}: {duration:g} s", file=sys.stderr, flush=True)
                    scenario = work / label
                    scenario.mkdir()
                    figures, ids = measure(
                        urls[name], key, records_path, scenario, clients, duration, warmup, pids[name], gateways[name]
                    )
                    out["scenarios"][label] = {"configuration": name, **figures}
                    served_ids += ids
        # every gateway has stopped (flushed its writer): the log is complete
        counts = rows_per_request_id(dsn)
        report = verify_chain_from_settings(dsn, settings)
        out["audit"] = {
            "served_2xx": len(served_ids),  # 2xx answers locust read, warm-ups included
            "rows": sum(counts.values()),
            "served_without_exactly_one_row": sum(1 for rid in served_ids if counts.get(rid) != 1),
            "chain_ok": report.ok,
            "chain_rows_checked": report.rows_checked,
            "checkpoints_checked": report.checkpoints_checked,
            "chain_problems": report.problems[:5],
        }
    finally:
        drop_database(db_name)
        shutil.rmtree(work, ignore_errors=True)
    out["run_seconds"] = round(time.perf_counter() - began, 1)
    return out


# ------------------------------------------------------------------------------------------------ rendering
def _cell(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_results(results: dict[str, Any]) -> str:
    r = results[RESULT_FILE]
    scenarios: dict[str, Any] = r["scenarios"]
    audit = r.get("audit", {})
    lines = [
        SECTION,
        "",
        machine_line(r["machine"], r.get("command", "uv run python -m benchmarks.scale_out_benchmark")),
        "",
        *scale_note(r, COMMAND),
        f"One MLServer process serving a {r['model']['trees']}-tree salary_band model; gateways are uvicorn processes "
        "(one each) logging every request to one inference log on the machine's PostgreSQL (fresh database) before "
        f"answering; {r['haproxy']} balances round robin with health checks on `/readyz`. `direct_1`: the clients "
        "talk to one gateway; `haproxy_1`: the same gateway behind HAProxy; `haproxy_2`: two gateways behind HAProxy, "
        "appending to one keyed hash chain (the chain-head row lock serialises their commits). Load: locust headless "
        f"(`benchmarks/locustfile.py`, as the Serving section runs it), {r['duration_seconds']} s per scenario after a "
        f"{r['warmup_seconds']} s warm-up, single-row predictions with explanations, no think time, cycling over "
        f"{r['records']:,} real records. Requests/s and CPU per request are counted server-side (each gateway's own "
        "request counter, which also says which gateway answered) from the first request served to locust's exit; "
        "latencies and failures are locust's. "
        "Everything (locust, HAProxy, gateways, MLServer, PostgreSQL) runs on the "
        f"**same {r['machine']['cpus']}-core machine**, so a second gateway can add throughput only while a core is "
        "idle: these figures show HAProxy's cost and the effect of a second gateway process on one machine, not what "
        f"a second machine adds. Raw figures: `benchmarks/results/{RESULT_FILE}`.",
        "",
        "| configuration | clients | requests/s | vs direct | p50 ms | p99 ms | failures | answered by | "
        "CPU ms per request: gateways, MLServer, HAProxy, locust (its start-up included) | machine busy before |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for s in scenarios.values():
        base = scenarios.get(f"direct_1_{s['clients']}", {}).get("requests_per_second")
        ratio = f"{s['requests_per_second'] / base:.2f}x" if base else "-"
        served = ", ".join(f"{name} {count:,}" for name, count in sorted(s["answered_by"].items()))
        if not s["configuration"].startswith("haproxy"):
            served += " (no proxy)"
        cpu = s["cpu_ms_per_request"]
        cpu_cells = ", ".join(_cell(cpu.get(part), 2) for part in ("gateways", "mlserver", "haproxy", "locust"))
        lines.append(
            f"| `{s['configuration']}` | {s['clients']} | {_cell(s['requests_per_second'])} | {ratio} | "
            f"{_cell(s['p50_ms'], 0)} | {_cell(s['p99_ms'], 0)} | {s['failures']:,} | {served} | {cpu_cells} | "
            f"{s['cpu_busy_share_before']:.0%} |"
        )
    if audit:
        verdict = "intact" if audit["chain_ok"] else f"**broken**: {'; '.join(audit['chain_problems'])}"
        lines += [
            "",
            f"Audit after the run (warm-ups included): {audit['served_2xx']:,} 2xx answers read by locust, "
            f"{audit['rows']:,} committed rows (the {audit['rows'] - audit['served_2xx']:,} others: requests in flight "
            "when locust stopped at its time limit, or answered with an error), "
            f"{audit['served_without_exactly_one_row']:,} answered requests without exactly one row; the chain over "
            f"{audit['chain_rows_checked']:,} rows and {audit['checkpoints_checked']:,} signed checkpoints is "
            f"{verdict}.",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke scale: 5 s per scenario (checks the script)")
    parser.add_argument("--duration", type=int, default=None, help="seconds of load per scenario (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="seconds of warm-up per scenario (default 3)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    duration = args.duration if args.duration is not None else (5 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    if duration < 1 or warmup < 1:
        parser.error("--duration and --warmup: must be whole numbers of seconds, at least 1")
    logging.basicConfig(level=logging.WARNING)
    result = run(duration, warmup, args.quick)
    result["command"] = " ".join(["uv run python -m benchmarks.scale_out_benchmark", *arguments(sys.argv[1:])])
    print(publish(RESULT_FILE, result, args.results_dir.resolve()))
    audit = result["audit"]
    if not audit["chain_ok"] or audit["served_without_exactly_one_row"]:
        raise SystemExit(f"the inference log lost or duplicated rows, or its chain is broken: {audit}")


if __name__ == "__main__":
    main()
