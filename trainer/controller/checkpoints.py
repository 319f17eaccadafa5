"""Run checkpoints on disk: `step_000010/{learner/, controller.json}` plus an atomically replaced
`latest` pointer, so a checkpoint that was interrupted while writing is never resumed from."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CheckpointState:
    """What `latest()` returns: where the checkpoint is and the controller's saved state."""

    path: Path
    step: int
    version: int
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def learner_dir(self) -> Path:
        return self.path / "learner"


class CheckpointStore:
    def __init__(self, root: Path, keep_last: int = 2) -> None:
        self.root = root
        self.keep_last = keep_last

    def new(self, step: int) -> CheckpointState:
        """A fresh directory for step `step` (an unfinished one from a crash is replaced)."""
        path = self.root / f"step_{step:08d}"
        if path.exists():
            shutil.rmtree(path)
        (path / "learner").mkdir(parents=True)
        return CheckpointState(path, step, -1)

    def commit(self, target: CheckpointState, step: int, version: int, eval_history: list[dict[str, Any]],
               info: dict[str, Any]) -> None:
        """Write the controller state, then point `latest` at it (atomic rename), then prune old ones."""
        state = {"step": step, "version": version, "eval_history": eval_history, "info": info}
        (target.path / "controller.json").write_text(json.dumps(state))
        pointer = self.root / "latest.tmp"
        pointer.write_text(target.path.name)
        os.replace(pointer, self.root / "latest")
        finished = sorted(p for p in self.root.glob("step_*") if (p / "controller.json").exists())
        for old in finished[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> CheckpointState | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        state = json.loads((path / "controller.json").read_text())
        return CheckpointState(path, int(state["step"]), int(state["version"]), state.get("eval_history", []),
                               state.get("info", {}))
