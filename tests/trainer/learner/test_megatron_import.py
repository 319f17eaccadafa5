"""A learner process imports megatron-core without TorchDynamo, Inductor or unused optional kernels, and
what megatron decorated with `torch.compile` still compiles, with its options, when first called."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import torch

from forkrl.trainer.learner.megatron_import import deferred_compile


def test_deferred_compile_compiles_once_on_first_call_with_the_same_options() -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_compile(fn: Any, **options: Any) -> Any:
        calls.append((fn, options))
        return lambda *args, **kwargs: ("compiled", fn(*args, **kwargs))

    compile_later = deferred_compile(fake_compile)

    def double(x: int, *, plus: int = 0) -> int:
        """Doubles."""
        return 2 * x + plus

    direct = compile_later(double)
    decorated = compile_later(dynamic=True, fullgraph=False)(double)
    assert calls == [] and direct.__name__ == "double" and direct.__doc__ == "Doubles."
    assert direct(3, plus=1) == ("compiled", 7) and direct(4) == ("compiled", 8)
    assert calls == [(double, {})]
    assert decorated(5) == ("compiled", 10)
    assert calls == [(double, {}), (double, {"dynamic": True, "fullgraph": False})]


def test_a_learner_process_imports_megatron_without_dynamo_and_megatron_fusions_still_compile() -> None:
    probe = r"""
import json, sys, torch
real_compile = torch.compile
from forkrl.trainer.learner.megatron_import import import_megatron_core
import_megatron_core()
import forkrl.trainer.learner.learner  # everything a rank imports to train
import megatron.core.jit as jit
from megatron.core.fusions.fused_bias_gelu import bias_gelu
before = "torch._dynamo" in sys.modules
x, b = torch.linspace(-2, 2, 7, dtype=torch.float64), torch.full((7,), 0.25, dtype=torch.float64)
value = bias_gelu(b, x)  # a megatron jit_fuser function: goes through torch.compile now, on first use
print(json.dumps({"dynamo_before_first_call": before, "dynamo_after": "torch._dynamo" in sys.modules,
                  "flashinfer_still_blocked": sys.modules.get("flashinfer", "absent") is None,
                  "torch_compile_restored": torch.compile is real_compile,
                  "jit_fuser_deferred": jit.jit_fuser is not real_compile, "value": value.tolist()}))
"""
    # TORCHDYNAMO_DISABLE: the compiled function runs eagerly, so no C++ build, yet through torch.compile.
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["dynamo_before_first_call"] is False, "TorchDynamo was imported before any compiled call"
    assert seen["dynamo_after"] is True, "the first call of a megatron fusion must still go through torch.compile"
    assert seen["flashinfer_still_blocked"] is False and seen["torch_compile_restored"] and seen["jit_fuser_deferred"]
    # bias_gelu is megatron's tanh approximation of GELU; compare with torch's, computed here.
    x = torch.linspace(-2, 2, 7, dtype=torch.float64) + 0.25
    want = torch.nn.functional.gelu(x, approximate="tanh")
    assert torch.allclose(torch.tensor(seen["value"], dtype=torch.float64), want, atol=1e-6)
