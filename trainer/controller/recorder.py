"""Everything a user charts, recorded three ways from the typed records: a Prometheus endpoint
(`forkrl_trainer_...`, see metrics/prometheus.py), a JSONL file of flat records (`generated/accuracy`,
`learner/clip_frac/high`, one line per step or evaluation), and TensorBoard scalars under the same names."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.metrics.flat import FlatValue, flatten, scalars, unflatten
from forkrl.trainer.metrics.prometheus import StepMetrics
from forkrl.trainer.metrics.records import EvalRecord, StepRecord


class Recorder:
    """One run's metrics sinks: `record_step` and `record_eval` feed all of them."""

    def __init__(self, run: str, run_dir: Path, metrics_port: int | None, tensorboard: bool,
                 metrics_addr: str = LOCAL_BIND_HOST, log: Callable[[str], None] | None = None) -> None:
        """metrics_port: 0 = any free port (so the URL is logged and kept in `url`), None = no server."""
        self.run = run
        self.run_dir = run_dir
        self._log = log
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = run_dir / "metrics.jsonl"
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        self.registry = CollectorRegistry()
        self.prometheus = StepMetrics(run, self.registry)
        self.port: int | None = None
        self.url: str | None = None
        self._server: Any = None
        if metrics_port is not None:
            self._server, _ = start_http_server(metrics_port, addr=metrics_addr, registry=self.registry)
            self.port = int(self._server.server_port)
            host = f"[{metrics_addr}]" if ":" in metrics_addr else metrics_addr
            self.url = f"http://{host}:{self.port}/metrics"
            if log is not None:
                log(f"metrics: {self.url}")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def _write(self, kind: str, step: int, values: dict[str, FlatValue]) -> None:
        self._jsonl.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in scalars(values).items():
                if key != "step":
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def record_step(self, record: StepRecord) -> None:
        """Append the step's record (JSONL, one `train` line), set the gauges, add TensorBoard scalars."""
        self._write("train", record.step, flatten(record))
        self.prometheus.observe(record)

    def record_eval(self, record: EvalRecord) -> None:
        """Append one held-out evaluation (one `eval` line) and set its gauge."""
        self._write("eval", record.step, flatten(record))
        self.prometheus.observe_eval(record)

    def rewind_to(self, step: int) -> Path | None:
        """Forget what was recorded past `step`, the checkpoint a run resumes from.

        After a crash (unlike a clean stop, which checkpoints its last step) the file holds steps that
        will be trained again; appending their new records would count them twice in the summary and
        report. Returns where the old file was kept, or None when nothing was past `step`.
        """
        self._jsonl.close()
        try:
            aside = truncate_records(self.jsonl_path, step)
        finally:
            self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        if self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            # A writer with purge_step makes TensorBoard discard the older events from that step on.
            log_dir = self._tb.log_dir
            self._tb.close()
            self._tb = SummaryWriter(log_dir=log_dir, purge_step=step + 1)
        if aside is not None and self._log is not None:
            self._log(f"metrics: dropped the records past step {step} from {self.jsonl_path.name} "
                      f"(the previous file is kept as {aside})")
        return aside

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def read_records(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The flat records of a metrics.jsonl (optionally of one kind), in order."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def read_step_records(path: Path) -> list[StepRecord]:
    """The `StepRecord`s of a metrics.jsonl, in order."""
    return [r for flat in read_records(path, "train") if (r := unflatten(StepRecord, flat)) is not None]


def read_eval_records(path: Path) -> list[EvalRecord]:
    """The `EvalRecord`s of a metrics.jsonl, in order."""
    return [r for flat in read_records(path, "eval") if (r := unflatten(EvalRecord, flat)) is not None]


def truncate_records(path: Path, step: int) -> Path | None:
    """Keep only the records of `path` up to `step` (every kind); the previous file is kept next to it as
    `<name>.before-resume-<time>`, which is returned (None, and nothing written, when nothing went)."""
    if not path.exists():
        return None
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a process killed mid-write
            dropped += 1
            continue
        if record.get("step") is not None and float(record["step"]) > step:
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.before-resume-{stamp}")
    attempt = 1
    while aside.exists():  # resumed twice within a second
        aside = path.with_name(f"{path.name}.before-resume-{stamp}-{attempt}")
        attempt += 1
    # Copy, then replace: at every moment one complete file is at `path`.
    shutil.copy2(path, aside)
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(partial, path)
    return aside
