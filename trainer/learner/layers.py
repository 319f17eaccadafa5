"""The two modules the learner plugs into megatron-core's local (non-TransformerEngine) layer spec.

- `RMSNorm`: Hugging Face's RMSNorm numerics (statistics in fp32, weight applied after casting
  back), and unlike megatron's `WrappedTorchNorm` it allows sequence parallelism: its weight is
  tagged `sequence_parallel` so megatron all-reduces its gradient over the TP group.
- `PositionRotaryEmbedding`: megatron's RoPE, but when a micro-batch sets `position_ids` the
  rotary angles follow them (packed rows restart positions at every sequence boundary); the
  local attention path has no THD format, so packing = block-diagonal mask + these positions.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)), statistics in fp32.  x: [..., hidden]."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-6,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ) -> None:
        super().__init__()
        if config.normalization != "RMSNorm":
            raise ValueError(f"RMSNorm built with config.normalization={config.normalization!r}")
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Megatron sums the gradient of `sequence_parallel` params over TP (each rank saw a slice of
        # the sequence). The QK norms are handled by name in megatron (`q_layernorm`/`k_layernorm`).
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


class PositionRotaryEmbedding(RotaryEmbedding):
    """RoPE angles indexed by explicit position ids when `position_ids` is set, else 0..s-1.

    position_ids: [batch, seq] (set by the forward step before each call, cleared after).
    Returns freqs: [seq, batch, 1, rot_dim] (or megatron's [seq, 1, 1, rot_dim] when unset).
    """

    position_ids: torch.Tensor | None = None

    def forward(  # type: ignore[override]
        self,
        max_seq_len: int,
        offset: int = 0,
        packed_seq: bool = False,
        cp_group: torch.distributed.ProcessGroup | None = None,
    ) -> torch.Tensor:
        if self.position_ids is None:
            return super().forward(max_seq_len, offset, packed_seq, cp_group)
        inv_freq = self.inv_freq.to(self.position_ids.device)
        positions = self.position_ids.to(inv_freq.dtype).t()  # [seq, batch]
        if self.seq_len_interpolation_factor is not None:
            positions = positions / self.seq_len_interpolation_factor
        freqs = positions[..., None] * inv_freq  # [seq, batch, rot_dim / 2]
        if self.rotary_interleaved:
            emb = torch.stack((freqs, freqs), dim=-1).flatten(-2)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, :, None, :]
