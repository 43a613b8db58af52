"""Locust users for the serving benchmark (run headless by benchmarks/serving_benchmark.py).

Environment: RIVERBED_BENCH_KEY (API key), RIVERBED_BENCH_DATASET, RIVERBED_BENCH_RECORDS (JSON file with
records to cycle through), RIVERBED_BENCH_EXPLAIN (1/0), RIVERBED_BENCH_IDS (file collecting the X-Request-ID
of every 2xx response, one per line, so the benchmark can check each has exactly one committed audit row).
"""

import itertools
import json
import os

from locust import FastHttpUser, constant, events, task

KEY = os.environ.get("RIVERBED_BENCH_KEY", "")
DATASET = os.environ.get("RIVERBED_BENCH_DATASET", "salary_band")
EXPLAIN = os.environ.get("RIVERBED_BENCH_EXPLAIN", "1") == "1"
with open(os.environ["RIVERBED_BENCH_RECORDS"], encoding="utf-8") as handle:
    RECORDS = json.load(handle)
BODIES = [json.dumps({**record, "explain": EXPLAIN}).encode() for record in RECORDS]
IDS_PATH = os.environ.get("RIVERBED_BENCH_IDS")
_ids = open(IDS_PATH, "a", encoding="utf-8") if IDS_PATH else None  # noqa: SIM115 - lives as long as the run
_bodies = itertools.cycle(BODIES)


@events.quitting.add_listener
def _close(environment, **kwargs) -> None:
    if _ids is not None:
        _ids.close()


class SingleRowClient(FastHttpUser):
    """One application thread: a single-row prediction, then the next, with no think time."""

    wait_time = constant(0)

    @task
    def predict(self) -> None:
        with self.client.post(
            f"/v1/{DATASET}/predict",
            data=next(_bodies),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            name="predict",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                if _ids is not None:
                    _ids.write(response.headers.get("X-Request-ID", "") + "\n")
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")
