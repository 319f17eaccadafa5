"""Answer and program extraction from model responses (pure functions)."""

from __future__ import annotations

import re

THINK_END = "</think>"
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The DAPO prompt asks for a last line `Answer: $Answer`; verl's math_dapo reads it with this pattern.
_DAPO_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.S)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}


def strip_thinking(text: str) -> str:
    """The text after the last `</think>` (the whole text when there is none)."""
    index = text.rfind(THINK_END)
    return text if index < 0 else text[index + len(THINK_END) :]


def _braced(text: str, open_index: int) -> tuple[str, int] | None:
    """Content of the `{...}` group opening at `open_index` and the index after it; None if unbalanced.

    Escaped braces (`\\{`, `\\}`, set notation) do not count towards the nesting depth.
    """
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index], index + 1
        index += 1
    return None


def find_boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` (and the brace-less `\\boxed 5`), in order of start."""
    found: list[str] = []
    for match in _BOX_COMMAND.finditer(text):
        index = match.end()
        while index < len(text) and text[index] in " \t":
            index += 1
        if index < len(text) and text[index] == "{":
            group = _braced(text, index)
            if group is not None:
                found.append(group[0])
        elif index > match.end():
            token = re.match(r"[^\s$]+", text[index:])
            if token:
                found.append(token.group(0))
    return found


def last_boxed(text: str) -> str | None:
    """The last boxed answer, stripped; None when there is no (non-empty) boxed answer."""
    boxes = [box.strip() for box in find_boxed(text)]
    boxes = [box for box in boxes if box]
    return boxes[-1] if boxes else None


def dapo_answer(text: str, tail_chars: int = 300) -> str | None:
    """The last `Answer: ...` value within the final `tail_chars` characters (0 = whole text)."""
    window = text[-tail_chars:] if tail_chars else text
    matches = _DAPO_ANSWER.findall(window)
    if not matches:
        return None
    answer = matches[-1].strip()
    boxed = last_boxed(answer)
    if boxed is not None:
        answer = boxed
    return answer or None


def extract_answer(response: str, mode: str, *, strip_think: bool = True, dapo_tail_chars: int = 300) -> str | None:
    """The final answer of a chain of thought under extraction `mode` ("boxed" or "dapo")."""
    text = strip_thinking(response) if strip_think else response
    if mode == "boxed":
        return last_boxed(text)
    if mode == "dapo":
        return dapo_answer(text, dapo_tail_chars)
    raise ValueError(f"extraction: unknown mode {mode!r} (expected 'boxed' or 'dapo')")


def last_code_block(text: str) -> str | None:
    """The last closed ``` block tagged python (or untagged); None when there is none or it is blank."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.strip().lower() in _PYTHON_TAGS]
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]


def extract_program(response: str, mode: str, *, strip_think: bool = True) -> str | None:
    """The program in a code response: `fenced` (last python block) or `raw` (the whole text)."""
    text = strip_thinking(response) if strip_think else response
    if mode == "fenced":
        return last_code_block(text)
    if mode == "raw":
        return text if text.strip() else None
    raise ValueError(f"extraction: unknown mode {mode!r} (expected 'fenced' or 'raw')")
