"""Light answer normalisation and the cheap exact/numeric fast path run before math-verify.

The fast path may only return a verdict that math-verify would also return: it says "equal" when the
normalised strings or exact rational values agree, "different" only when both answers are exact
rationals written without a decimal point (math-verify rounds decimals, so 0.333333 can equal 1/3),
and None (undecided) otherwise. tests check this agreement on every hand-written case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from forkrl.rollout.verifier.extract import last_boxed

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|middle)(?![A-Za-z])")
_STYLE = re.compile(r"\\(?:displaystyle|textstyle)(?![A-Za-z])")
_TEXT = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree(?![A-Za-z])")
_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d)")
_FRAC_ONE_DIGIT = re.compile(r"\\frac(\d)\{")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?=(?!=)(.+)$")
# Multi-letter words only, and only after a space or inside \\text{}: a bare `2m` may be 2*m.
_UNIT_WORDS = (
    "units|unit|cm|mm|km|meters|meter|metres|inches|inch|feet|foot|ft|miles|mph|hours|hour|minutes|"
    "minute|seconds|second|days|day|degrees|degree|dollars|dollar|cents|cent|pounds|grams|kg|"
    "square units|points|ways|students|people|years|year"
)
_TRAILING_UNIT = re.compile(
    rf"(?<=[\d}}.])(?:\s+|\s*\\(?:text|mathrm|mbox)\{{\s*)(?:{_UNIT_WORDS})\}}?(?:\^\{{?[23]\}}?)?\s*$"
)
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^([+-]?)(\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")


def normalize_answer(answer: str) -> str:
    """A canonical spelling of a final answer: no spacing/sizing macros, `\\dfrac` -> `\\frac`, no
    `$`, degree or percent signs, trailing units or period, `1,000` -> `1000`, `x = 3` -> `3`."""
    text = answer.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\u2212", "-").replace("\\$", "").replace("$", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACING.sub("", text)
    text = _SIZING.sub("", text)
    text = _STYLE.sub("", text)
    text = _DEGREES.sub("", text)
    text = text.replace("\\%", "").replace("%", "")
    text = _TRAILING_UNIT.sub("", text.strip())
    text = _TEXT.sub(r"\1", text)
    text = re.sub(r"\s+", "", text)
    text = text.replace("{,}", ",")
    text = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", text)
    text = _FRAC_ONE_DIGIT.sub(r"\\frac{\1}{", text)
    text = text.rstrip(".")
    assignment = _ASSIGNMENT.match(text)
    # Only `x = <number>`: for `y = 2x + 1` math-verify's equation handling must decide.
    if assignment and as_exact_number(assignment.group(1)) is not None:
        text = assignment.group(1)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return text


@dataclass(frozen=True)
class ExactNumber:
    value: Fraction
    decimal_point: bool  # written as a decimal (math-verify compares those after rounding)


def as_exact_number(normalized: str) -> ExactNumber | None:
    """The exact value of an integer, decimal, `a/b` or `\\frac{a}{b}`; None for anything else."""
    if _INTEGER.match(normalized):
        return ExactNumber(Fraction(int(normalized)), False)
    if _DECIMAL.match(normalized):
        return ExactNumber(Fraction(normalized), True)
    fraction = _SLASH_FRACTION.match(normalized) or _LATEX_FRACTION.match(normalized)
    if fraction:
        sign, numerator, denominator = fraction.groups()
        if int(denominator) == 0:
            return None
        value = Fraction(int(numerator), int(denominator))
        return ExactNumber(-value if sign == "-" else value, False)
    return None


def fast_path_equal(predicted: str, gold: str) -> bool | None:
    """True/False when the answers are decided cheaply, None when math-verify must decide."""
    pred_norm, gold_norm = normalize_answer(predicted), normalize_answer(gold)
    if not pred_norm or not gold_norm:
        return None
    if pred_norm == gold_norm:
        return True
    pred_number, gold_number = as_exact_number(pred_norm), as_exact_number(gold_norm)
    if pred_number is None or gold_number is None:
        return None
    if pred_number.value == gold_number.value:
        return True
    if not pred_number.decimal_point and not gold_number.decimal_point:
        return False
    return None
