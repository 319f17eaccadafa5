"""The services dashboard: the processes around a run (rollout replicas, verifier replicas, the learner's
memory and the operator), from `forkrl_rollout_*`, `forkrl_verifier_*`, `forkrl_learner_*` and
`forkrl_operator_*`."""

from __future__ import annotations

from forkrl.operator import metrics as operator
from forkrl.operator.dashboards.common import Board, Panel, Query, quantile, rate, series
from forkrl.rollout import metrics as rollout
from forkrl.rollout.verifier import metrics as verifier
from forkrl.trainer.metrics import prometheus as t

UID = "forkrl-services"


def services_dashboard() -> Board:
    board = Board(UID, "forkrl services", "Rollout and verifier replicas, the learner and the operator of forkrl "
                  "runs (see docs/metrics.md).", rollout.WEIGHT_VERSION)
    board.row(
        "Rollout",
        Panel("Rollout requests by outcome", "Generate requests finished per second: ok, aborted (a weight swap "
              "interrupted them), error.", (Query(rate(rollout.REQUESTS, "run", "status"), "{{run}} {{status}}"),),
              "reqps"),
        Panel("Rollout tokens per second", "Generated and prompt tokens per second, per replica.",
              (Query(rate(rollout.GENERATED_TOKENS, "run", "replica"), "{{run}} {{replica}} generated"),
               Query(rate(rollout.PROMPT_TOKENS, "run", "replica"), "{{run}} {{replica}} prompt"))),
        Panel("Rollout queue", "Requests waiting for a batch and requests in the running batch, per replica.",
              (Query(series(rollout.QUEUE_DEPTH), "{{run}} {{replica}} waiting"),
               Query(series(rollout.RUNNING), "{{run}} {{replica}} running"))),
        Panel("KV cache usage", "Fraction of each replica's KV-cache budget in use.",
              (Query(series(rollout.KV_CACHE), "{{run}} {{replica}}"),), "percentunit", 12),
        Panel("Rollout phase latency p95", "95th percentile of each phase (queue, prefill, decode, generate, "
              "weight_apply) over the rate window.",
              (Query(quantile(0.95, rollout.PHASE_SECONDS, "run", "phase"), "{{run}} {{phase}}"),), "s", 12),
        Panel("Weight syncs", "Weight syncs per second by outcome, and the p95 duration of a sync.",
              (Query(rate(rollout.WEIGHT_SYNCS, "run", "status"), "{{run}} {{status}}/s"),
               Query(quantile(0.95, rollout.WEIGHT_SYNC_SECONDS, "run"), "{{run}} p95 seconds")), "short", 12),
        Panel("Replicas", "Rollout replicas the controller sees serving or down, and replicas whose engine sleeps.",
              (Query(series(t.REPLICAS), "{{run}} {{state}}"),
               Query(f"sum by (run) ({series(rollout.SLEEPING)})", "{{run}} sleeping")), "short", 12),
    )
    board.row(
        "Verifier",
        Panel("Verifier items by reason", "Items scored per second by outcome (internal_error: the verifier "
              "failed, not the model).", (Query(rate(verifier.ITEMS, "run", "reason"), "{{run}} {{reason}}"),)),
        Panel("Verifier item latency", "Time to score one item (excluding queueing), p50 and p95 by task.",
              (Query(quantile(0.5, verifier.ITEM_SECONDS, "run", "task"), "{{run}} {{task}} p50"),
               Query(quantile(0.95, verifier.ITEM_SECONDS, "run", "task"), "{{run}} {{task}} p95")), "s"),
        Panel("Verifier request latency p95", "HTTP request latency by route.",
              (Query(quantile(0.95, verifier.REQUEST_SECONDS, "run", "route"), "{{run}} {{route}}"),), "s"),
        Panel("Verifier queue and workers", "Items waiting for a worker, items being scored, and live workers.",
              (Query(series(verifier.QUEUE_DEPTH), "{{run}} {{replica}} waiting"),
               Query(series(verifier.INFLIGHT), "{{run}} {{replica}} scoring"),
               Query(series(verifier.WORKERS), "{{run}} {{replica}} workers"))),
        Panel("Sandbox kills, restarts, rejections", "Per second: programs killed at a limit, worker processes "
              "replaced, items refused with 429 (queue full).",
              (Query(rate(verifier.SANDBOX_KILLS, "run"), "{{run}} sandbox kills"),
               Query(rate(verifier.WORKER_RESTARTS, "run", "cause"), "{{run}} restarts ({{cause}})"),
               Query(rate(verifier.REJECTED_ITEMS, "run"), "{{run}} rejected items"))),
        Panel("Verifier HTTP responses", "Requests per second by route and status code.",
              (Query(rate(verifier.REQUESTS, "run", "route", "status"), "{{run}} {{route}} {{status}}"),), "reqps"),
    )
    board.row(
        "Learner",
        Panel("Learner peak memory", "Rank 0's peak memory so far: CUDA allocated on GPU, resident set on CPU.",
              (Query(series(t.PEAK_MEMORY), "{{run}}"),), "bytes"),
        Panel("Learner throughput", "Tokens the learner processed per second of update.",
              (Query(series(t.LEARNER_TPS), "{{run}}"),)),
        Panel("Learner update time", "Learner time of each step's optimizer updates, and updates per second.",
              (Query(series(t.UPDATE_SECONDS), "{{run}} seconds"),
               Query(rate(t.UPDATES, "run"), "{{run}} updates/s"))),
    )
    board.row(
        "Operator",
        Panel("Reconciles by outcome", "RLVRJob reconciles per second: ok, conflict (retried), error.",
              (Query(rate(operator.RECONCILES, "outcome"), "{{outcome}}"),)),
        Panel("Reconcile duration", "p50 and p95 of one reconcile.",
              (Query(quantile(0.5, operator.RECONCILE_SECONDS, "pod"), "{{pod}} p50"),
               Query(quantile(0.95, operator.RECONCILE_SECONDS, "pod"), "{{pod}} p95")), "s"),
        Panel("RLVRJobs by phase", "RLVRJobs in each phase at their last reconcile.",
              (Query(f"sum by (phase) ({series(operator.JOBS)})", "{{phase}}"),)),
        Panel("Children applied and deleted", "Server-side applies and deletions of child objects per second.",
              (Query(rate(operator.APPLIES, "kind"), "apply {{kind}}"),
               Query(rate(operator.DELETES, "kind"), "delete {{kind}}")), "short", 12),
        Panel("Status writes and events", "RLVRJob status patches and Kubernetes Events per second.",
              (Query(rate(operator.STATUS_WRITES), "status writes"),
               Query(rate(operator.EVENTS, "reason"), "event {{reason}}")), "short", 12),
    )
    return board
