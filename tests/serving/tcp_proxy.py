"""A TCP proxy to the machine's PostgreSQL that tests cut (every connection dropped, new ones refused) and restore.

Unlike closing a listening socket under a thread blocked in ``accept()`` (which, on Linux, still accepts one more
connection), :meth:`CuttableProxy.down` stops the accept loop first, so nothing gets through once it returns.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from riverbed.cli.mlserver_process import free_port


class CuttableProxy:
    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def dsn(self, direct_dsn: str) -> str:
        """``direct_dsn`` (``port=5432``) through this proxy."""
        return direct_dsn.replace(f"port={self.target_port}", f"port={self.port}")

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._stop = self._thread = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                client.settimeout(None)
                try:
                    server = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    client.close()
                    continue
                with self._lock:
                    if stop.is_set():
                        client.close()
                        server.close()
                        return
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
