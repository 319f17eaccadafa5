"""The experiment dashboard: what an RL run learns and how fast (the controller's `forkrl_trainer_*` and
`forkrl_learner_*` metrics, one series per run)."""

from __future__ import annotations

from forkrl.operator.dashboards.common import Board, Panel, Query, quantile, rate, series
from forkrl.rollout import metrics as rollout
from forkrl.rollout.metric_spec import MetricSpec
from forkrl.trainer.metrics import prometheus as t

UID = "forkrl-experiment"


def _by_run(spec: MetricSpec, legend: str = "{{run}}", **matchers: str) -> Query:
    return Query(series(spec, **matchers), legend)


def experiment_dashboard() -> Board:
    board = Board(UID, "forkrl experiment", "Reward, accuracy, entropy, the forking split, the policy update and "
                  "the speed of forkrl runs (controller and learner metrics; see docs/metrics.md).", t.STEP)
    board.row(
        "Outcome",
        Panel("Reward", "Mean verifier reward of each step's generated samples.", (_by_run(t.REWARD),)),
        Panel("Accuracy", "Fraction scored correct: the step's generated samples (before dynamic sampling), the "
              "samples it trained on, and held-out avg@k per data set.",
              (_by_run(t.ACCURACY, "{{run}} generated"), _by_run(t.TRAINED_ACCURACY, "{{run}} trained"),
               _by_run(t.EVAL_ACCURACY, "{{run}} eval {{dataset}}")), "percentunit"),
        Panel("Response length", "Mean response length of the step's generated samples, in tokens.",
              (_by_run(t.RESPONSE_LENGTH),)),
        Panel("Truncated responses", "Fraction of generated samples that stopped at the response-length limit.",
              (_by_run(t.TRUNCATED),), "percentunit"),
        Panel("Samples and dropped groups", "Generated samples per second, and prompt groups dropped by dynamic "
              "sampling (all rewards equal) or for staleness.",
              (Query(rate(t.SAMPLES, "run"), "{{run}} samples/s"),
               Query(rate(t.DROPPED_GROUPS, "run", "reason"), "{{run}} dropped {{reason}}/s")), "short"),
        Panel("Step", "Last finished RL step.", (_by_run(t.STEP),)),
    )
    board.row(
        "Entropy and forking tokens",
        Panel("Token entropy percentiles", "Response-token entropy (nats) at p10 ... p99 and its mean, exact over "
              "the tokens each step trained on.",
              (_by_run(t.ENTROPY, "{{run}} p{{quantile}}"), _by_run(t.ENTROPY_MEAN, "{{run}} mean")), "short", 12),
        Panel("Forking threshold", "Entropy threshold (nats) of the forking mask: tokens above it get gradient.",
              (_by_run(t.FORKING_THRESHOLD),), "short", 6),
        Panel("Selected token fraction", "Fraction of response tokens that received policy gradient.",
              (_by_run(t.SELECTED_RATIO),), "percentunit", 6),
    )
    board.row(
        "Policy update",
        Panel("Clip fraction by token type", "Fraction of tokens whose gradient a clip removed, over all tokens "
              "and the high- and low-entropy tokens.",
              (_by_run(t.CLIP_RATIO, "{{run}} {{token_type}}"),), "percentunit"),
        Panel("KL by token type", "KL to the reference policy (nats per token) by token type.",
              (_by_run(t.KL, "{{run}} {{token_type}}"),)),
        Panel("Train-inference mismatch", "KL(rollout || learner) on the rollout's own tokens (k3, nats): the "
              "gap between the rollout engine's and the learner's probabilities.", (_by_run(t.MISMATCH_KL),)),
        Panel("Loss", "Mean policy loss of the step's optimizer updates.", (_by_run(t.LOSS),)),
        Panel("Gradient norm", "Gradient norm before clipping (mean of the step's updates).",
              (_by_run(t.GRAD_NORM),)),
        Panel("Learning rate", "Learning rate of the step's last update.", (_by_run(t.LEARNING_RATE),)),
    )
    board.row(
        "Speed and staleness",
        Panel("Step time by phase", "Wall time of the last step's phases (they overlap off-policy; `step` is the "
              "whole step).", (_by_run(t.PHASE_SECONDS, "{{run}} {{phase}}"),), "s", 12),
        Panel("Step duration p50 / p95", "RL step wall time over the rate window.",
              (Query(quantile(0.5, t.STEP_DURATION, "run"), "{{run}} p50"),
               Query(quantile(0.95, t.STEP_DURATION, "run"), "{{run}} p95")), "s", 12),
        Panel("Tokens per second", "Generated tokens per second of step wall time, and tokens the learner "
              "processed per second of update.",
              (_by_run(t.GENERATION_TPS, "{{run}} generation"), _by_run(t.LEARNER_TPS, "{{run}} learner"))),
        Panel("Weight versions", "The version the rollout replicas serve after each step's sync, and the version "
              "each replica reports.",
              (_by_run(t.WEIGHT_VERSION, "{{run}} trainer"),
               _by_run(rollout.WEIGHT_VERSION, "{{run}} {{replica}}"))),
        Panel("Weight-version lag", "Largest policy-version lag of a sample each step trained on (0: on-policy).",
              (_by_run(t.WEIGHT_LAG),)),
    )
    return board
