"""Child processes of the test control plane: start in their own process group, log to a file,
poll until healthy, and stop the whole group (SIGTERM, then SIGKILL) however the test ended."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOG_TAIL_LINES = 40


class ComponentError(RuntimeError):
    """A control-plane component failed to start or died; the message carries its log tail."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets stay bound until every port is chosen, so the ports differ from each other.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One long-running binary of the control plane, logging stdout and stderr to `log_path`."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def start(self) -> ManagedProcess:
        if not Path(self.args[0]).is_file():
            raise ComponentError(f"{self.name}: binary {self.args[0]} does not exist (run tests/cluster/build.sh)")
        with self.log_path.open("ab") as log:
            # A new session makes the child a process-group leader, so stop() reaches its children too.
            self._proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def failure(self, what: str) -> ComponentError:
        """An error naming this component, `what` went wrong, its exit status and its log tail."""
        status = (
            "running" if self.running() else f"exited with {self._proc.returncode if self._proc else 'never started'}"
        )
        return ComponentError(f"{self.name} {what} ({status}); log {self.log_path}, last lines:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if not self.running():
            raise self.failure("is not running")

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Terminate the process group; kill it when it outlives `grace_seconds`. Idempotent."""
        proc = self._proc
        if proc is None or self._stopped:
            return
        self._stopped = True
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_seconds)
        # Grandchildren left in the group after the leader exited (once only: the id may be reused later).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    watched: Sequence[ManagedProcess] = (),
    interval: float = 0.1,
    max_interval: float = 1.0,
) -> float:
    """Poll `condition` until true; return the seconds it took.

    The interval starts at `interval` and grows by half each poll up to `max_interval`: a condition met
    at once is seen at once, while a long wait does not spend the cores it is waiting for (a condition is
    often a kubectl call, a process start and several API requests).
    Raises ComponentError (with the log tail) as soon as a watched process dies, or on timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        for process in watched:
            if not process.running():
                raise process.failure(f"exited while waiting for {what}")
        if condition():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            if watched:
                raise watched[0].failure(f"did not become ready: {what} within {timeout:.0f} s")
            raise ComponentError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max(interval, max_interval))


def http_ok(url: str, context: ssl.SSLContext | None = None, expect: bytes | None = None) -> bool:
    """True when GET `url` answers 200 (and its body contains `expect`, when given)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            if response.status != 200:
                return False
            return expect is None or expect in response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return False


def insecure_tls() -> ssl.SSLContext:
    """For health endpoints served with a component's own self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def client_tls(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Verifies the apiserver against `ca_file` and presents a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    return context
