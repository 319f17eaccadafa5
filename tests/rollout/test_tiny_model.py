"""The tiny model is deterministic from its seed; the tokenizer is a real, saveable character tokenizer."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forkrl.rollout.tiny_model import CHARACTERS, SPECIAL_TOKENS, TinyModelSpec, build_tiny_model, save_tiny_model


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first, _ = build_tiny_model(TinyModelSpec(seed=3))
    again, _ = build_tiny_model(TinyModelSpec(seed=3))
    other, _ = build_tiny_model(TinyModelSpec(seed=4))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert not torch.equal(first.state_dict()["lm_head.weight"], other.state_dict()["lm_head.weight"])
    # Building does not disturb the caller's RNG.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_tiny_model()
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_is_character_level_and_round_trips_through_save_pretrained(tmp_path) -> None:
    model, tokenizer = build_tiny_model()
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(CHARACTERS) <= model.config.vocab_size
    text = "12+7*3=\nAnswer: 33"
    ids = tokenizer(text).input_ids
    assert len(ids) == len(text)
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == ["1", "2", "+", "7"]
    assert tokenizer.decode(ids) == text
    special = tokenizer("<|im_start|>x<|im_end|>").input_ids
    assert tokenizer.convert_ids_to_tokens(special) == ["<|im_start|>", "x", "<|im_end|>"]
    save_tiny_model(tmp_path / "m")
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert loaded_tokenizer(text).input_ids == ids
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id == 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor([ids])).logits, model(torch.tensor([ids])).logits)


def test_saved_model_files_get_plain_file_modes_whatever_the_writer_does(tmp_path) -> None:
    """safetensors 0.8 writes through a temporary 0600 file: a model saved by root and mounted into a pod running
    as uid 1000 could not be read. Every file of a saved model directory gets 0666 less the umask."""
    import os
    import stat

    from forkrl.rollout.weight_checkpoint import plain_file_mode
    from forkrl.trainer.controller.cold_start import save_checkpoint

    previous = os.umask(0o022)
    try:
        assert plain_file_mode() == 0o644
        save_tiny_model(tmp_path / "tiny")
        model, tokenizer = build_tiny_model()
        save_checkpoint(model, tokenizer, tmp_path / "cold")
    finally:
        os.umask(previous)
    for directory in (tmp_path / "tiny", tmp_path / "cold"):
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
        assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
