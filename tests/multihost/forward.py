"""Reach a service inside a simulated host from the test process.

A socket belongs to the network namespace of the thread that created it: `connect_in` creates it on
a thread inside the host's namespace (tests.cluster.network.run_in_namespace); `Forwarder` listens
on the root namespace's loopback and relays every accepted connection to an address inside a host.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.cluster.network import run_in_namespace


def connect_in(namespace: str, address: str, port: int, timeout_s: float = 5.0) -> socket.socket:
    """A TCP socket connected to address:port as seen from inside `namespace`."""

    def connect() -> socket.socket:
        sock = socket.create_connection((address, port), timeout=timeout_s)
        sock.settimeout(None)
        return sock

    return run_in_namespace(namespace, connect)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class Forwarder:
    """127.0.0.1:<port> in the test process -> address:port inside a host's namespace."""

    def __init__(self, namespace: str, address: str, port: int) -> None:
        self.namespace, self.address, self.target_port = namespace, address, port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"forward-{namespace}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = connect_in(self.namespace, self.address, self.target_port)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
