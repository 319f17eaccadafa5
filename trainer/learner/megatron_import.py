"""Import megatron-core in a learner process without paying for what forkrl's learner never runs.

Every learner rank imports megatron-core when it starts, all ranks at once, on every run, retry and
resume. Two parts of that import do nothing for forkrl and cost CPU-seconds per rank:

- Optional kernels of code paths the learner does not use: flashinfer (megatron's own inference engine)
  and DeepEP (the MoE token dispatcher). megatron imports each in a `try` and treats it as absent.
- `torch.compile` applied at import time to megatron's fused element-wise functions (`jit_fuser`):
  compiling nothing yet, the decoration alone imports TorchDynamo and Inductor. forkrl switches those
  fusions off (`model.transformer_config`), so they are never called. Here the decoration is deferred:
  each decorated function compiles exactly as before, with the same options, on its first call.

Call `import_megatron_core()` before anything imports megatron in that process; later imports of
megatron submodules reuse the deferred decorator (megatron reads `torch.compile` once, in
`megatron.core.jit`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

UNUSED_OPTIONAL_KERNELS = ("flashinfer", "deep_ep")
"""Packages megatron-core imports if installed (vLLM brings flashinfer) for paths the learner never takes."""


def deferred_compile(real_compile: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile` with the same signature that compiles on the first call instead of at decoration."""

    def compile_later(model: Callable[..., Any] | None = None, **options: Any) -> Any:
        if model is None:  # used as `@torch.compile(**options)`
            return lambda fn: compile_later(fn, **options)
        compiled: Callable[..., Any] | None = None

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = real_compile(model, **options)
            return compiled(*args, **kwargs)

        return call

    return compile_later


@contextlib.contextmanager
def _importing_megatron() -> Iterator[None]:
    blocked = [name for name in UNUSED_OPTIONAL_KERNELS if name not in sys.modules]
    real_compile = torch.compile
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    torch.compile = deferred_compile(real_compile)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = real_compile  # type: ignore[assignment]
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def import_megatron_core() -> None:
    """Import megatron-core (idempotent); see the module docstring."""
    if "megatron.core.jit" in sys.modules:
        return
    with _importing_megatron():
        import megatron.core
        import megatron.core.jit  # noqa: F401
