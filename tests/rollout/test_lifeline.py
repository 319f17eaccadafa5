"""`watch_from_env` only watches a real pipe: a stray FORKRL_LIFELINE_FD must not kill a service at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import os, sys, time
os.environ["FORKRL_LIFELINE_FD"] = sys.argv[1]
from forkrl.rollout.lifeline import watch_from_env
print(watch_from_env(), "FORKRL_LIFELINE_FD" in os.environ, flush=True)
time.sleep(1.0)  # a watcher that took this for EOF would have killed the process by now
print("alive", flush=True)
"""


@pytest.mark.parametrize("value", ["99999", "not-a-number", "0"])
def test_a_stray_lifeline_variable_is_ignored_and_removed(value: str, tmp_path: Path) -> None:
    # fd 0 is a regular file here, not a pipe.
    with (tmp_path / "stdin").open("w+b") as stdin:
        result = subprocess.run([sys.executable, "-c", PROBE, value], stdin=stdin, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False", "alive"]
    assert "not an open pipe" in result.stderr
