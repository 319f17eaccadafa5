"""Prompt templates: the 80/20 paper's boxed template, DAPO's `Answer:` template, a chat template, plain."""

from __future__ import annotations

from typing import Any, Literal

from forkrl.trainer.data.schema import PromptRow

TemplateName = Literal["boxed", "dapo", "chat", "plain"]

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
BOXED_TEMPLATE = "User:\n{problem}\n" + BOXED_INSTRUCTION + "\n\nAssistant:\n"
DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def render_prompt(row: PromptRow, template: TemplateName, tokenizer: Any | None = None) -> str:
    """The text the policy sees for one row.

    `boxed`: the Qwen3 base template of the 80/20 paper; `dapo`: the DAPO-Math instruction; `chat`: the
    tokenizer's chat template around the problem plus the boxed instruction; `plain`: the prompt as is.
    Rows that arrive already templated (DAPO-Math-17k) are used as they are, except under `chat`.
    """
    if template == "plain" or (row.pre_templated and template != "chat"):
        return row.prompt
    if template == "boxed":
        return BOXED_TEMPLATE.replace("{problem}", row.prompt)
    if template == "dapo":
        return DAPO_TEMPLATE.replace("{problem}", row.prompt)
    if template == "chat":
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("template 'chat' needs a tokenizer with a chat_template")
        content = row.prompt if row.pre_templated else f"{row.prompt}\n{BOXED_INSTRUCTION}"
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; expected boxed, dapo, chat or plain")
