"""Entropy / log-prob kernels: spec 8.4 E1-E4, gradients against plain autograd, memory bounds."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forkrl.trainer.entropy import (
    logprobs_and_entropy,
    logprobs_and_entropy_chunked,
    logprobs_and_entropy_naive,
)
from forkrl.trainer.vocab_parallel import vocab_parallel_logprobs_and_entropy

Path = Callable[..., tuple[torch.Tensor, torch.Tensor]]

PATHS: dict[str, Path] = {
    "naive": lambda z, t, temp: logprobs_and_entropy_naive(z, t, temp),
    "chunked_1": lambda z, t, temp: logprobs_and_entropy_chunked(z, t, temp, chunk_size=1),
    "chunked_default": lambda z, t, temp: logprobs_and_entropy_chunked(z, t, temp),
    "dispatch_none": lambda z, t, temp: logprobs_and_entropy(z, t, temp, chunk_size=None),
    "dispatch_chunk_2": lambda z, t, temp: logprobs_and_entropy(z, t, temp, chunk_size=2),
    "vocab_parallel_no_group": lambda z, t, temp: vocab_parallel_logprobs_and_entropy(z, t, None, temp),
}


def reference(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent formulation: H = -Σ p log p from torch.log_softmax, fully differentiable."""
    log_p = torch.log_softmax(logits.double() / temperature, dim=-1)
    return log_p.gather(-1, targets[:, None]).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


# E1-E3: expected values from the spec; each also derived here by hand from H = -Σ p ln p.
def _hand_entropy(z: list[float], temperature: float) -> float:
    weights = [math.exp(v / temperature) for v in z]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights)


SPEC_CASES = [
    ([0.0, 0.0, 0.0, 0.0], 1.0, 1.3862944),
    ([2.0, 0.0], 1.0, 0.3653339),
    ([2.0, 0.0], 2.0, 0.5822031),
    ([1.0, 2.0, 3.0], 1.0, 0.8323956),
    ([1.0, 2.0, 3.0], 0.5, 0.4410574),
]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize(("z", "temperature", "expected"), SPEC_CASES)
def test_spec_entropy_values(path: str, z: list[float], temperature: float, expected: float) -> None:
    assert _hand_entropy(z, temperature) == pytest.approx(expected, abs=1e-6)
    logits = torch.tensor([z, z[::-1]], dtype=torch.float64)
    targets = torch.tensor([0, len(z) - 1])
    logp, entropy = PATHS[path](logits, targets, temperature)
    assert entropy.dtype == torch.float64
    torch.testing.assert_close(entropy, torch.full((2,), expected, dtype=torch.float64), atol=1e-6, rtol=0)
    # Both rows target the same value z[0]: logp = z0/T - lse.
    lse = math.log(sum(math.exp(v / temperature) for v in z))
    torch.testing.assert_close(logp, torch.full((2,), z[0] / temperature - lse, dtype=torch.float64))


def test_uniform_entropy_is_ln_vocab() -> None:
    logits = torch.zeros(3, 4, dtype=torch.float64)
    _, entropy = logprobs_and_entropy_chunked(logits, torch.tensor([0, 1, 3]), chunk_size=2)
    torch.testing.assert_close(entropy, torch.full((3,), math.log(4), dtype=torch.float64))


@pytest.fixture(scope="module")
def random_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    logits = torch.randn(37, 1000, generator=gen, dtype=torch.float64) * 3.0
    logits[5] *= 10.0  # one sharply peaked row (entropy close to 0)
    targets = torch.randint(0, 1000, (37,), generator=gen)
    grad_logp = torch.randn(37, generator=gen, dtype=torch.float64)
    grad_entropy = torch.randn(37, generator=gen, dtype=torch.float64)
    return logits, targets, grad_logp, grad_entropy


