"""How a sandboxed run ended, decided from its exit status, the launcher's records and what the parent saw.

How the outcome is decided (first match wins):
- output_limit: the parent killed it for printing more than `output_bytes` (all streams together), or
  it exceeded RLIMIT_FSIZE (launcher exit EXIT_FILE_SIZE, or SIGXFSZ).
- timeout: the parent killed it at the wall limit, or RLIMIT_CPU fired (SIGXCPU, or SIGKILL with the
  CPU time at the limit).
- sandbox_violation: the launcher's audit hook saw a forbidden action (exit EXIT_VIOLATION).
- memory_limit: the OOM killer ended a process in the slot's cgroup (and the run failed), or MemoryError
  under RLIMIT_AS (exit EXIT_MEMORY, or "MemoryError" ending stderr).
- compile_error / missing_function: the program does not compile / lacks the function to call.
- runtime_error: any other non-zero exit or signal; `exited` otherwise.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from forkrl.rollout.verifier import launcher
from forkrl.rollout.verifier.cgroup import run_memory_cap

if TYPE_CHECKING:
    from forkrl.rollout.verifier.sandbox import SandboxLimits


class Outcome(StrEnum):
    exited = "exited"
    timeout = "timeout"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    sandbox_violation = "sandbox_violation"
    runtime_error = "runtime_error"
    compile_error = "compile_error"
    missing_function = "missing_function"


@dataclass
class SandboxRun:
    outcome: Outcome
    exit_code: int | None
    term_signal: int | None
    stdout: bytes
    stderr: bytes
    channel: bytes
    wall_s: float
    cpu_s: float
    killed_for: str | None = None
    oom_killed: bool = False
    """The kernel's OOM killer ended a process of the run in the slot's cgroup."""
    detail: str | None = None
    records: list[dict] = field(default_factory=list)


def last_line(data: bytes) -> str | None:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def parse_records(channel: bytes) -> list[dict]:
    records = []
    for line in channel.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def classify(run: SandboxRun, limits: SandboxLimits) -> tuple[Outcome, str | None]:
    """The outcome of a finished run (see the module docstring for the rules)."""
    events = {record.get("event"): record for record in run.records}
    code, sig = run.exit_code, run.term_signal
    if run.killed_for == "output_limit":
        return Outcome.output_limit, f"printed more than {limits.output_bytes} bytes"
    if code == launcher.EXIT_FILE_SIZE or sig == signal.SIGXFSZ:
        return Outcome.output_limit, f"wrote a file larger than {limits.file_bytes} bytes"
    if run.killed_for == "wall_timeout":
        return Outcome.timeout, f"wall-clock limit {limits.wall_s:.3g}s"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and run.cpu_s >= int(limits.cpu_s + 0.999) - 0.05):
        return Outcome.timeout, f"CPU limit {limits.cpu_s:.3g}s"
    if code == launcher.EXIT_VIOLATION:
        what = events.get("violation", {}).get("what") or last_line(run.stderr)
        return Outcome.sandbox_violation, what
    if run.oom_killed and (code or sig is not None):
        cap_mib = run_memory_cap(limits.memory_bytes, limits.disk_bytes) >> 20
        return Outcome.memory_limit, f"memory of all its processes together over {cap_mib} MiB"
    if code == launcher.EXIT_MEMORY or (code and (last_line(run.stderr) or "").startswith("MemoryError")):
        return Outcome.memory_limit, f"address space limit {limits.memory_bytes >> 20} MiB"
    if code == launcher.EXIT_COMPILE:
        return Outcome.compile_error, events.get("compile_error", {}).get("error") or last_line(run.stderr)
    if code == launcher.EXIT_MISSING_FUNCTION:
        return Outcome.missing_function, f"function {events.get('missing_function', {}).get('name')!r} not defined"
    if sig is not None:
        return Outcome.runtime_error, f"killed by {signal.Signals(sig).name}"
    if code:
        return Outcome.runtime_error, last_line(run.stderr) or f"exit code {code}"
    return Outcome.exited, None
