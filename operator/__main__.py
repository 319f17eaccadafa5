"""`python -m forkrl.operator`: run the RLVRJob operator (in-cluster, or with a kubeconfig).

    python -m forkrl.operator                          # in a pod: its ServiceAccount, all namespaces
    python -m forkrl.operator --kubeconfig ~/.kube/config --namespace team-a
    python -m forkrl.operator --priority 100           # one of several replicas (kopf peering)

Two replicas must never reconcile at once. kopf's peering is not a Lease: the replica with the highest
`--priority` works and the others pause; *equal* priorities pause everyone. So either run one replica
(the chart uses `strategy: Recreate`) or give every replica a distinct priority (`--priority` defaults to
a random one when `--peering` is given). `--standalone` ignores peering altogether.

    python -m forkrl.operator --standalone --no-finalizer   # deleting a job never waits for the operator
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
from collections.abc import Sequence

import kopf

from forkrl.operator.handlers import HandlerConfig, register
from forkrl.operator.kube import Kube
from forkrl.operator.metrics import OperatorMetrics
from forkrl.operator.reconcile import Reconciler


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m forkrl.operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeatable; default: all namespaces)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true", help="no peering with other replicas")
    mode.add_argument(
        "--peering", default=None, help="name of the ClusterKopfPeering (or KopfPeering) object; required to exist"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest works, equal ones all pause (default: random)",
    )
    parser.add_argument(
        "--peering-lifetime", type=int, default=60, help="seconds a silent peer is still believed alive"
    )
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="period of the level-triggered resync")
    parser.add_argument(
        "--finalizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a deleted RLVRJob until the operator has swept its children (default). --no-finalizer: "
        "a deletion completes even while the operator is down and the garbage collector deletes the children "
        "(needs --standalone)",
    )
    parser.add_argument("--metrics-port", type=int, default=8081, help="Prometheus /metrics port (-1: off)")
    parser.add_argument("--liveness-port", type=int, default=8080, help="/healthz port (-1: off)")
    parser.add_argument("--bind", default="0.0.0.0", help="address of the metrics and liveness endpoints")
    parser.add_argument("--api-workers", type=int, default=16, help="concurrent API requests")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.resync_seconds <= 0:
        parser.error("--resync-seconds must be positive")
    if not args.finalizer and not args.standalone:
        # Without kopf's timers the resync is a loop of our own, which kopf's peering cannot pause.
        parser.error("--no-finalizer needs --standalone (one replica, no peering)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # kopf logs every handler success per object at INFO; keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        # kopf logs in with $KUBECONFIG; the reconciler's client gets the same file.
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    identity = f"{socket.gethostname()}/{os.getpid()}"
    metrics = OperatorMetrics()
    if args.metrics_port >= 0:
        port = metrics.serve(args.metrics_port, args.bind)
        logging.getLogger("forkrl.operator").info("metrics on %s:%d/metrics", args.bind, port)
    kube = Kube.connect(args.kubeconfig, pool_size=args.api_workers)

    def post_event(body: dict, kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])

    reconciler = Reconciler(kube, metrics, post_event, workers=args.api_workers)
    registry = kopf.OperatorRegistry()
    register(
        registry,
        HandlerConfig(
            resync_seconds=args.resync_seconds,
            peering_lifetime=args.peering_lifetime,
            identity=identity,
            finalizer=args.finalizer,
            namespaces=tuple(args.namespace),
        ),
    )
    # Without --standalone or --peering, kopf uses the peering object "default" when it exists.
    peering: dict[str, object] = {"priority": args.priority if args.priority is not None else random.randint(1, 10**6)}
    if args.standalone:
        peering = {"standalone": True}
    elif args.peering is not None:
        peering["peering_name"] = args.peering
    liveness = f"http://{args.bind}:{args.liveness_port}/healthz" if args.liveness_port >= 0 else None
    try:
        kopf.run(
            registry=registry,
            memo=kopf.Memo(reconciler=reconciler),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
            **peering,
        )
    finally:
        reconciler.executor.shutdown(wait=False, cancel_futures=True)
        kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
