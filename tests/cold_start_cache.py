"""Cold-start checkpoints built once and kept outside the checkout, like the Go builds of tests/cluster.

A cold start is deterministic on a given machine: the same spec and library versions give the same weights.
Tests that need a trained starting policy (the multi-host and real-pod runs, the learning test) take it from
here instead of paying a minute of supervised steps on every suite run. The key is the spec's model,
cold-start, data and seed fields and the torch and transformers versions. forkrl's own cold-start code is not
in it (hashing it would rebuild on most commits): after changing how a cold start is computed, delete the
`cold-start-*` directories (or point FORKRL_TEST_CACHE elsewhere); the cold start itself is tested where it
runs in every suite (the e2e, experiment and analysis runs build theirs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from forkrl.trainer.spec import RLVRJobSpec


def cache_root() -> Path:
    return Path(os.environ.get("FORKRL_TEST_CACHE", Path.home() / ".cache" / "forkrl" / "tests"))


def cold_start_key(spec: RLVRJobSpec) -> str:
    import torch
    import transformers

    fields = [spec.model.model_dump(mode="json"), spec.cold_start.model_dump(mode="json"),
              spec.data.model_dump(mode="json"), spec.seed, torch.__version__, transformers.__version__]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def cached_cold_start(spec: RLVRJobSpec) -> Path:
    """The directory of `spec`'s cold-start checkpoint (`cold_start_model` of its run), built on first use."""
    from forkrl.rollout.weight_checkpoint import make_files_readable
    from forkrl.trainer.controller.loop import prepare_policy

    root = cache_root() / f"cold-start-{cold_start_key(spec)}"
    spec = spec.model_copy(update={"observability": spec.observability.model_copy(
        update={"run_dir": str(root / "{name}")})})
    ready = spec.run_dir() / "cold_start_model"
    if not (ready / "model.safetensors").exists():
        prepare_policy(spec, spec.run_dir(), print)
    # A cache written before save_checkpoint fixed its files' modes may hold a 0600 model.safetensors, which the
    # real-node tests' pods (uid 1000) cannot read.
    make_files_readable(ready)
    return ready
