"""Run megatron-core's CUDA-only code paths on CPU (gloo), without forking megatron-core.

megatron-core 0.16 assumes a GPU in three places that matter for training; everything else it
does (process groups, TP layers, 1F1B / interleaved schedules, DDP buffers, the distributed
optimizer, dist-checkpointing) is device-agnostic once these are redirected in-process:

1. Tensor factories and moves that name the GPU: ``torch.empty(..., device="cuda")``,
   ``device=torch.cuda.current_device()`` (an int, i.e. ``cuda:0``), ``t.cuda()``, ``t.to("cuda")``.
   A `torch.overrides.TorchFunctionMode` rewrites such devices to CPU. The same mode answers the
   no-argument ``t.type()`` of a CPU float tensor with its CUDA name, because the distributed
   optimizer dispatches fp32 vs bf16 parameters on the string ``"torch.cuda.FloatTensor"``.
   A mode is switched off while its own handler runs, so the nested ``torch.autograd.backward``
   of megatron's activation recompute (whose backward code allocates "cuda" buffers) is run by
   the handler with the mode switched back on.
2. ``torch.cuda.current_device`` / ``synchronize``: answer 0 / do nothing.
3. megatron's CUDA RNG state helpers (`megatron.core.tensor_parallel.random`): the "CUDA" RNG
   state that the tracker forks for dropout/initialisation becomes the CPU default generator's
   state, which is the generator CPU kernels actually draw from.

`install()` is idempotent; the learner calls it once per process when it runs on CPU (also on a
machine with a GPU when `LearnerSpec.device='cpu'`); call it
before building megatron objects. Nothing here changes numerics.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_INSTALLED = False
_CPU = torch.device("cpu")


def _is_gpu_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int device is how megatron spells `torch.cuda.current_device()`.
    return isinstance(device, int) and not isinstance(device, bool)


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites GPU device arguments of every torch call to CPU (see module docstring, item 1)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.autograd.backward and not kwargs.get("create_graph") and kwargs.get("inputs") is None:
            return self._backward(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and "dtype" not in kwargs:
            name = func(*args, **kwargs)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs and _is_gpu_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) >= 2 and _is_gpu_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)

    def _backward(self, tensors: Any, grad_tensors: Any = None, retain_graph: bool | None = None, **_: Any) -> None:
        """`torch.autograd.backward(tensors, grad_tensors)` with this mode active in the backward code."""
        from torch.autograd import _make_grads, _tensor_or_tensors_to_tuple
        from torch.autograd.graph import _engine_run_backward

        tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grad_tensors, len(tensors)), is_grads_batched=False)
        with self:
            _engine_run_backward(
                tensors, grads, bool(retain_graph), False, (), allow_unreachable=True, accumulate_grad=True
            )


class CpuRNGStatesTracker:
    """Drop-in for megatron's `CudaRNGStatesTracker` whose states are CPU generator states.

    Semantics follow megatron's tracker: named states seeded once, `fork(name)` swaps the named
    state into the generator for the duration of the block and stores the advanced state back.
    """

    def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False):
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = is_inference_rng_tracker
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._current_state_name = "default-rng"

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"rng seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise ValueError(f"rng state {name} is not added")
        outer_state = torch.get_rng_state()
        outer_name = self._current_state_name
        if outer_name != "default-rng":
            self.states_[outer_name] = outer_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if outer_name != "default-rng":
                outer_state = self.states_[outer_name]
            torch.set_rng_state(outer_state)
            self._current_state_name = outer_name


def _get_cpu_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def install() -> None:
    """Install the redirections for this process (for CPU learner ranks only)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from megatron.core.tensor_parallel import random as mcore_random

    torch.cuda.current_device = functools.wraps(torch.cuda.current_device)(lambda: 0)
    torch.cuda.synchronize = functools.wraps(torch.cuda.synchronize)(lambda device=None: None)
    mcore_random._get_cuda_rng_state = _get_cpu_rng_state
    mcore_random._set_cuda_rng_state = _set_cpu_rng_state
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker  # type: ignore[misc]
    mcore_random.initialize_rng_tracker(force_reset=True)
    # Entered for the life of the process: learner ranks are dedicated processes.
    CudaToCpuMode().__enter__()
    _INSTALLED = True


def installed() -> bool:
    return _INSTALLED
