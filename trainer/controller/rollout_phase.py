"""The generation half of an RL step: prompts -> requests -> rollout replicas -> verifier -> groups, with
DAPO dynamic sampling (drop groups whose outcomes are all equal, refill from further prompts)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from forkrl.rollout.types import GenerateRequest, GenerateResult, RolloutBatch, SamplingParams
from forkrl.rollout.verifier.schemas import CodeItem, MathItem, Reason, VerifyResult
from forkrl.trainer.controller.protocols import Replicas, Verifier
from forkrl.trainer.data.schema import PromptRow, code_tests
from forkrl.trainer.dynamic_sampling import DynamicSampler
from forkrl.trainer.metrics.records import DynamicSamplingStats, SampleStats


def request_seed(run_seed: int, *parts: object) -> int:
    """A stable 63-bit seed per (run, step, round, prompt): reruns and resumed runs sample identically."""
    digest = hashlib.blake2b(repr((run_seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Group:
    """One prompt's n samples with their verdicts."""

    row: PromptRow
    request: GenerateRequest
    result: GenerateResult
    verdicts: list[VerifyResult]

    @property
    def rewards(self) -> list[float]:
        return [v.reward for v in self.verdicts]

    @property
    def correct(self) -> list[bool]:
        return [v.correct for v in self.verdicts]

    @property
    def answered(self) -> list[bool]:
        """Whether each sample gave a final answer the verifier could extract (right or wrong)."""
        return [v.reason != Reason.no_answer for v in self.verdicts]


@dataclass
class PhaseTimes:
    """Wall seconds spent per phase (accumulated over dynamic-sampling rounds)."""

    rollout: float = 0.0
    verify: float = 0.0
    generated_tokens: int = 0


def build_requests(rows: Sequence[PromptRow], render: Callable[[PromptRow], list[int]], n: int, max_new: int,
                   sampling: SamplingParams, run_seed: int, tag: str, max_prompt_tokens: int
                   ) -> tuple[list[PromptRow], list[GenerateRequest], int]:
    """Requests for the rows whose prompt fits; returns (rows kept, requests, rows skipped as too long)."""
    kept, requests, skipped = [], [], 0
    for index, row in enumerate(rows):
        ids = render(row)
        if len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(row)
        requests.append(GenerateRequest(request_id=f"{tag}/p{index}", prompt_token_ids=ids, n=n,
                                        max_new_tokens=max_new, seed=request_seed(run_seed, tag, index),
                                        sampling=sampling))
    return kept, requests, skipped


def verify_items(row: PromptRow, ids: Sequence[str], responses: Sequence[str]) -> list[MathItem | CodeItem]:
    """The verifier requests scoring `responses` to `row`, by the row's task: math rows are checked against
    their ground truth in the row's answer format, code rows are run against their tests in the sandbox."""
    pairs = list(zip(ids, responses, strict=True))
    if row.task == "math":
        return [MathItem(id=i, task="math", response=r, ground_truth=row.answer, extraction=row.answer_format)
                for i, r in pairs]
    if row.task == "code":
        tests = code_tests(row.answer)  # once per row: a group's samples share the (possibly large) tests
        return [CodeItem(id=i, task="code", response=r, tests=tests) for i, r in pairs]
    raise ValueError(f"row {row.source}:{row.index} has task {row.task!r}; the verifier scores math or code")


async def generate_and_verify(rows: Sequence[PromptRow], requests: Sequence[GenerateRequest],
                              replicas: Replicas, verifier: Verifier, decode: Callable[[list[int]], str],
                              times: PhaseTimes) -> list[Group]:
    """Generate every request, score every sample exactly once (ids checked), return the groups."""
    start = time.perf_counter()
    results: list[GenerateResult] = await replicas.generate(list(requests))
    times.rollout += time.perf_counter() - start
    items: list[MathItem | CodeItem] = []
    for row, request, result in zip(rows, requests, results, strict=True):
        times.generated_tokens += sum(len(sample.token_ids) for sample in result.samples)
        items += verify_items(row, [f"{request.request_id}/s{j}" for j in range(len(result.samples))],
                              [decode(sample.token_ids) for sample in result.samples])
    start = time.perf_counter()
    verdicts = await verifier.verify(items)
    times.verify += time.perf_counter() - start
    by_id = {v.id: v for v in verdicts}
    if len(verdicts) != len(items) or set(by_id) != {item.id for item in items}:
        raise RuntimeError(f"verifier returned {len(verdicts)} results for {len(items)} samples (lost or duplicated)")
    groups = []
    for row, request, result in zip(rows, requests, results, strict=True):
        ids = [f"{request.request_id}/s{j}" for j in range(len(result.samples))]
        groups.append(Group(row, request, result, [by_id[i] for i in ids]))
    return groups


def groups_to_batch(groups: Sequence[Group], pad_token_id: int) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
    """(RolloutBatch, rewards [B], correct [B]) with samples in group order."""
    rollout = RolloutBatch.from_results([g.request for g in groups], [g.result for g in groups], pad_token_id)
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    correct = torch.tensor([c for g in groups for c in g.correct], dtype=torch.bool)
    return rollout, rewards, correct


def sample_stats(groups: Sequence[Group]) -> SampleStats:
    """What the samples of `groups` scored and how long they ran (zeros when there is none)."""
    correct = [c for g in groups for c in g.correct]
    rewards = [r for g in groups for r in g.rewards]
    lengths = [len(s.token_ids) for g in groups for s in g.result.samples]
    truncated = [s.finish_reason == "length" for g in groups for s in g.result.samples]
    count = len(correct)
    return SampleStats(samples=count, accuracy=sum(correct) / max(count, 1), reward_mean=sum(rewards) / max(count, 1),
                       response_length_mean=sum(lengths) / max(len(lengths), 1),
                       response_length_max=max(lengths, default=0),
                       truncated_frac=sum(truncated) / max(len(truncated), 1))


async def collect_groups(take_rows: Callable[[int], list[PromptRow]], make_requests: Callable[..., Any],
                         replicas: Replicas, verifier: Verifier, decode: Callable[[list[int]], str],
                         sampler: DynamicSampler, prompts_per_round: int, filter_groups: bool, times: PhaseTimes
                         ) -> tuple[SampleStats, DynamicSamplingStats]:
    """Run generation rounds until the sampler is full. Returns what every generated sample scored (before
    dynamic sampling dropped any group) and what the rounds dropped."""
    generated: list[Group] = []
    skipped = 0
    while not sampler.is_full:
        round_index = sampler.begin_round()
        rows, requests, too_long = make_requests(take_rows(prompts_per_round), round_index)
        skipped += too_long
        groups = await generate_and_verify(rows, requests, replicas, verifier, decode, times)
        generated += groups
        metric = [[float(c) for c in g.correct] for g in groups] if filter_groups else [[0.0, 1.0]] * len(groups)
        sampler.add(groups, metric)
    rounds = DynamicSamplingStats(
        rounds=sampler.rounds,
        dropped_groups=sum(s.dropped_all_max + s.dropped_all_min for s in sampler.history),
        dropped_all_correct=sum(s.dropped_all_max for s in sampler.history),
        prompts_skipped_too_long=skipped,
    )
    return sample_stats(generated), rounds
