"""`RLVRController` steps with a real 1-rank learner on a tiny model, in-process fakes for the rollout
replicas, the verifier and the weight pusher (no services, no Ray)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from forkrl.rollout.types import GenerateRequest, GenerateResult, SampleResult
from forkrl.rollout.verifier.schemas import CodeItem, MathItem, Reason, VerifyResult
from forkrl.trainer.controller.step import RLVRController
from forkrl.trainer.controller.weight_push import PushReport
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.data.stream import PromptStream
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.launch import run_world
from forkrl.trainer.learner.learner import Learner
from forkrl.trainer.metrics import LearnerStepMetrics
from forkrl.trainer.spec import RLVRJobSpec, parse_spec
from tests.trainer.learner.tiny import save_tiny_model
from tests.trainer.learner.workers import make_spec
from tests.trainer.metrics.builders import learner_metrics

SMOKE = Path(__file__).parent / "smoke.yaml"
URL = "fake://replica-0"


class CharTokenizer:
    """Characters -> ids in [1, 100) (the tiny model's vocabulary is 128); decode writes the ids."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % 99 for c in text]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


class FakeClient:
    def __init__(self, replicas: FakeReplicas) -> None:
        self.replicas = replicas

    async def healthz(self) -> bool:
        return True


class FakeReplicas:
    """One replica serving `version`: sample j of a request answers 2 + j tokens derived from its seed."""

    def __init__(self) -> None:
        self.version = 0
        self.serving = [URL]
        self.down: list[str] = []
        self.failures_total = 0
        self.clients = {URL: FakeClient(self)}
        self.requests: list[str] = []

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        self.requests += [r.request_id for r in requests]
        return [GenerateResult(r.request_id,
                               [SampleResult([10 + (r.seed + j * t) % 90 for t in range(2 + j)], [-1.5] * (2 + j),
                                             "stop", self.version) for j in range(r.n)],
                               seed=r.seed, prompt_length=len(r.prompt_token_ids))
                for r in requests]

    def refresh(self) -> None:
        pass

    async def probe_down(self) -> None:
        pass

    async def wait_for_serving(self, timeout_s: float) -> None:
        pass

    async def versions(self) -> dict[str, int | None]:
        return {URL: self.version}

    def mark_down(self, url: str, reason: str) -> None:
        raise AssertionError(f"{url} marked down: {reason}")

    async def unreachable(self, urls: Sequence[str]) -> list[str]:
        return []  # the fake replica always answers


class FakePusher:
    def __init__(self, replicas: FakeReplicas) -> None:
        self.replicas = replicas
        self.pushed: list[int] = []

    async def push(self, clients: list[Any], version: int) -> PushReport:
        self.replicas.version = version
        self.pushed.append(version)
        return PushReport(version, len(clients), "fake", 1, 0.0, 0)


class ScriptedVerifier:
    """Sample j of the prompt whose answer is `pattern` is correct iff pattern[j] == '1'."""

    async def verify(self, items: Sequence[MathItem | CodeItem]) -> list[VerifyResult]:
        out = []
        for item in items:
            assert isinstance(item, MathItem)
            sample = int(re.fullmatch(r".*/s(\d+)", item.id).group(1))
            correct = item.ground_truth[sample] == "1"
            out.append(VerifyResult(id=item.id, task="math", reward=float(correct), correct=correct,
                                    reason=Reason.ok, latency_s=0.0))
        return out


class OneRankLearners:
    """The learner group's interface over one in-process Learner; records the mini-batch sizes it trains.

    Like a Ray actor the learner lives on one thread of its own: the CPU shim's torch-function mode, which
    lets megatron run on CPU, is per thread, and the controller calls the learners from worker threads."""

    def __init__(self, spec: LearnerSpec, objective: Any, model_dir: str) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.learner: Learner = self.call(Learner, spec, objective, model_dir)
        self.trained: list[int] = []

    def call(self, fn: Any, *args: Any) -> Any:
        return self.thread.submit(fn, *args).result()

    def compute_logprobs(self, batch: Any, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.call(self.learner.compute_logprobs, batch, model)
        return stats.logp, stats.entropy

    def train_step(self, batch: Any) -> LearnerStepMetrics:
        self.trained.append(batch.num_sequences)
        return self.call(self.learner.train_step, batch)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.call(lambda: {k: v.clone() for k, v in self.learner.export_weights()})


def job_spec(**changes: dict) -> RLVRJobSpec:
    data = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_spec(data, "test_loop")


def controller(spec: RLVRJobSpec, model_dir: str, patterns: list[str]) -> RLVRController:
    rows = [PromptRow(prompt=f"{i}+{i}=", answer=p, source="t", index=i) for i, p in enumerate(patterns)]
    replicas = FakeReplicas()
    ctl = RLVRController(spec, CharTokenizer(), OneRankLearners(make_spec({"mbs": 2}), spec.objective, model_dir),
                         replicas, ScriptedVerifier(),
                         PromptStream(rows, seed=0, shuffle=False), log=lambda _: None)
    ctl.pusher = FakePusher(replicas)
    return ctl


def filter_only_steps(model_dir: str) -> dict[str, Any]:
    """Step 1 keeps 3 of 4 groups (one all-correct); step 2 keeps none (all correct or all wrong)."""
    spec = job_spec(dynamic_sampling={"enabled": True, "mode": "filter_only", "max_gen_batches": 1},
                    schedule={"train_batch_size": 4, "samples_per_prompt": 2, "mini_batch_size": 2})
    ctl = controller(spec, model_dir, ["11", "10", "01", "10", "11", "00", "00", "11"])
    before = ctl.learners.weights()
    first = asyncio.run(ctl.train_step_sync())
    trained_first = list(ctl.learners.trained)
    after_first = ctl.learners.weights()
    ctl.step += 1
    second = asyncio.run(ctl.train_step_sync())
    after_second = ctl.learners.weights()
    ctl.learners.call(ctl.learners.learner.close)
    return {"first": first, "second": second, "trained_first": trained_first, "trained": ctl.learners.trained,
            "learner_version": ctl.learners.learner.weight_version, "version": ctl.version,
            "pushed": ctl.pusher.pushed,
            "moved_first": max(float((after_first[k] - before[k]).abs().max()) for k in before),
            "moved_second": max(float((after_second[k] - after_first[k]).abs().max()) for k in before)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("loop_model")
    save_tiny_model(root / "qwen2", "qwen2", layers=2)
    return str(root / "qwen2")


def test_filter_only_step_trains_a_ragged_batch_and_skips_an_empty_one(model_dir: str) -> None:
    out = run_world(filter_only_steps, 1, model_dir)[0]
    first = out["first"]
    assert first.trained.samples == 6 and first.dynamic_sampling.dropped_groups == 1
    # Accuracy and reward of everything generated (8 samples, 5 correct) vs of what was trained on (the
    # all-correct group dropped: 3 of 6) are reported apart, each under its own name.
    assert first.generated.samples == 8 and first.generated.accuracy == 5 / 8 and first.generated.reward_mean == 5 / 8
    assert first.trained.accuracy == 0.5 and first.trained.reward_mean == 0.5
    # Two optimizer updates: the learner's version is the last one's, an integer, not their mean (1.5).
    assert first.learner.updates == 2 and first.learner.weight_version == 2
    assert first.entropy is not None and first.entropy.p10 <= first.entropy.p50 <= first.entropy.p99
    # mini_batch_size 2 prompts x 2 samples = 4 sequences per optimizer step: 6 sequences -> 4, then 2.
    assert out["trained_first"] == [4, 2]
    assert out["moved_first"] > 1e-4
    # Nothing informative in step 2: no optimizer step, no new weight version, a record all the same.
    second = out["second"]
    assert second.trained is None and second.learner is None and second.entropy is None
    assert second.generated.samples == 8 and second.dynamic_sampling.dropped_groups == 4
    assert out["trained"] == [4, 2] and out["learner_version"] == 2
    assert out["moved_second"] == 0.0
    assert out["version"] == 1 and out["pushed"] == [0, 1]


class FakeLearners:
    """Records what it is asked to train on; log-probs are zeros (no model)."""

    def __init__(self) -> None:
        self.trained: list[torch.Tensor] = []

    def compute_logprobs(self, batch: Any, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(batch.input_ids.shape), torch.zeros(batch.input_ids.shape)

    def train_step(self, batch: Any) -> LearnerStepMetrics:
        self.trained.append(batch.input_ids)
        return learner_metrics()


class LaggingReplicas(FakeReplicas):
    """Prompt `p<i>` is answered with weights `lag[i]` versions older than the ones the replica serves (a
    replica restarted on old weights and not yet re-synced)."""

    def __init__(self, lag: dict[int, int]) -> None:
        super().__init__()
        self.lag = lag

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        results = await super().generate(requests)
        for request, result in zip(requests, results, strict=True):
            index = int(request.request_id.rsplit("/p", 1)[1])
            for sample in result.samples:
                sample.weight_version = self.version - self.lag.get(index, 0)
        return results


def test_stale_groups_are_dropped_before_the_update() -> None:
    spec = job_spec(dynamic_sampling={"enabled": False},
                    schedule={"train_batch_size": 4, "samples_per_prompt": 2, "mini_batch_size": 4,
                              "max_staleness": 1})
    rows = [PromptRow(prompt=f"{i}*{i}=", answer="10", source="t", index=i) for i in range(4)]
    replicas = LaggingReplicas({1: 2, 2: 1})  # p1 lags 2 > max_staleness: dropped; p2 lags 1: kept
    learners = FakeLearners()
    ctl = RLVRController(spec, CharTokenizer(), learners, replicas, ScriptedVerifier(),
                         PromptStream(rows, seed=0, shuffle=False), log=lambda _: None, version=3)
    ctl.pusher = FakePusher(replicas)
    record = asyncio.run(ctl.train_step_sync())
    # Prompts 0, 2, 3 (2 samples each) reach the learner; prompt 1's tokens appear in no trained row.
    assert [t.shape[0] for t in learners.trained] == [6]
    prompt_1 = CharTokenizer()("1*1=")["input_ids"]
    assert not any(row[: len(prompt_1)].tolist() == prompt_1 for row in learners.trained[0])
    assert record.staleness.dropped_groups == 1 and record.trained.samples == 6
    assert record.staleness.lag_max == 1 and record.staleness.lag_per_sample == [0, 0, 1, 1, 0, 0]
    assert ctl.version == 4


def test_all_stale_batch_trains_nothing() -> None:
    spec = job_spec(dynamic_sampling={"enabled": False},
                    schedule={"train_batch_size": 2, "samples_per_prompt": 2, "mini_batch_size": 2})
    rows = [PromptRow(prompt=f"{i}-{i}=", answer="10", source="t", index=i) for i in range(2)]
    replicas = LaggingReplicas({0: 5, 1: 5})
    learners = FakeLearners()
    ctl = RLVRController(spec, CharTokenizer(), learners, replicas, ScriptedVerifier(),
                         PromptStream(rows, seed=0, shuffle=False), log=lambda _: None, version=5)
    ctl.pusher = FakePusher(replicas)
    record = asyncio.run(ctl.train_step_sync())
    assert learners.trained == [] and ctl.version == 5 and record.trained is None
    assert record.staleness.dropped_groups == 2


@pytest.mark.parametrize("enabled", [False, True])
def test_only_dynamic_sampling_generates_more_prompts_than_the_batch(enabled: bool) -> None:
    spec = job_spec(dynamic_sampling={"enabled": enabled, "gen_batch_multiplier": 2.0},
                    schedule={"train_batch_size": 4, "samples_per_prompt": 2, "mini_batch_size": 4})
    # Every group has one right and one wrong answer, so dynamic sampling keeps all of them.
    rows = [PromptRow(prompt=f"{i}%{i}=", answer="10", source="t", index=i) for i in range(16)]
    replicas, learners = FakeReplicas(), FakeLearners()
    ctl = RLVRController(spec, CharTokenizer(), learners, replicas, ScriptedVerifier(),
                         PromptStream(rows, seed=0, shuffle=False), log=lambda _: None)
    ctl.pusher = FakePusher(replicas)
    record = asyncio.run(ctl.train_step_sync())
    per_round = 8 if enabled else 4  # the multiplier's extra prompts would be thrown away without filtering
    assert ctl.stream.state.position == per_round
    assert record.generated.samples == 2 * per_round and record.trained.samples == 8
    assert [t.shape[0] for t in learners.trained] == [8]


class RestartingReplicas(FakeReplicas):
    """Records, per generate call, the version served; `restart()` drops the weights (version 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[int] = []

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        self.served.append(self.version)
        return await super().generate(requests)


def test_off_policy_resyncs_before_each_rollout_and_starts_none_after_the_last_step() -> None:
    spec = job_spec(dynamic_sampling={"enabled": False},
                    schedule={"mode": "one_step_off_policy", "train_batch_size": 2, "samples_per_prompt": 2,
                              "mini_batch_size": 2, "steps": 3})
    rows = [PromptRow(prompt=f"{i}/{i}=", answer="10", source="t", index=i) for i in range(6)]
    replicas = RestartingReplicas()
    ctl = RLVRController(spec, CharTokenizer(), FakeLearners(), replicas, ScriptedVerifier(),
                         PromptStream(rows, seed=0, shuffle=False), log=lambda _: None)
    ctl.pusher = FakePusher(replicas)

    async def run() -> list[asyncio.Task | None]:
        pending, returned = None, []
        for step in range(3):
            replicas.version = 0  # restarted between steps (after the evaluation/checkpoint of the last one)
            _, pending = await ctl.train_step_off_policy(pending, last=step == 2)
            returned.append(pending)
            ctl.step += 1
        return returned

    returned = asyncio.run(run())
    # Step 0 generates its own batch and step 1's; steps 1 and 2 each one more (none after the last step).
    assert len(replicas.requests) == 3 * 2 and returned[-1] is None
    # Every rollout ran on the learner's weights of its start, never on a restarted replica's version 0.
    assert replicas.served == [0, 0, 1] and ctl.version == 3
    # Nothing in flight at the end: the stream holds exactly the prompts of the 3 trained steps.
    assert ctl.stream.state.position == 6 and ctl.inflight_cursor is None


def test_controller_state_round_trips_with_and_without_the_inflight_rollout() -> None:
    spec = job_spec(dynamic_sampling={"enabled": False})
    rows = [PromptRow(prompt=f"{i}/{i}=", answer="10", source="t", index=i) for i in range(10)]

    def fresh() -> RLVRController:
        return RLVRController(spec, CharTokenizer(), FakeLearners(), FakeReplicas(), ScriptedVerifier(),
                              PromptStream(rows, seed=0, shuffle=False), log=lambda _: None)

    ctl = fresh()
    ctl.stream.take(4)
    ctl.step, ctl.version, ctl.eval_history = 3, 2, [{"phase": "before_rl"}]
    ctl.inflight_cursor = ctl.stream.state.to_dict()  # the next rollout takes 2 more prompts
    ctl.stream.take(2)
    state = ctl.state_dict()
    assert (state.step, state.version, state.stream["position"]) == (3, 2, 4)
    assert state.stream_after_inflight is not None and state.stream_after_inflight["position"] == 6
    for restored, position in ((False, 4), (True, 6)):
        other = fresh()
        other.load_state_dict(state, inflight_restored=restored)
        assert (other.step, other.version, other.eval_history) == (3, 2, [{"phase": "before_rl"}])
        assert other.stream.state.position == position and other.inflight_cursor is None
    ctl.inflight_cursor = None  # synchronous mode: the cursor is the stream's own
    assert ctl.state_dict().stream["position"] == 6 and ctl.state_dict().stream_after_inflight is None
