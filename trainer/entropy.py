"""Per-token log-probabilities and entropies from temperature-scaled logits (spec §1, §8.1 step 5).

With z = logits / T and p = softmax(z):  logp_t = z_{t, target} - lse(z_t),
H_t = lse(z_t) - Σ_j p_{t,j} z_{t,j}  (the stable form verl uses).

Two paths with the same contract:
- `logprobs_and_entropy_naive`: plain torch ops, materialises several N x V tensors; the reference.
- `logprobs_and_entropy_chunked`: a custom autograd function that walks `chunk_size` rows at a time
  through one reusable fp32 workspace, saves only per-row scalars (lse, H) plus a reference to the
  input logits, and recomputes the softmax chunk by chunk in backward. Extra memory is O(chunk x V)
  in forward and backward, whatever N is.

The row kernels (`scaled_logits_into`, `shifted_exp_stats_`, `write_logits_grad_`) are shared with the
vocab-parallel path, which needs the same math with a global (all-reduced) max and lse.

In-place backward (`inplace_backward=True`, opt-in): the chunked backward writes the logits gradient
chunk by chunk into the logits tensor's own storage and returns that tensor as the gradient, so no
[tokens, vocab] buffer is allocated at all (flash-attn's cross-entropy `inplace_backward`). Each chunk
is copied into the fp32 workspace before its rows are overwritten, so the entropy gradient works too,
and bf16/fp16 logits receive the gradient rounded to their own dtype, as the out-of-place path returns it.
It is correct only when nothing else needs the logits' values once this op's backward has run: the
typical producer is an output layer (logits = hidden @ W.T; a matmul's backward needs its inputs, not
its output). After backward the logits tensor holds d loss / d logits. Guards:
- refused up front (ValueError): logits that are a leaf requiring grad or a view of one (the gradient
  would overwrite a parameter or user input), non-contiguous logits (a strided/expanded view of a
  larger buffer), dtypes other than fp16/bf16/fp32/fp64, and the naive path (chunk_size=None);
- autograd's version counter: the logits are saved with `save_for_backward`, so an in-place change
  between forward and backward raises when the backward unpacks them; the in-place writes bump the
  version, so any other node that saved the logits and runs later (e.g. `torch.tanh`'s or `exp`'s
  backward, which save their output, a z-loss's logsumexp, or a second backward with retain_graph)
  raises "modified by an inplace operation" instead of reading the gradient as logits.
Not detectable: code that reads the logits outside autograd after backward (logging, a reference kept
in a Python object), which sees the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Math runs in fp32, or in fp64 when the logits already are fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_logits_and_targets(logits: Tensor, targets: Tensor, vocab_size: int | None = None) -> None:
    """Raises ValueError naming the offending argument. vocab_size: global vocab (defaults to logits')."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [tokens, vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must be [tokens={logits.shape[0]}], got shape {tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    vocab = logits.shape[1] if vocab_size is None else vocab_size
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"targets must be vocab ids in [0, {vocab}), got range [{int(targets.min())}, {int(targets.max())}]"
        )


