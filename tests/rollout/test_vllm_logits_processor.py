"""The V1-runner dual-temperature processor against the real vLLM V1 classes on CPU tensors: its loader,
BatchUpdate adds/moves/removals, a preempted request resuming, decisions identical to HFEngine's, and the
real V1 Sampler drawing from the tempered distribution. The V2 one: test_vllm_logits_processor_v2.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams as VSamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    LogitsProcessors,
    MoveDirectionality,
)
from vllm.v1.sample.logits_processor import _load_custom_logitsprocs as load_custom  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402
from vllm.v1.sample.sampler import Sampler  # noqa: E402

from forkrl.rollout.dual_temperature import EXTRA_ARGS_KEY, SAMPLE_KEY, entropy_at_unit_temperature  # noqa: E402
from forkrl.rollout.dual_temperature_state import RING, drain_high_temperature_counts  # noqa: E402
from forkrl.rollout.sampling import GenerationDefaults, RowSampling, resolve_sampling, sample_step  # noqa: E402
from forkrl.rollout.types import DualTemperatureParams, SamplingParams  # noqa: E402
from forkrl.rollout.vllm_engine import DUAL_TEMPERATURE_PROCESSORS  # noqa: E402
from forkrl.rollout.vllm_logits_processor import DualTemperatureLogitsProcessor  # noqa: E402
from tests.rollout.helpers import chi_square_pvalue, next_token_logits, one_torch_thread, tiny  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _added(index: int, params: VSamplingParams, output_tok_ids: list[int] | None = None) -> tuple:
    return (index, params, [1, 2], output_tok_ids or [])


def _dual_params(key: str, dual: DualTemperatureParams) -> VSamplingParams:
    return VSamplingParams(temperature=1.0, extra_args={EXTRA_ARGS_KEY: dual.model_dump(), SAMPLE_KEY: key})


def test_processor_follows_rows_through_adds_moves_and_removals() -> None:
    processor = DualTemperatureLogitsProcessor(None, torch.device("cpu"), False)
    assert LogitsProcessors([processor]).argmax_invariant == [processor]
    always_high = DualTemperatureParams(t_high=2.0, t_low=0.5, threshold=0.0)
    never_high = DualTemperatureParams(t_high=2.0, t_low=0.5, threshold=50.0)
    plain = VSamplingParams(temperature=1.0)
    processor.update_state(
        BatchUpdate(
            batch_size=3,
            removed=[],
            added=[
                _added(0, _dual_params("a", always_high)),
                _added(1, plain),
                _added(2, _dual_params("c", never_high)),
            ],
            moved=[],
        )
    )
    logits = torch.randn(3, 11)
    out = processor.apply(logits.clone())
    assert torch.allclose(out, torch.stack([logits[0] / 2.0, logits[1], logits[2] / 0.5]))
    processor.update_state(BatchUpdate(batch_size=3, removed=[], added=[], moved=[(0, 2, MoveDirectionality.SWAP)]))
    out = processor.apply(logits.clone())
    assert torch.allclose(out, torch.stack([logits[0] / 0.5, logits[1], logits[2] / 2.0]))
    # Row 1 leaves, "a" (now row 2) moves into it.
    processor.update_state(
        BatchUpdate(batch_size=2, removed=[1], added=[], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)])
    )
    out = processor.apply(logits[:2].clone())
    assert torch.allclose(out, torch.stack([logits[0] / 0.5, logits[1] / 2.0]))
    processor.update_state(BatchUpdate(batch_size=0, removed=[1, 0], added=[], moved=[]))
    assert processor.apply(logits[:0].clone()).shape == (0, 11)
    assert drain_high_temperature_counts({"a": 3, "c": 3}) == {"a": 3, "c": 0}
    assert drain_high_temperature_counts({"a": 3}) == {}
    assert processor.state.rows_in_use == 0


def test_preempted_request_resumes_its_state() -> None:
    processor = DualTemperatureLogitsProcessor(None, torch.device("cpu"), False)
    running = DualTemperatureParams(threshold_mode="running_quantile", threshold=0.5, rho=0.5, quantile_lr=0.25)
    params = _dual_params("p", running)
    processor.update_state(BatchUpdate(batch_size=1, removed=[], added=[_added(0, params)], moved=[]))
    flat = torch.zeros(1, 8)  # entropy ln 8 > tau: high, tau += 0.125
    processor.apply(flat.clone())
    processor.apply(flat.clone())  # in flight when preempted: discarded, recomputed on resume
    processor.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))  # preempted
    resumed = _added(0, params, output_tok_ids=[4])  # one committed token
    processor.update_state(BatchUpdate(batch_size=1, removed=[], added=[resumed], moved=[]))
    processor.apply(flat.clone())
    row = int(processor.row_of_index[0])
    assert processor.state.next_index[row].item() == 2  # resumed at output index 1, not 2
    assert processor.state.ring_index[row, 2].item() == -1
    assert processor.state.ring_tau[row, 1].item() == pytest.approx(0.75)
    processor.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert drain_high_temperature_counts({"p": 2}) == {"p": 2}


def test_processor_and_hf_engine_make_identical_decisions() -> None:
    """Same logits sequence, same parameters: same tempered logits and the same running thresholds."""
    params = [
        DualTemperatureParams(t_high=1.4, t_low=0.7, threshold_mode="running_quantile", threshold=1.0, quantile_lr=0.3),
        DualTemperatureParams(t_high=1.2, t_low=0.8, threshold=1.5),
    ]
    processor = DualTemperatureLogitsProcessor(None, torch.device("cpu"), False)
    processor.update_state(
        BatchUpdate(
            batch_size=2,
            removed=[],
            added=[_added(i, _dual_params(f"e{i}", p)) for i, p in enumerate(params)],
            moved=[],
        )
    )
    resolved = [resolve_sampling(SamplingParams(dual_temperature=p), GenerationDefaults()) for p in params]
    rows = RowSampling.build(resolved, np.array([1, 2], dtype=np.uint64), "cpu")
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        logits = torch.randn((2, 30), generator=generator) * (0.3 + step / 4)
        vllm_out = processor.apply(logits.clone())
        hf = sample_step(logits, rows, step)
        entropy = entropy_at_unit_temperature(logits)
        expected_t = torch.where(entropy > rows.dual_rows.tau, rows.dual_rows.t_high, rows.dual_rows.t_low)
        assert torch.allclose(vllm_out, logits / expected_t.unsqueeze(1))
        assert torch.allclose(hf.logprobs, (logits / expected_t.unsqueeze(1)).log_softmax(-1)[[0, 1], hf.tokens])
        rows.dual_rows.tau = hf.next_tau
        state_rows = torch.from_numpy(processor.row_of_index[:2])
        assert torch.allclose(processor.state.ring_tau[state_rows, step % RING], rows.dual_rows.tau)


def _metadata(rows: int, processor: DualTemperatureLogitsProcessor) -> SamplingMetadata:
    return SamplingMetadata(
        temperature=torch.ones(rows),
        all_greedy=False,
        all_random=True,
        top_p=None,
        top_k=None,
        generators={},
        max_num_logprobs=0,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(rows),
        presence_penalties=torch.zeros(rows),
        repetition_penalties=torch.ones(rows),
        output_token_ids=[[] for _ in range(rows)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors([processor]),
    )


@pytest.mark.parametrize("regime", ["high", "low"])
def test_vllm_sampler_with_the_processor_samples_the_tempered_distribution(regime: str) -> None:
    """The real v1 Sampler (processed_logprobs) + our processor: chi-square on 4000 draws."""
    model, tokenizer = tiny(0, "float64")
    logits = next_token_logits(model, tokenizer("What is 3+4?").input_ids).float()
    entropy = float(entropy_at_unit_temperature(logits.unsqueeze(0)))
    dual = DualTemperatureParams(t_high=1.6, t_low=0.6, threshold=entropy - 0.2 if regime == "high" else entropy + 0.2)
    rows, rounds = 1000, 4
    processor = DualTemperatureLogitsProcessor(None, torch.device("cpu"), False)
    keys = [f"{regime}-{i}" for i in range(rows)]
    added = [_added(i, _dual_params(key, dual)) for i, key in enumerate(keys)]
    processor.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
    sampler, metadata = Sampler(logprobs_mode="processed_logprobs"), _metadata(rows, processor)
    torch.manual_seed(11)
    tokens, logprobs = [], []
    for _ in range(rounds):
        out = sampler(logits.repeat(rows, 1), metadata)
        tokens.append(out.sampled_token_ids.squeeze(1).long())
        logprobs.append(out.logprobs_tensors.logprobs[:, 0])
    tokens, logprobs = torch.cat(tokens), torch.cat(logprobs)
    intended, other = (1.6, 0.6) if regime == "high" else (0.6, 1.6)
    counts = torch.bincount(tokens, minlength=logits.numel())
    assert chi_square_pvalue(counts, (logits.double() / intended).softmax(-1)) > 1e-3
    assert chi_square_pvalue(counts, (logits.double() / other).softmax(-1)) < 1e-3
    assert torch.allclose(logprobs, (logits / intended).log_softmax(-1)[tokens], atol=1e-5)
    processor.update_state(BatchUpdate(batch_size=0, removed=list(range(rows - 1, -1, -1)), added=[], moved=[]))
    counts = drain_high_temperature_counts(dict.fromkeys(keys, rounds))
    assert len(counts) == rows
    assert sum(counts.values()) == (rows * rounds if regime == "high" else 0)


def test_processor_loads_by_name_and_sizes_its_state_from_the_scheduler() -> None:
    """What vLLM's build_logitsprocs does for a custom processor: load by FQCN, call with the config."""

    class _Scheduler:
        max_num_seqs = 8

    class _Config:
        scheduler_config = _Scheduler()

    (loaded,) = load_custom((DUAL_TEMPERATURE_PROCESSORS["v1"],))
    processor = loaded(_Config(), torch.device("cpu"), False)
    assert isinstance(processor, DualTemperatureLogitsProcessor)
    assert processor.row_of_index.shape == (8,)

