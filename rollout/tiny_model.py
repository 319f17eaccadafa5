"""A tiny Qwen2-architecture model and an offline character-level tokenizer.

Used by the test suite, the benchmarks and the local mode: everything is built from a seed, nothing is
downloaded. The tokenizer is a real `PreTrainedTokenizerFast` (built with the `tokenizers` library) over
digits, arithmetic operators, letters and a few special tokens, so prompts such as "12+7*3=" encode one
character per token, and it survives `save_pretrained` / `AutoTokenizer.from_pretrained` unchanged.

`TinyModelSpec` is part of the job spec, which the operator parses: torch, tokenizers and transformers are
imported inside the builders, so importing this module stays light.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, UNK_TOKEN)
CHARACTERS = string.digits + "+-*/=()." + " \n" + string.ascii_lowercase + string.ascii_uppercase + ",:;?!'"
# LaTeX answers (`\\boxed{42}`, `\\frac{1}{2}`); appended so earlier ids stay stable.
CHARACTERS += "\\{}[]^_$"


class TinyModelSpec(BaseModel):
    """Shape of the tiny model; the defaults keep a forward pass well under a millisecond per token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, description="Seed of the random initialisation (same seed -> same weights).")
    hidden_size: int = Field(64, ge=8, le=4096, description="Width of the residual stream.")
    intermediate_size: int = Field(128, ge=8, le=16384, description="Width of the MLP.")
    num_layers: int = Field(2, ge=1, le=64, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads (must divide hidden_size).")
    num_kv_heads: int = Field(2, ge=1, le=64, description="Key/value heads (grouped-query attention).")
    max_position_embeddings: int = Field(512, ge=16, le=131072, description="Context length in tokens.")
    initializer_range: float = Field(
        0.5,
        gt=0,
        le=2.0,
        description="Std of the random init. Larger than Qwen's 0.02 so that next-token distributions "
        "range from peaked to flat, which is what entropy-dependent decoding needs to be tested on.",
    )
    dtype: str = Field("float32", pattern="^(float32|float64|bfloat16)$", description="Parameter dtype.")


def _byte_level_symbol(char: str) -> str:
    """The symbol byte-level BPE uses for a one-byte character (GPT-2 table: " " -> "Ġ", "\\n" -> "Ċ")."""
    code = ord(char)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if code in printable:
        return char
    return chr(256 + [b for b in range(256) if b not in printable].index(code))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: ids 0..4 are the special tokens, then one id per character.

    Built as a byte-level BPE without merges, with Qwen2's pre-tokenizer and decoder: `AutoTokenizer`
    re-loads a saved qwen2 model directory as `Qwen2Tokenizer`, which rebuilds exactly this pipeline from
    the vocabulary, so the saved tokenizer (used by vLLM and the controller) encodes like this one.
    Characters outside the set are dropped, as Qwen2Tokenizer does.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab[_byte_level_symbol(char)] = len(vocab)
    backend = Tokenizer(
        models.BPE(
            vocab=vocab, merges=[], unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        model_max_length=4096,
        padding_side="left",
    )


def build_tiny_model(spec: TinyModelSpec | None = None) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Builds the model and tokenizer; the weights depend only on `spec` (CPU RNG forked and seeded)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        # Padded like Qwen's 151,936 so tensor parallelism can split the vocabulary evenly; the spare ids
        # decode to nothing.
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model = model.to(getattr(torch, spec.dtype)).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def save_tiny_model(path: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Writes a Hugging Face model directory (config, safetensors, generation config, tokenizer)."""
    path = Path(path)
    model, tokenizer = build_tiny_model(spec)
    from forkrl.rollout.weight_checkpoint import make_files_readable

    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    make_files_readable(path)
    return path