def check_temperature(temperature: float) -> None:
    if not (temperature > 0.0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


INPLACE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inplace_backward(logits: Tensor) -> None:
    """Refuses the uses of inplace_backward=True that are unsafe and cheap to detect (ValueError)."""
    fix = "pass logits made by an op whose backward does not need them (e.g. hidden @ W.T), or inplace_backward=False"
    if logits.requires_grad and logits.is_leaf:
        raise ValueError(
            "inplace_backward=True: logits is a leaf tensor that requires grad (a parameter or user input); "
            f"backward would overwrite its values with its own gradient: {fix}"
        )
    base = logits._base
    if base is not None and base.requires_grad and base.is_leaf:
        raise ValueError(
            "inplace_backward=True: logits is a view of a leaf tensor that requires grad; backward would "
            f"overwrite that leaf with the gradient: {fix}"
        )
    if not logits.is_contiguous():
        raise ValueError(
            f"inplace_backward=True: logits must be contiguous (got strides {logits.stride()} for shape "
            f"{tuple(logits.shape)}); a strided view shares storage with data the gradient must not overwrite"
        )
    if logits.dtype not in INPLACE_DTYPES:
        raise ValueError(
            f"inplace_backward=True: logits dtype {logits.dtype} cannot hold its own gradient in place "
            f"(supported: {', '.join(str(d) for d in INPLACE_DTYPES)})"
        )


# ---------------------------------------------------------------------------------------------------
# Row kernels. All operate in place on a [rows, vocab] workspace so no chunk-sized tensor is allocated
# per chunk (large CPU allocations are fresh mmaps: re-faulting them every chunk costs as much as the math).


def scaled_logits_into(buf: Tensor, raw: Tensor, temperature: float) -> Tensor:
    """buf[:] = raw / T in buf's dtype. raw, buf: [rows, vocab]. Same rounding as `raw.to(dtype) / T`."""
    if raw.dtype == buf.dtype:
        return torch.div(raw, temperature, out=buf)
    buf.copy_(raw)
    return buf.div_(temperature)


def shifted_exp_stats_(z: Tensor, row_max: Tensor) -> tuple[Tensor, Tensor]:
    """Destroys z. z: [rows, vocab] scaled logits, row_max: [rows] (a max over the full vocab).

    Returns (S = Σ_j e_j, Q = Σ_j e_j (z_j - m)) with e = exp(z - m). Then lse = m + log S and
    H = log S - Q / S. Q is accumulated as e·log(e) so no second copy of z is needed, and H never
    subtracts two numbers of the logits' magnitude (no cancellation for peaked rows).
    """
    z.sub_(row_max.unsqueeze(1)).exp_()
    sum_exp = z.sum(dim=1)
    weighted_shift = z.xlogy_(z).sum(dim=1)
    return sum_exp, weighted_shift


def write_logits_grad_(
    out: Tensor,
    z: Tensor,
    lse: Tensor,
    entropy: Tensor,
    grad_logp: Tensor,
    grad_entropy: Tensor | None,
    local_targets: Tensor,
    target_is_local: Tensor | None,
    temperature: float,
) -> None:
    """out[:] = d(Σ g_logp·logp + Σ g_H·H) / d logits for one chunk of rows.

    z: [rows, vocab] scaled logits (destroyed). out: [rows, vocab] in z's dtype; it may be z itself
    only when grad_entropy is None.
    lse, entropy, grad_logp, grad_entropy: [rows]. local_targets: [rows] column of the target in this
    vocab slice (any valid column where target_is_local is False).

    d/dz_j = g_logp (δ_{j,t} - p_j) - g_H p_j (z_j - Σ p z), and z_j - Σ p z = (z_j - lse) + H.
    The 1/T of dz/dlogits is folded into the per-row factors.
    """
    inv_t = 1.0 / temperature
    log_p = z.sub_(lse.unsqueeze(1))
    if grad_entropy is None:
        torch.exp(log_p, out=out)
        out.mul_((-grad_logp * inv_t).unsqueeze(1))
    else:
        torch.exp(log_p, out=out)
        # -(g_logp + g_H (log p + H)) / T  =  log p · a + b
        slope = (-grad_entropy * inv_t).unsqueeze(1)
        offset = (-(grad_logp + grad_entropy * entropy) * inv_t).unsqueeze(1)
        out.mul_(log_p.mul_(slope).add_(offset))
    onehot_grad = grad_logp * inv_t
    if target_is_local is not None:
        onehot_grad = onehot_grad * target_is_local
    out.scatter_add_(1, local_targets.unsqueeze(1), onehot_grad.unsqueeze(1).to(out.dtype))


def logits_grad_by_chunks(
    logits: Tensor,
    local_targets: Tensor,
    target_is_local: Tensor | None,
    lse: Tensor,
    entropy: Tensor,
    grad_logp: Tensor,
    grad_entropy: Tensor | None,
    temperature: float,
    chunk_size: int,
    inplace: bool = False,
) -> Tensor:
    """Gradient w.r.t. logits [tokens, vocab] (logits' dtype), chunk_size rows at a time.

    lse, entropy: [tokens] saved by the forward (global values under TP). grad_entropy=None skips the
    entropy term. One fp32 workspace of [chunk_size, vocab]; fp32 logits get their gradient written
    straight into the result, bf16/fp16 logits go through the workspace (plus a second fp32 buffer when
    the entropy term needs z alongside p).
    inplace=True: the result is the logits' own storage (contiguous logits, see the module docstring);
    each chunk is read into the workspace before its rows are overwritten. Every write bumps the
    logits' version counter, so autograd flags any later reader that saved them.
    """
    num_tokens, vocab = logits.shape
    dtype = compute_dtype(logits.dtype)
    grad_logp = grad_logp.to(dtype)
    grad_entropy = None if grad_entropy is None else grad_entropy.to(dtype)
    is_local = None if target_is_local is None else target_is_local.to(dtype)
    # In place, detach(): same storage and version counter, but the writes are not recorded by autograd.
    grad_logits = logits.detach() if inplace else torch.empty_like(logits, memory_format=torch.contiguous_format)
    rows = min(chunk_size, num_tokens)
    workspace = torch.empty(rows, vocab, dtype=dtype, device=logits.device)
    direct = grad_logits.dtype == dtype
    scratch = None
    if not direct and grad_entropy is not None:
        scratch = torch.empty(rows, vocab, dtype=dtype, device=logits.device)
    for start in range(0, num_tokens, rows):
        end = min(start + rows, num_tokens)
        z = scaled_logits_into(workspace[: end - start], logits[start:end], temperature)
        if direct:
            out = grad_logits[start:end]
        elif scratch is None:
            out = z
        else:
            out = scratch[: end - start]
        write_logits_grad_(
            out,
            z,
            lse[start:end],
            entropy[start:end],
            grad_logp[start:end],
            None if grad_entropy is None else grad_entropy[start:end],
            local_targets[start:end],
            None if is_local is None else is_local[start:end],
            temperature,
        )
        if not direct:
            grad_logits[start:end].copy_(out)
    return grad_logits


# ---------------------------------------------------------------------------------------------------
# Naive reference.


def _naive(logits: Tensor, targets: Tensor, temperature: float, entropy_requires_grad: bool) -> tuple[Tensor, Tensor]:
    check_logits_and_targets(logits, targets)
    check_temperature(temperature)
    z = logits.to(compute_dtype(logits.dtype)) / temperature
    log_p = torch.log_softmax(z, dim=-1)
    logp = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(entropy_requires_grad and torch.is_grad_enabled()):
        p = torch.softmax(z, dim=-1)
        entropy = torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)
    return logp, entropy if entropy_requires_grad else entropy.detach()


