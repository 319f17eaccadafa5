"""`RLVRController`: one RL step, read top to bottom like CleanRL's update loop.

    prompts -> rollout (n per prompt) -> verifier -> overlong shaping -> GRPO advantages
    -> dynamic sampling (refill) -> staleness check -> old/ref log-probs -> mini-batch updates
    -> weight sync -> one `StepRecord`

Learner calls are blocking Ray calls; rollout and verification are async HTTP. In the one-step
off-policy schedule the rollout of step t+1 runs while step t updates (samples lag one version).
The training loop around the steps (evaluation, checkpoints, resume) is in loop.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from forkrl.rollout.types import SamplingParams
from forkrl.trainer.controller.batching import (
    ScoredBatch,
    drop_stale_groups,
    mini_batches,
    score_batch,
    to_learner_batch,
)
from forkrl.trainer.controller.protocols import Learners, Replicas, Tokenizer, Verifier
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
from forkrl.trainer.learner.step_metrics import entropy_summary
from forkrl.trainer.metrics.records import (
    DynamicSamplingStats,
    EntropyPercentiles,
    LearnerStepMetrics,
    PhaseSeconds,
    ReplicaStats,
    SampleStats,
    StalenessStats,
    StepRecord,
    SyncStats,
    TrainedStats,
)
from forkrl.trainer.spec import RLVRJobSpec


@dataclass
class CollectedBatch:
    """A step's generated and scored samples (after dynamic sampling) and what it cost."""

    scored: ScoredBatch
    generated: SampleStats
    dynamic_sampling: DynamicSamplingStats
    times: PhaseTimes
    generated_with_version: int


@dataclass(frozen=True)
class FreshBatch:
    """The samples a step may train on: those within schedule.max_staleness versions of the update."""

    scored: ScoredBatch
    staleness: StalenessStats


@dataclass(frozen=True)
class UpdateResult:
    """What the update half of a step measured (all None/0 when it trained nothing)."""

    learner: LearnerStepMetrics | None = None
    entropy: EntropyPercentiles | None = None
    logprobs_s: float = 0.0
    update_s: float = 0.0
    sync_s: float = 0.0


@dataclass(frozen=True)
class ControllerState:
    """What a checkpoint keeps of the controller. `stream` is the prompt cursor a resumed run continues
    from; off-policy it is the cursor before the in-flight rollout took its prompts, and
    `stream_after_inflight` the one after (used when the saved in-flight rollout is reloaded)."""

    step: int
    version: int
    stream: dict[str, int]
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    stream_after_inflight: dict[str, int] | None = None


def trained_stats(scored: ScoredBatch) -> TrainedStats | None:
    lengths = scored.rollout.response_lengths.double()
    if not len(lengths):
        return None
    return TrainedStats(
        samples=scored.rollout.num_samples,
        accuracy=float(scored.correct.double().mean()),
        reward_mean=float(scored.rewards.mean()),
        shaped_reward_mean=float(scored.shaped.mean()),
        advantage_abs_mean=float(scored.advantages.abs().mean()),
        response_length_mean=float(lengths.mean()),
        response_length_max=int(lengths.max()),
        truncated_frac=sum(r == "length" for r in scored.rollout.finish_reasons) / len(lengths),
    )


