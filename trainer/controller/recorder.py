"""Everything a user charts, recorded three ways: a Prometheus endpoint (`forkrl_trainer_...`), a JSONL
file of step records, and TensorBoard event files."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from forkrl.rollout.network import LOCAL_BIND_HOST

# Step-record key -> (gauge name, help, extra labels). Keys come from the controller's step summary and
# the objective library's metrics (`entropy/p50`, `clip_frac/high`, ...).
GAUGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "reward/mean": ("forkrl_trainer_reward", "Mean shaped reward of the step's samples", {}),
    "accuracy": ("forkrl_trainer_accuracy_ratio", "Fraction of the step's samples scored correct", {}),
    "response_length/mean": ("forkrl_trainer_response_length_tokens", "Mean response length", {}),
    "forking/threshold": ("forkrl_trainer_forking_threshold_nats", "Entropy threshold of the forking mask", {}),
    "forking/selected_frac": ("forkrl_trainer_selected_token_ratio", "Fraction of tokens with policy gradient",
                              {}),
    "mismatch/kl_k3": ("forkrl_trainer_mismatch_kl_nats", "KL(rollout || learner) on the rollout samples", {}),
    "tokens_per_second": ("forkrl_trainer_tokens_per_second", "Generated tokens per second of wall time", {}),
    "weight_version_lag/max": ("forkrl_trainer_weight_version_lag", "Largest policy-version lag of a sample", {}),
    "weight_version": ("forkrl_trainer_weight_version", "Weight version of the policy", {}),
    "step": ("forkrl_trainer_step", "Current RL step", {}),
    "loss": ("forkrl_trainer_loss", "Mean policy loss of the step", {}),
    "grad_norm": ("forkrl_trainer_grad_norm", "Gradient norm before clipping", {}),
}
LABELLED: dict[str, tuple[str, str, str]] = {
    # prefix -> (gauge, help, label name); `entropy/p90` -> forkrl_trainer_entropy_nats{quantile="0.9"}.
    "entropy/p": ("forkrl_trainer_entropy_nats", "Token entropy percentile", "quantile"),
    "clip_frac": ("forkrl_trainer_clip_ratio", "Fraction of tokens whose gradient a clip removed", "token_type"),
    "kl": ("forkrl_trainer_kl_nats", "KL to the reference policy", "token_type"),
    "time/": ("forkrl_trainer_phase_seconds", "Wall time of the last step's phase", "phase"),
    "eval/": ("forkrl_trainer_eval_accuracy_ratio", "Held-out avg@k accuracy", "dataset"),
}


def _label_for(key: str, prefix: str) -> str | None:
    """Label value of a labelled key, or None when the key does not belong to the prefix."""
    if prefix == "entropy/p":
        return f"{int(key[len(prefix):]) / 100:g}" if key.startswith(prefix) and key[len(prefix):].isdigit() else None
    if prefix in ("clip_frac", "kl"):
        if key == prefix:
            return "all"
        return key.split("/", 1)[1] if key.startswith(prefix + "/") and key.count("/") == 1 else None
    if prefix == "eval/":
        return key[len(prefix):-len("/avg")] if key.startswith(prefix) and key.endswith("/avg") else None
    return key[len(prefix):] if key.startswith(prefix) else None


class Recorder:
    """One run's metrics sinks; `record(step, values)` feeds all of them."""

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
        self._gauges = {key: Gauge(name, doc, ["run"], registry=self.registry) for key, (name, doc, _) in
                        GAUGES.items()}
        self._labelled = {prefix: Gauge(name, doc, ["run", label], registry=self.registry)
                          for prefix, (name, doc, label) in LABELLED.items()}
        self.samples_total = Counter("forkrl_trainer_samples", "Scored samples", ["run"], registry=self.registry)
        self.dropped_groups_total = Counter("forkrl_trainer_dropped_groups", "Groups dropped by dynamic sampling",
                                            ["run"], registry=self.registry)
        self.step_seconds = Histogram("forkrl_trainer_step_duration_seconds", "Wall time of an RL step", ["run"],
                                      registry=self.registry, buckets=(0.5, 1, 2, 5, 10, 20, 60, 120, 300, 900))
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

    def record(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        """Append one record (JSONL), update the gauges, add TensorBoard scalars."""
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            if not isinstance(value, int | float):
                continue
            if key in self._gauges:
                self._gauges[key].labels(run=self.run).set(value)
            for prefix, gauge in self._labelled.items():
                label = _label_for(key, prefix)
                if label:
                    gauge.labels(self.run, label).set(value)
            if self._tb is not None:
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if "samples" in values:
            self.samples_total.labels(run=self.run).inc(values["samples"])
        if "dynamic_sampling/dropped_groups" in values:
            self.dropped_groups_total.labels(run=self.run).inc(values["dynamic_sampling/dropped_groups"])
        if "time/step" in values:
            self.step_seconds.labels(run=self.run).observe(values["time/step"])

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
    """The records of a metrics.jsonl (optionally of one kind), in order."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


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