def _values_and_grads(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    logits: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_(True)
    logp, entropy = fn(leaf)
    loss = (logp * grad_logp.to(logp.dtype)).sum()
    if grad_entropy is not None:
        loss = loss + (entropy * grad_entropy.to(entropy.dtype)).sum()
    loss.backward()
    return logp.detach(), entropy.detach(), leaf.grad


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 16, 36, 37, 64, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_e4_chunked_matches_autograd_reference(
    random_case: tuple[torch.Tensor, ...], chunk_size: int | None, temperature: float, entropy_grad: bool
) -> None:
    logits, targets, grad_logp, grad_entropy = random_case
    g_h = grad_entropy if entropy_grad else None
    ref = _values_and_grads(lambda x: reference(x, targets, temperature), logits, grad_logp, g_h)
    got = _values_and_grads(
        lambda x: logprobs_and_entropy(
            x, targets, temperature, chunk_size=chunk_size, entropy_requires_grad=entropy_grad
        ),
        logits,
        grad_logp,
        g_h,
    )
    for name, r, g in zip(("logp", "entropy", "grad"), ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("chunk_size", [None, 7, 1024])
def test_entropy_is_detached_by_default(random_case: tuple[torch.Tensor, ...], chunk_size: int | None) -> None:
    logits, targets, _, _ = random_case
    leaf = logits.clone().requires_grad_(True)
    logp, entropy = logprobs_and_entropy(leaf, targets, chunk_size=chunk_size)
    assert logp.requires_grad
    assert not entropy.requires_grad
    # A loss masked by entropy gets exactly the logp gradient: nothing flows through the mask.
    mask = entropy >= entropy.median()
    (logp * mask).sum().backward()
    ref_leaf = logits.clone().requires_grad_(True)
    (reference(ref_leaf, targets)[0] * mask).sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


def test_fp32_matches_fp64_reference(random_case: tuple[torch.Tensor, ...]) -> None:
    logits, targets, grad_logp, grad_entropy = random_case
    ref = _values_and_grads(lambda x: reference(x, targets), logits, grad_logp, grad_entropy)
    for chunk_size in (None, 8):
        got = _values_and_grads(
            lambda x, c=chunk_size: logprobs_and_entropy(x, targets, chunk_size=c, entropy_requires_grad=True),
            logits.float(),
            grad_logp,
            grad_entropy,
        )
        assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32
        for r, g in zip(ref, got, strict=True):
            torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_computes_in_fp32(random_case: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    logits, targets, grad_logp, grad_entropy = random_case
    low = (logits / 3.0).to(dtype)
    for entropy_grad in (False, True):
        g_h = grad_entropy if entropy_grad else None
        # Reference on the exactly representable upcast values, so only the gradient's rounding differs.
        ref = _values_and_grads(lambda x: reference(x, targets), low.double(), grad_logp, g_h)
        logp, entropy, grad = _values_and_grads(
            lambda x, e=entropy_grad: logprobs_and_entropy_chunked(x, targets, chunk_size=6, entropy_requires_grad=e),
            low,
            grad_logp,
            g_h,
        )
        assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
        assert grad.dtype == dtype
        torch.testing.assert_close(logp.double(), ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy.double(), ref[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad.double(), ref[2], atol=1e-2, rtol=1e-2)


def test_zero_tokens() -> None:
    logits = torch.zeros(0, 10, requires_grad=True)
    logp, entropy = logprobs_and_entropy_chunked(logits, torch.zeros(0, dtype=torch.int64))
    assert logp.shape == (0,) and entropy.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"targets": torch.tensor([0, 10])}, "targets"),
        ({"targets": torch.tensor([0, -1])}, "targets"),
        ({"targets": torch.tensor([0, 1], dtype=torch.int32)}, "targets"),
        ({"targets": torch.tensor([0])}, "targets"),
        ({"logits": torch.zeros(2, 3, 10)}, "logits"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {"logits": torch.zeros(2, 10), "targets": torch.tensor([0, 9]), "temperature": 1.0, "chunk_size": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        logprobs_and_entropy_chunked(**args)


# ---------------------------------------------------------------------------------------------------
# Memory: what is kept for backward, and the largest tensor allocated in forward and backward.


def _saved_numel(fn: Callable[[], tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor) -> int:
    """Elements saved for backward, not counting references to the input logits themselves."""
    input_ptr = logits.untyped_storage().data_ptr()
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if tensor.untyped_storage().data_ptr() != input_ptr:
            saved += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, entropy = fn()
    (logp.sum() + entropy.sum()).backward()
    return saved


class _AllocationRecorder(TorchDispatchMode):
    """Records the element count of every tensor an op newly allocates (views/in-place/out= excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        input_ptrs = {a.untyped_storage().data_ptr() for a in inputs}
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in input_ptrs:
                self.sizes.append(o.untyped_storage().nbytes() // o.element_size())
        return out


@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_memory_is_bounded_by_the_chunk(entropy_grad: bool, dtype: torch.dtype) -> None:
    tokens, vocab, chunk = 96, 512, 8
    logits = torch.randn(tokens, vocab).to(dtype).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,))

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return logprobs_and_entropy_chunked(logits, targets, chunk_size=chunk, entropy_requires_grad=entropy_grad)

    assert _saved_numel(run, logits) <= 4 * tokens
    logits.grad = None

    forward, backward = _AllocationRecorder(), _AllocationRecorder()
    with forward:
        logp, entropy = run()
    loss = logp.sum() + (entropy.sum() if entropy_grad else 0)
    with backward:
        loss.backward()
    assert max(forward.sizes) <= chunk * vocab
    # The only tokens x vocab allocation in backward is the gradient itself.
    large = [s for s in backward.sizes if s > chunk * vocab]
    assert large == [tokens * vocab]
    assert logits.grad is not None and logits.grad.dtype == dtype


def test_naive_memory_is_not_bounded() -> None:
    """The detectors above do see N x V tensors: the naive path trips both."""
    tokens, vocab = 96, 512
    logits = torch.randn(tokens, vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    assert _saved_numel(lambda: logprobs_and_entropy_naive(logits, targets), logits) >= tokens * vocab
    recorder = _AllocationRecorder()
    with recorder:
        logprobs_and_entropy_naive(logits, targets)
    assert sum(s >= tokens * vocab for s in recorder.sizes) >= 3


# ---------------------------------------------------------------------------------------------------
# In-place backward: the logits gradient is written into the logits' own storage.

INPLACE_PATHS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "chunked": lambda z, t, temp, eg, ip: logprobs_and_entropy_chunked(
        z, t, temp, chunk_size=5, entropy_requires_grad=eg, inplace_backward=ip
    ),
    "dispatch_one_chunk": lambda z, t, temp, eg, ip: logprobs_and_entropy(
        z, t, temp, chunk_size=1024, entropy_requires_grad=eg, inplace_backward=ip
    ),
    "vocab_parallel_no_group": lambda z, t, temp, eg, ip: vocab_parallel_logprobs_and_entropy(
        z, t, None, temp, entropy_requires_grad=eg, chunk_size=None if ip else 1024, inplace_backward=ip
    ),
}


def _output_layer_case(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4321)
    tokens, hidden, vocab = 23, 6, 300
    return {
        "hidden": (torch.randn(tokens, hidden, generator=gen, dtype=torch.float64) * 2.0).to(dtype),
        "weight": torch.randn(vocab, hidden, generator=gen, dtype=torch.float64).to(dtype),
        "targets": torch.randint(0, vocab, (tokens,), generator=gen),
        "grad_logp": torch.randn(tokens, generator=gen, dtype=torch.float64),
        "grad_entropy": torch.randn(tokens, generator=gen, dtype=torch.float64),
    }


def _through_output_layer(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], case: dict[str, torch.Tensor], entropy_grad: bool
) -> dict[str, torch.Tensor]:
    """logits = hidden @ W.T; returns values, d loss/d logits (as autograd hands it out) and the leaf grads."""
    hidden = case["hidden"].clone().requires_grad_(True)
    weight = case["weight"].clone().requires_grad_(True)
    logits = hidden @ weight.T
    logp, entropy = fn(logits)
    loss = (logp * case["grad_logp"].to(logp.dtype)).sum()
    if entropy_grad:
        loss = loss + (entropy * case["grad_entropy"].to(entropy.dtype)).sum()
    version = logits._version
    grad_logits, grad_hidden, grad_weight = torch.autograd.grad(loss, [logits, hidden, weight])
    return {
        "logp": logp.detach(),
        "entropy": entropy.detach(),
        "grad_logits": grad_logits,
        "grad_hidden": grad_hidden,
        "grad_weight": grad_weight,
        "logits_after": logits.detach(),
        "aliases_logits": grad_logits.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr(),
        "version_bumped": logits._version > version,
    }


@pytest.mark.parametrize("path", sorted(INPLACE_PATHS))
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inplace_backward_matches_out_of_place_and_autograd(path: str, entropy_grad: bool, dtype: torch.dtype) -> None:
    case = _output_layer_case(dtype)
    temperature = 0.7

    def run(inplace: bool) -> dict[str, torch.Tensor]:
        return _through_output_layer(
            lambda x: INPLACE_PATHS[path](x, case["targets"], temperature, entropy_grad, inplace), case, entropy_grad
        )

    plain, inplace = run(False), run(True)
    # Same kernel, only the destination differs: the low-precision rounding must match exactly too.
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype != torch.bfloat16 else {"atol": 0.0, "rtol": 0.0}
    for name in ("logp", "entropy", "grad_logits", "grad_hidden", "grad_weight"):
        torch.testing.assert_close(inplace[name], plain[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
    assert inplace["grad_logits"].dtype == dtype
    # The gradient autograd handed out IS the logits' storage, which now holds d loss / d logits.
    assert inplace["aliases_logits"] and inplace["version_bumped"]
    assert not plain["aliases_logits"]
    assert torch.equal(inplace["logits_after"], plain["grad_logits"])

    # Independent check: plain autograd through torch.log_softmax (float64 math on the same logits, whose
    # matmul ran in `dtype`), so hidden and W get their gradients from torch's own backward chain.
    ref = _through_output_layer(lambda x: reference(x, case["targets"], temperature), case, entropy_grad)
    grad_tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for name in ("logp", "entropy", "grad_logits", "grad_hidden", "grad_weight"):
        torch.testing.assert_close(
            inplace[name].double(), ref[name].double(), atol=grad_tol, rtol=grad_tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_allocates_no_tokens_by_vocab_tensor(entropy_grad: bool, dtype: torch.dtype) -> None:
    tokens, hidden_size, vocab, chunk = 96, 4, 512, 8  # hidden_size < chunk: W's grad [V, 4] is below the bound
    hidden = torch.randn(tokens, hidden_size).to(dtype).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size).to(dtype).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,))
    forward, backward = _AllocationRecorder(), _AllocationRecorder()
    with forward:
        logits = hidden @ weight.T
        logp, entropy = logprobs_and_entropy_chunked(
            logits, targets, chunk_size=chunk, entropy_requires_grad=entropy_grad, inplace_backward=True
        )
    loss = logp.sum() + (entropy.sum() if entropy_grad else 0)
    with backward:
        loss.backward()
    assert forward.sizes.count(tokens * vocab) == 1  # the matmul's output: the logits themselves
    # Nothing of [tokens, vocab] in backward, not even the gradient: it went into the logits' storage.
    assert max(backward.sizes) <= chunk * vocab
    assert hidden.grad is not None and weight.grad is not None
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    # ...and that storage holds exactly the gradient the out-of-place path returns.
    plain_logits = (hidden.detach() @ weight.detach().T).requires_grad_(True)
    logp, entropy = logprobs_and_entropy_chunked(
        plain_logits, targets, chunk_size=chunk, entropy_requires_grad=entropy_grad
    )
    (logp.sum() + (entropy.sum() if entropy_grad else 0)).backward()
    plain = plain_logits.grad
    assert plain is not None and torch.equal(logits.detach(), plain)


def _matmul_logits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    weight = torch.randn(10, 3, dtype=dtype, requires_grad=True)
    return hidden @ weight.T, torch.tensor([0, 3, 9, 5])


@pytest.mark.parametrize(
    ("make_logits", "match"),
    [
        (lambda: torch.randn(4, 10, requires_grad=True), "leaf tensor that requires grad"),
        (lambda: torch.randn(40, requires_grad=True).view(4, 10), "view of a leaf"),
        (lambda: torch.randn(10, 4, requires_grad=True).mul(2.0).T, "contiguous"),
        (lambda: torch.randn(4, 20, requires_grad=True).mul(2.0)[:, :10], "contiguous"),
        (lambda: torch.randn(4, 10).to(torch.float8_e4m3fn), "dtype"),
    ],
)
def test_inplace_backward_refuses_unsafe_logits(make_logits: Callable[[], torch.Tensor], match: str) -> None:
    targets = torch.tensor([0, 3, 9, 5])
    for call in (
        lambda z: logprobs_and_entropy_chunked(z, targets, chunk_size=2, inplace_backward=True),
        lambda z: logprobs_and_entropy(z, targets, chunk_size=2, inplace_backward=True),
        lambda z: vocab_parallel_logprobs_and_entropy(z, targets, None, inplace_backward=True),
    ):
        with pytest.raises(ValueError, match=rf"inplace_backward.*{match}"):
            call(make_logits())


def test_inplace_backward_needs_the_chunked_path() -> None:
    logits, targets = _matmul_logits()
    with pytest.raises(ValueError, match=r"inplace_backward.*chunk_size"):
        logprobs_and_entropy(logits, targets, chunk_size=None, inplace_backward=True)


def test_inplace_backward_misuse_is_reported_by_autograd() -> None:
    # Logits changed between forward and backward: the saved logits fail autograd's version check.
    logits, targets = _matmul_logits()
    logp, _ = logprobs_and_entropy_chunked(logits, targets, chunk_size=2, inplace_backward=True)
    logits.detach().mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
    # A second backward would read the gradient as logits.
    logits, targets = _matmul_logits()
    logp, _ = logprobs_and_entropy_chunked(logits, targets, chunk_size=2, inplace_backward=True)
    logp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
    # A producer whose backward needs its output (tanh saves it) must not get the gradient as its output.
    hidden = torch.randn(4, 10, requires_grad=True)
    logp, _ = logprobs_and_entropy_chunked(torch.tanh(hidden), targets, chunk_size=2, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
    # The same graph out of place is fine: the error above is the in-place write being caught.
    logp, _ = logprobs_and_entropy_chunked(torch.tanh(hidden), targets, chunk_size=2)
    logp.sum().backward()
    assert hidden.grad is not None
