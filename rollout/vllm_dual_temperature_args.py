"""Reading a request's dual-temperature parameters from vLLM's `SamplingParams` (both model runners).

A request opts in through `SamplingParams.extra_args`:
    {"forkrl_dual_temperature": DualTemperatureParams.model_dump(), "forkrl_sample_key": "<unique id>"}
with `temperature = 1.0` (the processor sets the temperature per token, so vLLM's own must be a no-op).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from forkrl.rollout.dual_temperature import EXTRA_ARGS_KEY, SAMPLE_KEY
from forkrl.rollout.types import DualTemperatureParams

if TYPE_CHECKING:
    from vllm import SamplingParams


def dual_temperature_params_of(params: SamplingParams) -> DualTemperatureParams | None:
    args = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
    return None if args is None else DualTemperatureParams.model_validate(args)


def sample_key_of(params: SamplingParams) -> str:
    """The key the sample's state and count are kept under (unique per vLLM request)."""
    return (params.extra_args or {}).get(SAMPLE_KEY) or f"anonymous-{id(params)}"


def validate_dual_temperature_params(params: SamplingParams) -> None:
    """Raises ValueError naming the field (vLLM turns it into a 400 at admission)."""
    try:
        dual = dual_temperature_params_of(params)
    except ValidationError as exc:
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: {exc}") from exc
    if dual is not None and abs(params.temperature - 1.0) > 1e-6:
        raise ValueError("temperature: must be 1.0 with dual temperature (set per token by the processor)")
