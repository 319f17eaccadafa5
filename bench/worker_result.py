"""Running one benchmark path in its own process (so its peak RSS is its own) and reading its result: the
worker prints progress lines, which are passed through, and one `RESULT {json}` line."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def collect_result(command: list[str], name: str) -> dict[str, Any]:
    """Run `command`, echo its output, return its RESULT line; exit naming `name` if it fails or has none."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    result = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(line, end="", flush=True)
    if process.wait() != 0 or result is None:
        raise SystemExit(f"{name} worker failed with exit code {process.returncode}")
    return result
