"""Operator latency on the real control plane: `kubectl apply` of N RLVRJobs -> all their children exist,
and delete -> all children gone, for N = 1, 10, 50 (the operator runs as a subprocess with the chart's
ServiceAccount, as in the tests).

Baseline, measured in the same run: the very same child manifests (built by the operator's own builders)
applied directly with one `kubectl apply --server-side`, and deleted directly by label. The ratio is what
the operator adds on top of the API server's own cost: watching, reconciling, status writes, events.

    python bench/operator.py                # 1, 10, 50 jobs
    python bench/operator.py --sizes 1,10   # quicker
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,50", help="comma-separated job counts")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="operator resync period")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-phase limit in seconds")
    args = parser.parse_args()
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
