"""The suite runs Hypothesis under the `ci` profile of tests/conftest.py: wall-clock limits and random draws
make property tests fail on a busy shared machine for reasons that are not in the code under test."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Above Hypothesis's default 200 ms deadline, well below anything that would slow the suite.
SLOW_EXAMPLE_S = 0.3


def test_ci_profile_is_loaded_for_the_whole_suite() -> None:
    current = settings.default
    assert current.deadline is None
    assert HealthCheck.too_slow in current.suppress_health_check
    assert current.derandomize


@settings(max_examples=2)
@given(st.integers(0, 1))
def test_a_slow_example_is_not_a_failure(value: int) -> None:
    """Per-test settings inherit the profile: no deadline even when one example takes longer than 200 ms."""
    time.sleep(SLOW_EXAMPLE_S)
    assert value in (0, 1)
