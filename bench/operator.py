"""Operator latency on the real control plane: `kubectl apply` of N RLVRJobs -> all their children exist,
and delete -> all children gone, for N = 1, 10, 50 (the operator runs as a subprocess with the chart's
ServiceAccount, as in the tests).

Baseline, measured in the same run: the very same child manifests (built by the operator's own builders)
applied directly with one `kubectl apply --server-side`, and deleted directly by label. The ratio is what
the operator adds on top of the API server's own cost: watching, reconciling, status writes, events, and
(since issue 16) waiting for each job's rollout and verifier pods to be Ready before creating its RayJob,
which the baseline does not do.

    python bench/operator.py                # 1, 10, 50 jobs
    python bench/operator.py --sizes 1,10   # quicker

Start-up cost (issue 16; no cluster): the operator only talks to the Kubernetes API, so it must not import
torch and friends. `--startup` times, in fresh subprocesses (median of `--repeats`), the wall time and the
peak RSS of `python -c "import forkrl.operator.handlers"` and `python -m forkrl.operator --help`, and
exits non-zero when one misses its target (< 200 MiB, < 2 s). `make bench` runs this part.

    python bench/operator.py --startup
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forkrl.operator.children import build_children
from forkrl.operator.context import JobContext
from forkrl.operator.names import JobNames
from forkrl.operator.resource import RLVRJobResourceSpec
from tests.cluster.binaries import build_binaries
from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import KWOK_NODES
from tests.operator.harness import (
    CHART,
    CHILD_KINDS,
    CHILDREN_PER_JOB,
    MONITORING_CRDS,
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    OperatorProcess,
    count_children,
    create_and_wait,
    delete_and_wait,
    small_jobs,
)


def start_cluster() -> ControlPlane:
    cluster = ControlPlane(build_binaries(stream_progress=True)).start(controller_manager=True)
    cluster.start_scheduler()
    cluster.start_kwok()
    for name, gpus in KWOK_NODES:
        cluster.add_kwok_node(name, gpus=gpus)
    cluster.install_kuberay_crds()
    cluster.apply(MONITORING_CRDS)
    cluster.create_namespace(OPERATOR_NAMESPACE)
    cluster.helm("install", "forkrl", str(CHART), "-n", OPERATOR_NAMESPACE, "--set", "operator.replicas=0", "--wait")
    return cluster


def direct_manifests(namespace: str, count: int) -> str:
    """The children the operator would make for `count` jobs, without owners (nothing owns them here)."""
    docs = []
    for job in small_jobs(namespace, count, prefix="direct"):
        name = job["metadata"]["name"]
        spec = RLVRJobResourceSpec.model_validate({**job["spec"], "name": name})
        for manifest in build_children(JobContext(JobNames(name, namespace), f"uid-{name}", spec)):
            manifest["metadata"].pop("ownerReferences")
            docs.append(json.dumps(manifest))
    return "\n---\n".join(docs)


def direct(cluster: ControlPlane, namespace: str, count: int, timeout: float) -> tuple[float, float]:
    text = direct_manifests(namespace, count)
    start = time.monotonic()
    cluster.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=text, timeout=timeout)
    cluster.wait_for(lambda: count_children(cluster, namespace) >= count * CHILDREN_PER_JOB, "direct children", timeout)
    created = time.monotonic() - start
    start = time.monotonic()
    cluster.kubectl(
        "delete", ",".join(CHILD_KINDS), "-n", namespace, "-l", "forkrl.dev/job", "--wait=false", timeout=timeout
    )
    cluster.wait_for(lambda: count_children(cluster, namespace) == 0, "direct children gone", timeout)
    return created, time.monotonic() - start


ROOT = Path(__file__).resolve().parents[1]
STARTUP_RSS_TARGET_MIB = 200.0
STARTUP_SECONDS_TARGET = 2.0
# (label, arguments after the interpreter, held to the targets)
STARTUP_COMMANDS = (
    ("python -c pass (interpreter alone)", ("-c", "pass"), False),
    # What the operator cannot do without: its Kubernetes client and kopf (most of the time that remains).
    ('python -c "import kopf, kubernetes" (floor)', ("-c", "import kopf, kubernetes.client, kubernetes.config"), False),
    ('python -c "import forkrl.operator.handlers"', ("-c", "import forkrl.operator.handlers"), True),
    ("python -m forkrl.operator --help", ("-m", "forkrl.operator", "--help"), True),
)
HEAVY = ("torch", "transformers", "megatron", "vllm", "ray")


# Runs `argv` once and prints "<exit code> <wall seconds> <peak RSS KiB>". A fork of this small launcher
# (`python -S`, ~8 MiB) rather than of the benchmark: a child's ru_maxrss counts the memory of the process
# it was forked from (the pre-exec image), which would hide a small operator behind the benchmark's own RSS.
LAUNCHER = """
import os, resource, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - start
print(os.waitstatus_to_exitcode(status), seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_once(args: tuple[str, ...]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh `python <args>`."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, sys.executable, *args], cwd=ROOT, capture_output=True, text=True
    )
    code, seconds, rss_kib = result.stdout.split()
    if result.returncode != 0 or int(code) != 0:
        raise RuntimeError(f"python {' '.join(args)} exited {code}:\n{result.stderr}")
    return float(seconds), int(rss_kib) / 1024  # ru_maxrss is in KiB on Linux


def heavy_modules_loaded() -> list[str]:
    code = (
        "import sys, forkrl.operator.handlers, forkrl.operator.__main__; "
        f"print(' '.join(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def startup(repeats: int) -> int:
    rows = []
    for label, args, held in STARTUP_COMMANDS:
        runs = [run_once(args) for _ in range(repeats)]
        seconds = statistics.median(s for s, _ in runs)
        rss = statistics.median(r for _, r in runs)
        ok = rss < STARTUP_RSS_TARGET_MIB and seconds < STARTUP_SECONDS_TARGET
        verdict = ("PASS" if ok else "FAIL") if held else "(reference)"
        rows.append((label, seconds, max(s for s, _ in runs), rss, verdict))
    heavy = heavy_modules_loaded()
    load = os.getloadavg()[0]
    print(f"operator start-up, median of {repeats} fresh processes ({os.cpu_count()} CPUs, load average {load:.1f})")
    print(
        f"{'command':<46} {'wall s':>7} {'max s':>7} {'RSS MiB':>8}  target <{STARTUP_SECONDS_TARGET:g} s, "
        f"<{STARTUP_RSS_TARGET_MIB:.0f} MiB"
    )
    for label, seconds, worst, rss, verdict in rows:
        print(f"{label:<46} {seconds:>7.2f} {worst:>7.2f} {rss:>8.1f}  {verdict}")
    print(f"heavy packages imported by the operator: {', '.join(heavy) if heavy else 'none'}")
    passed = all(verdict != "FAIL" for *_, verdict in rows) and not heavy
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,50", help="comma-separated job counts")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="operator resync period")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-phase limit in seconds")
    parser.add_argument("--startup", action="store_true", help="only the start-up cost (import time, RSS); no cluster")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per start-up command (median)")
    args = parser.parse_args()
    if args.startup:
        return startup(args.repeats)
    sizes = [int(size) for size in args.sizes.split(",")]
    cluster = start_cluster()
    operator = None
    try:
        kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA, duration="2h")
        operator = OperatorProcess(
            cluster, kubeconfig, "bench-operator", "--standalone", f"--resync-seconds={args.resync_seconds}"
        ).start()
        rows = []
        for size in sizes:
            namespace = f"bench-{size}"
            cluster.create_namespace(namespace)
            reconciles = operator.counter("forkrl_operator_reconciles_total")
            applies = operator.counter("forkrl_operator_child_applies_total")
            created = create_and_wait(cluster, namespace, size, args.timeout)
            reconciles = operator.counter("forkrl_operator_reconciles_total") - reconciles
            applies = operator.counter("forkrl_operator_child_applies_total") - applies
            deleted = delete_and_wait(cluster, namespace, args.timeout)
            base_namespace = f"bench-direct-{size}"
            cluster.create_namespace(base_namespace)
            direct_created, direct_deleted = direct(cluster, base_namespace, size, args.timeout)
            rows.append(
                (
                    size,
                    created,
                    direct_created,
                    deleted,
                    direct_deleted,
                    reconciles,
                    applies,
                    operator.rss_bytes() / 2**20,
                )
            )
        print()
        print("operator on the real control plane (etcd, kube-apiserver, KCM, scheduler, kwok; 2-core machine)")
        print(
            f"{'jobs':>5} {'children':>8} | {'apply->children s':>17} {'direct s':>8} {'ratio':>6} | "
            f"{'delete->gone s':>14} {'direct s':>8} {'ratio':>6} | {'reconciles':>10} {'applies':>7} "
            f"{'RSS MiB':>7}"
        )
        for size, created, base_c, deleted, base_d, reconciles, applies, rss in rows:
            print(
                f"{size:>5} {size * CHILDREN_PER_JOB:>8} | {created:>17.2f} {base_c:>8.2f} {created / base_c:>6.2f} | "
                f"{deleted:>14.2f} {base_d:>8.2f} {deleted / base_d:>6.2f} | {reconciles:>10.0f} {applies:>7.0f} "
                f"{rss:>7.0f}"
            )
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
