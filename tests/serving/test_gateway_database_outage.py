"""The gateway while PostgreSQL is unreachable: predictions still served (spooled), /readyz degraded, replay after."""

import contextlib
import socket
import threading
import time

import httpx
import psycopg
import pytest

from riverbed.cli.mlserver_process import free_port
from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from serving.inference_log import verify_chain
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    api_records,
    install_trained_model,
    salary_band_features,
    salary_band_spec,
)

pytestmark = pytest.mark.slow


class ThreadedProxy:
    """A TCP proxy to PostgreSQL that can be cut (all connections dropped, new ones refused) and restored."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)


def test_outage_spools_keeps_serving_and_replays_every_row_once(tmp_path) -> None:
    name, direct_dsn = create_database()
    proxy = ThreadedProxy()
    proxy.up()
    proxied_dsn = direct_dsn.replace("port=5432", f"port={proxy.port}")
    settings = RiverbedSettings(home=tmp_path, inference_log_dsn=proxied_dsn)
    install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=tmp_path / "trained")
    records = api_records(salary_band_features(50), salary_band_spec())
    stack = ServingStack(settings, ["salary_band"], ephemeral_ports=True).start()
    try:
        key = create_api_key(direct_dsn, ["predict"], "app").key
        ids: list[str] = []
        with httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for record in records[:5]:
                response = http.post("/v1/salary_band/predict", json=record)
                assert response.status_code == 200, response.text
                ids.append(response.headers["X-Request-ID"])
            proxy.down()
            for record in records[5:25]:
                response = http.post("/v1/salary_band/predict", json=record)
                assert response.status_code == 200, response.text
                ids.append(response.headers["X-Request-ID"])
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "degraded"
            assert ready.json()["audit_spool_depth"] >= 1
            assert "riverbed_audit_degraded 1.0" in http.get("/metrics").text
            proxy.up()
            deadline = time.monotonic() + 30
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, http.get("/readyz").text
                time.sleep(0.3)
            for record in records[25:30]:
                ids.append(http.post("/v1/salary_band/predict", json=record).headers["X-Request-ID"])
        with psycopg.connect(direct_dsn) as conn:
            query = "SELECT request_id::text FROM inference_log WHERE status = 'ok' ORDER BY seq"
            rows = conn.execute(query).fetchall()
        logged = [row[0] for row in rows]
        assert sorted(logged) == sorted(ids)  # every 2xx exactly once: no loss, no duplicate
        assert logged == ids  # and in the order they were served
        assert verify_chain(direct_dsn).ok
    finally:
        stack.stop()
        proxy.down()
        drop_database(name)
