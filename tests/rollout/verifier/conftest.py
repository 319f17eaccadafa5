"""Real verifier server processes on 127.0.0.1 (random free port, always terminated)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

SECRET_ENV = "FORKRL_VERIFIER_TEST_SECRET"
SECRET_VALUE = "s3cr3t-7f1c2a9e"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_server(tmp_dir: Path, config: dict[str, Any], *, ready_timeout_s: float = 90.0,
               launcher: list[str] | None = None) -> Iterator[ServerProcess]:
    """Start `python -m forkrl.rollout.verifier` (or `launcher`, which passes its arguments on to it) with
    `config`; yield once /readyz answers 200. RuntimeError with the log if it exits or is not ready in time."""
    port = free_port()
    config_path = tmp_dir / f"verifier-{port}.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp_dir / f"verifier-{port}.log"
    env = {**os.environ, SECRET_ENV: SECRET_VALUE}
    command = [*(launcher or [sys.executable, "-m", "forkrl.rollout.verifier"])]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--config", str(config_path), "--log-level", "warning"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"verifier exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"verifier not ready after {ready_timeout_s}s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="session")
def verifier_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One 2-worker service shared by the HTTP, attack and fuzz tests. A test run may take 20 s: an attack
    meant to end at its own limit (memory, output) must not meet the wall clock first on a loaded machine;
    the tests that want the wall clock ask for a short one per item."""
    config = {"run": "pytest", "workers": 2, "code": {"test_timeout_s": 20.0, "output_kib": 256}}
    with run_server(tmp_path_factory.mktemp("verifier"), config) as server:
        yield server


def ancestors(pid: int) -> list[int]:
    """The parent of `pid`, its parent, ... up to PID 1 (host pids, read from /proc)."""
    chain = []
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        chain.append(pid)
    return chain


def sandbox_processes(uid_base: int, count: int = 1024) -> list[tuple[int, int]]:
    """(pid, ppid) of every live process whose real uid is in [uid_base, uid_base + count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "-1 0").split()[0])
        state = fields.get("State", "").strip()
        if uid_base <= uid < uid_base + count and not state.startswith("Z"):
            found.append((int(entry), int(fields["PPid"].strip())))
    return found
