"""`scripts/gpu-check.sh`'s summary: the device, the versions, every test's outcome (from pytest's JUnit XML)
and the learner bench's figures (from its output line), as one JSON document on stdout."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

# bench/learner.py --gpu-only prints one line: "GPU <name>: ... : <t> tokens/s, MFU <m>% of <p> TFLOP/s, peak
# GPU memory <g> MiB".
BENCH_LINE = re.compile(
    r"GPU (?P<device>.+?): .*: (?P<tokens_per_s>[\d.]+) tokens/s, MFU (?P<mfu_percent>[\d.]+)% of "
    r"(?P<peak_tflops>[\d.]+) TFLOP/s, peak GPU memory (?P<peak_gpu_mib>[\d.]+) MiB"
)


def junit_outcomes(junit: Path) -> list[dict[str, Any]]:
    """[{test, outcome, seconds, message}] of every test case in a pytest JUnit XML file."""
    if not junit.exists():
        return []
    outcomes = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or "")[:500]
        outcomes.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                         "seconds": float(case.get("time") or 0.0), "message": message})
    return outcomes


def bench_figures(log: Path) -> dict[str, Any] | None:
    match = BENCH_LINE.search(log.read_text(errors="replace")) if log.exists() else None
    if match is None:
        return None
    figures: dict[str, Any] = {k: float(v) for k, v in match.groupdict().items() if k != "device"}
    return {"device": match["device"], **figures}


def device_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpus=torch.cuda.device_count(),
                     gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tests-rc", type=int, required=True)
    parser.add_argument("--bench-rc", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    tests = junit_outcomes(args.out / "tests.xml")
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **device_facts(),
        "seconds": args.seconds,
        "tests_exit_code": args.tests_rc,
        "tests": {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")},
        "test_cases": tests,
        "bench_exit_code": args.bench_rc,
        "learner_bench": bench_figures(args.out / "bench-learner.log"),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
