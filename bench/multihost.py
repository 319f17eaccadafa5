"""Cross-host cost: weight sync and RL step time on one host vs spread over hosts, from the same run.

Hosts are network namespaces joined by veth pairs on a bridge (tests/multihost/netns.py), so the
cross-host numbers include a real TCP path through the kernel's bridge instead of loopback.

    python bench/multihost.py                  # needs root (network namespaces)
    python bench/multihost.py --skip-steps     # weight sync only

Weight sync: a learner-side sender process pushes the 23.7M-parameter model (8 x 512 tiny Qwen2) to a
rollout replica over gloo, begin -> broadcast -> commit, best of N; same host (sender and replica in one
namespace) vs two hosts. Target: cross-host within 1.5x of same-host.
Step time: the main job's shape (TP=2 learner, one replica, the verifier), a few RL steps in embedded
mode on one host vs spread over 4 hosts (controller + Ray head, learner node, rollout host, verifier
host); mean seconds per step after the first, by phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forkrl.rollout.tiny_model import TinyModelSpec  # noqa: E402

MEDIUM = TinyModelSpec(hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8, num_kv_heads=4)
TARGET_RATIO = 1.5
PHASES = ("rollout", "verify", "logprobs", "update", "sync", "step")


async def _send(url: str, address: str, repeats: int) -> dict:
    """Sender role (run inside a host): push the medium model `repeats` times, return the timings."""
    import torch

    from forkrl.rollout.client import RolloutClient, push_weights
    from forkrl.rollout.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    model, _ = build_tiny_model(MEDIUM.model_copy(update={"seed": 1}))
    params = sum(p.numel() for p in model.parameters())
    seconds = []
    async with RolloutClient(url) as client:
        for version in range(1, repeats + 1):
            start = time.perf_counter()
            await push_weights([client], model.named_parameters(), version, master_addr=address, timeout_s=120)
            seconds.append(time.perf_counter() - start)
            assert (await client.readyz()).weight_version == version
    return {"params": params, "seconds": seconds}


def bench_sync(repeats: int, workdir: Path) -> dict[str, dict]:
    from forkrl.rollout.tiny_model import build_tiny_model
    from tests.multihost.deploy import wait_http
    from tests.multihost.netns import Hosts

    model_dir = workdir / "medium"
    model, tokenizer = build_tiny_model(MEDIUM)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    results = {}
    with Hosts.create(2) as hosts:
        for label, replica_host in (("same host", hosts[0]), ("two hosts", hosts[1])):
            url = f"http://{replica_host.address}:8000"
            argv = [sys.executable, "-m", "forkrl.rollout", "--engine", "hf", "--model", str(model_dir),
                    "--host", replica_host.address, "--port", "8000", "--num-threads", "1"]
            log = workdir / f"replica-{label.replace(' ', '-')}.log"
            replica = replica_host.popen(argv, log)
            try:
                wait_http(replica_host, f"{url}/healthz", process=replica, log=log)
                sender = hosts[0].run([sys.executable, __file__, "--role", "send", "--url", url,
                                       "--address", hosts[0].address, "--repeats", str(repeats)], timeout=900)
                results[label] = json.loads(sender.stdout.strip().splitlines()[-1])
            finally:
                replica_host.kill_all()
    return results


def _phase_means(metrics: Path) -> dict[str, float]:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("kind") == "train"][1:]  # the first step pays the warm-up
    return {phase: statistics.fmean(r[f"time/{phase}"] for r in steps) for phase in PHASES}


def bench_steps(steps: int, workdir: Path) -> dict[str, dict[str, float]]:
    from tests.multihost.conftest import SHORT_COLD_START, build_cold_start, main_job
    from tests.multihost.deploy import run_controller, start_replica, start_verifier, write_spec
    from tests.multihost.netns import Hosts
    from tests.multihost.ray_cluster import RayCluster

    def spec(name: str, **changes: dict):
        base = {"name": name, "cold_start": {"enabled": False}, "eval": {"datasets": []},
                "schedule": {"steps": steps},
                "checkpoint": {"interval": 1000, "dir": str(workdir / "{name}" / "checkpoints")},
                "observability": {"run_dir": str(workdir / name), "progress": "lines", "report": False,
                                  "tensorboard": False}}
        return main_job({**base, **changes})

    policy = build_cold_start(SHORT_COLD_START)  # some correct answers, so steps have advantages to train on
    model = {"path": policy, "tiny": None}
    one = spec("one-host", model=model)
    path = write_spec(one, workdir / "one-host.yaml")
    subprocess.run([str(Path(sys.executable).with_name("forkrl")), "train", str(path), "--quiet"], cwd=ROOT,
                   check=True, timeout=3600)
    results = {"one host": _phase_means(one.run_dir() / "metrics.jsonl")}
    with Hosts.create(4) as hosts:
        ray = RayCluster(hosts[0], workdir / "ray")
        try:
            ray.start_head()
            ray.add_node(hosts[1], cpus=2)
            ray.wait_for_nodes(2)
            template = spec("services", model=model)
            replica = start_replica(hosts[2], template, policy, 0, workdir)
            verifier = start_verifier(hosts[3], template, workdir)
            spread = spec("four-hosts", model=model, rollout={"replicas": 0, "endpoints": [replica]},
                          verifier={"endpoint": verifier})
            run = run_controller(hosts[0], ray, write_spec(spread, workdir / "four-hosts.yaml"), spread,
                                 workdir / "four-hosts.log")
            if run.wait(timeout_s=3600) != 0:
                raise RuntimeError(run.tail())
            results["four hosts"] = _phase_means(spread.run_dir() / "metrics.jsonl")
        finally:
            ray.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "send"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help="weight syncs per configuration (best is kept)")
    parser.add_argument("--steps", type=int, default=5, help="RL steps per run of the step-time comparison")
    parser.add_argument("--skip-steps", action="store_true", help="weight sync only")
    args = parser.parse_args()
    if args.role == "send":
        print(json.dumps(asyncio.run(_send(args.url, args.address, args.repeats))))
        return
    with tempfile.TemporaryDirectory(prefix="forkrl-bench-multihost-") as tmp:
        workdir = Path(tmp)
        sync = bench_sync(args.repeats, workdir)
        print(f"weight sync: medium tiny Qwen2, gloo, 1 HF replica, begin -> broadcast -> commit, "
              f"best of {args.repeats}")
        print(f"  {'':12}{'params':>10}{'best s':>10}{'median s':>10}{'s per M':>10}")
        best = {}
        for label, row in sync.items():
            best[label] = min(row["seconds"])
            per_m = best[label] / (row["params"] / 1e6)
            print(f"  {label:12}{row['params'] / 1e6:>9.2f}M{best[label]:>10.3f}"
                  f"{statistics.median(row['seconds']):>10.3f}{per_m:>10.4f}")
        ratio = best["two hosts"] / best["same host"]
        verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
        print(f"  cross-host / same-host: {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
        if args.skip_steps:
            return
        steps = bench_steps(args.steps, workdir)
        print(f"RL step (main job shape, TP=2, 1 replica), mean seconds per step over steps 2..{args.steps}")
        print(f"  {'':12}" + "".join(f"{p:>10}" for p in PHASES))
        for label, means in steps.items():
            print(f"  {label:12}" + "".join(f"{means[p]:>10.3f}" for p in PHASES))
        print(f"  four hosts / one host step time: {steps['four hosts']['step'] / steps['one host']['step']:.2f}x")


if __name__ == "__main__":
    main()
