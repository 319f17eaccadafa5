"""Batched next-token sampling for `HFEngine`: temperature, dual temperature, top-k, top-p, seeded draws.

Semantics follow vLLM's v1 sampler so that both engines sample from the same distribution:
greedy below temperature 1e-5; logits / T; top-k keeps every logit >= the k-th largest; top-p removes
the smallest tokens while their cumulative mass is <= 1 - p (always keeping the top one); log-probs are
those of the processed distribution (vLLM `processed_logprobs`).

Randomness is counter-based: sample j of a request with seed s draws its step-t uniform from
SplitMix64(key(s, j) + (t + 1) * gamma), and the token is the inverse CDF of that uniform. A sample's
tokens therefore depend only on (seed, j, logits), not on which other requests share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from forkrl.rollout.dual_temperature import DualTemperatureRows, dual_temperature_step
from forkrl.rollout.types import GREEDY_TEMPERATURE_EPS, DualTemperatureParams, SamplingParams

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def stream_keys(seed: int, sample_indices: np.ndarray | list[int]) -> np.ndarray:
    """Key of the random stream of each sample of a request: [k] uint64."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.asarray([seed], dtype=np.uint64) + _GAMMA)
        index = np.asarray(sample_indices, dtype=np.uint64) + np.uint64(1)
        return _splitmix64(base + index * _GAMMA)


def stream_uniforms(keys: np.ndarray, step: int) -> torch.Tensor:
    """Uniform in [0, 1) for every stream at decoding step `step`: keys [rows] -> [rows] float64."""
    with np.errstate(over="ignore"):
        bits = _splitmix64(keys + np.uint64(step + 1) * _GAMMA)
    return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53))


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults from the model's generation config (None: vLLM's neutral value)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    eos_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResolvedSampling:
    """Sampling values of one request after applying the model defaults."""

    temperature: float
    top_p: float
    top_k: int
    """0 disables."""
    dual_temperature: DualTemperatureParams | None

    @property
    def greedy(self) -> bool:
        return self.dual_temperature is None and self.temperature < GREEDY_TEMPERATURE_EPS


def resolve_sampling(params: SamplingParams, defaults: GenerationDefaults) -> ResolvedSampling:
    """Request value, else the model's generation config, else 1.0 / 1.0 / 0 (vLLM's neutral values)."""
    temperature = params.temperature if params.temperature is not None else defaults.temperature
    top_p = params.top_p if params.top_p is not None else defaults.top_p
    top_k = params.top_k if params.top_k is not None else defaults.top_k
    resolved_temperature = 1.0 if temperature is None or params.dual_temperature else float(temperature)
    greedy = params.dual_temperature is None and resolved_temperature < GREEDY_TEMPERATURE_EPS
    return ResolvedSampling(
        temperature=resolved_temperature,
        # vLLM resets top-p/top-k for greedy requests; the log-probs are then those of T = 1.
        top_p=1.0 if greedy or top_p is None else float(top_p),
        top_k=0 if greedy or top_k is None or top_k < 0 else int(top_k),
        dual_temperature=params.dual_temperature,
    )


@dataclass
class RowSampling:
    """Sampling parameters of every row of a decoding batch; tensors are [rows] on the logits device."""

    temperature: torch.Tensor
    """float32; 1 for greedy and dual-temperature rows (the latter set T per token)."""
    greedy: torch.Tensor
    """bool."""
    top_p: torch.Tensor
    """float32, 1 = off."""
    top_k: torch.Tensor
    """int64, 0 = off."""
    dual: torch.Tensor
    """bool: row uses dual temperature."""
    dual_rows: DualTemperatureRows
    """Dual-temperature parameters/state for every row (neutral values on rows with dual = False)."""
    keys: np.ndarray
    """[rows] uint64 random-stream keys."""

    @classmethod
    def build(cls, resolved: list[ResolvedSampling], keys: np.ndarray, device: torch.device | str) -> RowSampling:
        neutral = DualTemperatureParams()
        return cls(
            temperature=torch.tensor(
                [1.0 if r.greedy else r.temperature for r in resolved], dtype=torch.float32, device=device
            ),
            greedy=torch.tensor([r.greedy for r in resolved], dtype=torch.bool, device=device),
            top_p=torch.tensor([r.top_p for r in resolved], dtype=torch.float32, device=device),
            top_k=torch.tensor([r.top_k for r in resolved], dtype=torch.int64, device=device),
            dual=torch.tensor([r.dual_temperature is not None for r in resolved], device=device),
            dual_rows=DualTemperatureRows.from_params([r.dual_temperature or neutral for r in resolved], device=device),
            keys=keys,
        )

    def select(self, index: torch.Tensor) -> RowSampling:
        """Keeps rows `index` ([k] int64, on the logits device)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keys":
                values[f.name] = value[index.cpu().numpy()]
            elif f.name == "dual_rows":
                values[f.name] = value.select(index)
            else:
                values[f.name] = value[index]
        return RowSampling(**values)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """vLLM's top-k then top-p masking. logits: [rows, vocab]; top_k/top_p: [rows]. Returns a new tensor."""
    vocab = logits.shape[-1]
    use_k = bool((top_k > 0).any())
    use_p = bool((top_p < 1).any())
    if not (use_k or use_p):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    if use_k:
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
        kth_largest = sorted_logits.gather(1, (vocab - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_largest, float("-inf"))
    if use_p:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p).unsqueeze(1)
        remove[:, -1] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


@dataclass
class StepOutput:
    tokens: torch.Tensor
    """[rows] int64."""
    logprobs: torch.Tensor
    """[rows] float32, log-prob of each token under the processed distribution."""
    high: torch.Tensor
    """[rows] bool, token took t_high (dual-temperature rows only)."""
    next_tau: torch.Tensor
    """[rows] float32, dual-temperature thresholds for the next step."""


def sample_step(logits: torch.Tensor, rows: RowSampling, step: int) -> StepOutput:
    """Processes raw logits [rows, vocab] and draws one token per row (see the module docstring)."""
    raw = logits.float()
    processed = raw / rows.temperature.unsqueeze(1)
    high = torch.zeros_like(rows.dual)
    next_tau = rows.dual_rows.tau
    if bool(rows.dual.any()):
        tempered, dual_high, dual_tau = dual_temperature_step(raw, rows.dual_rows)
        processed = torch.where(rows.dual.unsqueeze(1), tempered, processed)
        high = dual_high & rows.dual
        next_tau = torch.where(rows.dual, dual_tau, rows.dual_rows.tau)
    processed = apply_top_k_top_p(processed, rows.top_k, rows.top_p)
    logprobs = torch.log_softmax(processed, dim=-1)
    cdf = logprobs.exp().double().cumsum(dim=-1)
    target = stream_uniforms(rows.keys, step).to(cdf.device).unsqueeze(1) * cdf[:, -1:]
    # right=True returns the first index whose cdf exceeds the target: a token of non-zero mass.
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=raw.shape[-1] - 1)
    tokens = torch.where(rows.greedy, raw.argmax(dim=-1), drawn)
    token_logprobs = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return StepOutput(tokens=tokens, logprobs=token_logprobs, high=high, next_tau=next_tau)
