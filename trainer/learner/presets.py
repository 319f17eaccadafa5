"""Architectures of the models forkrl's recipes train, as Hugging Face config dicts (no download needed).

Values are those of the models' published config.json files; `forkrl plan --model NAME` and the
ready learner configs use them. A checkpoint's own config.json always takes precedence at run time.
"""

from __future__ import annotations

from typing import Any

_QWEN25 = {"model_type": "qwen2", "hidden_act": "silu", "rope_theta": 1_000_000.0, "use_sliding_window": False}
_QWEN3 = {"model_type": "qwen3", "hidden_act": "silu", "rope_theta": 1_000_000.0, "head_dim": 128}

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        **_QWEN25,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        **_QWEN25,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
    "qwen2.5-32b": {
        **_QWEN25,
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "qwen3-8b": {
        **_QWEN3,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
    "qwen3-32b": {
        **_QWEN3,
        "hidden_size": 5120,
        "intermediate_size": 25600,
        "num_hidden_layers": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
}


def preset(name: str) -> dict[str, Any]:
    """A copy of the named architecture; raises listing the known names."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[key])