def logprobs_and_entropy_naive(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """logits: [tokens, vocab], targets: [tokens] int64 -> (logp [tokens], entropy [tokens]).

    fp32 results (fp64 for fp64 logits). logp is differentiable; entropy is detached.
    """
    return _naive(logits, targets, temperature, entropy_requires_grad=False)


# ---------------------------------------------------------------------------------------------------
# Chunked path.


class _ChunkedLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: Tensor,
        targets: Tensor,
        temperature: float,
        chunk_size: int,
        entropy_requires_grad: bool,
        inplace_backward: bool,
    ) -> tuple[Tensor, Tensor]:
        num_tokens, vocab = logits.shape
        dtype = compute_dtype(logits.dtype)
        logp = torch.empty(num_tokens, dtype=dtype, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp)
        rows = min(chunk_size, num_tokens)
        workspace = torch.empty(rows, vocab, dtype=dtype, device=logits.device)
        for start in range(0, num_tokens, rows):
            end = min(start + rows, num_tokens)
            z = scaled_logits_into(workspace[: end - start], logits[start:end], temperature)
            row_max = z.amax(dim=1)
            target_logit = z.gather(1, targets[start:end].unsqueeze(1)).squeeze(1)
            sum_exp, weighted_shift = shifted_exp_stats_(z, row_max)
            log_sum_exp = sum_exp.log()
            lse[start:end] = row_max + log_sum_exp
            entropy[start:end] = log_sum_exp - weighted_shift / sum_exp
            logp[start:end] = target_logit - lse[start:end]
        del workspace
        # Saving the logits also arms autograd's version check: an in-place change before backward raises.
        ctx.save_for_backward(logits, targets, lse, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.entropy_requires_grad = entropy_requires_grad
        ctx.inplace_backward = inplace_backward
        if not entropy_requires_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None, None]:
        logits, targets, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        grad_logits = logits_grad_by_chunks(
            logits,
            targets,
            None,
            lse,
            entropy,
            grad_logp,
            grad_entropy if ctx.entropy_requires_grad else None,
            ctx.temperature,
            ctx.chunk_size,
            inplace=ctx.inplace_backward,
        )
        return grad_logits, None, None, None, None, None


def logprobs_and_entropy_chunked(
    logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    entropy_requires_grad: bool = False,
    *,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """Same results as the naive path with O(chunk_size x vocab) extra memory in forward and backward.

    logits: [tokens, vocab] (any float dtype), targets: [tokens] int64.
    Returns (logp [tokens], entropy [tokens]) in fp32 (fp64 for fp64 logits). The gradient w.r.t.
    logits has the logits' dtype. entropy is non-differentiable unless entropy_requires_grad.
    inplace_backward=True: backward overwrites the logits with their gradient instead of allocating a
    [tokens, vocab] buffer; only for logits nothing else reads afterwards (module docstring).
    """
    check_logits_and_targets(logits, targets)
    check_temperature(temperature)
    check_chunk_size(chunk_size)
    if inplace_backward:
        check_inplace_backward(logits)
    if logits.shape[0] == 0:
        return _naive(logits, targets, temperature, entropy_requires_grad)
    return _ChunkedLogprobsEntropy.apply(
        logits, targets, float(temperature), chunk_size, entropy_requires_grad, bool(inplace_backward)
    )


def logprobs_and_entropy(
    logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = 1024,
    entropy_requires_grad: bool = False,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """Dispatcher: chunk_size=None -> naive path, else the chunked path with that chunk size.

    inplace_backward=True (chunked path only) writes the logits gradient into the logits' storage.
    """
    if chunk_size is None:
        if inplace_backward:
            raise ValueError(
                "inplace_backward=True needs the chunked path: pass an int chunk_size (chunk_size=None is "
                "the naive path, whose autograd graph keeps its own [tokens, vocab] tensors)"
            )
        return _naive(logits, targets, temperature, entropy_requires_grad)
    return logprobs_and_entropy_chunked(
        logits, targets, temperature, chunk_size, entropy_requires_grad, inplace_backward=inplace_backward
    )
