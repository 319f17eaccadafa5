"""The rollout replicas a run generates with: membership, health, and spreading requests over them.

Members come from fixed URLs and from endpoints re-resolved every step (a Kubernetes headless Service
lists one address per ready pod, so scaling is followed). A member that fails (connection refused or
timed out, a stream gone silent) is marked down: it gets no requests and no weight syncs until it
answers a probe again, and then the controller re-syncs it before it serves (`RLVRController
.ensure_replicas_current`), so no sample ever comes from weights the learner has moved past.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

from forkrl.rollout.client import RolloutClient, RolloutRequestError
from forkrl.rollout.types import GenerateRequest, GenerateResult


def expand_endpoints(urls: Sequence[str]) -> list[str]:
    """One URL per replica: a hostname with several addresses (a Kubernetes headless Service lists one per
    ready pod) becomes one URL per address; literal IPs and unresolvable names stay as they are."""
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
    """Spreads generation over the serving replicas; a share whose replica fails moves to another one.

    Membership can change between calls (`set_urls`, `refresh`), as when the operator scales. The client of
    a member that left is closed when the pool's next call starts with none running, so one taken from
    `clients` directly must not be kept across a membership change and a later pool call.
    """

    def __init__(self, urls: Sequence[str], endpoints: Sequence[str] = (), *, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0, idle_timeout_s: float = 60.0,
                 log: Callable[[str], None] = print, control_token: str | None = None) -> None:
        """control_token: the job's token, carried by every client (the replicas' control endpoints need it)."""
        self.timeout_s = timeout_s
        self.control_token = control_token
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.log = log
        self.static = list(urls)
        self.endpoints = list(endpoints)
        self.clients: dict[str, RolloutClient] = {}
        self.down: dict[str, str] = {}
        """Members that failed, with the reason; they serve again once a probe answers and they are synced."""
        self.failures_total = 0
        self._closing: list[RolloutClient] = []
        """Clients of members that left; closed once no call of this pool is running (one may still use them)."""
        self._active = 0
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
                self.clients[url] = RolloutClient(url, timeout_s=self.timeout_s, max_retries=2,
                                                  connect_timeout_s=self.connect_timeout_s,
                                                  idle_timeout_s=self.idle_timeout_s,
                                                  control_token=self.control_token)
        for url in [u for u in self.clients if u not in urls]:
            self._closing.append(self.clients.pop(url))
            self.down.pop(url, None)

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        # A client dropped while a call runs may still be in use by it; the next call that starts with
        # none running closes it. Waiting for the end of the run instead held the connections of every
        # replaced pod open (and the list growing) for the whole run.
        if not self._active:
            await self._close(self._closing)
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    @staticmethod
    async def _close(clients: list[RolloutClient]) -> None:
        taken = []
        while clients:  # pop one at a time: refresh() may append from a worker thread meanwhile
            taken.append(clients.pop())
        await asyncio.gather(*(c.aclose() for c in taken), return_exceptions=True)

    @property
    def urls(self) -> list[str]:
        """Every member, serving or down."""
        return list(self.clients)

    @property
    def serving(self) -> list[str]:
        return [u for u in self.clients if u not in self.down]

    def mark_down(self, url: str, reason: str) -> None:
        if url in self.clients and url not in self.down:
            self.down[url] = reason
            self.failures_total += 1
            self.log(f"rollout replica {url} is down ({reason}); it gets no work until it answers again")

    async def unreachable(self, urls: Sequence[str]) -> list[str]:
        """Those of `urls` that do not answer a liveness probe now."""
        live = await asyncio.gather(*(self.clients[u].healthz() for u in urls))
        return [u for u, ok in zip(urls, live, strict=True) if not ok]

    async def probe_down(self) -> list[str]:
        """Members marked down that answer again; they leave `down` (the caller re-syncs them)."""
        async def live(url: str) -> bool:
            return await self.clients[url].healthz()

        urls = list(self.down)
        async with self._call():
            back = [u for u, ok in zip(urls, await asyncio.gather(*(live(u) for u in urls)), strict=True) if ok]
        for url in back:
            del self.down[url]
            self.log(f"rollout replica {url} answers again")
        return back

    async def wait_for_serving(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """When every member is down (a node drained, all pods restarting), wait for one to answer
        again, re-resolving the endpoints meanwhile, instead of failing the step at once."""
        if self.serving or not self.clients:
            return
        self.log(f"no rollout replica is serving; waiting up to {timeout_s:.0f}s for one to come back")
        deadline = time.monotonic() + timeout_s
        while not self.serving:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no rollout replica answered within {timeout_s:.0f}s (down: {self.down})")
            await asyncio.sleep(poll_s)
            await asyncio.to_thread(self.refresh)
            await self.probe_down()

    async def versions(self, urls: Sequence[str] | None = None) -> dict[str, int | None]:
        """weight_version of each replica (None when it has no weights or does not answer)."""
        async def one(url: str) -> int | None:
            try:
                return (await self.clients[url].readyz(retry=False)).weight_version
            except Exception:
                return None

        chosen = self.serving if urls is None else list(urls)
        async with self._call():
            return dict(zip(chosen, await asyncio.gather(*(one(u) for u in chosen)), strict=True))

    async def generate(self, requests: Sequence[GenerateRequest], attempts: int = 4) -> list[GenerateResult]:
        """Results in request order. Requests are split evenly over serving replicas; a failed share moves on."""
        async with self._call():
            return await self._generate(requests, attempts)

    async def _generate(self, requests: Sequence[GenerateRequest], attempts: int) -> list[GenerateResult]:
        results: list[GenerateResult | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        errors: list[BaseException] = []
        for attempt in range(attempts):
            urls = self.serving
            if not urls:
                raise RuntimeError(f"no rollout replica is serving (down: {self.down or 'none known'})")
            shares = [pending[i::len(urls)] for i in range(len(urls))]
            offset = attempt % len(urls)  # a retried share goes to another replica
            assigned = [(urls[(i + offset) % len(urls)], share) for i, share in enumerate(shares) if share]
            outcomes = await asyncio.gather(
                *(self.clients[url].generate([requests[j] for j in share]) for url, share in assigned),
                return_exceptions=True,
            )
            failed: list[int] = []
            for (url, share), outcome in zip(assigned, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed += share
                    errors.append(outcome)
                    if not isinstance(outcome, RolloutRequestError):  # the request was fine, the replica not
                        self.mark_down(url, f"{type(outcome).__name__}: {outcome}")
                else:
                    for j, result in zip(share, outcome, strict=True):
                        results[j] = result
            if not failed:
                return [r for r in results if r is not None]
            pending = sorted(failed)
            await asyncio.sleep(min(0.5 * 2.0**attempt, 5.0))
        raise RuntimeError(f"{len(pending)} rollout requests failed on every replica: {errors[-1]!r}")

    async def aclose(self) -> None:
        """Close every client; the pool then has no members (a later refresh starts afresh)."""
        self._closing += self.clients.values()
        self.clients, self.down = {}, {}
        await self._close(self._closing)
