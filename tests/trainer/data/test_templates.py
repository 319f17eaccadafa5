"""Prompt templates render the papers' exact instructions."""

from __future__ import annotations

import pytest

from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.data.templates import render_prompt


def test_boxed_template_is_the_80_20_qwen3_base_template() -> None:
    text = render_prompt(PromptRow(prompt="What is 2+2?", answer="4"), "boxed")
    assert text == ("User:\nWhat is 2+2?\nPlease reason step by step, and put your final answer within "
                    "\\boxed{}.\n\nAssistant:\n")


def test_dapo_template_and_pre_templated_rows() -> None:
    text = render_prompt(PromptRow(prompt="P?", answer="1"), "dapo")
    assert text.startswith("Solve the following math problem step by step.")
    assert "\n\nP?\n\n" in text and text.endswith('after "Answer:".')
    already = PromptRow(prompt="Solve ... P?", answer="1", pre_templated=True)
    assert render_prompt(already, "boxed") == "Solve ... P?"


def test_chat_template_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(PromptRow(prompt="x", answer="1"), "chat")

    class FakeChatTokenizer:  # the real interface: apply_chat_template(messages, tokenize, add_generation_prompt)
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "<user>" + messages[0]["content"] + "<assistant>"

    text = render_prompt(PromptRow(prompt="x", answer="1"), "chat", FakeChatTokenizer())
    assert text == "<user>x\nPlease reason step by step, and put your final answer within \\boxed{}.<assistant>"
