"""Code rewards: stdio and call-based tests of benign programs, output comparison, reward modes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from forkrl.rollout.verifier.code_reward import stdout_matches, values_match
from forkrl.rollout.verifier.config import VerifierConfig
from forkrl.rollout.verifier.extract import extract_program
from forkrl.rollout.verifier.isolation import derive_uid_base
from forkrl.rollout.verifier.sandbox import Sandbox, SandboxLimits
from forkrl.rollout.verifier.schemas import CodeItem, Reason, RewardValues
from forkrl.rollout.verifier.scoring import verify_item

# No program here should meet the wall clock; 15 s leaves room for a sandboxed interpreter's start on a loaded
# machine (3 s timed out once under the full suite).
CONFIG = VerifierConfig(workers=1, code={"test_timeout_s": 15.0})
DOUBLE = "n = int(input())\nprint(n * 2)\n"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(CONFIG.sandbox, derive_uid_base(os.getpid()) + 900)
    yield box
    box.close()


def _stdio(program: str, cases: list[tuple[str, str]], **extra: object) -> CodeItem:
    tests = {"style": "stdio", "cases": [{"input": i, "output": o} for i, o in cases]}
    return CodeItem.model_validate(
        {"task": "code", "id": "c", "response": f"```python\n{program}```", "tests": tests, **extra}
    )


def _call(program: str, fn_name: str, cases: list[tuple[list, object]], **extra: object) -> CodeItem:
    tests = {"style": "call", "fn_name": fn_name, "cases": [{"args": a, "expected": e} for a, e in cases]}
    return CodeItem.model_validate({"task": "code", "id": "c", "response": program, "tests": tests, **extra})


@pytest.mark.parametrize(
    ("actual", "expected", "tolerance", "match"),
    [
        ("6\n", "6", 0.0, True),
        ("  1 2  \n3\n\n\n", "1 2\n3", 0.0, True),
        ("1.0", "1", 0.0, True),  # numerically equal tokens
        ("1.000001", "1", 0.0, False),
        ("1.000001", "1", 1e-5, True),
        ("1 2", "1  2", 0.0, True),
        ("1 2", "1\n2", 0.0, False),
        ("yes", "YES", 0.0, False),
        ("nan", "nan", 0.0, True),  # identical text
        ("inf", "1e999", 0.0, False),
    ],
)
def test_stdout_matches(actual: str, expected: str, tolerance: float, match: bool) -> None:
    assert stdout_matches(actual, expected, tolerance) is match


@pytest.mark.parametrize(
    ("actual", "expected", "match"),
    [
        (True, 1, False),
        (2, 2.0, True),
        ([1, [2, 3]], [1, [2, 3]], True),
        ([1, 2], [2, 1], False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"b": 1}, False),
        ("1", 1, False),
        (0.1 + 0.2, 0.3, True),
    ],
)
def test_values_match(actual: object, expected: object, match: bool) -> None:
    assert values_match(actual, expected) is match


def test_program_extraction() -> None:
    response = "Idea...\n```text\nnot code\n```\n```python\nprint(1)\n```\nand\n```py\nprint(2)\n```\n"
    assert extract_program(response, "fenced") == "print(2)\n"
    assert extract_program("no code here", "fenced") is None
    assert extract_program("```python\nprint(3)", "fenced") is None  # unclosed: truncated response
    assert extract_program("print(4)", "raw") == "print(4)"
    drafted = "<think>```python\nprint(5)\n```</think> final: none"
    assert extract_program(drafted, "fenced") is None  # a draft inside the thinking is not the answer
    assert extract_program(drafted, "fenced", strip_think=False) == "print(5)\n"


def test_stdio_all_pass(sandbox: Sandbox) -> None:
    result = verify_item(_stdio(DOUBLE, [("3", "6"), ("5\n", "10\n"), ("-1", "-2")]), CONFIG, sandbox).result
    assert (result.correct, result.reason, result.reward) == (True, Reason.ok, 1.0)
    assert (result.tests_passed, result.tests_total) == (3, 3)


def test_stdio_all_or_nothing_stops_at_first_failure(sandbox: Sandbox) -> None:
    item = _stdio(DOUBLE, [("3", "6"), ("5", "11"), ("1", "2")])
    result = verify_item(item, CONFIG, sandbox).result
    assert (result.correct, result.reason, result.reward) == (False, Reason.wrong_answer, 0.0)
    assert (result.tests_passed, result.tests_total) == (1, 3)
    assert "test 1" in (result.detail or "") and "'11'" in (result.detail or "")


def test_stdio_fraction_scoring_maps_onto_reward_values(sandbox: Sandbox) -> None:
    item = _stdio(DOUBLE, [("3", "6"), ("5", "11"), ("1", "2")], scoring="fraction")
    assert verify_item(item, CONFIG, sandbox).result.reward == pytest.approx(2 / 3)
    signed = item.model_copy(update={"rewards": RewardValues(correct=1.0, incorrect=-1.0)})
    assert verify_item(signed, CONFIG, sandbox).result.reward == pytest.approx(-1 + 2 * 2 / 3)


def test_runtime_error_and_compile_error(sandbox: Sandbox) -> None:
    crash = verify_item(_stdio("print(1 // int(input()))\n", [("1", "1"), ("0", "0")]), CONFIG, sandbox).result
    assert (crash.reason, crash.tests_passed) == (Reason.runtime_error, 1)
    assert "ZeroDivisionError" in (crash.detail or "")
    broken = _stdio("def f(:\n", [("1", "1"), ("2", "2")], scoring="fraction")
    result = verify_item(broken, CONFIG, sandbox).result
    assert (result.reason, result.tests_passed, result.reward) == (Reason.runtime_error, 0, 0.0)
    assert "SyntaxError" in (result.detail or "") and "test 0" in (result.detail or "")


def test_no_program_is_no_answer(sandbox: Sandbox) -> None:
    item = CodeItem.model_validate(
        {
            "task": "code",
            "id": "n",
            "response": "I would loop.",
            "tests": {"style": "stdio", "cases": [{"input": "", "output": ""}]},
        }
    )
    result = verify_item(item, CONFIG, sandbox).result
    assert (result.reason, result.reward, result.tests_total) == (Reason.no_answer, 0.0, 1)


def test_call_based_function_and_solution_class(sandbox: Sandbox) -> None:
    function = "```python\ndef add(a, b):\n    return a + b\n```"
    result = verify_item(
        _call(function, "add", [([1, 2], 3), ([2.5, 0.5], 3), (["a", "b"], "ab")]), CONFIG, sandbox
    ).result
    assert (result.reason, result.tests_passed) == (Reason.ok, 3)
    solution = (
        "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return (seen[target - x], i)\n            seen[x] = i\n```"
    )
    cases = [([[2, 7, 11, 15], 9], [0, 1]), ([[3, 2, 4], 6], [1, 2]), ([[3, 3], 6], [0, 2])]
    result = verify_item(_call(solution, "twoSum", cases, scoring="fraction"), CONFIG, sandbox).result
    assert (result.reason, result.tests_passed, result.reward) == (Reason.wrong_answer, 2, pytest.approx(2 / 3))


def test_call_based_sets_exceptions_and_missing_function(sandbox: Sandbox) -> None:
    uniq = "```python\ndef uniq(xs):\n    if not xs:\n        raise ValueError('empty')\n    return set(xs)\n```"
    result = verify_item(
        _call(uniq, "uniq", [([[3, 1, 3]], [1, 3]), ([[]], [])], scoring="fraction"), CONFIG, sandbox
    ).result
    assert (result.reason, result.tests_passed) == (Reason.runtime_error, 1)
    assert "ValueError: empty" in (result.detail or "")
    missing = verify_item(
        _call("```python\ndef other():\n    pass\n```", "wanted", [([], None)]), CONFIG, sandbox
    ).result
    assert missing.reason == Reason.runtime_error and "'wanted'" in (missing.detail or "")


def test_call_inputs_never_reach_stdout_checks(sandbox: Sandbox) -> None:
    # Printing inside a call-based solution must not disturb result collection.
    noisy = "```python\ndef f(x):\n    print('debug', x)\n    return x * x\n```"
    result = verify_item(_call(noisy, "f", [([3], 9), ([4], 16)]), CONFIG, sandbox).result
    assert (result.reason, result.tests_passed) == (Reason.ok, 2)


def test_program_memory_must_fit_in_the_worker() -> None:
    with pytest.raises(ValueError, match=r"code\.memory_mb"):
        VerifierConfig(workers=1, worker_memory_mb=512, code={"memory_mb": 1024})
    assert VerifierConfig(workers=1, worker_memory_mb=None, code={"memory_mb": 8192}).code.memory_mb == 8192


def test_program_sees_an_isolated_world(sandbox: Sandbox) -> None:
    probe = (
        "import os\n"
        "print(*(os.readlink(f'/proc/self/ns/{ns}') for ns in ('net', 'mnt', 'ipc')))\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), sorted(os.environ))\n"
    )
    run = sandbox.run(probe, mode="stdio", stdin=b"", limits=SandboxLimits.for_code(CONFIG.code, 3.0))
    namespaces, identity = run.stdout.decode().splitlines()
    host = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "mnt", "ipc")]
    assert all(mine != theirs for mine, theirs in zip(namespaces.split(), host, strict=True))
    uid = sandbox.isolation.uid
    assert identity == f"{uid} {uid} [] /tmp/sandbox ['HOME', 'LANG', 'PATH', 'TMPDIR']"
