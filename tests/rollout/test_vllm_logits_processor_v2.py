"""The V2-runner dual-temperature processor: through vLLM's own V2 loader and params validator, and
driven directly the way the V2 runner drives it (slots recycled without removal calls, chunked prefill,
preemption into another slot, a step past the stop), against each sample decoded alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams as VSamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import (  # noqa: E402
    LogitsContext,
    build_custom_logits_processors,
    build_custom_logits_processors_params_validator,
)

from forkrl.rollout.dual_temperature import (  # noqa: E402
    EXTRA_ARGS_KEY,
    SAMPLE_KEY,
    DualTemperatureRows,
    dual_temperature_step,
    entropy_at_unit_temperature,
)
from forkrl.rollout.dual_temperature_state import drain_high_temperature_counts  # noqa: E402
from forkrl.rollout.types import DualTemperatureParams  # noqa: E402
from forkrl.rollout.vllm_engine import DUAL_TEMPERATURE_PROCESSORS  # noqa: E402
from forkrl.rollout.vllm_logits_processor_v2 import DualTemperatureLogitsProcessorV2  # noqa: E402

VOCAB = 16
SLOTS = 4


def _dual(key: str, dual: DualTemperatureParams) -> VSamplingParams:
    return VSamplingParams(temperature=1.0, extra_args={EXTRA_ARGS_KEY: dual.model_dump(), SAMPLE_KEY: key})


def test_vllm_v2_loader_rejects_the_v1_processor() -> None:
    """The construction failure of issue 13, so that the class choice in VLLMEngine stays necessary."""
    with pytest.raises(ValueError, match=r"is not a subclass of vllm\.v1\.worker\.gpu\.sample\.logits_processor"):
        build_custom_logits_processors_params_validator([DUAL_TEMPERATURE_PROCESSORS["v1"]])


def test_vllm_v2_params_validator_runs_our_checks() -> None:
    validate = build_custom_logits_processors_params_validator([DUAL_TEMPERATURE_PROCESSORS["v2"]])
    validate(_dual("ok", DualTemperatureParams()))
    validate(VSamplingParams(temperature=0.7))  # requests without dual temperature pass untouched
    with pytest.raises(VLLMValidationError, match="t_high"):
        validate(VSamplingParams(temperature=1.0, extra_args={EXTRA_ARGS_KEY: {"t_high": -1}}))
    with pytest.raises(VLLMValidationError, match="temperature"):
        validate(VSamplingParams(temperature=0.8, extra_args={EXTRA_ARGS_KEY: DualTemperatureParams().model_dump()}))


class _SlotBuffer:
    """What the runner's UVA-backed per-slot buffers offer: `.np` (host) and `.gpu` (device view)."""

    def __init__(self) -> None:
        self.np = np.zeros(SLOTS, dtype=np.int32)
        self.gpu = torch.from_numpy(self.np)  # shares memory, like the runner's UVA view


@dataclass
class _Sample:
    key: str
    params: DualTemperatureParams | None
    prompt_len: int
    logits: list[torch.Tensor]
    """Logits of output index 0, 1, ... (the ones finally emitted)."""
    emitted: int
    slot: int = -1
    next_index: int = 0
    tempered: list[torch.Tensor] = field(default_factory=list)


class _Runner:
    """The V2 runner's side of the contract, reduced to what the processor reads."""

    def __init__(self) -> None:
        self.prompt_len, self.prefill_len = _SlotBuffer(), _SlotBuffer()
        # The fields of the runner's RequestState that vLLM's builder hands to processors.
        request_state = SimpleNamespace(
            device=torch.device("cpu"),
            max_num_reqs=SLOTS,
            vocab_size=VOCAB,
            all_token_ids=None,
            prompt_len=self.prompt_len,
            prefill_len=self.prefill_len,
            total_len=None,
        )
        (self.processor,) = build_custom_logits_processors(
            None, request_state, False, [DUAL_TEMPERATURE_PROCESSORS["v2"]]
        )
        assert isinstance(self.processor, DualTemperatureLogitsProcessorV2)
        self.free = list(range(SLOTS))

    def add(self, sample: _Sample) -> None:
        """A new request, or a preempted one coming back with its committed tokens (`next_index`)."""
        sample.slot = self.free.pop()
        self.prompt_len.np[sample.slot] = sample.prompt_len
        self.prefill_len.np[sample.slot] = sample.prompt_len + sample.next_index
        params = _dual(sample.key, sample.params) if sample.params else VSamplingParams(temperature=0.0)
        assert self.processor.add_request(sample.slot, params) == (sample.params is not None)
        self.processor.apply_staged_writes()

    def remove(self, sample: _Sample) -> None:
        self.free.append(sample.slot)  # the processor is not told

    def step(self, rows: list[tuple[_Sample, int, torch.Tensor]]) -> list[torch.Tensor]:
        """rows: (sample, position of the last input token, logits); returns the processed logits."""
        slots = torch.tensor([s.slot for s, _, _ in rows], dtype=torch.int32)
        ctx = LogitsContext(
            expanded_idx_mapping=slots,
            idx_mapping=slots,
            idx_mapping_np=slots.numpy(),
            expanded_local_pos=torch.zeros(len(rows), dtype=torch.int32),
            input_ids=torch.zeros(len(rows), dtype=torch.int32),
            pos=torch.tensor([p for _, p, _ in rows], dtype=torch.int64),
            seq_lens_upper_bound_np=np.array([p + 1 for _, p, _ in rows]),
        )
        return list(self.processor.apply(torch.stack([x for _, _, x in rows]), ctx))

    def decode(self, samples: list[_Sample], generator: torch.Generator) -> None:
        """One decode step of `samples` in a shuffled batch order; records the tempered logits."""
        order = torch.randperm(len(samples), generator=generator).tolist()
        batch = [samples[k] for k in order]
        rows = [(s, s.prompt_len + s.next_index - 1, s.logits[s.next_index]) for s in batch]
        for sample, out in zip(batch, self.step(rows), strict=True):
            sample.tempered.append(out)
            sample.next_index += 1