@dataclass
class RLVRController:
    """Drives the learner group, the replica pool and the verifier for one run."""

    spec: RLVRJobSpec
    tokenizer: Tokenizer
    learners: Learners
    replicas: Replicas
    verifier: Verifier
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

    # ------------------------------------------------------------------------- state
    def state_dict(self) -> ControllerState:
        """The controller's part of a checkpoint (the learners save their own)."""
        stream = self.stream.state.to_dict()
        if self.inflight_cursor is not None:
            return ControllerState(self.step, self.version, dict(self.inflight_cursor), list(self.eval_history),
                                   stream_after_inflight=stream)
        return ControllerState(self.step, self.version, stream, list(self.eval_history))

    def load_state_dict(self, state: ControllerState, inflight_restored: bool = False) -> None:
        """Continue from `state`. inflight_restored: the in-flight rollout saved with it is reused, so the
        prompts it took are not taken again."""
        self.step, self.version = state.step, state.version
        self.eval_history = list(state.eval_history)
        after = state.stream_after_inflight
        self.stream.restore(after if inflight_restored and after is not None else state.stream)
        self.inflight_cursor = None

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

        # Without dynamic sampling nothing is filtered, so a round of exactly the batch fills it: generating the
        # multiplier's extra prompts would only be discarded (and consume the data stream).
        per_round = spec.schedule.train_batch_size if not ds.enabled else max(
            spec.schedule.train_batch_size, round(spec.schedule.train_batch_size * ds.gen_batch_multiplier))
        generated, rounds = await collect_groups(self.stream.take, make_requests, self.replicas, self.verifier,
                                                 self.decode, sampler, per_round, ds.enabled, times)
        groups = sampler.take()
        rollout, rewards, correct = groups_to_batch(groups, self.tokenizer.pad_token_id)
        scored = score_batch(rollout, rewards, correct, spec.overlong, spec.advantage, spec.model.max_response_tokens)
        return CollectedBatch(scored, generated, rounds, times, version)

    # ------------------------------------------------------------------------ update
    def update(self, scored: ScoredBatch) -> UpdateResult:
        """Old/ref log-probs, then epochs x mini-batches of learner updates (sync time is added by the caller)."""
        spec = self.spec
        rollout_batch = to_learner_batch(scored)
        start = time.perf_counter()
        old_logp, old_entropy = self.learners.compute_logprobs(rollout_batch, "policy")
        ref_logp = None
        if spec.objective.needs_reference:
            ref_logp = self.learners.compute_logprobs(rollout_batch, "reference")[0]
        # A new batch (LearnerBatch is frozen): its shape checks run again on the added fields.
        batch = dataclasses.replace(rollout_batch, old_logp=old_logp, old_entropy=old_entropy, ref_logp=ref_logp)
        response_entropy = old_entropy[batch.response_mask.bool()]
        self.entropy_sample = response_entropy[:20000].tolist()
        logprobs_s = time.perf_counter() - start
        start = time.perf_counter()
        sequences = spec.schedule.mini_batch_size * spec.schedule.samples_per_prompt
        updates = [self.learners.train_step(mb) for _ in range(spec.schedule.epochs)
                   for mb in mini_batches(batch, min(sequences, batch.num_sequences))]
        # The same exact order statistics as the learner's per-update percentiles, over the whole step.
        entropy = entropy_summary(response_entropy, response_entropy.numel(), float(response_entropy.double().sum()))
        return UpdateResult(learner=LearnerStepMetrics.combine(updates), entropy=entropy, logprobs_s=logprobs_s,
                            update_s=time.perf_counter() - start)

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
    def step_record(self, collected: CollectedBatch, fresh: FreshBatch, update: UpdateResult, step_seconds: float
                    ) -> StepRecord:
        """The record of the step just run (`self.step` is still the previous step's number)."""
        times = collected.times
        return StepRecord(
            step=self.step + 1,
            weight_version=self.version,
            generated=collected.generated,
            dynamic_sampling=collected.dynamic_sampling,
            staleness=fresh.staleness,
            replicas=ReplicaStats(serving=len(self.replicas.serving), down=len(self.replicas.down),
                                  failures_total=self.replicas.failures_total, repushed_total=self.repushed_total),
            sync=SyncStats(senders=self.last_push.senders if self.last_push else 0,
                           bytes=self.last_push.bytes if self.last_push else 0),
            time=PhaseSeconds(rollout=times.rollout, verify=times.verify, logprobs=update.logprobs_s,
                              update=update.update_s, sync=update.sync_s, step=step_seconds),
            tokens_per_second=times.generated_tokens / max(step_seconds, 1e-9),
            trained=trained_stats(fresh.scored),
            entropy=update.entropy,
            learner=update.learner,
        )

    async def train_step_sync(self) -> StepRecord:
        """On-policy: rollout with the current weights, update, sync."""
        start = time.perf_counter()
        await self.ensure_replicas_current()
        collected = await self.collect(self.step)
        fresh = self.drop_stale(collected)
        update = UpdateResult()
        if fresh.scored.rollout.num_samples:
            update = await asyncio.to_thread(self.update, fresh.scored)
            update = dataclasses.replace(update, sync_s=await self.sync_weights())
        return self.step_record(collected, fresh, update, time.perf_counter() - start)

    def drop_stale(self, collected: CollectedBatch) -> FreshBatch:
        """Drop stale samples before they are used and measure the lag of the rest.

        A sample may lag at most schedule.max_staleness versions behind the weights the update starts from
        (`self.version`); a staler one (a replica that served old weights) is dropped with its group. A batch
        left empty trains nothing, so the weights and their version stay as they are."""
        max_staleness = self.spec.schedule.max_staleness
        scored, dropped = drop_stale_groups(collected.scored, self.version, max_staleness)
        lag = self.version - scored.rollout.weight_version
        if dropped:
            self.log(f"step {self.step + 1}: dropped {dropped} groups generated more than schedule.max_staleness="
                     f"{max_staleness} weight versions before {self.version}")
        if scored.rollout.num_samples == 0:
            self.log(f"step {self.step + 1}: no sample left to train on; the weights stay at version {self.version}")
        staleness = StalenessStats(dropped_groups=dropped, lag_max=int(lag.max()) if len(lag) else 0,
                                   lag_mean=float(lag.double().mean()) if len(lag) else 0.0,
                                   lag_per_sample=[int(v) for v in lag.tolist()])
        return FreshBatch(scored, staleness)

    async def train_step_off_policy(self, pending: asyncio.Future | None, last: bool = False
                                    ) -> tuple[StepRecord, asyncio.Future | None]:
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
        fresh = self.drop_stale(collected)
        train = fresh.scored.rollout.num_samples > 0
        update = UpdateResult()
        if train:
            update = await asyncio.to_thread(self.update, fresh.scored)
        if next_rollout is not None:
            await asyncio.wait({next_rollout})  # replicas must be idle before new weights are installed
        if train:
            await asyncio.to_thread(self.replicas.refresh)  # replicas that joined get the new weights too
            update = dataclasses.replace(update, sync_s=await self.sync_weights())
        await self.ensure_replicas_current()  # joined or restarted replicas: current before they serve
        return self.step_record(collected, fresh, update, time.perf_counter() - start), next_rollout

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
            result = score_dataset(name, [g.correct for g in groups], ev.pass_k,
                                   answered=[g.answered for g in groups])
            results[name] = result
            self.eval_history.append({"phase": phase, "step": self.step, **result.row(),
                                      "per_problem": [sum(g.correct) / len(g.correct) for g in groups]})
        return results
