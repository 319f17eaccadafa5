"""`RLVRController`: one RL step, read top to bottom like CleanRL's update loop.

    prompts -> rollout (n per prompt) -> verifier -> overlong shaping -> GRPO advantages
    -> dynamic sampling (refill) -> old/ref log-probs -> mini-batch updates -> weight sync
    -> periodic evaluation -> checkpoint

Learner calls are blocking Ray calls; rollout and verification are async HTTP. In the one-step
off-policy schedule the rollout of step t+1 runs while step t updates (samples lag one version).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from forkrl.rollout.types import SamplingParams
from forkrl.trainer.controller.batching import (
    ScoredBatch,
    drop_stale_groups,
    mini_batches,
    score_batch,
    to_learner_batch,
)
from forkrl.trainer.controller.rollout_phase import (
    PhaseTimes,
    build_requests,
    collect_groups,
    generate_and_verify,
    groups_to_batch,
)
from forkrl.trainer.controller.weight_push import PushReport, WeightPusher
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.data.stream import PromptStream
from forkrl.trainer.dynamic_sampling import DynamicSampler
from forkrl.trainer.evaluation import EvalResult, score_dataset
from forkrl.trainer.spec import RLVRJobSpec

# Learner metrics whose names the controller uses for its own step-level values.
_LEARNER_RENAMES = {"tokens_per_second": "learner/tokens_per_second", "step_seconds": "learner/step_seconds",
                    "weight_version": "learner/weight_version"}


@dataclass
class CollectedBatch:
    """A step's training data and what it cost."""

    scored: ScoredBatch
    stats: dict[str, float]
    times: PhaseTimes
    generated_with_version: int
    lag: torch.Tensor | None = None
    """[B] weight versions between each trained sample's weights and the update's (set before the update)."""


