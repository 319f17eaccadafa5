"""A model directory a run hands out (`final_model/`) that loads on its own with
`AutoModelForCausalLM.from_pretrained` or vLLM.

The learner writes only `model.safetensors`: it knows the architecture as megatron chunks, not as a
Hugging Face config. The config, generation defaults, tokenizer and any custom modelling code come from
the checkpoint the policy started from (`prepare_policy`), which RL does not change.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open

# safetensors dtype codes -> the names Hugging Face configs use.
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def stored_dtype(model_dir: Path) -> str | None:
    """The floating dtype of the weights in `model_dir` (None when none are there to look at)."""
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                code = handle.get_slice(name).get_dtype()
                if code in _DTYPE_NAMES:
                    return _DTYPE_NAMES[code]
    return None


def complete_model_dir(target: str | Path, source: str | Path, tokenizer: Any | None = None) -> Path:
    """Add config.json, generation_config.json, the tokenizer and custom code to the weights in `target`.

    source: the Hugging Face checkpoint directory the policy started from (same architecture).
    tokenizer: saved into `target` when given (the run's tokenizer, which may carry a chat template the
    source directory lacks); otherwise the source's tokenizer files are copied.
    """
    target, source = Path(target), Path(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: cannot describe the model in {target}")
    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    # The learner may train (and export) in another precision than the source was saved in (bf16 on GPU
    # from a float32 tiny model); loaders with dtype="auto" and vLLM take the config's word for it.
    dtype = stored_dtype(target)
    if dtype is not None:
        keys = [key for key in ("dtype", "torch_dtype") if key in config] or ["dtype"]
        for key in keys:
            config[key] = dtype
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    if (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", target / "generation_config.json")
    else:
        _write_generation_config(target, config, tokenizer)

    # Models loaded with trust_remote_code name their modelling files in the config's auto_map.
    for code in source.glob("*.py"):
        shutil.copyfile(code, target / code.name)

    if tokenizer is not None:
        tokenizer.save_pretrained(target)
    else:
        for file in source.iterdir():
            if file.is_file() and (file.name.startswith("tokenizer") or file.name in
                                   ("vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja")):
                shutil.copyfile(file, target / file.name)
    return target


def _write_generation_config(target: Path, config: dict[str, Any], tokenizer: Any | None) -> None:
    """Without a source generation config, greedy generation must still stop at the model's EOS."""
    from transformers import GenerationConfig

    ids = {key: config[key] for key in _TOKEN_ID_KEYS if config.get(key) is not None}
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key not in ids and getattr(tokenizer, key, None) is not None:
                ids[key] = getattr(tokenizer, key)
    GenerationConfig(**ids).save_pretrained(target)


def export_model(write_weights: Callable[[str], object], source: str | Path, tokenizer: Any | None,
                 target: str | Path) -> Path:
    """The learner's current weights (`write_weights(path)`, e.g. `LearnerGroup.write_weights`) as a
    complete model directory at `target`."""
    write_weights(str(target))
    return complete_model_dir(target, source, tokenizer)
