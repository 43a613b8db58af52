"""Locust users for the serving benchmark (run headless by benchmarks/serving_benchmark.py).

Environment: RIVERBED_BENCH_KEY (API key), RIVERBED_BENCH_DATASET, RIVERBED_BENCH_RECORDS (JSON file with
records to cycle through), RIVERBED_BENCH_EXPLAIN (1/0), RIVERBED_BENCH_IDS (file collecting the X-Request-ID
of every 2xx response, one per line, so the benchmark can check each has exactly one committed audit row).

``SingleRowClient`` is the clean load. ``HostileClient`` (the mixed load only; the benchmark names the user
classes on locust's command line) sends what an attacker or a broken client would, at
RIVERBED_BENCH_HOSTILE_RPS requests per second in all (over ``fixed_count`` users, RIVERBED_BENCH_HOSTILE_USERS):
bodies of ~8 MiB (declared or chunked), invalid records and requests without a valid key, in turn. Each kind is
its own locust name (``hostile ...``); an answer other than the refusal the gateway owes (413, 422, 401) is a
failure, and so is a 2xx.
"""

import itertools
import json
import os
import select
import socket
import time
from urllib.parse import urlparse

from locust import FastHttpUser, constant, constant_throughput, events, task

KEY = os.environ.get("RIVERBED_BENCH_KEY", "")
DATASET = os.environ.get("RIVERBED_BENCH_DATASET", "salary_band")
EXPLAIN = os.environ.get("RIVERBED_BENCH_EXPLAIN", "1") == "1"
with open(os.environ["RIVERBED_BENCH_RECORDS"], encoding="utf-8") as handle:
    RECORDS = json.load(handle)
BODIES = [json.dumps({**record, "explain": EXPLAIN}).encode() for record in RECORDS]
IDS_PATH = os.environ.get("RIVERBED_BENCH_IDS")
_ids = open(IDS_PATH, "a", encoding="utf-8") if IDS_PATH else None  # noqa: SIM115 - lives as long as the run
_bodies = itertools.cycle(BODIES)

HOSTILE_RPS = float(os.environ.get("RIVERBED_BENCH_HOSTILE_RPS", "1"))
HOSTILE_USERS = max(int(os.environ.get("RIVERBED_BENCH_HOSTILE_USERS", "2")), 1)
OVERSIZED_BYTES = 8 * 2**20
_CHUNK = 256 * 2**10


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


def _oversized_body() -> bytes:
    """~8 MiB of well-formed JSON: one valid record repeated in a batch far beyond every limit."""
    record = json.dumps(RECORDS[0]).encode()
    count = OVERSIZED_BYTES // (len(record) + 1)
    return b'{"records": [' + b",".join([record] * count) + b'], "explain": true}'


_OVERSIZED = _oversized_body()
# Records the gateway must refuse with 422: a wrong type, out of range, an unknown category, a missing feature,
# a batch with one bad record, a body that is not JSON.
_INVALID = [
    json.dumps({**RECORDS[1], "age": "forty"}).encode(),
    json.dumps({**RECORDS[2], "age": -5}).encode(),
    json.dumps({**RECORDS[3], "workclass": "Astronaut"}).encode(),
    json.dumps({k: v for k, v in RECORDS[4].items() if k != "education"}).encode(),
    json.dumps({"records": [RECORDS[5], {**RECORDS[6], "hours_per_week": 1e9}]}).encode(),
    b'{"age": 40, "workclass": "Private",',
]


class HostileClient(FastHttpUser):
    """5% of the mixed load: oversized, invalid and unauthenticated requests, each kind in turn."""

    fixed_count = HOSTILE_USERS
    wait_time = constant_throughput(max(HOSTILE_RPS, 0.01) / HOSTILE_USERS)  # defined, unused, in clean runs

    def on_start(self) -> None:
        self._turn = itertools.count()
        self._invalid = itertools.cycle(_INVALID)

    @task
    def hostile(self) -> None:
        kind = next(self._turn) % 6
        if kind in (0, 3):
            self._oversized(chunked=kind == 3)
        elif kind in (1, 4):
            self._refused(next(self._invalid), {"Authorization": f"Bearer {KEY}"}, "hostile invalid records", 422)
        else:
            key = {"Authorization": "Bearer rb_not-a-key"} if kind == 5 else {}
            self._refused(next(_bodies), key, "hostile unauthenticated", 401)

    def _refused(self, body: bytes, headers: dict[str, str], name: str, expected: int) -> None:
        with self.client.post(
            f"/v1/{DATASET}/predict",
            data=body,
            headers={**headers, "Content-Type": "application/json"},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code == expected:
                response.success()
            else:
                response.failure(f"expected {expected}, got {response.status_code}: {response.text[:200]}")

    def _oversized(self, chunked: bool) -> None:
        """An ~8 MiB body over a raw socket (the gateway may answer 413 and close before taking it all)."""
        name = f"hostile oversized ({'chunked' if chunked else 'declared'})"
        url = urlparse(self.host)
        began = time.perf_counter()
        status, sent, failure = None, 0, None
        try:
            with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
                framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(_OVERSIZED)}"
                sock.sendall(
                    f"POST /v1/{DATASET}/predict HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n".encode()
                )
                answered = bool(select.select([sock], [], [], 0.05)[0])
                while not answered and sent < len(_OVERSIZED):
                    piece = _OVERSIZED[sent : sent + _CHUNK]
                    try:
                        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    except OSError:  # the gateway answered and closed: it need not take the rest
                        break
                    sent += len(piece)
                    answered = bool(select.select([sock], [], [], 0)[0])
                if chunked and not answered and sent >= len(_OVERSIZED):
                    sock.sendall(b"0\r\n\r\n")
                head = b""
                try:
                    while b"\r\n" not in head:
                        data = sock.recv(4096)
                        if not data:
                            break
                        head += data
                except OSError:
                    pass
                if head.startswith(b"HTTP/"):
                    status = int(head.split(b" ", 2)[1])
        except OSError as error:
            failure = error
        if failure is None and status != 413:
            failure = RuntimeError(f"expected 413, got {status if status is not None else 'no answer'}")
        self.environment.events.request.fire(
            request_type="POST",
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=sent,
            exception=failure,
            context={},
        )


__all__ = ["HostileClient", "SingleRowClient"]