def _alone(sample: _Sample) -> tuple[list[torch.Tensor], int]:
    rows = DualTemperatureRows.from_params([sample.params])
    tempered, high_count = [], 0
    for logits in sample.logits[: sample.emitted]:
        out, high, rows.tau = dual_temperature_step(logits.unsqueeze(0), rows)
        tempered.append(out[0])
        high_count += int(high[0])
    return tempered, high_count


def _logits(seed: int, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randn((n, VOCAB), generator=generator) * (0.3 + 3 * torch.rand((n, 1), generator=generator)))


def test_driven_like_the_v2_runner_counts_exactly_what_each_sample_emitted() -> None:
    running = DualTemperatureParams(t_high=1.5, t_low=0.6, threshold_mode="running_quantile", threshold=1.5)
    absolute = DualTemperatureParams(t_high=1.3, t_low=0.7, threshold=2.2)
    a = _Sample("v2-a", running, prompt_len=7, logits=_logits(1, 10), emitted=10)
    b = _Sample("v2-b", absolute, prompt_len=3, logits=_logits(2, 9), emitted=9)
    c = _Sample("v2-c", running, prompt_len=5, logits=_logits(3, 12), emitted=4)  # stops after 4 tokens
    plain = _Sample("v2-plain", None, prompt_len=2, logits=_logits(4, 12), emitted=12)
    runner, generator = _Runner(), torch.Generator().manual_seed(0)

    for sample in (b, c, plain):
        runner.add(sample)
    runner.add(a)
    # a's prompt is prefilled in two chunks: the first chunk's row samples nothing.
    chunk = runner.step([(a, 3, _logits(5, 1)[0])])
    assert len(chunk) == 1
    runner.decode([a, b, c, plain], generator)
    for _ in range(3):
        runner.decode([a, b, c, plain], generator)
    # c emitted its stop token at index 3; async scheduling already ran it one position further.
    runner.step([(c, c.prompt_len + 4 - 1, _logits(6, 1)[0])])
    runner.remove(c)
    # b is preempted with 5 committed tokens after its 6th position ran; a new sample takes b's old slot
    # (no removal call: the processor learns it at add_request), and b comes back in c's old one.
    runner.decode([a, b, plain], generator)
    runner.decode([a, b, plain], generator)
    b.tempered.pop()
    b.next_index = 5
    runner.remove(b)
    d = _Sample("v2-d", absolute, prompt_len=4, logits=_logits(7, 3), emitted=3)
    runner.add(d)
    b.logits[5] = _logits(8, 1)[0]  # the recomputed position sees (slightly) different logits
    runner.add(b)
    assert (d.slot, b.slot) == (3, 2)
    # b's re-prefill comes in two chunks; the first ends one token short, so its row would decide output
    # index 4 again, here the other way: a row vLLM discards must leave the kept decision alone.
    kept_high = bool(entropy_at_unit_temperature(b.logits[4].unsqueeze(0))[0] > absolute.threshold)
    flipped = 50 * torch.eye(VOCAB)[0] if kept_high else torch.zeros(VOCAB)
    runner.step([(b, b.prompt_len + 5 - 2, flipped)])
    while a.next_index < a.emitted:
        live = [s for s in (a, b, d, plain) if s.next_index < s.emitted]
        runner.decode(live, generator)

    for sample in (a, b, c, d):
        tempered, _ = _alone(sample)
        assert len(sample.tempered) >= sample.emitted
        for got, expected in zip(sample.tempered[: sample.emitted], tempered, strict=True):
            assert torch.equal(got, expected)
    assert all(torch.equal(got, x) for got, x in zip(plain.tempered, plain.logits, strict=False))
    emitted = {s.key: s.emitted for s in (a, b, c, d)}
    counts = drain_high_temperature_counts(emitted)
    assert counts == {s.key: _alone(s)[1] for s in (a, b, c, d)}
    assert 0 < sum(counts.values()) < sum(emitted.values())
    assert drain_high_temperature_counts(emitted) == {}  # read once
