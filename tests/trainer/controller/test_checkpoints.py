"""Checkpoint store: latest pointer is atomic, unfinished checkpoints are never resumed, old ones pruned."""

from __future__ import annotations

from pathlib import Path

from forkrl.trainer.controller.checkpoints import CheckpointStore


def test_latest_prune_and_unfinished(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep_last=2)
    assert store.latest() is None
    for step in (1, 2, 3):
        target = store.new(step)
        (target.learner_dir / "weights").write_text(str(step))
        store.commit(target, step, version=step * 10, eval_history=[{"phase": "x"}], info={"k": step})
    latest = store.latest()
    assert latest is not None and (latest.step, latest.version, latest.info) == (3, 30, {"k": 3})
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step_*")) == ["step_00000002", "step_00000003"]
    # A crash while writing step 4 leaves a directory without controller.json: latest stays at 3.
    store.new(4)
    assert store.latest().step == 3
    assert (store.latest().learner_dir / "weights").read_text() == "3"
