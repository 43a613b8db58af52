"""Console page times on an inference log of a million rows, through the real gateway over HTTP.

A scratch database on the machine's PostgreSQL (127.0.0.1:5432) gets the migrations, then ``--rows`` inference-log
rows in one bulk ``COPY`` (salary_band requests over the last 30 days, each with its inputs, label, probabilities
and full SHAP explanation, 2 % refused, one reviewer's flag per 5,000 rows, indexed by migration 0010's trigger), 30 days of monitoring results and a few catalogued model versions. The
rows are *not* hash-chained (random hashes; the chain head is moved past them): the console never verifies the
chain, and ``riverbed audit verify`` is not part of what is timed. The gateway then runs as its own process
(uvicorn, as ``riverbed serve`` starts it) and a logged-in console session fetches each page ``--repeats`` times:

* the inference log's first page, a page half-way down the log (a cursor at row ``rows / 2``), and filtered
  pages (label + model version; refused requests only; flagged only; not overridden);
* one request's page with its SHAP waterfall (the first one after start-up, which imports ``shap`` and
  ``matplotlib``, is reported on its own), the models page and the monitoring page (30-day window).

``EXPLAIN (ANALYZE, BUFFERS)`` of the page queries is stored beside the figures (which index, how many buffers).

    uv run python -m benchmarks.console_benchmark [--rows 1000000] [--repeats 20] [--quick] [--results-dir DIR]

Writes ``<results-dir>/console.json`` and re-renders ``RESULTS.md``. ``--quick``: 20,000 rows, 3 repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.report import RESULTS_DIR, machine, machine_line, publish, scale_note
from riverbed.cli import processes
from riverbed.cli.mlserver_process import free_port
from riverbed.inference_log_schema import apply_migrations
from riverbed.model_catalog import record_gate_decision, record_trained
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.specs import load_specs
from serving.api_keys import create_api_key
from serving.audit_queries import AuditFilter, cursor_key_for, encode_cursor
from serving.console.queries import MONITORING_SQL, PREDICT_ROUTE, SAMPLE_SQL
from serving.inference_log import format_time, load_chain_key
from tests.scratch_postgres import create_database, drop_database

COMMAND = "uv run python -m benchmarks.console_benchmark"
DATASET = "salary_band"
DAYS = 30
FLAG_EVERY = 5000  # one flag action row per this many rows
FLAG_ROUTE = "/v1/predictions/{request_id}/flag"
COPY_COLUMNS = (
    "request_id, seq, received_at, dataset, route, status, http_status, client_key_id, model_name, model_version, "
    "mlflow_run_id, training_set_commit_id, data_commit_ids, dagster_run_id, inputs, outputs, labels, error, "
    "timings_ms, prev_hash, row_hash"
)
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


# ------------------------------------------------------------------------------------------------ data
def _templates(spec: Any, count: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """``count`` distinct (inputs JSON, outputs JSON, label) triples of plausible requests."""
    out = []
    for index in range(count):
        record: dict[str, Any] = {}
        for feature in spec.features:
            if feature.categories:
                record[feature.name] = rng.choice(feature.categories)
            else:
                low = int(feature.minimum if feature.minimum is not None else 0)
                high = int(feature.maximum if feature.maximum is not None else 100)
                record[feature.name] = rng.randint(low, min(high, low + 100))
        contributions = {name: round(rng.gauss(0, 0.4), 6) for name in spec.feature_names}
        base = -1.1
        margin = base + sum(contributions.values())
        positive = 1 / (1 + 2.718281828 ** (-margin))
        label = spec.target.positive_class if positive >= 0.5 else spec.target.classes[0]
        output = {
            "sample_id": f"adult-{index}",
            "label": label,
            "probabilities": {
                spec.target.classes[0]: round(1 - positive, 6),
                spec.target.positive_class: round(positive, 6),
            },
            "explanation": {
                "base_value": base,
                "contributions": contributions,
                "top_features": [
                    {"feature": name, "value": record[name], "contribution": value}
                    for name, value in sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:5]
                ],
            },
        }
        out.append((json.dumps([record]), json.dumps([output]), label))
    return out


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load_rows(dsn: str, spec: Any, rows: int, now: dt.datetime) -> dict[str, Any]:
    """Bulk-load ``rows`` unchained rows with one COPY; returns timing and a mid-log position."""
    rng = random.Random(12)
    templates = [(_copy_text(i), _copy_text(o), label) for i, o, label in _templates(spec, 2000, rng)]
    start = now - dt.timedelta(days=DAYS)
    step = dt.timedelta(days=DAYS) / rows
    commits = _copy_text(json.dumps({"2026-10-01": "c" * 40, "2026-10-02": "d" * 40}))
    fake_hash = "ab" * 32
    middle: tuple[str, str] | None = None
    began = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"copy inference_log ({COPY_COLUMNS}) from stdin") as copy:
            buffer = io.StringIO()
            for n in range(rows):
                received = start + step * n
                request_id = f"bench-{n:08d}"
                version = str(1 + n * 5 // rows)
                if n % FLAG_EVERY == FLAG_EVERY - 1:  # a reviewer's flag of the prediction 1,000 rows earlier
                    target = f"bench-{n - 1000:08d}"
                    action = _copy_text(
                        json.dumps(
                            [
                                {
                                    "oversight": {
                                        "action": "flag",
                                        "target_kind": "prediction",
                                        "target_id": target,
                                        "note": "benchmark flag",
                                        "outcome": None,
                                    }
                                }
                            ]
                        )
                    )
                    fields = [request_id, str(n + 1), received.isoformat(), DATASET, FLAG_ROUTE, "ok", "200",
                              "reviewkey", "\\N", "\\N", "\\N", "\\N", "{}", "\\N", action, "[]", "{}", "\\N",
                              "{}", fake_hash, fake_hash]  # fmt: skip
                elif n % 50 == 7:  # refused: no outputs
                    fields = [request_id, str(n + 1), received.isoformat(), DATASET, PREDICT_ROUTE, "rejected", "422",
                              "benchkey", "riverbed-salary_band", version, "run-" + version, "c" * 12, commits,
                              "dagster-" + version, "[]", "[]", "{}", "age: must be at least 17", "{}", fake_hash,
                              fake_hash]  # fmt: skip
                else:
                    inputs, outputs, label = templates[n % len(templates)]
                    fields = [request_id, str(n + 1), received.isoformat(), DATASET, PREDICT_ROUTE, "ok", "200",
                              "benchkey", "riverbed-salary_band", version, "run-" + version, "c" * 12, commits,
                              "dagster-" + version, inputs, outputs, '{"' + label + '"}', "\\N",
                              '{"total_ms": 2.1}', fake_hash, fake_hash]  # fmt: skip
                buffer.write("\t".join(fields))
                buffer.write("\n")
                if n == rows // 2:
                    middle = (format_time(received), request_id)
                if buffer.tell() > 4 * 2**20:
                    copy.write(buffer.getvalue())
                    buffer.seek(0)
                    buffer.truncate()
            copy.write(buffer.getvalue())
        cur.execute("update inference_log_chain_head set seq = %s, row_hash = %s", (rows, fake_hash))
    copied = time.perf_counter() - began
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("analyze inference_log")
        size = conn.execute("select pg_total_relation_size('inference_log')").fetchone()
    assert middle is not None
    return {"copy_seconds": round(copied, 1), "table_bytes": int(size[0]) if size else 0, "middle": middle}


def load_monitoring(dsn: str, spec: Any, now: dt.datetime) -> int:
    rows = []
    rng = random.Random(3)
    for back in range(DAYS):
        day = (now - dt.timedelta(days=back)).date()
        for feature in spec.feature_names:
            value = abs(rng.gauss(0.05, 0.05))
            rows.append((day, "univariate_drift", feature, value, value > 0.15))
        rows.append((day, "multivariate_drift", "reconstruction_error", abs(rng.gauss(1, 0.1)), False))
        for metric in ("roc_auc", "accuracy", "f1"):
            rows.append((day, "cbpe", metric, 0.8 + rng.random() / 10, False))
            rows.append((day, "realised", metric, 0.8 + rng.random() / 10, False))
    with psycopg.connect(dsn) as conn:
        conn.cursor().executemany(
            "insert into monitoring_results (dataset, day, chunk, kind, name, value, alert, rows) "
            f"values ('{DATASET}', %s, 0, %s, %s, %s, %s, 5000)",
            rows,
        )
    return len(rows)


def load_catalog(dsn: str, versions: int) -> None:
    card = "\n".join(
        ["# Model card", "", "## Intended use", "", "Income band screening (benchmark).", "", "| metric | value |",
         "|---|---|", *[f"| m{i} | 0.{i:03d} |" for i in range(40)], ""]
    )  # fmt: skip
    for version in range(1, versions + 1):
        record_trained(
            dsn,
            dataset=DATASET,
            registered_model="riverbed-salary_band",
            version=version,
            trained_reason="drift" if version > 1 else "initial",
            mlflow_run_id=f"run-{version}",
            dagster_run_id=f"dagster-{version}",
            data_commit_ids={"2026-10-01": "c" * 40},
            metrics={"roc_auc": 0.9, "accuracy": 0.85},
            fairness={"sex": {"selection_rate[Female]": 0.1, "selection_rate[Male]": 0.3}},
            model_card_markdown=card,
        )
        record_gate_decision(dsn, dataset=DATASET, version=version, passed=True, reasons=["beats the champion"])


# ------------------------------------------------------------------------------------------------ gateway
@contextlib.contextmanager
def gateway_process(home: Path, dsn: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "RIVERBED_HOME": str(home),
        "RIVERBED_INFERENCE_LOG_DSN": dsn,
        "RIVERBED_MLSERVER_URL": f"http://127.0.0.1:{free_port()}",  # not used by the console
        "RIVERBED_MODEL_REPOSITORY": str(home / "repository"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "serving.gateway.main:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log = (home / "gateway.log").open("ab")
    process = processes.spawn(command, env=env, cwd=PROJECT_ROOT, stdout=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start-up: see {home / 'gateway.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        processes.stop(process, "gateway", timeout=20)
        log.close()


def login(http: httpx.Client, key: str) -> None:
    form = http.get("/console/login")
    token = _CSRF.search(form.text)
    assert token is not None
    answer = http.post("/console/login", data={"api_key": key, "csrf_token": token.group(1)})
    if answer.status_code != 303:
        raise RuntimeError(f"console login failed: {answer.status_code} {answer.text[:300]}")


def timed(http: httpx.Client, path: str, params: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    answer = http.get(path, params=params)
    elapsed = time.perf_counter() - began
    if answer.status_code != 200:
        raise RuntimeError(f"{path} {params}: {answer.status_code} {answer.text[:500]}")
    return elapsed * 1000


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(max(samples), 1),
    }


def explain(dsn: str, query: str, params: tuple[Any, ...]) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"explain (analyze, buffers, format json) {query}", params).fetchone()
    plan = rows[0][0] if rows else {}
    indexes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            indexes.append(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return {
        "execution_ms": round(plan["Execution Time"], 2),
        "indexes": indexes,
        "top_node": plan["Plan"]["Node Type"],
        "shared_buffers": plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0),
    }


def measure(rows: int, repeats: int) -> dict[str, Any]:
    spec = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
    name, dsn = create_database("riverbed_bench")
    try:
        apply_migrations(dsn)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        loaded = load_rows(dsn, spec, rows, now)
        results_rows = load_monitoring(dsn, spec, now)
        load_catalog(dsn, 10)
        with tempfile.TemporaryDirectory(prefix="console-bench-") as scratch:
            home = Path(scratch)
            settings = RiverbedSettings(home=home)
            chain_key = load_chain_key(settings, create=True)
            assert chain_key is not None
            cursor_key = cursor_key_for(chain_key)
            deep_cursor = encode_cursor(*loaded["middle"], AuditFilter(), key=cursor_key)
            key = create_api_key(dsn, ["audit", "review"], "console benchmark").key
            pages: dict[str, Any] = {}
            with gateway_process(home, dsn) as url, httpx.Client(base_url=url, timeout=120) as http:
                login(http, key)
                ids = [
                    f"bench-{n:08d}"
                    for n in random.Random(5).sample(range(rows), repeats + 1)
                    if n % 50 != 7 and n % FLAG_EVERY != FLAG_EVERY - 1
                ]
                pages["request_first_after_start"] = summary([timed(http, f"/console/predictions/{ids[0]}")])
                scenarios: dict[str, tuple[str, dict[str, str] | None]] = {
                    "log_first_page": ("/console/log", None),
                    "log_deep_page": ("/console/log", {"cursor": deep_cursor}),
                    "log_filtered_label_version": (
                        "/console/log",
                        {"dataset": DATASET, "label": spec.target.positive_class, "model_version": "3"},
                    ),
                    "log_filtered_refused": ("/console/log", {"status": "rejected"}),
                    "log_filtered_flagged": ("/console/log", {"flagged": "true"}),
                    "log_filtered_not_overridden": ("/console/log", {"dataset": DATASET, "overridden": "false"}),
                    "models": ("/console/models", None),
                    "monitoring_30_days": ("/console/monitoring", {"dataset": DATASET, "days": "30"}),
                }
                for scenario, (path, params) in scenarios.items():
                    timed(http, path, params)  # warm-up
                    pages[scenario] = summary([timed(http, path, params) for _ in range(repeats)])
                pages["request_with_chart"] = summary(
                    [timed(http, f"/console/predictions/{request_id}") for request_id in ids[1:]]
                )
            since = now - dt.timedelta(days=DAYS)
            plans = {
                "log_first_page": explain(
                    dsn, "select request_id from inference_log order by received_at desc, request_id desc limit 51", ()
                ),
                "log_deep_page": explain(
                    dsn,
                    "select request_id from inference_log where (received_at, request_id) < (%s, %s) "
                    "order by received_at desc, request_id desc limit 51",
                    (loaded["middle"][0], loaded["middle"][1]),
                ),
                "log_filtered_label_version": explain(
                    dsn,
                    "select request_id from inference_log where dataset = %s and model_version = %s "
                    "and labels @> array[%s]::text[] order by received_at desc, request_id desc limit 51",
                    (DATASET, "3", spec.target.positive_class),
                ),
                "monitoring_sample": explain(dsn, SAMPLE_SQL, (DATASET, since, now, PREDICT_ROUTE, 1000)),
                "monitoring_results": explain(dsn, MONITORING_SQL, (DATASET, since.date(), 20000)),
            }
        return {
            "machine": machine(),
            "rows": rows,
            "repeats": repeats,
            "copy_seconds": loaded["copy_seconds"],
            "table_megabytes": round(loaded["table_bytes"] / 2**20),
            "monitoring_result_rows": results_rows,
            "pages": pages,
            "plans": plans,
        }
    finally:
        drop_database(name)


# ------------------------------------------------------------------------------------------------ rendering
LABELS = {
    "log_first_page": "Inference log, first page (50 rows)",
    "log_deep_page": "Inference log, a page half-way down (cursor at row rows/2)",
    "log_filtered_label_version": "Inference log filtered: dataset + label + model version",
    "log_filtered_refused": "Inference log filtered: refused requests only (2 %)",
    "log_filtered_flagged": "Inference log filtered: flagged requests only (1 in 5,000)",
    "log_filtered_not_overridden": "Inference log filtered: dataset + not overridden",
    "request_first_after_start": "One request with its waterfall, first after start-up (imports shap)",
    "request_with_chart": "One request with its SHAP waterfall (SVG)",
    "models": "Models (10 versions, cards, fairness)",
    "monitoring_30_days": "Monitoring, 30-day window (drift, performance, 1,000 sampled requests, mean absolute SHAP chart)",
}


def render_results(results: dict[str, Any]) -> str:
    result = results["console.json"]
    m = result["machine"]
    lines = [
        "## Console",
        "",
        machine_line(m, COMMAND),
        "",
        *scale_note(result, COMMAND),
        f"{result['rows']:,} inference-log rows ({result['table_megabytes']:,} MB with indexes; bulk COPY in "
        f"{result['copy_seconds']} s, not chained), {result['monitoring_result_rows']} monitoring results. Page "
        f"times through the gateway (its own uvicorn process) over HTTP with a logged-in session, {result['repeats']} "
        "fetches each after one warm-up; every page view also records its read in `audit_access_log`.",
        "",
        "| page | median ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for scenario, label in LABELS.items():
        figures = result["pages"].get(scenario)
        if figures:
            lines.append(f"| {label} | {figures['median_ms']} | {figures['p95_ms']} | {figures['max_ms']} |")
    lines += [
        "",
        "The first request page after the gateway starts pays for importing `shap` and `matplotlib` (kept out of the "
        "gateway's start-up; a console login starts that import in the background, but this run asks for the page "
        "at once). A request page's time is mostly drawing the waterfall with matplotlib (text layout); its query "
        "is one primary-key lookup. The pages' queries:",
        "",
    ]
    lines += ["| query | plan | indexes | ms |", "|---|---|---|---:|"]
    for query, plan in result["plans"].items():
        indexes = ", ".join(f"`{name}`" for name in dict.fromkeys(plan["indexes"])) or "none"
        lines.append(f"| {query} | {plan['top_node']} | {indexes} | {plan['execution_ms']} |")
    lines += ["", "Raw figures: `benchmarks/results/console.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smoke scale: 20,000 rows, 3 repeats")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rows, repeats = (20_000, 3) if args.quick else (args.rows, args.repeats)
    result = {**measure(rows, repeats), "scale": "quick" if args.quick else "full"}
    print(publish("console.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
