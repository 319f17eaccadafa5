"""A model's architecture facts read from a Hugging Face config (`ModelArch`), with no torch or
megatron import: `forkrl plan` and the operator's recipes size layouts from these alone."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

Family = Literal["qwen2", "qwen3", "llama"]
_FAMILIES: dict[str, Family] = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}


@dataclasses.dataclass(frozen=True)
class ModelArch:
    """The architecture facts the learner needs, read once from a Hugging Face config."""

    family: Family
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope_theta: float
    rms_eps: float
    max_position_embeddings: int
    llama3_rope_factor: float | None = None
    init_std: float = 0.02

    @classmethod
    def from_hf(cls, config: Any) -> ModelArch:
        """config: a transformers `PretrainedConfig`, a config.json dict, or a path to either."""
        cfg = load_hf_config(config)
        model_type = getattr(cfg, "model_type", None)
        if model_type not in _FAMILIES:
            raise ValueError(f"model_type={model_type!r} is not supported (qwen2, qwen3, llama)")
        rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        llama3_factor = None
        if rope_type == "llama3":
            if (rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)) != (1.0, 4.0) or rope.get(
                "original_max_position_embeddings", 8192
            ) != 8192:
                raise ValueError("rope_parameters: only llama3 scaling with low/high 1/4 and 8192 is supported")
            llama3_factor = float(rope["factor"])
        elif rope_type != "default":
            raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not supported (default, llama3)")
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported")
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={cfg.hidden_act!r} is not supported (silu)")
        family = _FAMILIES[model_type]
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if family != "qwen2" and getattr(cfg, "attention_bias", False):
            # Llama/Qwen3 attention_bias also biases o_proj, which megatron only has with MLP biases too.
            raise ValueError(f"attention_bias=True is not supported for model_type={model_type!r}")
        qkv_bias = family == "qwen2"
        if getattr(cfg, "mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported")
        return cls(
            family=family,
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            ffn_hidden_size=cfg.intermediate_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            vocab_size=cfg.vocab_size,
            tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=family == "qwen3",
            rope_theta=float(theta),
            rms_eps=float(cfg.rms_norm_eps),
            max_position_embeddings=cfg.max_position_embeddings,
            llama3_rope_factor=llama3_factor,
            init_std=float(getattr(cfg, "initializer_range", 0.02)),
        )

    def num_parameters(self) -> int:
        """Parameter count of the unsharded model (closed form; `plan` checks it against a build)."""
        h, hd = self.hidden_size, self.head_dim
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * hd + self.num_heads * hd * h
        if self.qkv_bias:
            attn += (self.num_heads + 2 * self.num_kv_heads) * hd
        if self.qk_norm:
            attn += 2 * hd
        layer = attn + 3 * h * self.ffn_hidden_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + h


# config.json keys whose transformers defaults ModelArch.from_hf does not reproduce by itself; a config.json
# that states all of them (transformers 5 writes every field) is read without importing transformers.
_EXPLICIT_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "rms_norm_eps", "max_position_embeddings",
                  "tie_word_embeddings")
_EXPLICIT_BY_TYPE = {"qwen3": ("head_dim",)}  # Qwen3Config's head_dim defaults to 128, not hidden / heads


def plain_config(values: Mapping[str, Any]) -> SimpleNamespace | None:
    """A config.json dict as attributes when it states every field that matters, else None.

    Importing transformers' config classes costs a learner process ~4 CPU-seconds (they pull in
    TorchDynamo), on every rank of every run; a complete config.json needs none of their defaults."""
    model_type = values.get("model_type")
    needed = _EXPLICIT_KEYS + _EXPLICIT_BY_TYPE.get(str(model_type), ())
    if any(values.get(key) is None for key in needed):
        return None
    if values.get("rope_parameters") is None and values.get("rope_scaling") is None and "rope_theta" not in values:
        return None
    return SimpleNamespace(**values)


def load_hf_config(config: Any) -> Any:
    """A config object from a transformers `PretrainedConfig`, a dict, or a file/dir path (offline): the
    dict itself as attributes when it is complete (`plain_config`), else transformers' config class."""
    if isinstance(config, str | Path):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no Hugging Face config at {path}")
        config = json.loads(path.read_text())
    if isinstance(config, Mapping):
        plain = plain_config(config)
        if plain is not None:
            return plain
        from transformers import AutoConfig

        values = dict(config)
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise ValueError("Hugging Face config has no model_type")
        return AutoConfig.for_model(model_type, **values)
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    raise TypeError(f"cannot read a Hugging Face config from {type(config).__name__}")
