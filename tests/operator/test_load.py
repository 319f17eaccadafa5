"""Load: 50 RLVRJobs applied at once all get their children within a measured bound, deleting them leaves
nothing, and the operator's memory stays flat over repeated create/delete cycles.

Figures on the 2-core dev machine (shared): 50 jobs -> 500 children in ~25-40 s, gone again in ~15-25 s
(see bench/operator.py for the table). Since each RayJob is created only once its job's rollout and
verifier pods are Ready (issue 16), the last 50 children (the RayJobs) also wait for the scheduler and kwok
to start 100 pods: 450 children after ~26 s and all 500 after ~51 s at load 7, up to ~125 s when the
machine is busier. The bounds below leave room for that.
"""

from __future__ import annotations

import gc

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import OperatorProcess, create_and_wait, delete_and_wait

FIFTY_JOBS_BOUND_S = 200.0
MEMORY_GROWTH_BOUND = 48 * 2**20


@pytest.mark.slow
def test_fifty_jobs_at_once_reach_their_children_within_the_bound(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    created = create_and_wait(forkrl_cluster, k8s_namespace, 50, timeout=FIFTY_JOBS_BOUND_S)
    print(f"\n50 jobs: all 500 children after {created:.1f} s")
    assert module_operator.counter("forkrl_operator_reconciles_total", outcome="error") == 0
    deleted = delete_and_wait(forkrl_cluster, k8s_namespace, timeout=FIFTY_JOBS_BOUND_S)
    print(f"50 jobs: every child gone {deleted:.1f} s after the delete")


@pytest.mark.slow
def test_operator_memory_stays_flat_over_create_delete_cycles(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    samples = []
    for cycle in range(4):
        create_and_wait(forkrl_cluster, k8s_namespace, 10, timeout=90, prefix=f"c{cycle}")
        delete_and_wait(forkrl_cluster, k8s_namespace, timeout=90)
        gc.collect()
        samples.append(module_operator.rss_bytes())
    print("\noperator RSS after each cycle (MiB):", [round(s / 2**20, 1) for s in samples])
    # The first cycle warms caches (imports, connection pools, kopf's per-resource state); after it,
    # 20 more jobs created and deleted must not grow the process.
    assert samples[-1] - samples[1] < MEMORY_GROWTH_BOUND, samples
