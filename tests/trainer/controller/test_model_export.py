"""The model directory a run exports (`final_model/`) loads on its own with transformers and is the
learner's model: same weights, same greedy tokens."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from forkrl.rollout.tiny_model import TinyModelSpec, build_tiny_model, build_tokenizer, save_tiny_model
from forkrl.rollout.weight_checkpoint import write_checkpoint
from forkrl.trainer.controller.model_export import complete_model_dir, export_model
from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.launch import run_world
from tests.trainer.learner.tiny import make_batch

TINY = TinyModelSpec(seed=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=64, initializer_range=0.5)
PROMPTS = ["12+7*3=", "(4-1)*2=", "9/3+5="]


def train_and_export(model_dir: str, batch: LearnerBatch, target: str) -> dict[str, torch.Tensor] | None:
    """Rank function: one RL step moves the weights away from the source, then the run's export path
    (`LearnerRank.write_weights` is `write_checkpoint(export_weights())`) writes `target`."""
    # Imported here: megatron loads only in the rank process (the forkserver preloads it), not in pytest.
    from forkrl.trainer.learner.learner import Learner
    from forkrl.trainer.objectives import parse_objective
    from tests.trainer.learner.workers import make_spec

    learner = Learner(make_spec({}), parse_objective({"name": "dapo"}), model_dir)
    learner.train_step(batch)
    export_model(lambda path: write_checkpoint(learner.export_weights(), path), model_dir,
                 AutoTokenizer.from_pretrained(model_dir), target)
    weights = {name: tensor.clone() for name, tensor in learner.export_weights()}
    learner.close()
    return weights


def greedy(model: Any, tokenizer: Any, generation_config: GenerationConfig) -> list[list[int]]:
    generation_config = copy.deepcopy(generation_config)
    generation_config.update(max_new_tokens=16, do_sample=False)
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            tokens = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=generation_config)
        out.append(tokens[0, ids.shape[1]:].tolist())
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("model_export")
    source = save_tiny_model(root / "policy", TINY)
    target = root / "final_model"
    weights = run_world(train_and_export, 1, str(source), make_batch(seed=11), str(target))[0]
    return source, target, weights


def test_exported_dir_loads_and_generates_like_the_learner(exported: tuple[Path, Path, dict[str, torch.Tensor]]
                                                          ) -> None:
    source, target, weights = exported
    initial = load_file(source / "model.safetensors")
    assert any(not torch.equal(initial[name], weights[name]) for name in weights)  # RL moved the weights

    loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    state = loaded.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), name

    # The reference: the architecture from the builder (not from any config file) with the learner's tensors.
    reference, tokenizer = build_tiny_model(TINY)
    missing, unexpected = reference.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to embed_tokens
    reference.eval()
    stop_at_eos = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    expected = greedy(reference, tokenizer, stop_at_eos)
    assert any(len(tokens) > 1 for tokens in expected)  # something was generated to compare

    exported_tokenizer = AutoTokenizer.from_pretrained(target)
    assert greedy(loaded, exported_tokenizer, loaded.generation_config) == expected


def test_dtype_generation_config_and_tokenizer_come_along(tmp_path: Path) -> None:
    """A float32 source without generation_config.json, bf16 learner weights, no tokenizer object."""
    source = save_tiny_model(tmp_path / "policy", TINY)
    (source / "generation_config.json").unlink()
    model, tokenizer = build_tiny_model(TINY)
    target = tmp_path / "final_model"
    write_checkpoint(((n, t.to(torch.bfloat16)) for n, t in model.state_dict().items() if n != "lm_head.weight"),
                     target)

    complete_model_dir(target, source)

    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    generation = GenerationConfig.from_pretrained(target)
    assert generation.eos_token_id == build_tokenizer().eos_token_id
    assert generation.pad_token_id == build_tokenizer().pad_token_id
    assert AutoTokenizer.from_pretrained(target)("12+7=")["input_ids"] == tokenizer("12+7=")["input_ids"]


def test_source_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        complete_model_dir(tmp_path / "weights", tmp_path / "nowhere")
