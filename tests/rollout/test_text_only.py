"""rollout/text_only.py: an HF-engine process without torchvision still loads and runs a causal LM, and the
marking refuses to act once transformers has made its choice."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.rollout.helpers import REPO

PROBE = """
import importlib.util, sys
from forkrl.rollout.text_only import skip_vision_packages
assert skip_vision_packages() is True
assert importlib.util.find_spec("torchvision") is None
import torch
from transformers.utils import is_torchvision_available
from forkrl.rollout.tiny_model import build_tiny_model
model, tokenizer = build_tiny_model()
ids = tokenizer("12+7=", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
print(is_torchvision_available(), "torchvision" in sys.modules and sys.modules["torchvision"] is not None,
      skip_vision_packages())
"""


def test_a_causal_lm_runs_with_vision_packages_marked_absent() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    # transformers saw no torchvision, none was imported, and a second call changes nothing.
    assert done.stdout.split() == ["False", "False", "False"]