@dataclass
class RLVRController:
    """Drives the learner group, the replica pool and the verifier for one run."""

    spec: RLVRJobSpec
    tokenizer: Any
    learners: Any
    replicas: Any
    verifier: Any
    stream: PromptStream
    log: Callable[[str], None] = print
    version: int = 0
    step: int = 0
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    repushed_total: int = 0
    """Replicas found serving a stale version and re-pushed (restarts, new replicas)."""
    entropy_sample: list[float] = field(default_factory=list)
    """Response-token entropies of the latest batch (the report's histogram)."""
    pusher: WeightPusher | None = None
    """Set by the run: how weights reach the replicas (broadcast from the stage senders, or a directory)."""
    synced_once: bool = False
    """False until the first sync of this process: every replica then gets the learner's weights, whatever
    version it reports (it may have loaded another checkpoint, or serve a run that crashed)."""
    last_push: PushReport | None = None
    inflight_cursor: dict[str, int] | None = None
    """Off-policy: the prompt cursor before the in-flight rollout took its prompts (None when none runs)."""

    # ------------------------------------------------------------------ text <-> tokens
    def render(self, row: PromptRow) -> list[int]:
        from forkrl.trainer.data.templates import render_prompt

        text = render_prompt(row, self.spec.data.template, self.tokenizer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # ----------------------------------------------------------------------- rollout
    async def collect(self, step: int) -> CollectedBatch:
        """Generate, score and filter until the step's batch is full (DAPO dynamic sampling)."""
        spec = self.spec
        ds = spec.dynamic_sampling
        sampler: DynamicSampler = DynamicSampler(
            spec.schedule.train_batch_size, ds.max_gen_batches if ds.enabled else 1,
            ds.mode if ds.enabled else "refill",
        )
        times = PhaseTimes()
        version = self.version

        def make_requests(rows: list[PromptRow], round_index: int):
            return build_requests(rows, self.render, spec.schedule.samples_per_prompt, spec.model.max_response_tokens,
                                  spec.rollout.sampling, spec.seed, f"s{step}r{round_index}",
                                  spec.model.max_prompt_tokens)

        per_round = max(spec.schedule.train_batch_size,
                        round(spec.schedule.train_batch_size * ds.gen_batch_multiplier))
        stats = await collect_groups(self.stream.take, make_requests, self.replicas, self.verifier, self.decode,
                                     sampler, per_round, ds.enabled, times)
        groups = sampler.take()
        rollout, rewards, correct = groups_to_batch(groups, self.tokenizer.pad_token_id)
        scored = score_batch(rollout, rewards, correct, spec.overlong, spec.advantage, spec.model.max_response_tokens)
        return CollectedBatch(scored, stats, times, version)

    # ------------------------------------------------------------------------ update
    def update(self, scored: ScoredBatch) -> tuple[dict[str, float], dict[str, float]]:
        """Old/ref log-probs, then epochs x mini-batches of learner steps. Returns (metrics, phase times)."""
        spec = self.spec
        batch = to_learner_batch(scored)
        start = time.perf_counter()
        old_logp, old_entropy = self.learners.compute_logprobs(batch, "policy")
        batch.old_logp, batch.old_entropy = old_logp, old_entropy
        self.entropy_sample = old_entropy[batch.response_mask.bool()][:20000].tolist()
        if spec.objective.needs_reference:
            batch.ref_logp = self.learners.compute_logprobs(batch, "reference")[0]
        logprob_seconds = time.perf_counter() - start
        start = time.perf_counter()
        sequences = spec.schedule.mini_batch_size * spec.schedule.samples_per_prompt
        reports = [self.learners.train_step(mb) for _ in range(spec.schedule.epochs)
                   for mb in mini_batches(batch, min(sequences, batch.num_sequences))]
        update_seconds = time.perf_counter() - start
        metrics: dict[str, float] = {}
        keys = {k for r in reports for k in r}
        for key in keys:
            values = [r[key] for r in reports if isinstance(r.get(key), int | float)]
            if not values:
                continue
            name = _LEARNER_RENAMES.get(key, key)
            # The objective library's metrics arrive as `objective/<name>`; chart them under their own names.
            if name.startswith("objective/") and name.removeprefix("objective/") not in keys:
                name = name.removeprefix("objective/")
            metrics[name] = sum(values) / len(values)
        return metrics, {"time/logprobs": logprob_seconds, "time/update": update_seconds}

    async def sync_weights(self) -> float:
        """Push the learner's weights as the next version to every serving replica; returns seconds.

        A replica that cannot be reached any more is marked down (it is re-synced when it answers again)
        and the sync is repeated for the others; the step fails only when no replica can be synced.
        """
        start = time.perf_counter()
        self.version += 1
        await self._push(self.replicas.serving, self.version)
        return time.perf_counter() - start

    async def _push(self, urls: list[str], version: int) -> None:
        assert self.pusher is not None, "RLVRController.pusher is set by the run before the first step"
        for attempt in (1, 2):
            try:
                report = await self.pusher.push([self.replicas.clients[u] for u in urls], version)
                self.last_push = report
                return
            except Exception as err:
                if attempt == 2:
                    raise
                lost = await self.replicas.unreachable(urls)
                if not lost or len(lost) == len(urls):
                    raise
                for url in lost:
                    self.replicas.mark_down(url, f"weight sync v{version} failed: {err}")
                urls = [u for u in urls if u not in lost]

    async def ensure_replicas_current(self) -> list[str]:
        """Bring back replicas that answer again, then re-push the current weights to every serving replica
        whose version differs (restarted, new, or back from a network cut) before it serves."""
        await asyncio.to_thread(self.replicas.refresh)
        await self.replicas.probe_down()
        await self.replicas.wait_for_serving(self.spec.rollout.replica_wait_s)
        versions = await self.replicas.versions()
        for url in await self.replicas.unreachable([url for url, v in versions.items() if v is None]):
            self.replicas.mark_down(url, "does not answer")
        stale = [url for url, v in versions.items() if url in self.replicas.serving
                 and (v != self.version or not self.synced_once)]
        if stale:
            if self.synced_once:
                self.log(f"replicas {stale} serve version {[versions[u] for u in stale]}, expected "
                         f"{self.version}: re-pushing weights")
            await self._push(stale, self.version)
            self.repushed_total += len(stale) if self.synced_once else 0
        self.synced_once = True
        return stale

    # ------------------------------------------------------------------------ the step
    def step_record(self, collected: CollectedBatch, learner_metrics: dict[str, float], times: dict[str, float],
                    step_seconds: float) -> dict[str, float]:
        scored = collected.scored
        lengths = scored.rollout.response_lengths.double()
        assert collected.lag is not None, "update_and_sync measures the lag before the update"
        lag = collected.lag
        # An empty batch (filter_only kept no group) has no per-sample statistics: they are left out rather
        # than written as NaN.
        per_sample = {
            "reward/mean": float(scored.shaped.mean()),
            "reward/correctness_mean": float(scored.rewards.mean()),
            "advantage/abs_mean": float(scored.advantages.abs().mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "finish/length_frac": sum(r == "length" for r in scored.rollout.finish_reasons) / len(lengths),
        } if len(lengths) else {}
        record = {
            **learner_metrics,
            **collected.stats,
            "step": float(self.step),
            "samples": float(scored.rollout.num_samples),
            **per_sample,
            "weight_version": float(self.version),
            "replicas": float(len(self.replicas.serving)),
            "replicas/down": float(len(self.replicas.down)),
            "replicas/failures_total": float(self.replicas.failures_total),
            "replicas/repushed_total": float(self.repushed_total),
            "weight_version_lag/max": float(lag.max()) if len(lag) else 0.0,
            "weight_version_lag/mean": float(lag.double().mean()) if len(lag) else 0.0,
            "weight_version_lag/per_sample": lag.tolist(),
            "sync/senders": float(self.last_push.senders if self.last_push else 0),
            "sync/bytes": float(self.last_push.bytes if self.last_push else 0),
            "time/rollout": collected.times.rollout,
            "time/verify": collected.times.verify,
            "time/step": step_seconds,
            "tokens_per_second": collected.times.generated_tokens / max(step_seconds, 1e-9),
            **times,
        }
        return record

    async def train_step_sync(self) -> dict[str, float]:
        """On-policy: rollout with the current weights, update, sync."""
        start = time.perf_counter()
        await self.ensure_replicas_current()
        collected = await self.collect(self.step)
        metrics, times = await self.update_and_sync(collected)
        return self.step_record(collected, metrics, times, time.perf_counter() - start)

    async def update_and_sync(self, collected: CollectedBatch) -> tuple[dict[str, float], dict[str, float]]:
        """The update and the weight sync of a step; a batch left empty (dynamic sampling, stale samples)
        trains nothing, so the weights and their version stay as they are."""
        if not self.prepare(collected):
            return {}, {"time/logprobs": 0.0, "time/update": 0.0, "time/sync": 0.0}
        metrics, times = await asyncio.to_thread(self.update, collected.scored)
        times["time/sync"] = await self.sync_weights()
        return metrics, times

    def prepare(self, collected: CollectedBatch) -> bool:
        """Drop stale samples before they are used and measure the lag of the rest; False if none is left.

        A sample may lag at most schedule.max_staleness versions behind the weights the update starts from
        (`self.version`); a staler one (a replica that served old weights) is dropped with its group."""
        max_staleness = self.spec.schedule.max_staleness
        collected.scored, dropped = drop_stale_groups(collected.scored, self.version, max_staleness)
        collected.lag = self.version - collected.scored.rollout.weight_version
        collected.stats["staleness/dropped_groups"] = float(dropped)
        if dropped:
            self.log(f"step {self.step + 1}: dropped {dropped} groups generated more than schedule.max_staleness="
                     f"{max_staleness} weight versions before {self.version}")
        if collected.scored.rollout.num_samples == 0:
            self.log(f"step {self.step + 1}: no sample left to train on; the weights stay at version {self.version}")
            return False
        return True

    async def train_step_off_policy(self, pending: asyncio.Task | None, last: bool = False
                                    ) -> tuple[dict[str, float], asyncio.Task | None]:
        """One-step off-policy: the rollout of step t+1 overlaps the update of step t. `last`: no step follows
        (the run's last, or a stop was requested), so no rollout is started whose samples would go unused."""
        start = time.perf_counter()
        if pending is None:
            await self.ensure_replicas_current()
            pending = asyncio.create_task(self.collect(self.step))
        collected = await pending
        next_rollout = None
        self.inflight_cursor = None
        if not last:
            # Evaluation and checkpoints ran since the last sync: a replica restarted meanwhile must get the
            # current weights before it serves the next rollout.
            await self.ensure_replicas_current()
            self.inflight_cursor = self.stream.state.to_dict()
            next_rollout = asyncio.create_task(self.collect(self.step + 1))
        train = self.prepare(collected)
        metrics, times = {}, {"time/logprobs": 0.0, "time/update": 0.0, "time/sync": 0.0}
        if train:
            metrics, times = await asyncio.to_thread(self.update, collected.scored)
        if next_rollout is not None:
            await asyncio.wait({next_rollout})  # replicas must be idle before new weights are installed
        if train:
            await asyncio.to_thread(self.replicas.refresh)  # replicas that joined get the new weights too
            times["time/sync"] = await self.sync_weights()
        await self.ensure_replicas_current()  # joined or restarted replicas: current before they serve
        return self.step_record(collected, metrics, times, time.perf_counter() - start), next_rollout

    # -------------------------------------------------------------------- evaluation
    async def evaluate(self, datasets: dict[str, list[PromptRow]], phase: str) -> dict[str, EvalResult]:
        """avg@k / pass@k per data set at the eval temperature and top-p; also per-problem accuracies."""
        ev = self.spec.eval
        sampling = SamplingParams(temperature=ev.temperature, top_p=ev.top_p)
        results: dict[str, EvalResult] = {}
        for name, rows in datasets.items():
            times = PhaseTimes()
            kept, requests, _ = build_requests(rows, self.render, ev.samples_per_problem,
                                               ev.max_response_tokens or self.spec.model.max_response_tokens,
                                               sampling, self.spec.seed, f"eval/{name}",
                                               self.spec.model.max_prompt_tokens)
            groups = await generate_and_verify(kept, requests, self.replicas, self.verifier, self.decode, times)
            result = score_dataset(name, [g.correct for g in groups], ev.pass_k)
            results[name] = result
            self.eval_history.append({"phase": phase, "step": self.step, **result.row(),
                                      "per_problem": [sum(g.correct) / len(g.correct) for g in groups]})
        return results
