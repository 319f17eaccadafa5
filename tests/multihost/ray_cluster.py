"""A real multi-node Ray cluster over simulated hosts: `ray start --head` on one, `ray start --address` on
the others, each with `--node-ip-address` set to its host's address and a custom resource `host<i>`
so tests can pin actors to a host. Every node runs in the foreground (`--block`) as a child of the
test process; stopping a node kills the processes of its host by PID (never `ray stop`, which would
end every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.multihost.netns import Host

RAY_PORT = 6379


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def node_env() -> dict[str, str]:
    """Environment of every Ray process and driver on the harness (one CPU thread each, no telemetry)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}


PROBE_S = 20.0
# argv: address, node count, seconds. Prints the alive nodes once there are enough (exit 0), or exits 1.
_NODES_PROBE = """
import json, sys, time, ray
address, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False)
deadline = time.monotonic() + seconds
while True:
    alive = [{"ip": n["NodeManagerAddress"], "alive": n["Alive"], "resources": n["Resources"]}
             for n in ray.nodes() if n["Alive"]]
    if len(alive) >= count:
        print("NODES " + json.dumps(alive), flush=True)
        sys.exit(0)
    if time.monotonic() > deadline:
        print(f"{len(alive)} of {count} nodes alive: {alive}", flush=True)
        sys.exit(1)
    time.sleep(1)
"""


@dataclass
class RayCluster:
    """The nodes started so far; `address` is the head's GCS address (what RAY_ADDRESS names)."""

    head: Host
    root: Path
    nodes: dict[str, tuple[Host, subprocess.Popen]] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    """The cluster's own authentication token: every node and driver gets it (as a real cluster's would
    from a Secret), so a token another Ray on this machine left in ~/.ray cannot interfere."""

    def env(self) -> dict[str, str]:
        return {**node_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    def _start(self, host: Host, cpus: float, resources: dict[str, float], head: bool,
               env: dict[str, str] | None = None) -> None:
        # Per node: its session files and sockets. Short and under /tmp: Ray's unix socket paths inside it
        # must stay under 107 bytes.
        temp_dir = Path(f"/tmp/{host.namespace}-ray")
        temp_dir.mkdir(parents=True, exist_ok=True)
        argv = [_ray_bin(), "start", "--block", "--disable-usage-stats", f"--node-ip-address={host.address}",
                f"--num-cpus={cpus:g}", "--num-gpus=0", f"--resources={json.dumps(resources)}",
                f"--temp-dir={temp_dir}", "--object-store-memory=300000000"]
        if head:
            argv += ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"]
        else:
            argv += [f"--address={self.address}"]
        process = host.popen(argv, self.root / f"{host.name}-ray.log", env={**self.env(), **(env or {})})
        self.nodes[host.name] = (host, process)

    def start_head(self, cpus: float = 0, resources: dict[str, float] | None = None) -> None:
        self._start(self.head, cpus, {f"host{self.head.index}": 1, **(resources or {})}, head=True)

    def add_node(self, host: Host, cpus: float, resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """A worker node; `env` reaches every process Ray starts there (as a pod's env does on KubeRay)."""
        self._start(host, cpus, {f"host{host.index}": 1, **(resources or {})}, head=False, env=env)

    def wait_for_nodes(self, count: int, timeout_s: float = 180.0) -> list[dict]:
        """Block until `count` nodes are alive (asked from inside the head host); returns them.

        A probe process joins the cluster and polls it for up to PROBE_S (each join costs seconds of a core:
        a join per poll would slow the nodes being waited for); a node process that died fails the wait
        when that probe ends."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for name, (_, process) in self.nodes.items():
                if process.poll() is not None:
                    log = (self.root / f"{name}-ray.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ray node on {name} exited with {process.returncode}:\n{log}")
            budget = max(1.0, min(PROBE_S, deadline - time.monotonic()))
            try:
                result = self.head.run([sys.executable, "-c", _NODES_PROBE, self.address, str(count), str(budget)],
                                       timeout=budget + 60, check=False, env={**self.env(), "RAY_ADDRESS": ""})
            except subprocess.TimeoutExpired:
                continue
            last = (result.stdout + result.stderr)[-2000:]
            # Ray may print warnings (lagging heartbeats, ...) on stdout too: the listing is found by its tag.
            listing = [line for line in result.stdout.splitlines() if line.startswith("NODES ")]
            if result.returncode == 0 and listing:
                return json.loads(listing[-1].removeprefix("NODES "))
            time.sleep(2)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s}s; last probe said:\n{last}")

    def lose(self, host: Host) -> None:
        """The node on `host` disappears with everything on it (power loss): SIGKILL by PID, and stop
        counting it as a node of this cluster."""
        host.kill_all()
        self.nodes.pop(host.name, None)

    def stop(self) -> None:
        for host, _ in self.nodes.values():
            host.kill_all()
            shutil.rmtree(f"/tmp/{host.namespace}-ray", ignore_errors=True)
        self.nodes.clear()


def driver_env(cluster: RayCluster) -> dict[str, str]:
    """What a driver (the forkrl controller) on the head host needs to join the cluster."""
    return {**cluster.env(), "RAY_ADDRESS": cluster.address, "PATH": os.environ.get("PATH", "")}
