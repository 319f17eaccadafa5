"""The services a local run starts and talks to: the reward verifier and the rollout replicas.

Each local service is a real process on 127.0.0.1 (`python -m forkrl.rollout.verifier`,
`python -m forkrl.rollout`), so a crash, a kill or a restart behaves as on Kubernetes, where the same
clients reach Deployments through Services instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from forkrl.rollout.client import RolloutClient
from forkrl.rollout.types import GenerateRequest, GenerateResult
from forkrl.trainer.learner.launch import free_port


class LocalProcess:
    """A service process with a health endpoint; `start` waits until it answers, `stop` drains it."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> LocalProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} while starting; "
                                   f"log {self.log_path}:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not become healthy within {timeout_s:.0f}s; log {self.log_path}:\n"
                           f"{self._log_tail()}")

    def restart(self, timeout_s: float = 180.0) -> LocalProcess:
        """Kill and start again on the same port (a crashed pod coming back)."""
        self.kill()
        return self.start(timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault injection, or a stop that timed out)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_verifier(config: dict, log_dir: Path, workers: int | None = None) -> LocalProcess:
    """A local verifier service with the given VerifierConfig fields (math/code reward settings)."""
    port = free_port()
    config_path = Path(tempfile.mkdtemp(prefix="forkrl-verifier-")) / "verifier.json"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "forkrl.rollout.verifier", "--host", "127.0.0.1", "--port", str(port),
            "--config", str(config_path), "--log-level", "warning"]
    if workers:
        argv += ["--workers", str(workers)]
    return LocalProcess("verifier", argv, port, log_dir / "verifier.log").start()


def start_rollout_replica(model_path: str, log_dir: Path, index: int, engine: str = "hf", threads: int = 1,
                          max_batch_size: int = 64, seed: int = 0, in_flight: str = "finish",
                          port: int | None = None) -> LocalProcess:
    """One rollout server process serving `model_path` (weights version 0 until the first sync)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "forkrl.rollout", "--engine", engine, "--model", model_path,
            "--host", "127.0.0.1", "--port", str(port), "--replica", f"r{index}", "--seed", str(seed),
            "--max-batch-size", str(max_batch_size), "--num-threads", str(threads),
            "--in-flight-policy", "abort_retry" if in_flight == "abort" else "finish"]
    return LocalProcess(f"rollout-{index}", argv, port, log_dir / f"rollout-{index}.log").start()


def expand_endpoints(urls: Sequence[str]) -> list[str]:
    """One URL per replica: a hostname with several addresses (a Kubernetes headless Service lists one per
    ready pod) becomes one URL per address; literal IPs and unresolvable names stay as they are."""
    from urllib.parse import urlsplit

    out: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        addresses: list[str] = []
        if host and port:
            with contextlib.suppress(OSError):
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
                addresses = sorted({info[4][0] for info in infos})
        if len(addresses) > 1:
            out += [f"{parts.scheme}://{address}:{port}" for address in addresses]
        else:
            out.append(url)
    return list(dict.fromkeys(out))


class ReplicaPool:
    """Spreads generation over the healthy rollout replicas; a request whose replica fails is retried on
    another one. Membership can change between calls (`set_urls`), as when the operator scales."""

    def __init__(self, urls: Sequence[str], endpoints: Sequence[str] = (), timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s
        self.static = list(urls)
        self.endpoints = list(endpoints)
        self.clients: dict[str, RolloutClient] = {}
        self.refresh()

    def refresh(self) -> list[str]:
        """Re-resolve the endpoints (a headless Service gains and loses pods as the operator scales)."""
        self.set_urls(list(dict.fromkeys([*self.static, *expand_endpoints(self.endpoints)])))
        return self.urls

    def add(self, url: str) -> None:
        self.static.append(url)
        self.refresh()

    def remove(self, url: str) -> None:
        self.static = [u for u in self.static if u != url]
        self.refresh()

    def set_urls(self, urls: Sequence[str]) -> None:
        for url in urls:
            if url not in self.clients:
                self.clients[url] = RolloutClient(url, timeout_s=self.timeout_s, max_retries=2)
        for url in [u for u in self.clients if u not in urls]:
            self.clients.pop(url)

    @property
    def urls(self) -> list[str]:
        return list(self.clients)

    async def versions(self) -> dict[str, int | None]:
        """weight_version of every replica (None when it has no weights or does not answer)."""
        async def one(url: str) -> int | None:
            try:
                return (await self.clients[url].readyz()).weight_version
            except Exception:
                return None

        urls = self.urls
        return dict(zip(urls, await asyncio.gather(*(one(u) for u in urls)), strict=True))

    async def generate(self, requests: Sequence[GenerateRequest], attempts: int = 4) -> list[GenerateResult]:
        """Results in request order. Requests are split evenly over replicas; a failed share moves on."""
        results: list[GenerateResult | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(attempts):
            urls = self.urls
            if not urls:
                raise RuntimeError("no rollout replica is available")
            shares = [pending[i::len(urls)] for i in range(len(urls))]
            offset = attempt % len(urls)  # a retried share goes to another replica
            outcomes = await asyncio.gather(
                *(self.clients[urls[(i + offset) % len(urls)]].generate([requests[j] for j in share])
                  for i, share in enumerate(shares) if share),
                return_exceptions=True,
            )
            failed: list[int] = []
            errors: list[BaseException] = []
            for share, outcome in zip([s for s in shares if s], outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed += share
                    errors.append(outcome)
                else:
                    for j, result in zip(share, outcome, strict=True):
                        results[j] = result
            if not failed:
                return [r for r in results if r is not None]
            pending = failed
            await asyncio.sleep(min(2.0**attempt, 10.0))
        raise RuntimeError(f"{len(pending)} rollout requests failed on every replica: {errors[-1]!r}")

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)
